"""`m2ad evaluate`: score a predictions file under a protocol, print a table, write JSON."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from m2ad.cli._common import PredictionsArgument, PredictionsOption, console, fail, predictions_path, split_names
from m2ad.text import printable


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _results_table(result: dict[str, Any]) -> Table:
    """One row per metric, one column per category, and the mean over categories."""
    categories = list(result["categories"])
    version = result.get("protocol_version")
    protocol = result["protocol"] if version in (None, "1") else f"{result['protocol']} v{version}"
    table = Table(title=f"{protocol} · {result['dataset']} · {result['mode']} · {result['mask_rule']} masks")
    table.add_column("metric")
    for category in categories:
        table.add_column(category, justify="right")
    table.add_column("mean", justify="right", style="bold")
    for name, mean in result["mean"].items():
        table.add_row(name, *(_cell(result["categories"][category][name]) for category in categories), _cell(mean))
    return table


def _mean_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known and len(known) == len(values) else None


def _breakdown_table(result: dict[str, Any], axis: str) -> Table | None:
    """The breakdown level's AUROC (image, or Synergy's view unit) per view (or per
    illumination): one column per category and their mean."""
    from protocols import get

    breakdown = result.get("breakdown") or {}
    if not breakdown or not all(axis in item for item in breakdown.values()):
        return None
    categories = list(breakdown)
    keys = sorted({key for item in breakdown.values() for key in item[axis]})
    unit = (get(result["protocol"]).breakdown_metric or "image_auroc").removesuffix("_auroc")
    table = Table(title=f"{unit} AUROC per {axis} (—: a single class)")
    table.add_column(axis)
    for category in categories:
        table.add_column(category, justify="right")
    table.add_column("mean", justify="right")
    for key in keys:
        values = [breakdown[category][axis].get(key) for category in categories]
        table.add_row(key, *(_cell(value) for value in values), _cell(_mean_or_none(values)))
    return table


def _grid_table(result: dict[str, Any]) -> Table | None:
    """Image AUROC per view (rows) x illumination (columns), mean over categories."""
    breakdown = result.get("breakdown") or {}
    if not breakdown or not all("view_illumination" in item for item in breakdown.values()):
        return None
    grids = [item["view_illumination"] for item in breakdown.values()]
    views = sorted({view for grid in grids for view in grid})
    lights = sorted({light for grid in grids for row in grid.values() for light in row})
    table = Table(title="image AUROC, view x illumination: mean over categories (—: a single class in some category)")
    table.add_column("view")
    for light in lights:
        table.add_column(light, justify="right")
    for view in views:
        means = [_mean_or_none([grid.get(view, {}).get(light) for grid in grids]) for light in lights]
        table.add_row(view, *("—" if value is None else f"{value:.3f}" for value in means))
    return table


def _out_problem(path: Path, option: str = "--out") -> str | None:
    """Why an output cannot be written to ``path``, or ``None``: checked before the
    evaluation, so that a bad --out or --per-image fails at once rather than after all the work."""
    if path.is_dir():
        example = "metrics.json" if option == "--out" else "per_image.csv"
        return f"{option} {path} is a folder; give a file name, e.g. {path / example}"
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} {path}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {path}: cannot write in {existing} (permission denied)"
    return None


def _write_json(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` atomically (temporary name, then ``os.replace``); no temporary file is
    left behind when that fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _worst_table(samples: Any, count: int) -> Table:
    """The ``count`` highest-scored normal and lowest-scored anomalous images of each category."""
    from protocols.evaluate import worst

    rows = worst(samples, count)
    table = Table(title=f"worst {count} per category: normal images scored highest, anomalous images scored lowest (rank 1 = highest score)")
    for name in ("category", "kind", "sample_id", "score", "rank"):
        table.add_column(name, justify="right" if name in ("score", "rank") else "left", overflow="fold")
    for row in rows.iter_rows(named=True):
        table.add_row(printable(row["category"]), row["kind"], printable(row["sample_id"]), f"{row['score']:.6g}", str(row["rank"]))
    return table


def _command(arguments: dict[str, Any]) -> str:
    """The command line of this evaluation, options as parsed (defaults included)."""
    parts = ["m2ad", "evaluate"]
    for name, value in arguments.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                parts += [f"--{name.replace('_', '-')}", str(item)]
    return shlex.join(parts)


def evaluate(
    protocol: Annotated[str, typer.Option(help="Protocol: invariant, synergy (M2AD), realiad-sample (Real-IAD), real3d-ad, mvtec-3d, eyecandies or standard (docs/protocols.md).")],
    data: Annotated[Path, typer.Option(help="Sharded dataset folder (from `m2ad shard` or `m2ad download`).")],
    predictions_file: PredictionsArgument = None,
    predictions: PredictionsOption = None,
    out: Annotated[Path | None, typer.Option(help="Write the full result (per category, mean, breakdown, counts) as JSON here.")] = None,
    mode: Annotated[str, typer.Option(help="Metric mode: exact, streaming (bounded memory), compat (the official M2AD evaluation, on the float64 maps of its CDO/RD++/Dinomaly/INP-Former trainers) or compat-float32 (on the float32 maps of its MSFlow trainer).")] = "exact",
    mask_rule: Annotated[str | None, typer.Option(help="GT masks: exact (no defect vanishes when resized) or official (eroded, labels recomputed from the masks, as the official M2AD evaluator). Default: official in the compat modes, else exact.")] = None,
    categories: Annotated[list[str] | None, typer.Option("--categories", "-c", help="Categories to evaluate (repeat or separate with commas); default: every category with test images.")] = None,
    pro_limit: Annotated[float, typer.Option(help="FPR integration limit of AUPRO.")] = 0.3,
    per_image: Annotated[Path | None, typer.Option(help="Write one row per scored image here (.csv or .parquet): score, label, rank in its category, and the fused unit scores (Synergy: view and object; realiad-sample: sample).")] = None,
    worst: Annotated[int | None, typer.Option(min=1, help="Print the K worst-ranked images of each category: the highest-scored normal and the lowest-scored anomalous ones.")] = None,
) -> None:
    """Score a predictions file under a protocol: metrics per category and their mean, as fractions in [0, 1]."""
    from protocols import available
    from protocols.evaluate import check_per_sample_path, evaluate_predictions, write_per_sample

    predictions = predictions_path(predictions_file, predictions, "evaluate")
    command = _command({"protocol": protocol, "data": data, "predictions": predictions, "out": out, "mode": mode, "mask_rule": mask_rule,
                        "categories": categories, "pro_limit": pro_limit, "per_image": per_image, "worst": worst})
    if protocol not in available():
        fail(f"unknown protocol {protocol!r}; available: {', '.join(available())}")
    chosen = split_names(categories)
    if categories and not chosen:
        fail("--categories is empty")
    for option, path in (("--out", out), ("--per-image", per_image)):
        if path is not None and (problem := _out_problem(path, option)) is not None:
            fail(problem, code=2)
    if per_image is not None:
        try:
            check_per_sample_path(per_image)
        except ValueError as error:
            fail(str(error), code=2)
    try:
        evaluation = evaluate_predictions(protocol, data, predictions, mode=mode, mask_rule=mask_rule, categories=chosen,
                                          pro_limit=pro_limit, progress=True, command=command,
                                          per_sample=per_image is not None or worst is not None)
    except (ValueError, FileNotFoundError) as error:  # PredictionsError is a ValueError listing the offenders
        fail(str(error))
    except KeyboardInterrupt:
        kept = f"{out} was not written (it is written only at the end)" if out is not None else "nothing was written"
        fail(f"interrupted: {kept}, and an evaluation keeps no partial results; run the same command again to evaluate "
             f"{predictions} from the start", code=130)
    result = evaluation.result
    console.print(_results_table(result))
    for table in (_breakdown_table(result, "view"), _breakdown_table(result, "illumination"), _grid_table(result)):
        if table is not None:
            console.print(table)
    if worst is not None:
        console.print(_worst_table(evaluation.samples, worst))
    if per_image is not None:
        try:
            write_per_sample(evaluation.samples, per_image)
        except OSError as error:
            fail(f"cannot write {per_image}: {error.strerror or error}")
        console.print(f"wrote {printable(str(per_image))}", highlight=False, markup=False)
    if out is not None:
        try:
            _write_json(out, result)
        except OSError as error:
            fail(f"cannot write {out}: {error.strerror or error}")
        console.print(f"wrote {printable(str(out))}", highlight=False, markup=False)
    undefined = [name for name, value in result["mean"].items() if value is None]
    if undefined:
        console.print(f"[yellow]undefined (null): {', '.join(undefined)}[/] (a single class, or no anomaly maps in the file)")
