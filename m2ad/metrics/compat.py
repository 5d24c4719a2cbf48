"""Compat modes: the official M2AD evaluator's pixel metrics, reproduced number for number.

The M2AD code (``util/metric.py::Evaluator`` with ``use_adeval=True``) computes, per class, on the
maps the trainer hands it (``docs/metrics.md`` cites the code line by line):

* pixel AUROC, pixel "AP" and AUPRO with ADEval's ``EvalAccumulatorCuda(..., nstrips=50)``, whose
  histograms come from ``torch.histc`` on the GPU.  The bounds are the class's ``min - 1e-9`` and
  ``max + 1e-9``, cast to the maps' dtype.  A pixel lands in strip ``(int)((v - lo) * 50 / (hi - lo))``
  computed in the maps' dtype (strip 50 is folded into 49: the top strip is closed), and *also*
  in the overflow bin when ``v >= hi``.  For float64 maps ``hi`` lies above the class maximum, so
  the overflow bin stays empty and the top curve point is (0, 0) with precision 1.  For float32 maps
  ``float32(max + 1e-9)`` is usually the maximum itself, so maximum pixels count twice: in the top
  strip and in the overflow bin.  The curves have one point per strip edge and no end points.  AUROC and
  "AP" are trapezoids over those points (the AP is a trapezoid, not a step sum), with precision 1
  where nothing is predicted positive.  PRO weights are ``float32(1 / |region|)`` over 8-connected
  regions.  AUPRO is cut at the FPR limit with ADEval's ``_trapezoid_intep`` and divided by the limit;
* pixel F1-max: the maps min-max normalised over the whole class, thresholded strictly (``>``) at
  ``np.arange(0, 1.001, 0.05)`` (21 thresholds), pooled F1 with ``1e-8`` guards, max.  float64
  maps are normalised and compared in float64.  float32 maps are normalised in float32 and, under
  the paper's NumPy 1.26, compared with float32-rounded thresholds.

``MAP_DTYPES`` names the two paths: ``compat`` is what the CDO, RD++, Dinomaly and INP-Former
trainers hand over (float64: ``util/compute_am.py`` accumulates the map in ``np.zeros``), and
``compat-float32`` is what the MSFlow trainer hands over (float32).  float16 and float32 maps are
converted to that dtype exactly.
"""

from __future__ import annotations

import numpy as np

STRIPS = 50
BOUNDARY = 1e-9
F1_THRESHOLDS = np.arange(0.0, 1.0 + 1e-3, 0.05)  # float64, built as util/metric.py builds them
F1_EPS = 1e-8
MAP_DTYPES: dict[str, type[np.floating]] = {"compat": np.float64, "compat-float32": np.float32}
_OUTSIDE = STRIPS + 2  # scratch bin for pixels outside histc's range (they only count in the overflow bins)


def _rates(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ADEval's curve at the 51 strip edges, highest score first reversed to lowest first:
    ``fn = cumsum(pos)[:-1]``, ``tp = P - fn``, ``tpr = tp / (tp + fn)`` (same for fp/fpr)."""
    cumulative_positive, cumulative_negative = np.cumsum(positive), np.cumsum(negative)
    fn, tn = cumulative_positive[:-1], cumulative_negative[:-1]
    tp, fp = float(cumulative_positive[-1]) - fn, float(cumulative_negative[-1]) - tn
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / (tp + fn), fp / (fp + tn), tp, fp


def _adeval_aupro(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """ADEval's ``_aupro``: the trapezoids up to the last point at or below ``limit``, plus the part
    of the crossing trapezoid up to ``limit`` by ``_trapezoid_intep`` (its area ``tot - (lo + hi)``
    split into a rectangle and a triangle), divided by ``limit``.  NaN where ADEval fails (no
    point at or below the limit: an IndexError) or divides 0 by 0 (PRO 0 on both sides of it)."""
    below = fpr <= limit
    lo_pro, lo_fpr = pro[below][::-1], fpr[below][::-1]
    hi_pro, hi_fpr = pro[~below][::-1], fpr[~below][::-1]
    if lo_fpr.size == 0:
        return float("nan")
    lo = float(np.trapezoid(lo_pro, lo_fpr))
    if hi_fpr.size == 0:  # the whole curve lies within the limit (only for limits near 1)
        return lo / limit
    hi = float(np.trapezoid(hi_pro, hi_fpr))
    total = float(np.trapezoid(pro[::-1], fpr[::-1]))
    fraction = (limit - lo_fpr[-1]) / (hi_fpr[0] - lo_fpr[-1])
    area, low_height, high_height = total - (lo + hi), lo_pro[-1], hi_pro[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        rectangle_share = low_height / (low_height + 0.5 * (high_height - low_height))
    rectangle, triangle = area * rectangle_share, area * (1 - rectangle_share)
    return float((lo + (rectangle * fraction + triangle * fraction * fraction)) / limit)


class CompatState:
    """The official strip histograms plus the 21-threshold F1 counts, for one class range.

    ``low``, ``high``: the class's exact map minimum and maximum.  ``dtype``: the dtype the
    official trainer hands the evaluator (``MAP_DTYPES``).  Pixel counts are integers and the
    PRO weights sum exactly in float64 (multiples of float32 ``1/|region|``), so accumulating
    in any order and merging give the official sums.
    """

    def __init__(self, low: float, high: float, dtype: type[np.floating] = np.float64) -> None:
        self.dtype = np.dtype(dtype)
        kind = self.dtype.type
        self.low, self.high = float(kind(low)), float(kind(high))
        # Evaluator: anomap_min = pr_px.min() - 1e-9 (float64 under NumPy 1.26); CUDA histc and the
        # overflow comparisons (input.less(min), input.greater_equal(max)) see it in the maps' dtype.
        self._lower, self._upper = kind(self.low - BOUNDARY), kind(self.high + BOUNDARY)
        strip_low, strip_high = self._lower, self._upper
        if strip_low == strip_high:  # CUDA histc with min == max (a constant float32 class): data min/max, +-1
            strip_low, strip_high = kind(kind(self.low) - kind(1)), kind(kind(self.high) + kind(1))
        self._strip_low, self._strip_high = strip_low, strip_high
        self._strip_span = kind(strip_high - strip_low)
        self._f1_low, self._f1_span = kind(self.low), kind(kind(self.high) - kind(self.low))
        self._f1_thresholds = F1_THRESHOLDS.astype(self.dtype)  # NumPy 1.26 rounds them to float32 for float32 maps
        self.counts = np.zeros(STRIPS + 2, dtype=np.int64)
        self.defects = np.zeros(STRIPS + 2, dtype=np.int64)
        self.weights = np.zeros(STRIPS + 2, dtype=np.float64)
        self.f1_counts = np.zeros(F1_THRESHOLDS.size + 1, dtype=np.int64)
        self.f1_defects = np.zeros(F1_THRESHOLDS.size + 1, dtype=np.int64)
        self.regions = 0

    def _strips(self, values: np.ndarray, extremes: tuple[np.floating, np.floating]) -> np.ndarray:
        """Each value's histc strip, 1..50 (0 and 51 are the overflow bins), or ``_OUTSIDE``.
        ``extremes``: the values' (min, max), to skip the range checks when all are inside."""
        with np.errstate(over="ignore", invalid="ignore"):
            position = np.subtract(values, self._strip_low)
            position *= self.dtype.type(STRIPS)
            position /= self._strip_span
        outside = None
        if extremes[0] < self._strip_low or extremes[1] > self._strip_high:
            outside = (values < self._strip_low) | (values > self._strip_high)
            position[outside] = 0
        strips = position.astype(np.intp)  # C's (int) cast: truncation
        np.minimum(strips, STRIPS - 1, out=strips)  # bin == nbins -> the last strip (closed at the top)
        strips += 1
        if outside is not None:
            strips[outside] = _OUTSIDE
        return strips

    def _histogram(self, values: np.ndarray, strips: np.ndarray, extremes: tuple[np.floating, np.floating],
                   weights: np.ndarray | None = None) -> np.ndarray:
        """The 52 bins ``_histogram_bins`` adds: strips, then ``v < lower`` and ``v >= upper``."""
        histogram = np.bincount(strips, weights=weights, minlength=_OUTSIDE + 1)[: STRIPS + 2]
        for index, beyond in ((0, extremes[0] < self._lower), (-1, extremes[1] >= self._upper)):
            if beyond:
                selected = values < self._lower if index == 0 else values >= self._upper
                histogram[index] += np.count_nonzero(selected) if weights is None else weights[selected].sum()
        return histogram

    def add(self, values: np.ndarray, defect: np.ndarray | None, weights: np.ndarray, regions: int) -> None:
        """Add scores: flat finite ``values``, flat boolean ``defect`` (None: no defect pixel),
        the positive pixels' PRO weights."""
        values = values.astype(self.dtype, copy=False)
        if values.size == 0:
            return
        self.regions += regions
        extremes = (values.min(), values.max())
        strips = self._strips(values, extremes)
        self.counts += self._histogram(values, strips, extremes)
        if self._f1_span > 0:
            normalised = np.subtract(values, self._f1_low)
            normalised /= self._f1_span
            above = np.searchsorted(self._f1_thresholds, normalised, side="left")  # thresholds strictly below
        else:  # M2AD divides by zero here: every normalised value is NaN, never above a threshold
            above = np.zeros(values.size, dtype=np.intp)
        self.f1_counts += np.bincount(above, minlength=F1_THRESHOLDS.size + 1)
        if defect is not None and defect.any():
            defect_values, defect_strips = values[defect], strips[defect]
            defect_weights = weights.astype(np.float32).astype(np.float64)
            self.defects += self._histogram(defect_values, defect_strips, extremes)
            self.weights += self._histogram(defect_values, defect_strips, extremes, defect_weights)
            self.f1_defects += np.bincount(above[defect], minlength=F1_THRESHOLDS.size + 1)

    def merge(self, other: CompatState) -> None:
        """Add ``other``'s counts (same class range and dtype) into this state."""
        if (other.low, other.high, other.dtype) != (self.low, self.high, self.dtype):
            raise ValueError(
                f"cannot merge compat accumulators with different value ranges or dtypes: "
                f"{(self.low, self.high, str(self.dtype))} vs {(other.low, other.high, str(other.dtype))}"
            )
        for name in ("counts", "defects", "weights", "f1_counts", "f1_defects"):
            getattr(self, name)[:] += getattr(other, name)
        self.regions += other.regions

    @property
    def negatives(self) -> int:
        """Number of defect-free pixels added."""
        return int(self.f1_counts.sum() - self.f1_defects.sum())

    @property
    def positives(self) -> int:
        """Number of defect pixels added."""
        return int(self.f1_defects.sum())

    def compute(self, pro_limit: float) -> dict[str, float]:
        """The four pixel metrics as the M2AD evaluator reports them (needs both classes)."""
        positive = self.defects.astype(np.float64)
        negative = (self.counts - self.defects).astype(np.float64)
        tpr, fpr, tp, fp = _rates(positive, negative)
        predicted = tp + fp
        precision = np.divide(tp, predicted, out=np.ones(tp.size), where=predicted > 0)
        predicted_f1 = self.f1_counts.sum() - np.cumsum(self.f1_counts)[:-1]
        hits = self.f1_defects.sum() - np.cumsum(self.f1_defects)[:-1]
        f1_precision = hits / (predicted_f1 + F1_EPS)
        f1_recall = hits / (self.positives + F1_EPS)
        f1 = 2 * f1_precision * f1_recall / (f1_precision + f1_recall + F1_EPS)
        aupro = float("nan")  # point clouds: no regions
        if self.regions:
            pro, weighted_fpr, _, _ = _rates(self.weights, negative)  # normal pixels weigh 1
            aupro = _adeval_aupro(weighted_fpr, pro, pro_limit)
        return {
            "pixel_auroc": float(np.trapezoid(tpr[::-1], fpr[::-1])),
            "pixel_ap": float(np.trapezoid(precision[::-1], tpr[::-1])),
            "pixel_f1max": float(f1.max()),
            "aupro": aupro,
        }
