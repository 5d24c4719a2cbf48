"""What defines a run (:class:`RunConfig`), its errors, and the checks made before anything starts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import baselines
import protocols
from m2ad.files import jsonable
from m2ad.metrics import MODES as EVAL_MODES
from m2ad.predictions import MAP_DTYPES
from m2ad.schema import INFO_FILE, MANIFEST_FILE, MASK_RULES
from m2ad.settings import SETTINGS
from protocols.fusion import default_mask_rule

EXECUTORS = ("ray", "local")
MAX_SEED = 2**32 - 1
"""Largest seed: numpy's legacy seeding (``np.random.seed``) takes 0 .. 2**32 - 1."""
DEFAULT_PRO_LIMIT = 0.3


class RunError(ValueError):
    """A run cannot start: bad configuration, data or cluster.  The message says why."""


class RunLockedError(RunError):
    """Another live run holds the run folder; the message names it."""


@dataclass
class RunConfig:
    """Everything that defines a run.  ``method_args`` maps a method name to its config
    fields; ``categories=None`` takes every category of the data; ``data=None`` uses the
    embedded synthetic dataset; ``out=None`` uses ``runs/<protocol>-<methods>-<hash>``, which
    is the same for the same command, so that rerunning it resumes.

    ``setting`` is who trains on what (docs/settings.md): ``single-class`` (a fit per category),
    ``multi-class`` (one fit on every category), ``few-shot`` (a fit per category on ``shots``
    shots drawn per seed) or ``zero-shot`` (no fit on the target; with ``train_data``, one fit
    on every category of that other dataset).  ``shots`` with ``multi-class`` trains the one
    model on ``shots`` shots of every category (INP-Former's official few-shot recipe)."""

    protocol: str
    methods: tuple[str, ...] = ("patchcore",)
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: Path | None = None
    categories: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    setting: str = "single-class"
    shots: int | None = None
    train_data: Path | None = None
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
    mask_rule: str | None = None
    """GT mask rule; None: ``official`` in the compat modes, else ``exact``."""
    map_dtype: str = "float16"
    """Dtype of the maps in the predictions files; the run evaluates the maps as stored."""
    local_num_cpus: int | None = None
    """CPUs of the local Ray cluster that the run starts (None: all)."""
    local_num_gpus: float | None = None
    """GPUs of the local Ray cluster that the run starts (None: detected).  Declaring GPUs on
    a machine without any is how the tests exercise GPU scheduling on CPU."""

    def __post_init__(self) -> None:
        if self.mask_rule is None:
            self.mask_rule = default_mask_rule(self.mode)


def check_config(config: RunConfig) -> None:
    """Raise :class:`RunError` listing every problem of ``config`` that needs no data to see."""
    problems = []
    if config.executor not in EXECUTORS:
        problems.append(f"executor must be one of {', '.join(EXECUTORS)}, got {config.executor!r}")
    if config.mode not in EVAL_MODES:
        problems.append(f"mode must be one of {', '.join(EVAL_MODES)}, got {config.mode!r}")
    if config.map_dtype not in MAP_DTYPES:
        problems.append(f"map dtype must be one of {', '.join(MAP_DTYPES)}, got {config.map_dtype!r}")
    if config.mask_rule not in MASK_RULES:
        problems.append(f"mask rule must be one of {', '.join(MASK_RULES)}, got {config.mask_rule!r}")
    problems += _setting_problems(config)
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


def _setting_problems(config: RunConfig) -> list[str]:
    """What is wrong with the setting, its shots and its training data."""
    if config.setting not in SETTINGS:
        return [f"setting must be one of {', '.join(SETTINGS)}, got {config.setting!r}"]
    problems = []
    if config.setting == "few-shot" and config.shots is None:
        problems.append("--setting few-shot needs --shots K (shots per category)")
    if config.shots is not None and config.setting not in ("few-shot", "multi-class"):
        problems.append(f"--shots is for the few-shot and multi-class settings, not {config.setting}")
    if config.shots is not None and (not isinstance(config.shots, int) or config.shots < 1):
        problems.append(f"shots must be a positive integer, got {config.shots}")
    if config.train_data is not None and config.setting != "zero-shot":
        problems.append("--train-data is for zero-shot runs (a fit on another dataset, tested on --data)")
    return problems


def resolved_method_config(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """Every field of the method's config, defaults included (so that the hashes see them)."""
    config_class = baselines.config_class(method)
    try:
        config = config_class(**args)
    except (TypeError, ValueError) as error:
        raise RunError(f"method {method!r}: {error}") from None
    values = dataclasses.asdict(config)
    # JSON (config.json, the hashes) has no NaN or inf: they would silently become None
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


def check_data(data: Path, option: str = "--data") -> None:
    """Raise :class:`RunError` unless ``data`` is a sharded dataset."""
    for name in (INFO_FILE, MANIFEST_FILE):
        if not (data / name).is_file():
            raise RunError(f"{option} {data} is not a sharded m2ad dataset (no {name}); create one with `m2ad shard` or `m2ad download`")
