"""A brute-force restatement of the official M2AD evaluation, the reference of the compat-mode tests.

It follows the description in docs/metrics.md ("compat"); no official code is copied.  Everything
is done the slow way, one pixel or one threshold at a time:

* each pixel is binned with NumPy scalars of the maps' dtype, into its strip and, below or at the
  bounds, into the overflow bins;
* the curve is recounted at each of the 51 strip edges;
* the areas are summed segment by segment, and AUPRO is linearly interpolated at the limit;
* pixel F1 is recounted at each of the 21 thresholds;
* the Synergy fusion averages the images of a view in illumination order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

STRIPS = 50


def pro_weights(mask: np.ndarray) -> np.ndarray:
    """float32 1/|region| on the pixels of each 8-connected region, 0 elsewhere."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    weights = np.zeros(mask.shape, dtype=np.float32)
    weights[labels > 0] = (1.0 / sizes[labels[labels > 0]]).astype(np.float32)
    return weights


def _area(xs: Sequence[float], ys: Sequence[float]) -> float:
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def _area_to(xs: Sequence[float], ys: Sequence[float], limit: float) -> float:
    """Area from the first point up to ``x = limit`` (y linearly interpolated there); NaN when
    the first point already lies beyond the limit, or when y is 0 at both ends of the segment
    that crosses it (the two cases where ADEval's AUPRO fails or divides 0 by 0)."""
    if xs[0] > limit:
        return math.nan
    total = 0.0
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x1 <= limit:
            total += (x1 - x0) * (y0 + y1) / 2
        else:
            if y0 + y1 == 0:  # ADEval splits the crossing trapezoid in proportion to (y0 + y1) / 2: 0 / 0
                return math.nan
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            return total + (limit - x0) * (y0 + y_limit) / 2
    return total


def official_pixel_metrics(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], dtype: type, limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, "AP", F1-max and AUPRO of the official evaluation of ``maps`` handed over as ``dtype``."""
    kind = np.dtype(dtype).type
    arrays = [np.asarray(m).astype(dtype) for m in maps]
    truths = [np.asarray(m) != 0 for m in masks]
    weights = [pro_weights(t) for t in truths]
    values = np.concatenate([a.ravel() for a in arrays])
    truth = np.concatenate([t.ravel() for t in truths])
    weight = np.concatenate([w.ravel() for w in weights])
    low, high = values.min(), values.max()
    lower, upper = kind(float(low) - 1e-9), kind(float(high) + 1e-9)
    strip_low, strip_high = (lower, upper) if lower != upper else (kind(low - kind(1)), kind(high + kind(1)))
    positive, negative, weighted = [0] * (STRIPS + 2), [0] * (STRIPS + 2), [0.0] * (STRIPS + 2)
    for value, is_defect, pixel_weight in zip(values, truth, weight):
        bins = []
        if strip_low <= value <= strip_high:
            bins.append(1 + min(int((value - strip_low) * kind(STRIPS) / (strip_high - strip_low)), STRIPS - 1))
        if value < lower:
            bins.append(0)
        if value >= upper:
            bins.append(STRIPS + 1)
        for index in bins:
            if is_defect:
                positive[index] += 1
                weighted[index] += float(pixel_weight)
            else:
                negative[index] += 1
    total_positive, total_negative, total_weight = sum(positive), sum(negative), sum(weighted)
    fpr, tpr, precision, pro = [], [], [], []
    for edge in range(STRIPS, -1, -1):  # highest edge first: lowest FPR first
        tp, fp = sum(positive[edge + 1 :]), sum(negative[edge + 1 :])
        fpr.append(fp / total_negative)
        tpr.append(tp / total_positive)
        precision.append(tp / (tp + fp) if tp + fp else 1.0)
        pro.append(sum(weighted[edge + 1 :]) / total_weight if total_weight else math.nan)
    span = high - low
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = (values - low) / span
    f1_scores = []
    for threshold in np.arange(0.0, 1.0 + 1e-3, 0.05):
        predicted = normalised > (kind(threshold) if kind is np.float32 else threshold)
        hits = np.logical_and(predicted, truth).sum()
        p, r = hits / (predicted.sum() + 1e-8), hits / (truth.sum() + 1e-8)
        f1_scores.append(2 * p * r / (p + r + 1e-8))
    return {
        "pixel_auroc": _area(fpr, tpr),
        "pixel_ap": _area(tpr, precision),
        "pixel_f1max": float(max(f1_scores)),
        "aupro": _area_to(fpr, pro, limit) / limit if total_weight else math.nan,
    }


def fused_view(maps: Sequence[np.ndarray], dtype: type) -> np.ndarray:
    """The fused map of one view: its maps (in illumination order) summed one after the other
    in ``dtype``, then divided by their number."""
    total = np.asarray(maps[0]).astype(dtype)
    for item in maps[1:]:
        total = total + np.asarray(item).astype(dtype)
    return total / np.asarray(len(maps), dtype=dtype)
