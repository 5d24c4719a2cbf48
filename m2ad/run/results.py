"""What a run leaves for its readers: ``metrics.parquet``, ``summary.json`` and the joined
predictions files of each (method, seed).

``summary.json`` has, per method, the per-category metrics averaged over seeds
(``categories``) and their mean over categories (``mean``); with several seeds also the spread:
``categories_std`` (per category, over seeds) and ``mean_std`` (of the per-seed means over
categories, ``seed_means``), sample standard deviations (ddof=1; None with one seed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

import protocols
from m2ad.files import jsonable, write_json_atomic
from m2ad.predictions import METADATA_KEY, WRITE_OPTIONS, file_metadata
from m2ad.run.cell import PREDICTIONS_FILE
from m2ad.run.config import RunConfig
from m2ad.run.plan import CELLS_DIR, protocol_version, safe_name

METRICS_SCHEMA = {
    "method": pl.String,
    "category": pl.String,
    "seed": pl.Int64,
    "setting": pl.String,
    "shots": pl.Int64,
    "metric": pl.String,
    "value": pl.Float64,
    "cell_id": pl.String,
    "config_hash": pl.String,
    "fit_id": pl.String,
}


def write_results(run_dir: Path, config: RunConfig, records: list[dict[str, Any]], fits: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``metrics.parquet`` (one row per cell and metric) and ``summary.json`` (per
    method: per-category metrics averaged over seeds, their mean over categories, and the
    standard deviations over seeds; see the module docstring)."""
    rows = [
        {
            "method": record["method"],
            "category": record["category"],
            "seed": record["seed"],
            "setting": config.setting,
            "shots": config.shots,
            "metric": name,
            "value": value,
            "cell_id": record["cell_id"],
            "config_hash": record["config_hash"],
            "fit_id": record.get("fit_id"),
        }
        for record in records
        if record["status"] == "ok"
        for name, value in record["metrics"].items()
    ]
    partial = run_dir / "metrics.parquet.partial"
    pl.DataFrame(rows, schema=METRICS_SCHEMA).write_parquet(partial)
    os.replace(partial, run_dir / "metrics.parquet")

    metric_names = list(protocols.get(config.protocol).metric_names)
    methods: dict[str, Any] = {}
    for method in config.methods:
        own = [record for record in records if record["method"] == method]
        categories: dict[str, dict[str, float | None]] = {}
        categories_std: dict[str, dict[str, float | None]] = {}
        for category in dict.fromkeys(record["category"] for record in own):
            done = [r for r in own if r["category"] == category and r["status"] == "ok"]
            if done:
                categories[category] = {name: _mean(r["metrics"].get(name) for r in done) for name in metric_names}
                categories_std[category] = {name: _std([r["metrics"].get(name) for r in done]) for name in metric_names}
        seed_means = {}
        for seed in config.seeds:
            done = [r for r in own if r["seed"] == seed and r["status"] == "ok"]
            seed_means[str(seed)] = {name: _mean(r["metrics"].get(name) for r in done) for name in metric_names}
        failed = sorted(record["cell_id"] for record in own if record["status"] != "ok")
        methods[method] = {
            "categories": categories,
            "mean": {name: _mean(values.get(name) for values in categories.values()) for name in metric_names},
            "categories_std": categories_std,
            "seed_means": seed_means,
            "mean_std": {name: _std([values.get(name) for values in seed_means.values()]) for name in metric_names},
            "seeds": list(config.seeds),
            "fits": sorted(fit["fit_id"] for fit in fits if fit["method"] == method),
            "complete": not failed,
            "failed_cells": failed,
        }
    summary = {
        "protocol": config.protocol,
        "protocol_version": protocol_version(config.protocol),
        "setting": config.setting,
        "shots": config.shots,
        "train_data": str(config.train_data) if config.train_data is not None else None,
        "mode": config.mode,
        "mask_rule": config.mask_rule,
        "metric_names": metric_names,
        "methods": methods,
        "failed_fits": sorted(fit["fit_id"] for fit in fits if fit["status"] != "ok"),
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
        sources = [run_dir / CELLS_DIR / record["cell_id"] / PREDICTIONS_FILE for record in members]
        target = run_dir / "predictions" / f"{safe_name(f'{method}__seed{seed}')}.parquet"
        if target.is_file() and all(source.stat().st_mtime_ns <= target.stat().st_mtime_ns for source in sources):
            written.append(target)
            continue
        first = pq.ParquetFile(sources[0], page_checksum_verification=True)
        header = json.loads(first.schema_arrow.metadata[METADATA_KEY.encode()])
        first_record = members[0]
        header = {
            "format_version": header["format_version"],
            "map_dtype": header["map_dtype"],
            **({"map_kind": header["map_kind"]} if "map_kind" in header else {}),
            "producer": header.get("producer"),
            "code_version": header.get("code_version"),
            "method": method,
            "method_config": first_record["method_config"],
            "seed": seed,
            "protocol": first_record["protocol"],
            "protocol_version": first_record.get("protocol_version"),
            "setting": first_record.get("setting"),
            "shots": first_record.get("shots"),
            "train_dataset": first_record.get("train_dataset"),
            "categories": [record["category"] for record in members],
            "cell_hashes": {record["cell_id"]: record["config_hash"] for record in members},
            "fit_hashes": {record["cell_id"]: record.get("fit_hash") for record in members},
        }
        schema = first.schema_arrow.with_metadata(file_metadata(json.dumps(jsonable(header), sort_keys=True)))
        target.parent.mkdir(exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        with pq.ParquetWriter(partial, schema, **WRITE_OPTIONS) as writer:
            for source in sources:
                parquet = pq.ParquetFile(source, page_checksum_verification=True)
                for index in range(parquet.num_row_groups):
                    writer.write_table(parquet.read_row_group(index).cast(schema))
        os.replace(partial, target)
        written.append(target)
    return written


def _mean(values: Any) -> float | None:
    """Mean of the finite values, None if there is none."""
    finite = [float(value) for value in values if value is not None and np.isfinite(value)]
    return float(np.mean(finite)) if finite else None


def _std(values: list[Any]) -> float | None:
    """Sample standard deviation (ddof=1) of the finite values, None with fewer than two."""
    finite = [float(value) for value in values if value is not None and np.isfinite(value)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else None
