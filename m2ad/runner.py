"""Run methods over a grid of (method x category x seed) cells, on Ray or in-process.

Each cell fits one method on the training samples that the protocol selects for one category,
predicts the category's test samples in (specimen, view, illumination) order, streams the
predictions to ``RUN_DIR/cells/<cell_id>/predictions.parquet`` (the predictions-file format, so
the output can be submitted as it is) and scores them with the protocol's evaluator: in
``exact`` mode batch by batch as they are predicted; in ``streaming`` and ``compat`` modes,
which need the maps' value range first, from the written file afterwards with
``protocols.evaluate.evaluate_category`` (two passes, memory bounded by a batch), the very
code ``m2ad evaluate`` runs.  Only the cell's metrics travel back to the driver, never its maps.

The run directory::

    RUN_DIR/
      config.json         the RunConfig, the resolved method configs and GPUs per task
      environment.json    versions, git commit, host, CPU and GPU of the driver
      cells/<cell_id>/    predictions.parquet, log.txt, error.txt (failed attempts), and
                          cell.json: config, config hash, metrics, timings, status; written
                          atomically and LAST, so its presence means the cell is finished
      predictions/<method>__seed<seed>.parquet
                          the cells' predictions of one (method, seed) joined over every
                          category, once all its cells succeeded: submit or evaluate it as is
      metrics.parquet     one row per (cell, metric)
      summary.json        per method: per-category metrics (mean over seeds) and their mean
      logs/run.log        the driver's log

One run at a time: a run holds ``RUN_DIR/.m2ad-run.lock`` (``m2ad.ownership.ExclusiveLock``)
from start to end.  A second run on the same folder is refused with the holder's pid, host and
command; the lock of a killed run is released by the kernel, so the next run takes it over.

Resuming: a cell whose ``cell.json`` says ``ok`` with the same config hash is skipped, so
rerunning a killed or partly failed command recomputes only what is missing.  The hash covers
the method and its full config, the category, the seed, the protocol, the evaluation mode, mask
rule and map dtype, the data (``dataset.json`` and ``manifest.parquet``) and the m2ad version
(not the git commit: bump the version, or use a new ``--out``, when a code change alters results).

Failures: an exception, an out-of-memory kill or a worker death fails the attempt; its
traceback is appended to ``error.txt`` and the cell is retried up to ``retries`` more times
while the other cells go on.  A cell that fails every attempt gets a ``cell.json`` with status
``failed`` and the last traceback.

GPUs: every Ray task requests ``gpus_per_task`` GPUs (fractions share a GPU).  ``None`` means
one GPU per task when the cluster has GPUs, else none (the tasks then run on CPU).  Asking for
GPUs that the cluster does not have fails at once instead of leaving tasks pending forever.
Ray points ``CUDA_VISIBLE_DEVICES`` at the task's GPUs, so methods simply use ``cuda``.
On a multi-node cluster (``ray_address``) the run directory and the data must be on a file
system that every node sees at the same path.  Joining a cluster first checks, within
``ray_connect_timeout_s``, that the address answers as a gRPC server (as Ray's GCS does), so
an address where nothing listens fails in seconds instead of Ray's minutes of retries.  A
cluster the run starts itself keeps its files in an owned ``m2ad-ray-*`` folder of the
system's temporary folder, removed when the run ends (and a killed run's by the next run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

import baselines
import m2ad
import protocols
from baselines.base import Batch
from m2ad import data as m2ad_data
from m2ad import ownership
from m2ad.files import jsonable, write_json_atomic
from m2ad.metrics import MODES as EVAL_MODES
from m2ad.metrics import all_finite
from m2ad.predictions import (
    MAP_DTYPES,
    METADATA_KEY,
    PredictionsFile,
    PredictionsWriter,
    as_map_dtype,
)
from m2ad.schema import INFO_FILE, MANIFEST_FILE, MASK_RULES
from protocols.evaluate import evaluate_category

EXECUTORS = ("ray", "local")
CELL_FILE = "cell.json"
PREDICTIONS_FILE = "predictions.parquet"
RAY_OBJECT_STORE_BYTES = 256 * 2**20
DEFAULT_PRO_LIMIT = 0.3
RUN_LOCK_FILE = ".m2ad-run.lock"
RAY_TEMP_PREFIX = "m2ad-ray-"
MAX_SEED = 2**32 - 1
"""Largest seed: numpy's legacy seeding (``np.random.seed``) takes 0 .. 2**32 - 1."""

log = logging.getLogger("m2ad.runner")


class RunError(ValueError):
    """A run cannot start: bad configuration, data or cluster.  The message says why."""


class RunLockedError(RunError):
    """Another live run holds the run folder; the message names it."""


@dataclass
class RunConfig:
    """Everything that defines a run.  ``method_args`` maps a method name to its config
    fields; ``categories=None`` takes every category of the data; ``data=None`` uses the
    embedded synthetic dataset; ``out=None`` uses ``runs/<protocol>-<methods>-<hash>``, which
    is the same for the same command, so that rerunning it resumes."""

    protocol: str
    methods: tuple[str, ...] = ("patchcore",)
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: Path | None = None
    categories: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    out: Path | None = None
    executor: str = "ray"
    ray_address: str | None = None
    ray_connect_timeout_s: float = 30.0
    """Seconds to wait for ``ray_address`` to answer before failing."""
    gpus_per_task: float | None = None
    cpus_per_task: float = 1.0
    batch_size: int = 32
    retries: int = 1
    mode: str = "exact"
    mask_rule: str = "exact"
    map_dtype: str = "float16"
    """Dtype of the maps in the predictions files; the run evaluates the maps as stored."""
    local_num_cpus: int | None = None
    """CPUs of the local Ray cluster that the run starts (None: all)."""
    local_num_gpus: float | None = None
    """GPUs of the local Ray cluster that the run starts (None: detected).  Declaring GPUs on
    a machine without any is how the tests exercise GPU scheduling on CPU."""


@dataclass
class CellSpec:
    """One (method, category, seed) cell, with everything a worker needs to run it."""

    cell_id: str
    method: str
    method_class: type
    method_config: dict[str, Any]
    category: str
    seed: int
    config_hash: str
    data: Path
    protocol: str
    mode: str
    mask_rule: str
    map_dtype: str
    batch_size: int
    cell_dir: Path
    threads: int | None = None
    attempt: int = 1


@dataclass
class RunResult:
    """What a run produced.  ``failed`` lists the cells that failed every attempt."""

    run_dir: Path
    summary: dict[str, Any]
    cells: list[dict[str, Any]]
    computed: list[str]
    skipped: list[str]
    failed: list[str]

    @property
    def ok(self) -> bool:
        """True when every cell of the grid has metrics."""
        return not self.failed


# --------------------------------------------------------------------------- the cell


def execute_cell(spec: CellSpec, report: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Fit, predict, write and evaluate one cell; write its ``cell.json`` last and return it.

    ``report(stage, images)`` is called after every batch; without it, progress goes to
    ``progress.json`` in the cell folder, where the Ray driver reads it.
    """
    started = time.perf_counter()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    random.seed(spec.seed)
    np.random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    spec.cell_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale_outputs(spec.cell_dir)
    report = report or _ProgressFile(spec.cell_dir)
    gpu_ids = _ray_gpu_ids()
    with open(spec.cell_dir / "log.txt", "a") as log_file:

        def note(message: str) -> None:
            log_file.write(f"{_now()} attempt {spec.attempt}: {message}\n")
            log_file.flush()

        note(f"start {spec.method} on {spec.category}, seed {spec.seed}, host {socket.gethostname()}, gpus {gpu_ids}")
        protocol = protocols.get(spec.protocol)
        manifest = m2ad_data.load_manifest(spec.data)
        train = protocol.train_samples(manifest, spec.category)
        test = protocol.test_samples(manifest, spec.category).sort(
            ["specimen", "view", "illumination", "sample_id"], nulls_last=True
        )
        if train.height == 0 or test.height == 0:
            raise RunError(f"protocol {spec.protocol!r} selects {train.height} train and {test.height} test samples for {spec.category!r}")
        method = spec.method_class(spec.method_class.Config(**spec.method_config))

        fit_started = time.perf_counter()
        method.fit(_TrainBatches(spec.data, train, spec.batch_size, spec.threads, report))
        fit_seconds = time.perf_counter() - fit_started
        note(f"fitted on {train.height} images in {fit_seconds:.2f} s")

        # exact mode feeds the evaluator while predicting; the binned modes need the maps'
        # value range first, so they score the written file afterwards, in bounded memory
        evaluator = None
        if spec.mode == "exact":
            evaluator = protocol.new_evaluator(test, mask_rule=spec.mask_rule, pro_limit=DEFAULT_PRO_LIMIT)
        predict_started, predicted = time.perf_counter(), 0
        predictions_path = spec.cell_dir / PREDICTIONS_FILE
        with PredictionsWriter(predictions_path, map_dtype=spec.map_dtype, metadata=_provenance(spec)) as writer:
            for data_batch in m2ad_data.iter_batches(
                spec.data, test, batch_size=spec.batch_size, with_masks=evaluator is not None, mask_rule=spec.mask_rule,
                threads=spec.threads,
            ):
                batch = _method_batch(data_batch)
                scores, maps = _checked_predictions(spec.method, batch, *method.predict(batch), spec.map_dtype)
                writer.write_batch(batch.sample_ids, scores, maps)
                if evaluator is not None:
                    evaluator.update(batch.sample_ids, scores, maps, data_batch.masks)
                predicted += len(batch)
                report("predict", len(batch))
        predict_seconds = time.perf_counter() - predict_started
        note(f"predicted {predicted} images in {predict_seconds:.2f} s")

        evaluate_started = time.perf_counter()
        if evaluator is None:
            with m2ad_data.ShardReader(spec.data, threads=spec.threads) as reader:
                evaluator = evaluate_category(protocol, test, PredictionsFile(predictions_path), reader, mode=spec.mode,
                                              mask_rule=spec.mask_rule, pro_limit=DEFAULT_PRO_LIMIT, with_maps=True)
        computed = evaluator.compute()
        evaluate_seconds = time.perf_counter() - evaluate_started
        metrics = {name: _as_float(computed.get(name)) for name in protocol.metric_names}
        counts, breakdown = evaluator.counts(), evaluator.breakdown()
        note(f"metrics {json.dumps(metrics)}")

    record = {
        **_cell_identity(spec),
        "status": "ok",
        "attempts": spec.attempt,
        "metrics": metrics,
        "counts": counts,
        "breakdown": jsonable(breakdown),
        "n_train": train.height,
        "n_test": predicted,
        "timings": {
            "fit_s": fit_seconds,
            "predict_s": predict_seconds,
            "evaluate_s": evaluate_seconds,
            "total_s": time.perf_counter() - started,
        },
        "host": socket.gethostname(),
        "gpu_ids": gpu_ids,
        "finished": _now(),
    }
    write_json_atomic(spec.cell_dir / CELL_FILE, record)
    (spec.cell_dir / "progress.json").unlink(missing_ok=True)
    return record


def _clear_stale_outputs(cell_dir: Path) -> None:
    """Remove what an earlier, different or interrupted computation of the cell left: its
    ``cell.json`` (so that a half-recomputed cell never looks finished) and temporary files."""
    (cell_dir / CELL_FILE).unlink(missing_ok=True)
    for leftover in [*cell_dir.glob(".*.tmp"), *cell_dir.glob(".*.partial")]:
        leftover.unlink(missing_ok=True)


class _TrainBatches:
    """The training samples of a cell as a re-iterable of method batches (one pass per epoch)."""

    def __init__(
        self, root: Path, frame: pl.DataFrame, batch_size: int, threads: int | None, report: Callable[[str, int], None]
    ) -> None:
        self.root, self.frame, self.batch_size, self.threads, self.report = root, frame, batch_size, threads, report

    def __iter__(self) -> Iterator[Batch]:
        for data_batch in m2ad_data.iter_batches(self.root, self.frame, batch_size=self.batch_size, threads=self.threads):
            batch = _method_batch(data_batch)
            yield batch
            self.report("fit", len(batch))


class _ProgressFile:
    """Progress of a cell running on a Ray worker, in ``progress.json`` for the driver to read."""

    def __init__(self, cell_dir: Path) -> None:
        self.path = cell_dir / "progress.json"
        self.images = 0
        self.last_write = 0.0

    def __call__(self, stage: str, images: int) -> None:
        self.images += images
        now = time.monotonic()
        if now - self.last_write >= 0.5:
            write_json_atomic(self.path, {"stage": stage, "images": self.images})
            self.last_write = now


def _method_batch(data_batch: Any) -> Batch:
    """The method's view of a data batch: images and metadata, never masks or labels."""
    return Batch(
        sample_ids=list(data_batch.sample_ids),
        images=data_batch.images,
        categories=list(data_batch.categories),
        views=list(data_batch.views),
        illuminations=list(data_batch.illuminations),
    )


def _checked_predictions(
    method: str, batch: Batch, scores: Any, maps: Any, map_dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (B,) float64 and maps (B, H, W) in ``map_dtype``, or a clear error naming the
    method.  The maps are converted once, here: the predictions file stores them as they are
    and the evaluator scores the very same values, so ``m2ad evaluate`` on the file agrees."""
    scores = np.asarray(scores, dtype=np.float64)
    maps = np.asarray(maps)
    expected = (len(batch), *batch.images.shape[-2:])
    if scores.shape != (len(batch),):
        raise ValueError(f"method {method!r} returned scores of shape {scores.shape}, expected ({len(batch)},)")
    if maps.shape != expected:
        raise ValueError(f"method {method!r} returned maps of shape {maps.shape}, expected {expected}")
    converted = as_map_dtype(maps, map_dtype)
    # finite values that became inf overflowed float16 (NaN and inf the writer reports by sample id)
    if map_dtype == "float16" and converted.size and not all_finite(converted) and all_finite(maps):
        peak = max(float(maps.max()), -float(maps.min()))
        raise ValueError(
            f"method {method!r} returned map values up to {peak:.4g}, beyond float16; use --map-dtype float32 or rescale"
        )
    return scores, converted


# --------------------------------------------------------------------------- the driver


def run(config: RunConfig, progress: bool = True) -> RunResult:
    """Run (or resume) every cell of the grid, then write ``metrics.parquet`` and ``summary.json``."""
    _check_config(config)
    method_configs = {name: _resolved_method_config(name, config.method_args.get(name, {})) for name in config.methods}
    data = Path(config.data) if config.data is not None else _embedded_dataset(progress)
    _check_data(data)
    data_identity = _data_identity(data)
    categories = _resolve_categories(config, data)
    run_dir = Path(config.out) if config.out is not None else default_run_dir(config, data_identity)
    lock = _lock_run_dir(run_dir)
    try:
        return _run_grid(config, progress, data, data_identity, categories, method_configs, run_dir)
    finally:
        lock.release()


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


def _run_grid(
    config: RunConfig,
    progress: bool,
    data: Path,
    data_identity: str,
    categories: list[str],
    method_configs: dict[str, dict[str, Any]],
    run_dir: Path,
) -> RunResult:
    """The body of :func:`run`, with the run folder locked."""
    handler = logging.FileHandler(run_dir / "logs" / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    started_ray, ray_temp = False, None
    try:
        gpus_per_task = 0.0
        if config.executor == "ray":
            started_ray, ray_temp = _start_ray(config, run_dir)
            gpus_per_task = _gpus_per_task(config)
        cells = [
            CellSpec(
                cell_id=_cell_id(method, category, seed),
                method=method,
                method_class=baselines.method_class(method),
                method_config=method_configs[method],
                category=category,
                seed=seed,
                config_hash=cell_hash(config, method, method_configs[method], category, seed, data_identity),
                data=data,
                protocol=config.protocol,
                mode=config.mode,
                mask_rule=config.mask_rule,
                map_dtype=config.map_dtype,
                batch_size=config.batch_size,
                cell_dir=run_dir / "cells" / _cell_id(method, category, seed),
                threads=max(1, int(config.cpus_per_task)) if config.executor == "ray" else None,
            )
            for method in config.methods
            for category in categories
            for seed in config.seeds
        ]
        write_json_atomic(
            run_dir / "config.json",
            {
                "config": jsonable(dataclasses.asdict(config)),
                "data": str(data),
                "data_identity": data_identity,
                "categories": categories,
                "method_configs": method_configs,
                "gpus_per_task": gpus_per_task,
                "m2ad_version": m2ad.__version__,
            },
        )
        write_json_atomic(run_dir / "environment.json", environment(include_ray=config.executor == "ray"))
        finished = {cell.cell_id: record for cell in cells if (record := _finished_record(cell)) is not None}
        todo = [cell for cell in cells if cell.cell_id not in finished]
        log.info("run %s: %d cells, %d finished before, %d to run", run_dir, len(cells), len(finished), len(todo))
        with _CellProgress(len(cells), len(finished), enabled=progress) as tracker:
            if config.executor == "ray":
                outcomes = _run_on_ray(todo, config, gpus_per_task, tracker)
            else:
                outcomes = _run_locally(todo, config, tracker)
        records = [finished.get(cell.cell_id) or outcomes[cell.cell_id] for cell in cells]
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        if ray_temp is not None:
            ownership.remove_temp_dir(ray_temp)
        log.removeHandler(handler)
        handler.close()
    summary = write_results(run_dir, config, records)
    merge_predictions(run_dir, records)
    failed = [record["cell_id"] for record in records if record["status"] != "ok"]
    return RunResult(
        run_dir=run_dir,
        summary=summary,
        cells=records,
        computed=[cell.cell_id for cell in todo],
        skipped=list(finished),
        failed=failed,
    )


def default_run_dir(config: RunConfig, data_identity: str) -> Path:
    """``runs/<protocol>-<methods>-<hash>``: the same command gives the same folder, so a
    rerun resumes; the hash covers what changes results (methods and their args, data,
    categories, seeds, evaluation mode and mask rule)."""
    key = {
        "protocol": config.protocol,
        "methods": list(config.methods),
        "method_args": config.method_args,
        "data": data_identity,
        "categories": list(config.categories) if config.categories else None,
        "seeds": list(config.seeds),
        "mode": config.mode,
        "mask_rule": config.mask_rule,
    }
    digest = hashlib.sha256(json.dumps(jsonable(key), sort_keys=True).encode()).hexdigest()[:10]
    return Path("runs") / f"{config.protocol}-{'+'.join(config.methods)}-{digest}"


def cell_hash(
    config: RunConfig, method: str, method_config: dict[str, Any], category: str, seed: int, data_identity: str
) -> str:
    """The identity of a cell's result: a cell with the same hash need not be recomputed."""
    key = {
        "method": method,
        "method_config": method_config,
        "category": category,
        "seed": seed,
        "protocol": config.protocol,
        "mode": config.mode,
        "mask_rule": config.mask_rule,
        "map_dtype": config.map_dtype,
        "data": data_identity,
        "code_version": m2ad.__version__,
    }
    return hashlib.sha256(json.dumps(jsonable(key), sort_keys=True).encode()).hexdigest()


def _check_config(config: RunConfig) -> None:
    problems = []
    if config.executor not in EXECUTORS:
        problems.append(f"executor must be one of {', '.join(EXECUTORS)}, got {config.executor!r}")
    if config.mode not in EVAL_MODES:
        problems.append(f"mode must be one of {', '.join(EVAL_MODES)}, got {config.mode!r}")
    if config.map_dtype not in MAP_DTYPES:
        problems.append(f"map dtype must be one of {', '.join(MAP_DTYPES)}, got {config.map_dtype!r}")
    if config.mask_rule not in MASK_RULES:
        problems.append(f"mask rule must be one of {', '.join(MASK_RULES)}, got {config.mask_rule!r}")
    if not config.methods:
        problems.append("no method given")
    if len(set(config.methods)) != len(config.methods):
        problems.append(f"a method is listed twice: {', '.join(config.methods)}")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        problems.append(f"seeds must be distinct and at least one, got {list(config.seeds)}")
    out_of_range = [seed for seed in config.seeds if not (isinstance(seed, int) and 0 <= seed <= MAX_SEED)]
    if out_of_range:
        problems.append(f"seeds must be integers in 0..{MAX_SEED}, got {', '.join(map(str, out_of_range))}")
    if config.out is not None and Path(config.out).exists() and not Path(config.out).is_dir():
        problems.append(f"--out {config.out} exists and is not a folder")
    if not config.ray_connect_timeout_s > 0:
        problems.append(f"ray connect timeout must be positive, got {config.ray_connect_timeout_s}")
    if config.gpus_per_task is not None and config.gpus_per_task < 0:
        problems.append(f"gpus per task must be >= 0, got {config.gpus_per_task}")
    if config.cpus_per_task <= 0:
        problems.append(f"cpus per task must be positive, got {config.cpus_per_task}")
    if config.batch_size < 1:
        problems.append(f"batch size must be at least 1, got {config.batch_size}")
    if config.retries < 0:
        problems.append(f"retries must be >= 0, got {config.retries}")
    for method in config.method_args:
        if method not in config.methods:
            problems.append(f"method arguments given for {method!r}, which is not run")
    try:
        protocols.get(config.protocol)
    except (KeyError, ValueError) as error:
        problems.append(str(error).strip("'\""))
    for method in config.methods:
        if method not in baselines.available():
            problems.append(f"unknown method {method!r}; available: {', '.join(baselines.available())}")
    if problems:
        raise RunError("; ".join(problems))


def _resolved_method_config(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """Every field of the method's config, defaults included (so that the hash sees them)."""
    config_class = baselines.config_class(method)
    try:
        config = config_class(**args)
    except (TypeError, ValueError) as error:
        raise RunError(f"method {method!r}: {error}") from None
    values = dataclasses.asdict(config)
    # JSON (config.json, the cell hash) has no NaN or inf: they would silently become None
    not_finite = [f"{key}={value}" for key, value in values.items() if not _all_finite_numbers(value)]
    if not_finite:
        raise RunError(f"method {method!r}: options must be finite numbers, got {', '.join(not_finite)}")
    return jsonable(values)


def _all_finite_numbers(value: Any) -> bool:
    """False when ``value`` is, or holds, a NaN or infinite float."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite_numbers(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite_numbers(item) for item in value)
    return True


def _embedded_dataset(progress: bool) -> Path:
    from m2ad.embedded import ensure_default_dataset

    return ensure_default_dataset(progress=progress)


def _check_data(data: Path) -> None:
    for name in (INFO_FILE, MANIFEST_FILE):
        if not (data / name).is_file():
            raise RunError(f"{data} is not a sharded m2ad dataset (no {name}); create one with `m2ad shard` or `m2ad download`")


def _data_identity(data: Path) -> str:
    """A hash of ``dataset.json`` and ``manifest.parquet``: what the data is, without its pixels."""
    digest = hashlib.sha256()
    for name in (INFO_FILE, MANIFEST_FILE):
        digest.update((data / name).read_bytes())
    return digest.hexdigest()


def _resolve_categories(config: RunConfig, data: Path) -> list[str]:
    present = sorted(m2ad_data.load_manifest(data)["category"].unique().to_list())
    if not config.categories:
        return present
    unknown = [category for category in config.categories if category not in present]
    if unknown:
        raise RunError(f"categories not in {data}: {', '.join(unknown)}; present: {', '.join(present)}")
    return list(dict.fromkeys(config.categories))


def _cell_id(method: str, category: str, seed: int) -> str:
    return _safe_name(f"{method}__{category}__seed{seed}")


def _safe_name(text: str) -> str:
    """``text`` with every character that is unsafe in a file name replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _cell_identity(spec: CellSpec) -> dict[str, Any]:
    return {
        "cell_id": spec.cell_id,
        "method": spec.method,
        "method_config": spec.method_config,
        "category": spec.category,
        "seed": spec.seed,
        "protocol": spec.protocol,
        "mode": spec.mode,
        "mask_rule": spec.mask_rule,
        "map_dtype": spec.map_dtype,
        "config_hash": spec.config_hash,
    }


def _finished_record(cell: CellSpec) -> dict[str, Any] | None:
    """The cell's record if it finished with the same config hash, else None."""
    path = cell.cell_dir / CELL_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("status") == "ok" and record.get("config_hash") == cell.config_hash and (cell.cell_dir / PREDICTIONS_FILE).is_file():
        return record
    return None


def _record_failure(cell: CellSpec, error_text: str, attempts: int, final: bool) -> dict[str, Any] | None:
    """Append the attempt's traceback to ``error.txt``; after the last attempt also write a
    failed ``cell.json`` and return it."""
    cell.cell_dir.mkdir(parents=True, exist_ok=True)
    with open(cell.cell_dir / "error.txt", "a") as error_file:
        error_file.write(f"=== {_now()} attempt {cell.attempt} of {attempts} failed\n{error_text.rstrip()}\n")
    log.warning("cell %s attempt %d of %d failed: %s", cell.cell_id, cell.attempt, attempts, error_text.strip().splitlines()[-1:])
    if not final:
        return None
    (cell.cell_dir / "progress.json").unlink(missing_ok=True)
    record = {**_cell_identity(cell), "status": "failed", "attempts": cell.attempt, "error": error_text, "finished": _now()}
    write_json_atomic(cell.cell_dir / CELL_FILE, record)
    return record


def _run_locally(cells: list[CellSpec], config: RunConfig, tracker: _CellProgress) -> dict[str, dict[str, Any]]:
    """Run the cells one after the other in this process (``--executor local``)."""
    outcomes: dict[str, dict[str, Any]] = {}
    attempts = 1 + config.retries
    for cell in cells:
        tracker.started(cell.cell_id)
        for attempt in range(1, attempts + 1):
            cell = dataclasses.replace(cell, attempt=attempt)
            try:
                outcomes[cell.cell_id] = execute_cell(cell, report=lambda stage, images: tracker.images(images))
                tracker.finished(cell.cell_id, ok=True)
                break
            except Exception as error:
                final = attempt == attempts or _is_permanent(error)
                record = _record_failure(cell, traceback.format_exc(), attempts, final=final)
                if record is not None:
                    outcomes[cell.cell_id] = record
                    tracker.finished(cell.cell_id, ok=False)
    return outcomes


def _is_permanent(error: BaseException | None) -> bool:
    """Whether retrying cannot help: missing weights stay missing until the user acts."""
    from baselines.weights import WeightsUnavailable

    return isinstance(error, WeightsUnavailable)


def _start_ray(config: RunConfig, run_dir: Path) -> tuple[bool, Path | None]:
    """Join ``ray_address``, or start a small loopback cluster.  Returns whether this call
    started Ray (False if it was already up) and the temporary folder of a cluster it started."""
    import ray

    if ray.is_initialized():
        return False, None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if config.ray_address:
        check_ray_address(config.ray_address, config.ray_connect_timeout_s)
        try:
            ray.init(address=config.ray_address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise RunError(f"cannot join the Ray cluster at {config.ray_address}: {error}") from None
        return True, None
    # A cluster we start ourselves serves this machine only: keep every socket on loopback,
    # where Ray's token authentication (and its token file in ~/.ray) guards nothing.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's sockets live in its temporary folder, and a Unix socket path has at most 107
    # bytes: so the folder is short, in the system's temporary folder, not in the run folder.
    system_temp = Path(tempfile.gettempdir())
    ownership.remove_dead_temp_dirs(system_temp, f"{RAY_TEMP_PREFIX}*")
    temp_dir = ownership.claim_temp_dir(system_temp / f"{RAY_TEMP_PREFIX}{uuid.uuid4().hex[:12]}", run_dir)
    try:
        ray.init(
            num_cpus=config.local_num_cpus,
            num_gpus=config.local_num_gpus,
            include_dashboard=False,
            object_store_memory=RAY_OBJECT_STORE_BYTES,
            _temp_dir=str(temp_dir),
            log_to_driver=False,
        )
    except BaseException:
        ownership.remove_temp_dir(temp_dir)
        raise
    return True, temp_dir


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS frame


def check_ray_address(address: str, timeout: float) -> None:
    """Raise :class:`RunError` unless ``address`` (``host:port`` or ``ray://host:port``; ``auto``
    is not checked) answers within ``timeout`` seconds as a gRPC server, as Ray's GCS and Ray
    Client server do: its first frame must be HTTP/2 SETTINGS."""
    if address == "auto":
        return
    host, _, port_text = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit():
        raise RunError(f"--ray-address must be HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    where = f"the Ray cluster at {address}"
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout) as connection:
            connection.settimeout(timeout)
            connection.sendall(_HTTP2_PREFACE)
            header = connection.recv(9)
    except socket.timeout:
        raise RunError(f"{where} did not answer within {timeout:g} s (--ray-timeout); is the address right and the cluster up?") from None
    except OSError as error:
        raise RunError(f"cannot reach {where}: {error.strerror or error}; is the address right and the cluster up?") from None
    if len(header) < 4 or header[3] != 0x4:
        raise RunError(f"{where} answers, but not as a Ray cluster (no gRPC server there); check the port")


def _gpus_per_task(config: RunConfig) -> float:
    """GPUs each task requests; fails fast when the cluster cannot ever provide them."""
    import ray

    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0.0))
    cluster_cpus = float(resources.get("CPU", 0.0))
    if config.cpus_per_task > cluster_cpus:
        raise RunError(f"each task asks for {config.cpus_per_task} CPUs but the Ray cluster has {cluster_cpus:g}")
    if config.gpus_per_task is None:
        return 1.0 if cluster_gpus >= 1 else 0.0
    if config.gpus_per_task > cluster_gpus:
        raise RunError(
            f"each task asks for {config.gpus_per_task:g} GPUs but the Ray cluster has {cluster_gpus:g}; "
            "use --gpus-per-task 0 to run on CPU, or join a cluster with GPUs (--ray-address)"
        )
    return float(config.gpus_per_task)


def _run_on_ray(
    cells: list[CellSpec], config: RunConfig, gpus_per_task: float, tracker: _CellProgress
) -> dict[str, dict[str, Any]]:
    """Submit every cell as a Ray task, retry failed attempts, collect the records."""
    import ray
    from ray.exceptions import RayError

    remote_cell = ray.remote(execute_cell).options(
        num_gpus=gpus_per_task, num_cpus=config.cpus_per_task, max_retries=0, retry_exceptions=False
    )
    attempts = 1 + config.retries
    pending = {remote_cell.remote(cell): cell for cell in cells}
    progress_seen: dict[str, int] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5, fetch_local=False)
        for ref in ready:
            cell = pending.pop(ref)
            try:
                outcomes[cell.cell_id] = ray.get(ref)
                tracker.finished(cell.cell_id, ok=True)
            except RayError as error:
                final = cell.attempt >= attempts or _is_permanent(getattr(error, "cause", None))
                record = _record_failure(cell, _ray_error_text(error), attempts, final)
                if record is not None:
                    outcomes[cell.cell_id] = record
                    tracker.finished(cell.cell_id, ok=False)
                else:
                    retry = dataclasses.replace(cell, attempt=cell.attempt + 1)
                    pending[remote_cell.remote(retry)] = retry
            progress_seen.pop(cell.cell_id, None)
        for cell in pending.values():
            _poll_progress(cell, progress_seen, tracker)
    return outcomes


def _poll_progress(cell: CellSpec, seen: dict[str, int], tracker: _CellProgress) -> None:
    """Read a running cell's ``progress.json``: mark it running and count its new images."""
    try:
        images = int(json.loads((cell.cell_dir / "progress.json").read_text())["images"])
    except (OSError, ValueError, KeyError):
        return
    tracker.started(cell.cell_id)
    tracker.images(max(0, images - seen.get(cell.cell_id, 0)))
    seen[cell.cell_id] = images


def _ray_error_text(error: Exception) -> str:
    """The remote traceback of a task error, or the kind of failure (worker death, OOM)."""
    return f"{type(error).__name__}: {error}"


def _ray_gpu_ids() -> list[Any]:
    """The GPUs Ray gave this task ([] outside Ray)."""
    if "ray" not in sys.modules:
        return []
    import ray

    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


class _CellProgress:
    """Live rich progress: cells done, running and failed, and images per second."""

    def __init__(self, total: int, done_before: int, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]cells"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            disable=not enabled,
            transient=False,
        )
        self.task = self.progress.add_task("cells", total=total, completed=done_before, status="")
        self.running: set[str] = set()
        self.failed = 0
        self.image_count = 0
        self.start = time.monotonic()
        self._refresh()

    def __enter__(self) -> _CellProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def started(self, cell_id: str) -> None:
        self.running.add(cell_id)
        self._refresh()

    def finished(self, cell_id: str, ok: bool) -> None:
        self.running.discard(cell_id)
        self.failed += 0 if ok else 1
        self.progress.advance(self.task)
        self._refresh()

    def images(self, count: int) -> None:
        self.image_count += count
        self._refresh()

    def _refresh(self) -> None:
        rate = self.image_count / max(time.monotonic() - self.start, 1e-9)
        status = f"running {len(self.running)} · failed {self.failed} · {rate:,.1f} img/s"
        self.progress.update(self.task, status=status)


# --------------------------------------------------------------------------- results


def write_results(run_dir: Path, config: RunConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``metrics.parquet`` (one row per cell and metric) and ``summary.json`` (per
    method: per-category metrics averaged over seeds, and their mean over categories)."""
    rows = [
        {
            "method": record["method"],
            "category": record["category"],
            "seed": record["seed"],
            "metric": name,
            "value": value,
            "cell_id": record["cell_id"],
            "config_hash": record["config_hash"],
        }
        for record in records
        if record["status"] == "ok"
        for name, value in record["metrics"].items()
    ]
    schema = {
        "method": pl.String,
        "category": pl.String,
        "seed": pl.Int64,
        "metric": pl.String,
        "value": pl.Float64,
        "cell_id": pl.String,
        "config_hash": pl.String,
    }
    frame = pl.DataFrame(rows, schema=schema)
    partial = run_dir / "metrics.parquet.partial"
    frame.write_parquet(partial)
    os.replace(partial, run_dir / "metrics.parquet")

    metric_names = list(protocols.get(config.protocol).metric_names)
    methods: dict[str, Any] = {}
    for method in config.methods:
        own = [record for record in records if record["method"] == method]
        categories: dict[str, dict[str, float | None]] = {}
        for category in dict.fromkeys(record["category"] for record in own):
            done = [r for r in own if r["category"] == category and r["status"] == "ok"]
            if done:
                categories[category] = {name: _mean(r["metrics"].get(name) for r in done) for name in metric_names}
        failed = sorted(record["cell_id"] for record in own if record["status"] != "ok")
        methods[method] = {
            "categories": categories,
            "mean": {name: _mean(values.get(name) for values in categories.values()) for name in metric_names},
            "seeds": list(config.seeds),
            "complete": not failed,
            "failed_cells": failed,
        }
    summary = {
        "protocol": config.protocol,
        "mode": config.mode,
        "mask_rule": config.mask_rule,
        "metric_names": metric_names,
        "methods": methods,
        "failed_cells": sorted(record["cell_id"] for record in records if record["status"] != "ok"),
    }
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def merge_predictions(run_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
    """Join the cell predictions of each (method, seed) whose cells all succeeded into
    ``RUN_DIR/predictions/<method>__seed<seed>.parquet``, one file covering every category,
    ready for ``m2ad evaluate`` or ``m2ad submit``.  Row groups are copied one at a time (no
    map is decoded), and a file is rewritten only when a cell's predictions are newer."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["method"], record["seed"]), []).append(record)
    written = []
    for (method, seed), members in groups.items():
        if any(record["status"] != "ok" for record in members):
            continue
        sources = [run_dir / "cells" / record["cell_id"] / PREDICTIONS_FILE for record in members]
        target = run_dir / "predictions" / f"{_safe_name(f'{method}__seed{seed}')}.parquet"
        if target.is_file() and all(source.stat().st_mtime_ns <= target.stat().st_mtime_ns for source in sources):
            written.append(target)
            continue
        first = pq.ParquetFile(sources[0])
        header = json.loads(first.schema_arrow.metadata[METADATA_KEY.encode()])
        header = {
            "format_version": header["format_version"],
            "map_dtype": header["map_dtype"],
            "producer": header.get("producer"),
            "method": method,
            "method_config": members[0]["method_config"],
            "seed": seed,
            "protocol": members[0]["protocol"],
            "categories": [record["category"] for record in members],
            "cell_hashes": {record["cell_id"]: record["config_hash"] for record in members},
        }
        schema = first.schema_arrow.with_metadata({METADATA_KEY: json.dumps(jsonable(header), sort_keys=True)})
        target.parent.mkdir(exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            for source in sources:
                parquet = pq.ParquetFile(source)
                for index in range(parquet.num_row_groups):
                    writer.write_table(parquet.read_row_group(index).cast(schema))
        os.replace(partial, target)
        written.append(target)
    return written


def _mean(values: Any) -> float | None:
    """Mean of the finite values, None if there is none."""
    finite = [float(value) for value in values if value is not None and np.isfinite(value)]
    return float(np.mean(finite)) if finite else None


# --------------------------------------------------------------------------- environment


def environment(include_ray: bool = False) -> dict[str, Any]:
    """Versions, git commit, host, CPU and GPU of this process, for ``environment.json``."""
    import datasets
    import pyarrow

    info: dict[str, Any] = {
        "m2ad": m2ad.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "polars": pl.__version__,
        "pyarrow": pyarrow.__version__,
        "datasets": datasets.__version__,
        "git_commit": _git_commit(),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())],
        "created": _now(),
    }
    if include_ray:
        import ray

        info["ray"] = ray.__version__
        if ray.is_initialized():
            info["ray_cluster_resources"] = ray.cluster_resources()
    return info


def _git_commit() -> str | None:
    """The commit of the m2ad source tree, with ``-dirty`` if it has changes; None outside git."""
    root = Path(m2ad.__file__).resolve().parents[1]
    if shutil.which("git") is None:
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- small helpers


def _provenance(spec: CellSpec) -> dict[str, Any]:
    return {"producer": f"m2ad {m2ad.__version__} runner", **_cell_identity(spec)}


def _as_float(value: Any) -> float | None:
    """A metric value as a float, None when undefined (None or NaN)."""
    return None if value is None or not np.isfinite(value) else float(value)






def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
