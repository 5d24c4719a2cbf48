"""Score a predictions file against a sharded dataset under a protocol.

``evaluate(protocol, data, predictions)`` validates the file against the protocol's test samples,
streams it category by category (reading GT masks from the shards only for the rows at hand),
and returns a JSON-able result::

    {"protocol": P, "protocol_version": V, "mode": M, "mask_rule": R, "pro_limit": L,
     "dataset": ..., "resolution": ...,
     "categories": {CAT: {METRIC: value}}, "mean": {METRIC: value},
     "breakdown": {CAT: {"view": {...}, "illumination": {...}, "view_illumination": {V: {I: ...}}}},
     "counts": {CAT: {"images": n, ..., "ignored_images": n}},
     "metric_definitions": {METRIC: {"level", "higher_is_better", "version", "label"}},
     "predictions_sha256": ..., "map_dtype": ..., "m2ad_version": ...,
     "date": ISO 8601 (UTC), "data": {"path", "dataset_json_sha256", "manifest_sha256"},
     "command": the command line (None from the Python API), "environment": {m2ad, python, torch, ...}}

``evaluate_predictions`` returns the same result and, with ``per_sample=True``, a frame of one
row per scored test sample (:func:`per_sample_frame`): its score, label, rank in its category
and the scores of the units it was fused into; :func:`worst` picks the highest-scored normal and
the lowest-scored anomalous samples of each category from it.

Values are fractions in [0, 1]; undefined values (a single class in a set, no maps given, a
breakdown cell with only normal images) are ``None`` (``null`` in JSON), never NaN.  ``mean`` is
the plain mean over the evaluated categories, ``None`` if any category's value is undefined.

Which predictions are accepted: exactly one row per test sample of the evaluated categories
(missing ones are an error); rows for test images the protocol leaves out (``detectable ==
False`` under ``invariant``) and for test images of categories not evaluated are accepted and
ignored; any other id (training images, ids not in the dataset) is an error.
"""

from __future__ import annotations

import io
import math
import platform
import sys
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import m2ad
import protocols
from m2ad import data as m2ad_data
from m2ad.files import jsonable, sha256_file, write_bytes_atomic
from m2ad.metrics import COMPAT_MAP_DTYPES
from m2ad.metrics import registry as metric_registry
from m2ad.predictions import PredictionsFile, validate
from m2ad.schema import INFO_FILE, MANIFEST_FILE, DatasetInfo
from protocols.fusion import FusionEvaluator, check_settings, default_mask_rule

BATCH_SIZE = 64
PER_SAMPLE_FORMATS = (".csv", ".parquet")


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate_predictions`` returns: the JSON-able result and, if asked for, the
    per-sample frame (:func:`per_sample_frame`)."""

    result: dict[str, Any]
    samples: pl.DataFrame | None = None


def environment() -> dict[str, str | None]:
    """The software an evaluation ran on (torch's version is read without importing it)."""
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"m2ad": m2ad.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "torch": version("torch"), "numpy": np.__version__, "polars": pl.__version__, "scipy": version("scipy")}


def data_identity(root: Path) -> dict[str, str]:
    """What identifies the sharded dataset scored: its folder and the sha256 of its
    ``dataset.json`` and manifest (which list every sample, label and mask flag)."""
    return {"path": str(root.resolve()), "dataset_json_sha256": sha256_file(root / INFO_FILE),
            "manifest_sha256": sha256_file(root / MANIFEST_FILE)}


def per_sample_frame(evaluator: FusionEvaluator, category: str) -> pl.DataFrame:
    """One row per scored test sample of a category: ``category``, ``sample_id``, ``specimen``,
    ``view``, ``illumination``, ``score``, ``label`` (under the mask rule), ``rank`` (1 = the
    highest score of the category; ties share the best rank) and, for each fused level ``L`` of
    the protocol, ``L_score`` and ``L_label`` of the unit the sample belongs to (Synergy:
    ``object_*`` and ``view_*``)."""
    frame = evaluator.sample_frame()
    rank = frame["score"].rank("min", descending=True).cast(pl.Int64).alias("rank")
    ordered = ["sample_id", "specimen", "view", "illumination", "score", "label"]
    return frame.select(pl.lit(category).alias("category"), *ordered, rank, *[name for name in frame.columns if name not in ordered])


def worst(samples: pl.DataFrame, count: int) -> pl.DataFrame:
    """The ``count`` highest-scored normal samples and the ``count`` lowest-scored anomalous
    samples of each category (``kind``: ``normal`` / ``anomalous``), the worst first."""
    normal = samples.filter(pl.col("label") == 0).sort(["category", "score", "sample_id"], descending=[False, True, False])
    anomalous = samples.filter(pl.col("label") == 1).sort(["category", "score", "sample_id"])
    parts = [part.group_by("category", maintain_order=True).head(count).with_columns(pl.lit(kind).alias("kind"))
             for kind, part in (("normal", normal), ("anomalous", anomalous))]
    return pl.concat(parts).sort("category", maintain_order=True).select("category", "kind", "sample_id", "score", "rank")


def check_per_sample_path(path: str | Path) -> None:
    """Refuse a per-sample file name whose extension is neither ``.csv`` nor ``.parquet``."""
    if Path(path).suffix.lower() not in PER_SAMPLE_FORMATS:
        raise ValueError(f"--per-image {path}: the file name must end in {' or '.join(PER_SAMPLE_FORMATS)} (the format follows it)")


def write_per_sample(samples: pl.DataFrame, path: str | Path) -> None:
    """Write the per-sample frame as CSV or Parquet, by the file's extension, atomically."""
    check_per_sample_path(path)
    buffer = io.BytesIO()
    if Path(path).suffix.lower() == ".csv":
        samples.write_csv(buffer)
    else:
        samples.write_parquet(buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _mean_over_categories(per_category: dict[str, dict[str, float]], metric_names: Sequence[str]) -> dict[str, float]:
    return {name: float(np.mean([values[name] for values in per_category.values()])) for name in metric_names}


def _choose_categories(info: DatasetInfo, manifest: pl.DataFrame, categories: Sequence[str] | None) -> list[str]:
    present = set(manifest.filter(pl.col("split") == "test")["category"].unique().to_list())
    ordered = [name for name in info.categories if name in present] + sorted(present - set(info.categories))
    if categories is None:
        return ordered
    unknown = [name for name in categories if name not in present]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; the dataset has: {', '.join(ordered)}")
    return list(dict.fromkeys(categories))


def _map_range(handle: PredictionsFile, wanted: Collection[str], row_groups: Sequence[int] | None) -> tuple[float, float]:
    """(min, max) of the maps of the ``wanted`` samples, in one pass over the given row groups."""
    low, high = math.inf, -math.inf
    for batch in handle.iter_batches(batch_size=BATCH_SIZE, row_groups=row_groups):
        assert batch.maps is not None
        for sample_id, anomaly_map in zip(batch.sample_ids, batch.maps):
            if sample_id in wanted:
                low, high = min(low, float(anomaly_map.min())), max(high, float(anomaly_map.max()))
    return low, high


def _fused_map_range(protocol: protocols.ProtocolSpec, test: pl.DataFrame, handle: PredictionsFile, row_of: dict[str, int],
                     row_groups: Sequence[int] | None, mode: str) -> tuple[float, float]:
    """(min, max) of the maps the protocol's pixel metrics see after fusion (compat needs the
    fused maps' own exact range), in one pass that fuses and keeps nothing else."""
    probe = protocol.new_evaluator(test, mode=mode, mask_rule="exact")
    probe.measure_range_only()
    for batch in handle.iter_batches(batch_size=BATCH_SIZE, row_groups=row_groups):
        assert batch.maps is not None
        keep = [index for index, sample_id in enumerate(batch.sample_ids) if sample_id in row_of]
        maps = [batch.maps[index] for index in keep]
        probe.update([batch.sample_ids[index] for index in keep], batch.scores[keep], maps,
                     [np.zeros(np.shape(item), dtype=bool) for item in maps])
    return probe.evaluated_range()


def _value_range(protocol: protocols.ProtocolSpec, test: pl.DataFrame, handle: PredictionsFile, row_of: dict[str, int],
                 row_groups: Sequence[int] | None, mode: str) -> tuple[float, float] | None:
    """The ``value_range`` to give a category's evaluator (see ``protocols.fusion``): the range of
    its image maps, or in the compat modes on fused maps the fused maps' own range."""
    if mode in COMPAT_MAP_DTYPES and protocol.fuses_maps:
        return _fused_map_range(protocol, test, handle, row_of, row_groups, mode)
    low, high = _map_range(handle, row_of, row_groups)
    return (low, low + 1.0) if mode == "streaming" and low == high else (low, high)


def evaluate_category(protocol: protocols.ProtocolSpec, test: pl.DataFrame, handle: PredictionsFile, reader: m2ad_data.ShardReader, *,
                      mode: str, mask_rule: str | None, pro_limit: float, with_maps: bool, row_groups: Sequence[int] | None = None,
                      advance: Callable[[int], None] | None = None) -> FusionEvaluator:
    """Feed one category's predictions from an open predictions file to a fresh evaluator and
    return it (call ``compute``, ``counts``, ``breakdown``).  ``test``: the category's test
    samples (``protocol.test_samples``); rows of other ids are skipped; ``row_groups``: the
    file's row groups that hold them (None: all).  Memory stays bounded by a batch (plus the
    open views of a fusing protocol): in the binned modes a first pass takes the value range of
    the maps the metrics see (fused under ``synergy`` in the compat modes), the second feeds the
    metrics.  This is the one path by which both ``evaluate`` and the runner's non-exact cells
    score a file, so the two agree exactly."""
    mask_rule = default_mask_rule(mode) if mask_rule is None else mask_rule
    row_of = {sample_id: row for row, sample_id in enumerate(test["sample_id"])}
    value_range = _value_range(protocol, test, handle, row_of, row_groups, mode) if with_maps and mode != "exact" else None
    evaluator = protocol.new_evaluator(test, mode=mode, mask_rule=mask_rule, pro_limit=pro_limit, value_range=value_range)
    needs_masks = with_maps or mask_rule == "official"
    for batch in handle.iter_batches(batch_size=BATCH_SIZE, with_maps=with_maps, row_groups=row_groups):
        keep = [index for index, sample_id in enumerate(batch.sample_ids) if sample_id in row_of]
        if not keep:
            continue
        ids = [batch.sample_ids[index] for index in keep]
        maps = None if batch.maps is None else [batch.maps[index] for index in keep]
        rows = np.array([row_of[sample_id] for sample_id in ids], dtype=np.int64)
        masks = reader.ground_truth(test[rows], mask_rule) if needs_masks else None  # per-point labels for point clouds
        evaluator.update(ids, batch.scores[keep], maps, masks)
        if advance is not None:
            advance(len(ids))
    return evaluator


def evaluate(protocol: str, data: str | Path, predictions: str | Path, *, mode: str = "exact", mask_rule: str | None = None,
             categories: Sequence[str] | None = None, pro_limit: float = 0.3, progress: bool = True,
             command: str | None = None) -> dict[str, Any]:
    """Score the predictions file ``predictions`` on the sharded dataset ``data`` under
    ``protocol``: the result of :func:`evaluate_predictions`."""
    return evaluate_predictions(protocol, data, predictions, mode=mode, mask_rule=mask_rule, categories=categories,
                                pro_limit=pro_limit, progress=progress, command=command).result


def evaluate_predictions(protocol: str, data: str | Path, predictions: str | Path, *, mode: str = "exact", mask_rule: str | None = None,
                         categories: Sequence[str] | None = None, pro_limit: float = 0.3, progress: bool = True,
                         command: str | None = None, per_sample: bool = False) -> Evaluation:
    """Score the predictions file ``predictions`` on the sharded dataset ``data`` under ``protocol``.

    ``mask_rule=None``: ``official`` in the compat modes (as the official evaluator), else
    ``exact``.  ``command``: the command line to record (the CLI's).  ``per_sample``: also
    return the per-sample frame (:func:`per_sample_frame`, every category).

    Raises ``ValueError`` for an unknown protocol, mode, mask rule or category,
    ``FileNotFoundError`` for missing inputs and ``m2ad.predictions.PredictionsError`` (listing the
    first offenders of each kind) for a predictions file that does not fit the test set.
    """
    chosen = protocols.get(protocol)
    mask_rule = default_mask_rule(mode) if mask_rule is None else mask_rule
    check_settings(mode, mask_rule, pro_limit)
    chosen.check_mode(mode, mask_rule)
    root = Path(data)
    info = DatasetInfo.read(root)
    chosen.check_dataset(info)
    if mask_rule not in info.mask_rules:
        raise ValueError(f"the dataset {root} has no {mask_rule!r} masks (it has {', '.join(info.mask_rules)})")
    manifest = m2ad_data.load_manifest(root)
    names = _choose_categories(info, manifest, categories)

    tests = {name: chosen.test_samples(manifest, name) for name in names}
    if chosen.map_kind == "point":  # a point map is stored as 1 x N, N the cloud's point count
        expected = {sample_id: (1, count) for frame in tests.values()
                    for sample_id, count in zip(frame["sample_id"].to_list(), frame["num_points"].to_list())}
    else:
        expected = {row["sample_id"]: (row["height"], row["width"])
                    for frame in tests.values() for row in frame.select("sample_id", "height", "width").iter_rows(named=True)}
    all_test = manifest.filter(pl.col("split") == "test")["sample_id"].to_list()
    optional = [sample_id for sample_id in all_test if sample_id not in expected]
    category_of = {sample_id: name for name, frame in tests.items() for sample_id in frame["sample_id"]}

    per_category: dict[str, dict[str, float]] = {}
    breakdown: dict[str, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    samples: list[pl.DataFrame] = []
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=True) as bar, m2ad_data.ShardReader(root) as reader:
        step = bar.add_task("validating the predictions", total=None)
        predictions_info = validate(predictions, expected, optional=optional, map_kind=chosen.map_kind)
        handle = PredictionsFile(predictions)
        groups_of: dict[str, list[int]] = defaultdict(list)
        for group in range(handle.num_row_groups):
            batch = handle.read_row_group(group, with_maps=False)
            for name in sorted({category_of[sample_id] for sample_id in batch.sample_ids if sample_id in category_of}):
                groups_of[name].append(group)
        bar.remove_task(step)
        task = bar.add_task(f"evaluating {protocol}", total=len(expected))
        for name in names:
            bar.update(task, description=f"evaluating {protocol}: {name}")
            evaluator = evaluate_category(chosen, tests[name], handle, reader, mode=mode, mask_rule=mask_rule, pro_limit=pro_limit,
                                          with_maps=predictions_info.has_maps, row_groups=groups_of[name],
                                          advance=lambda count: bar.advance(task, count))
            per_category[name] = evaluator.compute()
            counts[name] = {**evaluator.counts(), "ignored_images": chosen.ignored_samples(manifest, name).height}
            category_breakdown = evaluator.breakdown()
            if category_breakdown is not None:
                breakdown[name] = category_breakdown
            if per_sample:
                samples.append(per_sample_frame(evaluator, name))

    result = jsonable({
        "protocol": chosen.name,
        "protocol_version": chosen.version,
        "mode": mode,
        "mask_rule": mask_rule,
        "pro_limit": pro_limit,
        "dataset": info.dataset,
        "resolution": info.resolution,
        "categories": per_category,
        "mean": _mean_over_categories(per_category, chosen.metric_names),
        "breakdown": breakdown or None,
        "counts": counts,
        "metric_definitions": {name: {"level": info.level, "higher_is_better": info.higher_is_better, "version": info.version,
                                      "label": info.label} for name in chosen.metric_names for info in [metric_registry.get(name)]},
        "predictions_sha256": sha256_file(predictions),
        "map_dtype": predictions_info.map_dtype,
        "m2ad_version": m2ad.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data_identity(root),
        "command": command,
        "environment": environment(),
    })
    return Evaluation(result, pl.concat(samples, how="diagonal_relaxed") if per_sample else None)
