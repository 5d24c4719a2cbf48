"""Threshold curves and the four metrics read off them.

Every mode ends in the same place: a :class:`Curve`, the cumulative false-positive,
true-positive and PRO-weight counts after each *tie block*, with the thresholds in decreasing
order (a pixel is predicted positive iff its score is >= the threshold).  A tie block is a set of
samples sharing one score (exact mode) or one histogram bin (streaming mode).  Points that
repeat the previous point, or that only add negatives, are allowed anywhere: they leave every
metric unchanged, which lets the exact mode describe the curve with only the points at positive
scores (see ``m2ad.metrics.exact``).

Definitions (``docs/metrics.md``): AUROC is the trapezoid rule over the ROC points starting at
(0, 0), i.e. the Mann-Whitney statistic with ties counted half; AP is the step sum
``sum (R_n - R_{n-1}) P_n`` of scikit-learn; F1-max is the largest ``2PR / (P + R)`` over the
curve points; AUPRO is the MVTec AD definition (``aupro_from_curve``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    """Cumulative counts after each tie block, thresholds in decreasing order.

    The last point holds every sample: ``false_positives[-1] == negatives`` and
    ``true_positives[-1] == positives``.
    """

    false_positives: np.ndarray  # int64, non-decreasing
    true_positives: np.ndarray  # int64, non-decreasing
    region_weight: np.ndarray  # float64, cumulative sum of 1/|region| over positive pixels
    negatives: int
    positives: int
    regions: int


def _previous(values: np.ndarray) -> np.ndarray:
    """``values`` shifted right by one, starting at 0: the state before each tie block."""
    return np.concatenate([np.zeros(1, dtype=values.dtype), values[:-1]])


def auroc(curve: Curve) -> float:
    """Area under the ROC curve by the trapezoid rule (equal to scikit-learn's ``roc_auc_score``)."""
    fp = curve.false_positives.astype(np.float64)
    tp = curve.true_positives.astype(np.float64)
    area = np.sum((fp - _previous(fp)) * (tp + _previous(tp)))
    return float(area / (2.0 * curve.negatives * curve.positives))


def average_precision(curve: Curve) -> float:
    """Step-wise average precision, no interpolation (scikit-learn's ``average_precision_score``)."""
    tp = curve.true_positives
    gained = tp - _previous(tp)
    predicted = tp + curve.false_positives
    steps = gained > 0
    precision = tp[steps] / predicted[steps]
    return float(np.sum(gained[steps] * precision) / curve.positives)


def f1_max(curve: Curve) -> float:
    """Largest F1 over the curve points, ``2TP / (TP + FP + P)`` (= ``2PR / (P + R)``; 0 when TP = 0)."""
    tp = curve.true_positives.astype(np.float64)
    f1 = 2.0 * tp / (tp + curve.false_positives + curve.positives)
    return float(f1.max())


def area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under ``y(x)`` from ``x[0]`` to ``limit``, ``x`` non-decreasing.

    The MVTec AD rule: the points with ``x <= limit`` are summed; when ``limit`` is not itself a
    curve point, ``y`` is linearly interpolated at ``x = limit`` between the last point below it
    and the first point above it, and the partial trapezoid is added.  When every point lies
    below ``limit`` the curve simply ends there.
    """
    inside = int(np.searchsorted(x, limit, side="right"))
    if inside == 0:
        return 0.0
    xs, ys = x[:inside], y[:inside]
    area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
    if xs[-1] < limit and inside < len(x):
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_limit) * (limit - x0)
    return area


def aupro_from_curve(curve: Curve, limit: float) -> float:
    """AUPRO up to FPR = ``limit``, divided by ``limit`` (MVTec AD ``compute_pro`` + ``trapezoid``).

    FPR = FP / |negatives| and PRO = (summed 1/|region| weights) / K, clipped to 1, with (0, 0)
    prepended and (1, 1) appended.
    """
    fpr = curve.false_positives / curve.negatives
    pro = np.minimum(curve.region_weight / curve.regions, 1.0)
    x = np.concatenate([[0.0], np.minimum(fpr, 1.0), [1.0]])
    y = np.concatenate([[0.0], pro, [1.0]])
    return area_to_limit(x, y, limit) / limit


def certified_error_bounds(curve: Curve, limit: float) -> dict[str, float]:
    """Largest possible |binned - exact| for each metric when each tie block is a histogram bin.

    Within a bin the exact curve moves monotonically inside the box spanned by the bin's two
    end points, so: AUROC and AUPRO differ from the chord by at most half of each box (for the
    AUPRO box that straddles ``limit``: its width up to ``limit`` times its height); each AP step
    uses a precision between the box's extreme precisions; F1 inside a box is at most
    ``2 TP_end / (TP_end + FP_start + P)``.
    """
    fp = curve.false_positives.astype(np.float64)
    tp = curve.true_positives.astype(np.float64)
    fp_before, tp_before = _previous(fp), _previous(tp)
    bounds: dict[str, float] = {}
    if curve.negatives and curve.positives:
        d_fp, d_tp = fp - fp_before, tp - tp_before
        bounds["pixel_auroc"] = float(np.sum(0.5 * d_fp * d_tp) / (curve.negatives * curve.positives))
        steps = d_tp > 0
        high = tp[steps] / (tp[steps] + fp_before[steps])
        low = (tp_before[steps] + 1) / (tp_before[steps] + 1 + fp[steps])
        bounds["pixel_ap"] = float(np.sum(d_tp[steps] * np.maximum(high - low, 0.0)) / curve.positives)
        best_possible = 2.0 * tp / (tp + fp_before + curve.positives)
        bounds["pixel_f1max"] = float(max(best_possible.max() - f1_max(curve), 0.0))
    else:
        bounds.update(pixel_auroc=float("nan"), pixel_ap=float("nan"), pixel_f1max=float("nan"))
    if curve.negatives and curve.regions:
        fpr, fpr_before = fp / curve.negatives, fp_before / curve.negatives
        pro = np.minimum(curve.region_weight / curve.regions, 1.0)
        height = pro - _previous(pro)
        inside = fpr <= limit
        straddles = (fpr_before < limit) & ~inside
        area = np.sum(0.5 * (fpr - fpr_before)[inside] * height[inside])
        area += np.sum((limit - fpr_before[straddles]) * height[straddles])
        bounds["aupro"] = float(area / limit)
    else:
        bounds["aupro"] = float("nan")
    return bounds
