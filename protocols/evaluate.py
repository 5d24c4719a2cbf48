"""Score a predictions file against a sharded dataset under a protocol.

``evaluate(protocol, data, predictions)`` validates the file against the protocol's test samples,
streams it category by category (reading GT masks from the shards only for the rows at hand),
and returns a JSON-able result::

    {"protocol": P, "mode": M, "mask_rule": R, "pro_limit": L, "dataset": ..., "resolution": ...,
     "categories": {CAT: {METRIC: value}}, "mean": {METRIC: value},
     "breakdown": {CAT: {"view": {...}, "illumination": {...}, "view_illumination": {V: {I: ...}}}},
     "counts": {CAT: {"images": n, ..., "ignored_images": n}},
     "predictions_sha256": ..., "map_dtype": ..., "m2ad_version": ...}

Values are fractions in [0, 1]; undefined values (a single class in a set, no maps given, a
breakdown cell with only normal images) are ``None`` (``null`` in JSON), never NaN.  ``mean`` is
the plain mean over the evaluated categories, ``None`` if any category's value is undefined.

Which predictions are accepted: exactly one row per test sample of the evaluated categories
(missing ones are an error); rows for test images the protocol leaves out (``detectable ==
False`` under ``invariant``) and for test images of categories not evaluated are accepted and
ignored; any other id (training images, ids not in the dataset) is an error.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
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
from m2ad.files import jsonable, sha256_file
from m2ad.predictions import PredictionsFile, validate
from m2ad.schema import DatasetInfo
from m2ad.metrics import COMPAT_MAP_DTYPES
from protocols.fusion import FusionEvaluator, check_settings, default_mask_rule

BATCH_SIZE = 64






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
        masks = reader.masks(test[rows], mask_rule) if needs_masks else None
        evaluator.update(ids, batch.scores[keep], maps, masks)
        if advance is not None:
            advance(len(ids))
    return evaluator


def evaluate(protocol: str, data: str | Path, predictions: str | Path, *, mode: str = "exact", mask_rule: str | None = None,
             categories: Sequence[str] | None = None, pro_limit: float = 0.3, progress: bool = True) -> dict[str, Any]:
    """Score the predictions file ``predictions`` on the sharded dataset ``data`` under ``protocol``.

    ``mask_rule=None``: ``official`` in the compat modes (as the official evaluator), else ``exact``.

    Raises ``ValueError`` for an unknown protocol, mode, mask rule or category,
    ``FileNotFoundError`` for missing inputs and ``m2ad.predictions.PredictionsError`` (listing the
    first offenders of each kind) for a predictions file that does not fit the test set.
    """
    chosen = protocols.get(protocol)
    mask_rule = default_mask_rule(mode) if mask_rule is None else mask_rule
    check_settings(mode, mask_rule, pro_limit)
    root = Path(data)
    info = DatasetInfo.read(root)
    chosen.check_dataset(info)
    if mask_rule not in info.mask_rules:
        raise ValueError(f"the dataset {root} has no {mask_rule!r} masks (it has {', '.join(info.mask_rules)})")
    manifest = m2ad_data.load_manifest(root)
    names = _choose_categories(info, manifest, categories)

    tests = {name: chosen.test_samples(manifest, name) for name in names}
    expected = {row["sample_id"]: (row["height"], row["width"])
                for frame in tests.values() for row in frame.select("sample_id", "height", "width").iter_rows(named=True)}
    all_test = manifest.filter(pl.col("split") == "test")["sample_id"].to_list()
    optional = [sample_id for sample_id in all_test if sample_id not in expected]
    category_of = {sample_id: name for name, frame in tests.items() for sample_id in frame["sample_id"]}

    per_category: dict[str, dict[str, float]] = {}
    breakdown: dict[str, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=True) as bar, m2ad_data.ShardReader(root) as reader:
        step = bar.add_task("validating the predictions", total=None)
        predictions_info = validate(predictions, expected, optional=optional)
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

    return jsonable({
        "protocol": chosen.name,
        "mode": mode,
        "mask_rule": mask_rule,
        "pro_limit": pro_limit,
        "dataset": info.dataset,
        "resolution": info.resolution,
        "categories": per_category,
        "mean": _mean_over_categories(per_category, chosen.metric_names),
        "breakdown": breakdown or None,
        "counts": counts,
        "predictions_sha256": sha256_file(predictions),
        "map_dtype": predictions_info.map_dtype,
        "m2ad_version": m2ad.__version__,
    })
