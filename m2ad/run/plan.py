"""The plan of a run: its fit units and predict units (cells), their hashes, and the checks of
the method cards against the run, all made before anything is scheduled.

A *fit* trains one method at one seed on one :class:`~m2ad.run.settings.TrainingSelection` and
saves its state in ``RUN_DIR/fits/<fit_id>/``.  A *cell* predicts and evaluates one (method,
category, seed) in ``RUN_DIR/cells/<cell_id>/``, from the fit that serves its category (none
for a training-free method, or for zero-shot without ``--train-data``).  Both are identified by
a hash of everything that changes their result, so a rerun reuses what already finished.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

import baselines
import m2ad
import protocols
from baselines.base import MethodCard, Setting
from m2ad import data as m2ad_data
from m2ad.files import jsonable
from m2ad.run.config import RunConfig, RunError
from m2ad.run.settings import TrainingSelection, class_name, select_training, shot_unit
from m2ad.schema import INFO_FILE, MANIFEST_FILE, DatasetInfo

FITS_DIR = "fits"
CELLS_DIR = "cells"


@dataclass
class FitSpec:
    """One fit unit, with everything a worker needs to run it."""

    fit_id: str
    method: str
    method_class: type
    method_config: dict[str, Any]
    seed: int
    setting: Setting
    selection: TrainingSelection
    train_data: Path
    train_data_identity: str
    class_names: dict[str, str]
    fit_hash: str
    batch_size: int
    unit_dir: Path
    threads: int | None = None
    attempt: int = 1

    @property
    def unit_id(self) -> str:
        return self.fit_id


@dataclass
class CellSpec:
    """One (method, category, seed) predict unit, with everything a worker needs to run it."""

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
    setting: Setting = field(default_factory=Setting)
    class_name: str = ""
    train_dataset: str | None = None
    fit_id: str | None = None
    fit_dir: Path | None = None
    fit_hash: str | None = None
    threads: int | None = None
    attempt: int = 1

    @property
    def unit_id(self) -> str:
        return self.cell_id

    @property
    def unit_dir(self) -> Path:
        return self.cell_dir


@dataclass
class Plan:
    """Every fit and cell of a run, in a fixed order, and the data they read."""

    fits: list[FitSpec]
    cells: list[CellSpec]
    data: Path
    data_identity: str
    categories: list[str]
    method_configs: dict[str, dict[str, Any]]
    train_data: Path | None = None
    train_data_identity: str | None = None


def data_identity(data: Path) -> str:
    """A hash of ``dataset.json`` and ``manifest.parquet``: what the data is, without its pixels."""
    digest = hashlib.sha256()
    for name in (INFO_FILE, MANIFEST_FILE):
        digest.update((data / name).read_bytes())
    return digest.hexdigest()


def resolve_categories(config: RunConfig, manifest: pl.DataFrame, data: Path) -> list[str]:
    """The run's categories: the requested ones (checked), else every category of the data."""
    present = sorted(manifest["category"].unique().to_list())
    if not config.categories:
        return present
    unknown = [category for category in config.categories if category not in present]
    if unknown:
        raise RunError(f"categories not in {data}: {', '.join(unknown)}; present: {', '.join(present)}")
    return list(dict.fromkeys(config.categories))


def check_cards(config: RunConfig, info: DatasetInfo, manifest: pl.DataFrame, train_info: DatasetInfo | None) -> None:
    """Refuse, in one line, every method whose card cannot work in this run."""
    problems = []
    map_kind = protocols.get(config.protocol).map_kind
    wanted_output = "point_map" if map_kind == "point" else "pixel_map"
    for method in config.methods:
        card: MethodCard = baselines.method_class(method).card
        if wanted_output not in card.outputs:
            problems.append(f"method {method!r} returns {' or '.join(card.outputs)}, but protocol {config.protocol!r} scores "
                            f"{wanted_output} predictions")
        if config.setting not in card.settings:
            problems.append(f"method {method!r} does not support the {config.setting} setting (it supports {', '.join(card.settings)})")
        elif config.setting == "zero-shot" and card.needs_fit and train_info is None:
            problems.append(f"method {method!r} needs a fit, and a zero-shot run trains on nothing; give --train-data SHARDS "
                            "(another dataset) or run a training-free method")
        for described, what in ((info, "--data"), (train_info, "--train-data")):
            if described is not None and not any(_provides(described.modalities, wanted) for wanted in card.inputs):
                problems.append(f"method {method!r} reads {' or '.join(card.inputs)}, but {what} ({described.dataset}) has "
                                f"{', '.join(described.modalities) or 'no modality'}")
        if card.input_unit in ("view",) and manifest["view"].is_null().all():
            problems.append(f"method {method!r} predicts on whole views, but {info.dataset} has no views")
    if problems:
        raise RunError("; ".join(problems))


def _provides(modalities: tuple[str, ...], wanted: str) -> bool:
    """Whether data with ``modalities`` has every part of the input ``wanted`` (``image+xyz``)."""
    return all(part in modalities for part in wanted.split("+"))


def build_plan(config: RunConfig, data: Path, identity: str, run_dir: Path, method_configs: dict[str, dict[str, Any]],
               threads: int | None) -> Plan:
    """Every fit and cell of the run, checked: impossible combinations and missing training
    samples are a :class:`RunError` here, before any folder or task exists."""
    info, manifest = DatasetInfo.read(data), m2ad_data.load_manifest(data)
    categories = resolve_categories(config, manifest, data)
    train_info = DatasetInfo.read(config.train_data) if config.train_data is not None else None
    check_cards(config, info, manifest, train_info)
    protocol = protocols.get(config.protocol)
    try:
        protocol.check_dataset(info)
    except ValueError as error:
        raise RunError(str(error)) from None
    if config.train_data is not None:
        train_data, train_manifest = Path(config.train_data), m2ad_data.load_manifest(config.train_data)
        train_identity = data_identity(train_data)
        train_rows = {category: protocol.train_samples(train_manifest, category) for category in sorted(train_manifest["category"].unique().to_list())}
        train_described = train_info
    else:
        train_data, train_manifest, train_identity = data, manifest, identity
        train_rows = {} if config.setting == "zero-shot" else {category: protocol.train_samples(manifest, category) for category in categories}
        train_described = info
    unit = shot_unit(train_described)
    fit_setting = Setting(config.setting, config.shots)
    train_dataset = train_info.dataset if train_info is not None else None
    names = {category: class_name(train_described, category) for category in train_rows}

    fits: list[FitSpec] = []
    cells: list[CellSpec] = []
    for method in config.methods:
        needs_fit = baselines.method_class(method).card.needs_fit
        for seed in config.seeds:
            serving: dict[str, FitSpec] = {}
            for selection in select_training(config.setting, config.shots, seed, train_rows, unit, categories) if needs_fit else []:
                fit_id = safe_name(f"{method}__{selection.scope}__seed{seed}")
                fit = FitSpec(
                    fit_id=fit_id, method=method, method_class=baselines.method_class(method), method_config=method_configs[method],
                    seed=seed, setting=fit_setting, selection=selection, train_data=train_data, train_data_identity=train_identity,
                    class_names=names, fit_hash=fit_hash(method, method_configs[method], seed, fit_setting, selection, train_identity),
                    batch_size=config.batch_size, unit_dir=run_dir / FITS_DIR / fit_id, threads=threads,
                )
                fits.append(fit)
                serving.update(dict.fromkeys(selection.serves, fit))
            for category in categories:
                fit = serving.get(category)
                cell_id = safe_name(f"{method}__{category}__seed{seed}")
                cells.append(CellSpec(
                    cell_id=cell_id, method=method, method_class=baselines.method_class(method), method_config=method_configs[method],
                    category=category, seed=seed, data=data, protocol=config.protocol, mode=config.mode, mask_rule=config.mask_rule,
                    map_dtype=config.map_dtype, batch_size=config.batch_size, cell_dir=run_dir / CELLS_DIR / cell_id,
                    setting=fit_setting, class_name=class_name(info, category), train_dataset=train_dataset,
                    fit_id=fit.fit_id if fit else None, fit_dir=fit.unit_dir if fit else None, fit_hash=fit.fit_hash if fit else None,
                    config_hash=cell_hash(config, method, method_configs[method], category, seed, identity, fit.fit_hash if fit else None),
                    threads=threads,
                ))
    return Plan(fits, cells, data, identity, categories, method_configs,
                Path(config.train_data) if config.train_data is not None else None, train_identity if config.train_data else None)


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(jsonable(key), sort_keys=True).encode()).hexdigest()


def fit_hash(method: str, method_config: dict[str, Any], seed: int, setting: Setting, selection: TrainingSelection, train_identity: str) -> str:
    """The identity of a fit's state: the method and its config, the seed, the setting, and the
    exact training samples (their ids, and the data they come from)."""
    ids = hashlib.sha256("\n".join(selection.frame["sample_id"].to_list()).encode()).hexdigest()
    return _digest({
        "method": method, "method_config": method_config, "seed": seed, "setting": setting.name, "shots": setting.shots,
        "scope": selection.scope, "shot_unit": selection.shot_unit, "training_ids": ids, "train_data": train_identity,
        "code_version": m2ad.__version__,
    })


def cell_hash(config: RunConfig, method: str, method_config: dict[str, Any], category: str, seed: int, identity: str, fit: str | None) -> str:
    """The identity of a cell's result: a cell with the same hash need not be recomputed.
    The fit's hash stands for its training samples (so few-shot draws are part of it)."""
    return _digest({
        "method": method, "method_config": method_config, "category": category, "seed": seed, "protocol": config.protocol,
        "protocol_version": protocol_version(config.protocol), "setting": config.setting, "shots": config.shots, "fit": fit,
        "mode": config.mode, "mask_rule": config.mask_rule, "map_dtype": config.map_dtype, "data": identity,
        "code_version": m2ad.__version__,
    })


def protocol_version(name: str) -> str:
    """The version of a protocol's definition (its spec's ``version``)."""
    return protocols.get(name).version


def default_run_dir(config: RunConfig, identity: str) -> Path:
    """``runs/<protocol>-<methods>-<hash>`` (``<protocol>-<setting>-...`` for other settings than
    single-class): the same command gives the same folder, so a rerun resumes; the hash covers
    what changes results (methods and their args, data, setting, categories, seeds, evaluation)."""
    train_identity = data_identity(Path(config.train_data)) if config.train_data is not None else None
    key = {
        "protocol": config.protocol, "methods": list(config.methods), "method_args": config.method_args, "data": identity,
        "categories": list(config.categories) if config.categories else None, "seeds": list(config.seeds), "mode": config.mode,
        "mask_rule": config.mask_rule,
    }
    if config.setting != "single-class":
        key |= {"setting": config.setting, "shots": config.shots, "train_data": train_identity}
    setting = "" if config.setting == "single-class" else f"{config.setting}{config.shots or ''}-"
    return Path("runs") / f"{config.protocol}-{setting}{'+'.join(config.methods)}-{_digest(key)[:10]}"


def safe_name(text: str) -> str:
    """``text`` with every character that is unsafe in a file name replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)
