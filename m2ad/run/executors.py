"""Running a plan's tasks: in this process (``local``) or as Ray tasks (``ray``), with retries,
fits before the cells that need them, and a live view of what each running task is doing.

Scheduling: every fit that an unfinished cell needs is submitted; a cell is submitted as soon as
its fit is on disk (at once when it needs none, or when its fit finished in an earlier run).
A failed attempt (an exception, an out-of-memory kill, a worker death) has its traceback
appended to the task's ``error.txt`` and is retried up to ``retries`` more times while the other
tasks go on; a cell is retried from the saved fit, never refitted.  A task that fails every
attempt gets a ``fit.json`` / ``cell.json`` with status ``failed``; the cells of a failed fit
fail with its error.

GPUs: every Ray task requests ``gpus_per_task`` GPUs (fractions share a GPU).  ``None`` means
one GPU per task when the cluster has GPUs, else none (the tasks then run on CPU).  Asking for
GPUs that the cluster does not have fails at once instead of leaving tasks pending forever.
Ray points ``CUDA_VISIBLE_DEVICES`` at the task's GPUs, so methods simply use ``cuda``.  On a
multi-node cluster (``ray_address``) the run folder and the data must be on a file system that
every node sees at the same path.  Joining a cluster first checks, within
``ray_connect_timeout_s``, that the address answers as a gRPC server (as Ray's GCS does), so an
address where nothing listens fails in seconds instead of Ray's minutes of retries.  A cluster
the run starts itself keeps its files in an owned ``m2ad-ray-*`` folder of the system's
temporary folder, removed when the run ends (and a killed run's by the next run), and dies with
the run: a :class:`~m2ad.processes.Guardian` kills every process of it once the driver is gone,
even after a ``kill -9``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import tempfile
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from m2ad import ownership
from m2ad.files import write_json_atomic
from m2ad.processes import Guardian
from m2ad.run.cell import CELL_FILE, FIT_FILE, PROGRESS_FILE, cell_identity, execute, fit_identity
from m2ad.run.config import RunConfig, RunError
from m2ad.run.plan import CellSpec, FitSpec
from m2ad.run.provenance import now

RAY_OBJECT_STORE_BYTES = 256 * 2**20
RAY_TEMP_PREFIX = "m2ad-ray-"
POLL_SECONDS = 0.5

log = logging.getLogger("m2ad.run")

Spec = FitSpec | CellSpec


@dataclass
class Outcome:
    """How one attempt of a task ended: its record, or the error (text, and the exception when known)."""

    spec: Spec
    record: dict[str, Any] | None
    error_text: str | None = None
    error: BaseException | None = None


# --------------------------------------------------------------------------- the schedule


def run_tasks(
    fits: list[FitSpec],
    cells: list[CellSpec],
    finished_fits: dict[str, dict[str, Any]],
    executor: LocalExecutor | RayExecutor,
    attempts: int,
    tracker: RunProgress,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Run ``fits`` and ``cells`` (each cell once its fit is done); returns the records of the
    fits (``finished_fits`` included) and of the cells, by id."""
    fit_records = dict(finished_fits)
    cell_records: dict[str, dict[str, Any]] = {}
    waiting: dict[str, list[CellSpec]] = {}

    def schedule(cell: CellSpec) -> None:
        fit = fit_records.get(cell.fit_id) if cell.fit_id else None
        if cell.fit_id is None or (fit is not None and fit["status"] == "ok"):
            executor.submit(cell)
        elif fit is not None:
            cell_records[cell.cell_id] = _fit_failed(cell, fit)
            tracker.finished(cell, ok=False)
        else:
            waiting.setdefault(cell.fit_id, []).append(cell)

    for fit in fits:
        executor.submit(fit)
    for cell in cells:
        schedule(cell)
    while executor.busy():
        for outcome in executor.wait(tracker):
            spec = outcome.spec
            record = outcome.record
            if record is None:
                final = spec.attempt >= attempts or _is_permanent(outcome.error)
                record = _record_failure(spec, outcome.error_text or "unknown error", attempts, final)
                if record is None:
                    executor.submit(dataclasses.replace(spec, attempt=spec.attempt + 1))
                    continue
            tracker.finished(spec, ok=record["status"] == "ok")
            if isinstance(spec, FitSpec):
                fit_records[spec.fit_id] = record
                for cell in waiting.pop(spec.fit_id, []):
                    schedule(cell)
            else:
                cell_records[spec.cell_id] = record
    return fit_records, cell_records


def _record_failure(spec: Spec, error_text: str, attempts: int, final: bool) -> dict[str, Any] | None:
    """Append the attempt's traceback to ``error.txt``; after the last attempt also write a
    failed ``fit.json`` / ``cell.json`` and return it."""
    spec.unit_dir.mkdir(parents=True, exist_ok=True)
    with open(spec.unit_dir / "error.txt", "a") as error_file:
        error_file.write(f"=== {now()} attempt {spec.attempt} of {attempts} failed\n{error_text.rstrip()}\n")
    log.warning("%s attempt %d of %d failed: %s", spec.unit_id, spec.attempt, attempts, error_text.strip().splitlines()[-1:])
    if not final:
        return None
    (spec.unit_dir / PROGRESS_FILE).unlink(missing_ok=True)
    identity = fit_identity(spec) if isinstance(spec, FitSpec) else cell_identity(spec)
    record = {**identity, "status": "failed", "attempts": spec.attempt, "error": error_text,
              "error_file": str(spec.unit_dir / "error.txt"), "finished": now()}
    write_json_atomic(spec.unit_dir / (FIT_FILE if isinstance(spec, FitSpec) else CELL_FILE), record)
    return record


def _fit_failed(cell: CellSpec, fit: dict[str, Any]) -> dict[str, Any]:
    """The failed record of a cell whose fit failed every attempt (written to its ``cell.json``)."""
    last_line = next((line for line in reversed(fit.get("error", "").splitlines()) if line.strip()), "")
    record = {**cell_identity(cell), "status": "failed", "attempts": 0, "error": f"its fit {cell.fit_id} failed: {last_line}",
              "error_file": fit.get("error_file"), "finished": now()}
    write_json_atomic(cell.cell_dir / CELL_FILE, record)
    return record


def _is_permanent(error: BaseException | None) -> bool:
    """Whether retrying cannot help: missing weights stay missing until the user acts."""
    from baselines.weights import WeightsUnavailable

    return isinstance(error, WeightsUnavailable)


# --------------------------------------------------------------------------- executors


class LocalExecutor:
    """Runs tasks one after the other in this process (``--executor local``), cells before
    fits, so that a fit's cells finish before the next fit starts."""

    def __init__(self) -> None:
        self.fits: deque[FitSpec] = deque()
        self.cells: deque[CellSpec] = deque()

    def submit(self, spec: Spec) -> None:
        (self.fits if isinstance(spec, FitSpec) else self.cells).append(spec)  # type: ignore[arg-type]

    def busy(self) -> bool:
        return bool(self.fits or self.cells)

    def wait(self, tracker: RunProgress) -> list[Outcome]:
        """Run the next task to its end."""
        spec: Spec = self.cells.popleft() if self.cells else self.fits.popleft()
        tracker.update(spec, "start", 0, 0)
        try:
            record = execute(spec, report=lambda stage, done, total: tracker.update(spec, stage, done, total))
        except Exception as error:
            return [Outcome(spec, None, traceback.format_exc(), error)]
        return [Outcome(spec, record)]


class RayExecutor:
    """Runs tasks as Ray tasks, each asking for ``gpus_per_task`` GPUs and ``cpus_per_task`` CPUs;
    reads the running tasks' ``progress.json`` while waiting."""

    def __init__(self, config: RunConfig, gpus_per_task: float) -> None:
        import ray

        self.remote = ray.remote(execute).options(num_gpus=gpus_per_task, num_cpus=config.cpus_per_task, max_retries=0,
                                                  retry_exceptions=False)
        self.pending: dict[Any, Spec] = {}

    def submit(self, spec: Spec) -> None:
        self.pending[self.remote.remote(spec)] = spec

    def busy(self) -> bool:
        return bool(self.pending)

    def wait(self, tracker: RunProgress) -> list[Outcome]:
        """The tasks that ended within :data:`POLL_SECONDS`; the others' progress is read."""
        import ray
        from ray.exceptions import RayError

        ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=POLL_SECONDS, fetch_local=False)
        outcomes = []
        for ref in ready:
            spec = self.pending.pop(ref)
            try:
                outcomes.append(Outcome(spec, ray.get(ref)))
            except RayError as error:
                outcomes.append(Outcome(spec, None, f"{type(error).__name__}: {error}", getattr(error, "cause", None)))
        for spec in self.pending.values():
            try:
                state = json.loads((spec.unit_dir / PROGRESS_FILE).read_text())
                tracker.update(spec, str(state["stage"]), int(state["done"]), int(state["total"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return outcomes


# --------------------------------------------------------------------------- progress


class RunProgress:
    """The live view of a run: a bar of cells done (with fits, running and failed tasks and
    images per second), and one line per running fit or cell with its stage (fit / predict /
    evaluate), the images done of the stage's total and an ETA."""

    def __init__(self, cells: int, cells_done: int, fits: int, fits_done: int, enabled: bool, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            TextColumn("{task.fields[stage]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            disable=not enabled,
            transient=False,
            console=console,
        )
        self.overall = self.progress.add_task("[bold]run", total=cells, completed=cells_done, stage="", unit="cells", status="")
        self.fits, self.fits_done = fits, fits_done
        self.running: dict[str, TaskID] = {}
        self.stages: dict[str, str] = {}
        self.failed = 0
        self.images = 0
        self.start = time.monotonic()
        self._refresh()

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, spec: Spec, stage: str, done: int, total: int) -> None:
        """The task ``spec`` is at ``done`` of ``total`` images of ``stage``."""
        key = spec.unit_id
        if key not in self.running:
            self.running[key] = self.progress.add_task(f"  {key}", total=None, stage=stage, unit="images", status="")
        task = self.running[key]
        previous = self.progress.tasks[self._index(task)].completed
        if self.stages.get(key) != stage:
            self.stages[key] = stage
            self.images += done
            self.progress.reset(task, total=total or None, completed=done, stage=stage, unit="images", status="")  # reset replaces the fields
        else:
            self.images += max(0, done - int(previous))
            self.progress.update(task, total=total or None, completed=done)
        self._refresh()

    def finished(self, spec: Spec, ok: bool) -> None:
        """The task ``spec`` ended (``ok`` or failed for good)."""
        task = self.running.pop(spec.unit_id, None)
        self.stages.pop(spec.unit_id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.failed += 0 if ok else 1
        if isinstance(spec, FitSpec):
            self.fits_done += 1
        else:
            self.progress.advance(self.overall)
        self._refresh()

    def _index(self, task: TaskID) -> int:
        return next(index for index, item in enumerate(self.progress.tasks) if item.id == task)

    def _refresh(self) -> None:
        rate = self.images / max(time.monotonic() - self.start, 1e-9)
        fits = f"fits {self.fits_done}/{self.fits} · " if self.fits else ""
        status = f"{fits}running {len(self.running)} · failed {self.failed} · {rate:,.1f} img/s"
        self.progress.update(self.overall, status=status)


# --------------------------------------------------------------------------- Ray


@dataclass
class RaySession:
    """What :func:`start_ray` did: whether it connected (False: Ray was already up), and for a
    cluster it started, its owned temporary folder and the :class:`~m2ad.processes.Guardian`
    that kills the cluster's processes (GCS, raylet, agents, workers) if this process dies."""

    started: bool
    temp_dir: Path | None = None
    guardian: Guardian | None = None


def start_ray(config: RunConfig, run_dir: Path) -> RaySession:
    """Join ``ray_address``, or start a small loopback cluster that dies with this process."""
    import ray

    if ray.is_initialized():
        return RaySession(started=False)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if config.ray_address:
        check_ray_address(config.ray_address, config.ray_connect_timeout_s)
        try:
            ray.init(address=config.ray_address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise RunError(f"cannot join the Ray cluster at {config.ray_address}: {error}") from None
        return RaySession(started=True)
    # A cluster we start ourselves serves this machine only: keep every socket on loopback,
    # where Ray's token authentication (and its token file in ~/.ray) guards nothing.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's sockets live in its temporary folder, and a Unix socket path has at most 107
    # bytes: so the folder is short, in the system's temporary folder, not in the run folder.
    system_temp = Path(tempfile.gettempdir())
    ownership.remove_dead_temp_dirs(system_temp, f"{RAY_TEMP_PREFIX}*")
    temp_dir = ownership.claim_temp_dir(system_temp / f"{RAY_TEMP_PREFIX}{uuid.uuid4().hex[:12]}", run_dir)
    guardian = Guardian(temp_dir.name, temp_dir)  # before ray.init: every process Ray starts is marked
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
        guardian.close()
        ownership.remove_temp_dir(temp_dir)
        raise
    return RaySession(started=True, temp_dir=temp_dir, guardian=guardian)


def stop_ray(session: RaySession) -> None:
    """Shut down the Ray connection this run made, kill what is left of a cluster it started
    (Ray's agents linger), and remove the cluster folder it owned."""
    if session.started:
        import ray

        ray.shutdown()
    if session.guardian is not None:
        session.guardian.close()
    if session.temp_dir is not None:
        ownership.remove_temp_dir(session.temp_dir)


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


def gpus_per_task(config: RunConfig) -> float:
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
