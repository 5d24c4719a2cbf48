"""AUPRO with 100 sampled thresholds, as the 3D-ADS copy of the MVTec 3D-AD code computes it.

``eliahuhorwitz/3D-ADS:utils/au_pro_util.py`` (612eb7b), "based on the official MVTec 3D-AD
evaluation code", is what BTF, M3DM and most later MVTec 3D-AD papers report.  It differs from
the official exact curve (every distinct threshold; m2ad's ``aupro``):

1. the normal (GT-0) pixel scores of every map, pooled and sorted ascending;
2. ``thresholds`` positions ``linspace(0, n_ok - 1, thresholds)`` cast to int (truncated), the
   threshold at each being that sorted score and its FPR ``1 - (position + 1) / n_ok``;
3. PRO at a threshold: the mean over 8-connected GT regions (pooled over maps) of the share of
   the region's pixels scoring strictly above the threshold;
4. the curve starts at (1, 1), then the sampled points in order of decreasing FPR, reversed; no
   (0, 0) point;
5. MVTec's ``trapezoid(x_max=limit)``: the trapezoids of the points with FPR <= limit, plus the
   part up to the limit of the trapezoid crossing it (PRO linearly interpolated at the limit),
   divided by the limit.

The chords between the sparse points lie below a concave curve, so for good detectors the value
is lower than the exact AUPRO (by about 0.01 at an exact AUPRO of 0.99, 0.003 at 0.76; within
+-0.001 below 0.5: 20 maps of 128 x 128, docs/metrics.md).  This module is a reference implementation for comparing with published numbers; it is
not a mode of the evaluators (it needs every normal pixel's score, sorted).
"""

from __future__ import annotations

import warnings
from bisect import bisect_right
from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from m2ad.metrics.accumulator import UndefinedMetricWarning
from m2ad.metrics.regions import EIGHT_CONNECTED

DEFAULT_THRESHOLDS = 100


def sampled_pro_curve(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray], thresholds: int = DEFAULT_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) in increasing FPR order, as in the module docstring (steps 1-4)."""
    normal_scores, regions = [], []
    for anomaly_map, mask in zip(maps, masks, strict=True):
        values = np.asarray(anomaly_map, dtype=np.float64)
        defect = np.asarray(mask) != 0
        if values.shape != defect.shape or values.ndim != 2:
            raise ValueError(f"a map of shape {values.shape} and its mask of shape {defect.shape}: both must be the same 2-D shape")
        labels, count = ndimage.label(defect, structure=EIGHT_CONNECTED)
        normal_scores.append(values[labels == 0])
        regions.extend(np.sort(values[labels == index]) for index in range(1, count + 1))
    if thresholds < 1:
        raise ValueError(f"thresholds must be at least 1, got {thresholds}")
    ok = np.sort(np.concatenate(normal_scores)) if normal_scores else np.zeros(0)
    if ok.size == 0 or not regions:
        raise ValueError("the sampled AUPRO needs at least one normal pixel and one defect region")
    positions = np.linspace(0, ok.size - 1, num=thresholds).astype(np.int64)
    cut = ok[positions]
    fpr = 1.0 - (positions + 1) / ok.size
    overlap = np.zeros(thresholds)
    for scores in regions:
        overlap += 1.0 - np.searchsorted(scores, cut, side="right") / scores.size
    pro = overlap / len(regions)
    return np.concatenate(([1.0], fpr))[::-1], np.concatenate(([1.0], pro))[::-1]


def _trapezoid_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """MVTec's ``generic_util.trapezoid(x, y, x_max=limit)`` (x ascending, ties kept in order)."""
    correction = 0.0
    if limit not in x:
        insert = bisect_right(x.tolist(), limit)
        if not 0 < insert < len(x):
            raise ValueError(f"the FPR limit {limit} lies outside the curve's FPR range [{x[0]}, {x[-1]}]")
        y_limit = y[insert - 1] + (y[insert] - y[insert - 1]) * (limit - x[insert - 1]) / (x[insert] - x[insert - 1])
        correction = 0.5 * (y_limit + y[insert - 1]) * (limit - x[insert - 1])
    keep = x <= limit
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def sampled_aupro(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray], *, pro_limit: float = 0.3,
                  thresholds: int = DEFAULT_THRESHOLDS) -> float:
    """3D-ADS's AUPRO up to ``pro_limit`` (module docstring); NaN, with an
    ``UndefinedMetricWarning``, when there is no defect region or no normal pixel."""
    if not 0 < pro_limit <= 1:
        raise ValueError(f"pro_limit must lie in (0, 1], got {pro_limit}")
    try:
        fpr, pro = sampled_pro_curve(maps, masks, thresholds)
    except ValueError as error:
        if "needs at least one" not in str(error):
            raise
        warnings.warn(f"sampled AUPRO is undefined: {error}; returning NaN", UndefinedMetricWarning, stacklevel=2)
        return float("nan")
    return _trapezoid_to(fpr, pro, pro_limit) / pro_limit
