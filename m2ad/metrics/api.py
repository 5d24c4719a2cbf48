"""One-call metric functions: image level, pixel level, point level."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from m2ad.metrics.accumulator import Mode, PixelMetricAccumulator, UndefinedMetricWarning, as_score_array
from m2ad.metrics.curve import auroc, average_precision, f1_max
from m2ad.metrics.exact import exact_curve
from m2ad.metrics.streaming import DEFAULT_BINS


def _checked_scores_and_labels(scores: Iterable[float] | np.ndarray, labels: Iterable[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 and labels as booleans, or a clear error (shapes, dtypes, NaN, empty)."""
    values = np.asarray(scores)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"image scores must be real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    label_array = np.asarray(labels)
    if values.ndim != 1 or label_array.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {values.shape} and {label_array.shape}")
    if values.shape != label_array.shape:
        raise ValueError(f"{values.size} scores but {label_array.size} labels")
    if values.size == 0:
        raise ValueError("no images: metrics of an empty set are undefined")
    if label_array.dtype.kind not in "biuf" or not np.isin(label_array, (0, 1)).all():
        raise ValueError(f"image labels must be 0/1 or booleans, got values {np.unique(label_array)[:5]}")
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"image score {bad} is NaN or infinite")
    return values, label_array.astype(bool)


def image_metrics(scores: Iterable[float] | np.ndarray, labels: Iterable[int] | np.ndarray) -> dict[str, float]:
    """Exact ``image_auroc``, ``image_ap`` and ``image_f1max`` of one score per image.

    ``labels`` are 0 (normal) / 1 (anomalous) or booleans.  Identical to scikit-learn's
    ``roc_auc_score``, ``average_precision_score`` and the F1-max over
    ``precision_recall_curve``.  With a single class present every value is NaN, with an
    ``UndefinedMetricWarning``.
    """
    values, anomalous = _checked_scores_and_labels(scores, labels)
    results = dict.fromkeys(("image_auroc", "image_ap", "image_f1max"), float("nan"))
    if anomalous.all() or not anomalous.any():
        warnings.warn(
            f"image metrics are undefined with {int(anomalous.sum())} anomalous and {int((~anomalous).sum())} "
            f"normal images: returning NaN",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return results
    positives = values[anomalous]
    curve = exact_curve([values[~anomalous]], positives, np.zeros(positives.size), 0, values.min(), values.max())
    return {"image_auroc": auroc(curve), "image_ap": average_precision(curve), "image_f1max": f1_max(curve)}


def grouped_auroc(scores: Iterable[float] | np.ndarray, labels: Iterable[int] | np.ndarray,
                  groups: Sequence[Hashable]) -> dict[Any, float]:
    """Image AUROC within each group (e.g. each view of M2AD), all groups in one sort.

    The Mann-Whitney statistic with mid-ranks for tied scores, which equals scikit-learn's
    ``roc_auc_score`` on each group's images.  A group with a single class gets NaN, without a
    warning (single-class groups are expected in a breakdown).  Keys come out sorted.
    """
    values, anomalous = _checked_scores_and_labels(scores, labels)
    if len(groups) != values.size:
        raise ValueError(f"{values.size} scores but {len(groups)} group keys")
    names = sorted(set(groups))
    index = {name: position for position, name in enumerate(names)}
    codes = np.fromiter((index[group] for group in groups), dtype=np.intp, count=values.size)
    order = np.lexsort((values, codes))
    codes, values, anomalous = codes[order], values[order], anomalous[order]
    starts_block = np.ones(values.size, dtype=bool)
    starts_block[1:] = (codes[1:] != codes[:-1]) | (values[1:] != values[:-1])
    block_first = np.flatnonzero(starts_block)
    block_last = np.append(block_first[1:], values.size) - 1
    group_first = np.searchsorted(codes, codes, side="left")
    block = np.cumsum(starts_block) - 1
    mid_rank = (block_first[block] + block_last[block]) / 2.0 - group_first + 1.0  # 1-based, within the group
    positives = np.bincount(codes, weights=anomalous, minlength=len(names))
    negatives = np.bincount(codes, minlength=len(names)) - positives
    rank_sum = np.bincount(codes, weights=np.where(anomalous, mid_rank, 0.0), minlength=len(names))
    with np.errstate(divide="ignore", invalid="ignore"):
        area = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    area[(positives == 0) | (negatives == 0)] = np.nan
    return {name: float(value) for name, value in zip(names, area)}


def map_value_range(maps: Iterable[object]) -> tuple[float, float]:
    """The (min, max) over all maps: the ``value_range`` of a streaming or compat accumulator."""
    low, high = np.inf, -np.inf
    for index, anomaly_map in enumerate(maps):
        values = as_score_array(anomaly_map, index)
        if values.size == 0:
            continue
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"map {index} contains NaN or infinite values")
    if low > high:
        raise ValueError("no values: the range of an empty set of maps is undefined")
    return low, high


def _accumulate(
    maps: Iterable[object],
    masks: Iterable[object],
    mode: Mode,
    pro_limit: float,
    value_range: tuple[float, float] | None,
    bins: int,
    regions: bool,
) -> dict[str, float]:
    """Feed ``maps`` and ``masks`` through one accumulator, taking the value range first if needed."""
    if mode != "exact" and value_range is None:
        if not isinstance(maps, Sequence | np.ndarray):
            maps = list(maps)
        low, high = map_value_range(maps)
        if mode == "streaming" and low == high:  # constant maps: any grid around the value will do
            high = float(np.nextafter(np.float32(high), np.float32(np.inf)))
        value_range = (low, high)
    accumulator = PixelMetricAccumulator(mode, pro_limit, value_range=value_range, bins=bins, regions=regions)
    accumulator.update(maps, masks)
    return accumulator.compute()


def pixel_metrics(
    maps: Iterable[object],
    masks: Iterable[object],
    *,
    pro_limit: float = 0.3,
    mode: Mode = "exact",
    value_range: tuple[float, float] | None = None,
    bins: int = DEFAULT_BINS,
) -> dict[str, float]:
    """``pixel_auroc``, ``pixel_ap``, ``pixel_f1max`` and ``aupro`` over all pixels of all maps, pooled.

    ``maps``: a sequence or iterator of 2-D float arrays (or a 3-D batch); ``masks``: the same
    shapes, any non-zero value is a defect.  ``mode`` is ``"exact"``, ``"streaming"``,
    ``"compat"`` or ``"compat-float32"`` (see ``PixelMetricAccumulator``).  Streaming and compat need the maps' value
    range: pass ``value_range`` to keep memory bounded; without it the maps are read twice (an
    iterator is first turned into a list).
    """
    return _accumulate(maps, masks, mode, pro_limit, value_range, bins, regions=True)


def point_metrics(
    scores: Iterable[object],
    labels: Iterable[object],
    *,
    mode: Mode = "exact",
    value_range: tuple[float, float] | None = None,
    bins: int = DEFAULT_BINS,
) -> dict[str, float]:
    """``point_auroc``, ``point_ap``, ``point_f1max`` over ragged per-sample point arrays, pooled.

    ``scores``: one 1-D array per point cloud (lengths may differ); ``labels``: the matching
    per-point ground truth, non-zero = defect.  No AUPRO: points carry no region structure
    (Real3D-AD reports none either).  Modes as in ``pixel_metrics``.
    """
    results = _accumulate(scores, labels, mode, 0.3, value_range, bins, regions=False)
    return {key.replace("pixel_", "point_"): value for key, value in results.items()}


__all__ = ["image_metrics", "map_value_range", "pixel_metrics", "point_metrics"]
