"""Run methods over a grid of (method x category x seed) cells, on Ray or in-process, in a setting.

The harness owns the setting (docs/settings.md): it selects each fit's training samples
(``m2ad.run.settings``), fits each method once per fit unit and saves the fitted state, then
predicts and evaluates each category from the saved fit (``m2ad.run.cell``).  The modules:

- ``config``: :class:`RunConfig`, its errors and the checks that need no data;
- ``settings``: which training samples each fit gets; few-shot draws; what a shot is;
- ``plan``: the fits and cells, their hashes, and the method cards checked against the run;
- ``cell``: one task (a fit, or a cell: predict, write, evaluate), and saved fits on new data;
- ``executors``: local or Ray execution with retries, Ray set-up, the live progress view;
- ``results``: ``metrics.parquet``, ``summary.json``, the joined predictions files;
- ``provenance``: ``environment.json`` and the predictions files' provenance header.

The run folder::

    RUN_DIR/
      config.json         the RunConfig, the resolved method configs, GPUs per task
      plan.json           every fit (scope, training-sample count, drawn shots, hash) and cell
      environment.json    versions, git commit, host, CPU and GPU of the driver
      fits/<fit_id>/      training.json, state.safetensors, fit.json (last), log.txt, error.txt
                          (see ``m2ad.run.cell``); <fit_id> is <method>__<scope>__seed<seed>
      cells/<cell_id>/    predictions.parquet, log.txt, error.txt (failed attempts), and
                          cell.json: identity (with its fit), metrics, timings, status; written
                          atomically and LAST, so its presence means the cell is finished;
                          <cell_id> is <method>__<category>__seed<seed>
      predictions/<method>__seed<seed>.parquet
                          the cells' predictions of one (method, seed) joined over every
                          category, once all its cells succeeded: submit or evaluate it as is
      metrics.parquet     one row per (cell, metric)
      summary.json        per method: per-category metrics (mean over seeds) and their mean
      logs/run.log        the driver's log

One run at a time: a run holds ``RUN_DIR/.m2ad-run.lock`` (``m2ad.ownership.ExclusiveLock``)
from start to end.  A second run on the same folder is refused with the holder's pid, host and
command; the lock of a killed run is released by the kernel, so the next run takes it over.
Every running fit and cell holds ``RUN_DIR/.m2ad-tasks.lock`` shared, and a run starts its tasks
only once no task holds it, so a task of a killed run never races the next run's; a local Ray
cluster that the run started dies with it (``m2ad.processes.Guardian``).

Resuming: a cell whose ``cell.json`` says ``ok`` with the same hash is skipped, and a fit whose
``fit.json`` says ``ok`` with the same hash is reused, so rerunning a killed or partly failed
command recomputes only what is missing.  A fit's hash covers the method and its full config,
the seed, the setting and shots, and the exact training sample ids with the data they come
from; a cell's covers its fit's hash, the category, the protocol (and its version), the
evaluation mode, mask rule and map dtype, the data (``dataset.json`` and ``manifest.parquet``)
and the m2ad version (not the git commit: bump the version, or use a new ``--out``, when a code
change alters results).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import m2ad
from m2ad import ownership
from m2ad.files import jsonable, write_json_atomic
from m2ad.run.cell import TASKS_LOCK_FILE, finished_cell, finished_fit, predict_with_fit
from m2ad.run.config import RunConfig, RunError, RunLockedError, check_config, check_data, resolved_method_config
from m2ad.run.executors import (
    LocalExecutor,
    RayExecutor,
    RunProgress,
    check_ray_address,
    gpus_per_task,
    run_tasks,
    start_ray,
    stop_ray,
)
from m2ad.run.plan import Plan, build_plan, data_identity, default_run_dir
from m2ad.run.provenance import environment
from m2ad.run.results import merge_predictions, write_results

RUN_LOCK_FILE = ".m2ad-run.lock"
LEFTOVER_TASKS_TIMEOUT_S = 120.0
"""How long a run waits for the tasks of a killed run on the same folder to end."""

log = logging.getLogger("m2ad.run")


@dataclass
class RunResult:
    """What a run produced.  ``run_dir`` is absolute; ``failed`` lists the cells that failed every
    attempt; ``fits`` the records of the fits its cells used, ``fits_computed`` those this run trained."""

    run_dir: Path
    summary: dict[str, Any]
    cells: list[dict[str, Any]]
    computed: list[str]
    skipped: list[str]
    failed: list[str]
    fits: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    fits_computed: list[str] = dataclasses.field(default_factory=list)
    fits_reused: list[str] = dataclasses.field(default_factory=list)
    data: Path | None = None
    """The (absolute) sharded dataset the run tested on."""

    @property
    def ok(self) -> bool:
        """True when every cell of the grid has metrics."""
        return not self.failed


def run(config: RunConfig, progress: bool = True) -> RunResult:
    """Run (or resume) every fit and cell of the grid, then write ``metrics.parquet`` and
    ``summary.json``.  Everything that can be checked without running (the configuration, the
    data, the method cards against the setting, the few-shot draws) is checked first: a
    :class:`RunError` then leaves no folder and starts no task."""
    check_config(config)
    method_configs = {name: resolved_method_config(name, config.method_args.get(name, {})) for name in config.methods}
    data = Path(config.data).absolute() if config.data is not None else _embedded_dataset(progress)
    check_data(data)
    if config.train_data is not None:
        check_data(Path(config.train_data), "--train-data")
    identity = data_identity(data)
    run_dir = (Path(config.out) if config.out is not None else default_run_dir(config, identity)).absolute()
    threads = max(1, int(config.cpus_per_task)) if config.executor == "ray" else None
    plan = build_plan(config, data, identity, run_dir, method_configs, threads)
    lock = _lock_run_dir(run_dir)
    try:
        _wait_for_leftover_tasks(run_dir)
        return _run_plan(config, plan, run_dir, progress)
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir, plan) from None
    finally:
        lock.release()


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: what it keeps (every finished fit and cell, reused by a rerun of the
    same command), counted from the run folder."""

    def __init__(self, run_dir: Path, plan: Plan) -> None:
        self.run_dir = run_dir
        self.cells_kept = sum(finished_cell(cell) is not None for cell in plan.cells)
        self.cells = len(plan.cells)
        self.fits_kept = sum(finished_fit(fit.unit_dir, fit.fit_hash) is not None for fit in plan.fits)
        self.fits = len(plan.fits)
        super().__init__(f"interrupted: {self.cells_kept} of {self.cells} cells and {self.fits_kept} of {self.fits} fits are "
                         f"finished in {run_dir}")


def _wait_for_leftover_tasks(run_dir: Path) -> None:
    """Wait until no task of an earlier, killed run holds the folder's tasks lock (its local
    cluster dies with it; a joined cluster's tasks end when Ray notices), so nothing races this run."""
    if not ownership.wait_until_unheld(run_dir / TASKS_LOCK_FILE, 0.5):
        log.warning("waiting for the tasks of an earlier run of %s to end", run_dir)
        if not ownership.wait_until_unheld(run_dir / TASKS_LOCK_FILE, LEFTOVER_TASKS_TIMEOUT_S):
            raise RunLockedError(f"tasks of an earlier run still work in {run_dir} after {LEFTOVER_TASKS_TIMEOUT_S:g} s; "
                                 "stop them (or their Ray cluster) and run again")


def _lock_run_dir(run_dir: Path) -> ownership.ExclusiveLock:
    """Create the run folder and take its lock; a clear :class:`RunError` when the folder
    cannot be one, :class:`RunLockedError` when another live run holds it."""
    try:
        (run_dir / "cells").mkdir(parents=True, exist_ok=True)
        (run_dir / "logs").mkdir(exist_ok=True)
        return ownership.ExclusiveLock(run_dir / RUN_LOCK_FILE, f"the run folder {run_dir}").acquire()
    except ownership.LockedError as error:
        raise RunLockedError(f"{error}, or choose another --out") from None
    except OSError as error:
        raise RunError(f"cannot use {run_dir} as the run folder: {error.strerror or error}") from None


def _run_plan(config: RunConfig, plan: Plan, run_dir: Path, progress: bool) -> RunResult:
    """The body of :func:`run`, with the run folder locked."""
    handler = logging.FileHandler(run_dir / "logs" / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    ray_session = None
    try:
        gpus = 0.0
        if config.executor == "ray":
            ray_session = start_ray(config, run_dir)
            gpus = gpus_per_task(config)
        _write_plan(run_dir, config, plan, gpus)
        write_json_atomic(run_dir / "environment.json", environment(include_ray=config.executor == "ray"))
        finished_cells = {cell.cell_id: record for cell in plan.cells if (record := finished_cell(cell)) is not None}
        todo = [cell for cell in plan.cells if cell.cell_id not in finished_cells]
        needed = {cell.fit_id for cell in todo if cell.fit_id is not None}
        finished_fits = {fit.fit_id: record for fit in plan.fits if (record := finished_fit(fit.unit_dir, fit.fit_hash)) is not None}
        fits_todo = [fit for fit in plan.fits if fit.fit_id in needed and fit.fit_id not in finished_fits]
        log.info("run %s: %d fits (%d to train), %d cells (%d finished before, %d to run)", run_dir, len(plan.fits), len(fits_todo),
                 len(plan.cells), len(finished_cells), len(todo))
        fits_needed = [fit for fit in plan.fits if fit.fit_id in needed]
        with RunProgress(len(plan.cells), len(finished_cells), len(fits_needed), len(fits_needed) - len(fits_todo), enabled=progress) as tracker:
            executor = RayExecutor(config, gpus) if config.executor == "ray" else LocalExecutor()
            fit_records, outcomes = run_tasks(fits_todo, todo, finished_fits, executor, 1 + config.retries, tracker)
        records = [finished_cells.get(cell.cell_id) or outcomes[cell.cell_id] for cell in plan.cells]
    finally:
        if ray_session is not None:
            stop_ray(ray_session)
        log.removeHandler(handler)
        handler.close()
    fits = [fit_records[fit.fit_id] for fit in plan.fits if fit.fit_id in fit_records]
    summary = write_results(run_dir, config, records, fits)
    merge_predictions(run_dir, records)
    return RunResult(
        run_dir=run_dir,
        summary=summary,
        cells=records,
        computed=[cell.cell_id for cell in todo],
        skipped=list(finished_cells),
        failed=[record["cell_id"] for record in records if record["status"] != "ok"],
        fits=fits,
        fits_computed=[fit.fit_id for fit in fits_todo],
        fits_reused=[fit_id for fit_id in finished_fits if fit_id in needed],
        data=plan.data,
    )


def _write_plan(run_dir: Path, config: RunConfig, plan: Plan, gpus: float) -> None:
    """``config.json`` (what was asked) and ``plan.json`` (what it became: fits and cells)."""
    write_json_atomic(run_dir / "config.json", {
        "config": jsonable(dataclasses.asdict(config)), "data": str(plan.data), "data_identity": plan.data_identity,
        "train_data": str(plan.train_data) if plan.train_data else None, "train_data_identity": plan.train_data_identity,
        "categories": plan.categories, "method_configs": plan.method_configs, "gpus_per_task": gpus, "m2ad_version": m2ad.__version__,
    })
    write_json_atomic(run_dir / "plan.json", {
        "setting": config.setting, "shots": config.shots,
        "fits": {fit.fit_id: {"method": fit.method, "seed": fit.seed, "scope": fit.selection.scope, "serves": list(fit.selection.serves),
                              "n_train": fit.selection.frame.height, "shot_unit": fit.selection.shot_unit,
                              "drawn_shots": fit.selection.shots, "fit_hash": fit.fit_hash} for fit in plan.fits},
        "cells": {cell.cell_id: {"method": cell.method, "category": cell.category, "seed": cell.seed, "fit_id": cell.fit_id,
                                 "config_hash": cell.config_hash} for cell in plan.cells},
    })


def _embedded_dataset(progress: bool) -> Path:
    from m2ad.embedded import ensure_default_dataset

    return ensure_default_dataset(progress=progress)


__all__ = ["RunConfig", "RunError", "RunInterrupted", "RunLockedError", "RunResult", "check_ray_address", "predict_with_fit", "run"]
