"""`m2ad evaluate`: score a predictions file under a protocol, print a table, write JSON."""

from __future__ import annotations

import json
import os
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
    table = Table(title=f"{result['protocol']} · {result['dataset']} · {result['mode']} · {result['mask_rule']} masks")
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
    """Image AUROC per view (or per illumination): one column per category and their mean."""
    breakdown = result.get("breakdown") or {}
    if not breakdown or not all(axis in item for item in breakdown.values()):
        return None
    categories = list(breakdown)
    keys = sorted({key for item in breakdown.values() for key in item[axis]})
    unit = "view instance" if result["protocol"] == "synergy" else "image"
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


def _out_problem(path: Path) -> str | None:
    """Why the JSON result cannot be written to ``path``, or ``None``: checked before the
    evaluation, so that a bad --out fails at once rather than after all the work."""
    if path.is_dir():
        return f"--out {path} is a folder; give a file name, e.g. {path / 'metrics.json'}"
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"--out {path}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {path}: cannot write in {existing} (permission denied)"
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


def evaluate(
    protocol: Annotated[str, typer.Option(help="Protocol: invariant, synergy or standard.")],
    data: Annotated[Path, typer.Option(help="Sharded dataset folder (from `m2ad shard` or `m2ad download`).")],
    predictions_file: PredictionsArgument = None,
    predictions: PredictionsOption = None,
    out: Annotated[Path | None, typer.Option(help="Write the full result (per category, mean, breakdown, counts) as JSON here.")] = None,
    mode: Annotated[str, typer.Option(help="Metric mode: exact, streaming (bounded memory), compat (the official M2AD evaluation, on the float64 maps of its CDO/RD++/Dinomaly/INP-Former trainers) or compat-float32 (on the float32 maps of its MSFlow trainer).")] = "exact",
    mask_rule: Annotated[str | None, typer.Option(help="GT masks: exact (no defect vanishes when resized) or official (eroded, labels recomputed from the masks, as the official M2AD evaluator). Default: official in the compat modes, else exact.")] = None,
    categories: Annotated[list[str] | None, typer.Option("--categories", "-c", help="Categories to evaluate (repeat or separate with commas); default: every category with test images.")] = None,
    pro_limit: Annotated[float, typer.Option(help="FPR integration limit of AUPRO.")] = 0.3,
) -> None:
    """Score a predictions file under a protocol: metrics per category and their mean, as fractions in [0, 1]."""
    from protocols import available
    from protocols.evaluate import evaluate as run_evaluation

    predictions = predictions_path(predictions_file, predictions, "evaluate")
    if protocol not in available():
        fail(f"unknown protocol {protocol!r}; available: {', '.join(available())}")
    chosen = split_names(categories)
    if categories and not chosen:
        fail("--categories is empty")
    if out is not None and (problem := _out_problem(out)) is not None:
        fail(problem, code=2)
    try:
        result = run_evaluation(protocol, data, predictions, mode=mode, mask_rule=mask_rule, categories=chosen,
                                pro_limit=pro_limit, progress=True)
    except (ValueError, FileNotFoundError) as error:  # PredictionsError is a ValueError listing the offenders
        fail(str(error))
    except KeyboardInterrupt:
        kept = f"{out} was not written (it is written only at the end)" if out is not None else "nothing was written"
        fail(f"interrupted: {kept}, and an evaluation keeps no partial results; run the same command again to evaluate "
             f"{predictions} from the start", code=130)
    console.print(_results_table(result))
    for table in (_breakdown_table(result, "view"), _breakdown_table(result, "illumination"), _grid_table(result)):
        if table is not None:
            console.print(table)
    if out is not None:
        try:
            _write_json(out, result)
        except OSError as error:
            fail(f"cannot write {out}: {error.strerror or error}")
        console.print(f"wrote {printable(str(out))}", highlight=False, markup=False)
    undefined = [name for name, value in result["mean"].items() if value is None]
    if undefined:
        console.print(f"[yellow]undefined (null): {', '.join(undefined)}[/] (a single class, or no anomaly maps in the file)")
