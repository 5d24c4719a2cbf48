"""Compat mode: the official M2AD evaluator's pixel metrics, reproduced for comparison with the paper.

The M2AD code (``util/metric.py::Evaluator`` with ``use_adeval=True``) computes, per class:

* pixel AUROC, pixel AUPR and AUPRO with ADEval (``EvalAccumulatorCuda(..., nstrips=50)``):
  histograms over 50 equal strips between ``map_min - 1e-9`` and ``map_max + 1e-9`` (the class's
  own min and max) plus two overflow bins.  The curves have one point per strip edge (a score
  is counted positive at edge ``e`` iff it is ``>= e``), no (0, 0) or (1, 1) end points.
  AUROC and AUPR are trapezoids over those points (AUPR is a trapezoid, not AP; precision is 1
  where nothing is predicted positive).  PRO weights are ``float32(1 / |region|)`` with
  8-connected regions and are normalised by their total, not by the region count; AUPRO is
  the trapezoid up to FPR = 0.3 with linear interpolation at 0.3, divided by 0.3;
* pixel F1-max: maps min-max normalised over the whole class, thresholded (strictly ``>``) at
  0, 0.05, ..., 1.0 (21 thresholds), F1 of the pooled pixels with ``eps = 1e-8`` guards, max.

Float details follow the paper's environment (NumPy 1.26): strip edges and the normalised map
are float32, the 21 thresholds are compared as float32.  ADEval's CUDA histogram (``torch.histc``)
also counts the pixels equal to the class maximum in the top strip as well as in the overflow
bin; the CPU class does not, and neither does this module (an effect of a few pixels out of the
whole class).
"""

from __future__ import annotations

import numpy as np

from m2ad.metrics.curve import area_to_limit

STRIPS = 50
BOUNDARY = 1e-9
F1_THRESHOLDS = np.arange(0.0, 1.0 + 1e-3, 0.05).astype(np.float32)
F1_EPS = 1e-8


def strip_edges(low: float, high: float) -> np.ndarray:
    """ADEval's 51 finite strip edges for the class range ``[low, high]`` (float32, as in M2AD)."""
    lower, upper = float(low) - BOUNDARY, float(high) + BOUNDARY
    unit = np.linspace(0.0, 1.0, num=STRIPS + 1, endpoint=True, dtype=np.float32)
    return unit * np.float32(upper - lower) + np.float32(lower)


def count_edges_below(values: np.ndarray, edges: np.ndarray, *, inclusive: bool) -> np.ndarray:
    """How many ``edges`` are below each value (``<=`` if ``inclusive``, else ``<``).

    Equal to ``np.searchsorted(edges, values, side="right" if inclusive else "left")`` for
    sorted ``edges``, but computed for nearly uniform edges by arithmetic plus a local
    correction, several times faster than a binary search per pixel.
    """
    count = edges.size
    step = (float(edges[-1]) - float(edges[0])) / (count - 1)
    if step > 0:
        with np.errstate(over="ignore", invalid="ignore"):
            guess = np.floor((values - edges[0]) * values.dtype.type(1 / step)) + 1
        guess = np.clip(np.nan_to_num(guess), 0, count).astype(np.intp)
    else:
        guess = np.zeros(values.size, dtype=np.intp)
    padded = np.concatenate([[-np.inf], edges, [np.inf]]).astype(values.dtype)
    for _ in range(count + 1):
        upper, lower = padded[guess], padded[guess + 1]
        too_high = (upper > values) if inclusive else (upper >= values)
        too_low = (lower <= values) if inclusive else (lower < values)
        if not (too_high.any() or too_low.any()):
            break
        guess -= too_high
        guess += too_low
    return guess


class CompatState:
    """ADEval strip histograms plus the 21-threshold F1 counts, for one class range."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = float(low), float(high)
        self.edges = strip_edges(self.low, self.high)
        self._min32, self._max32 = np.float32(self.low), np.float32(self.high)
        self.counts = np.zeros(STRIPS + 2, dtype=np.int64)
        self.defects = np.zeros(STRIPS + 2, dtype=np.int64)
        self.weights = np.zeros(STRIPS + 2, dtype=np.float64)
        self.f1_counts = np.zeros(F1_THRESHOLDS.size + 1, dtype=np.int64)
        self.f1_defects = np.zeros(F1_THRESHOLDS.size + 1, dtype=np.int64)
        self.regions = 0

    def add(self, values: np.ndarray, defect: np.ndarray | None, weights: np.ndarray, regions: int) -> None:
        """Add scores: flat finite ``values``, flat boolean ``defect`` (None: no defect pixel),
        the positive pixels' weights."""
        values = values.astype(np.float32, copy=False)
        self.regions += regions
        strips = count_edges_below(values, self.edges, inclusive=True)
        self.counts += np.bincount(strips, minlength=STRIPS + 2)
        if self._max32 > self._min32:
            normalised = (values - self._min32) / (self._max32 - self._min32)
            above = count_edges_below(normalised, F1_THRESHOLDS, inclusive=False)
        else:  # M2AD divides by zero here: every normalised value is NaN, never above a threshold
            above = np.zeros(values.size, dtype=np.intp)
        self.f1_counts += np.bincount(above, minlength=F1_THRESHOLDS.size + 1)
        if defect is not None and defect.any():
            self.defects += np.bincount(strips[defect], minlength=STRIPS + 2)
            self.weights += np.bincount(
                strips[defect], weights=weights.astype(np.float32), minlength=STRIPS + 2
            )
            self.f1_defects += np.bincount(above[defect], minlength=F1_THRESHOLDS.size + 1)

    def merge(self, other: CompatState) -> None:
        """Add ``other``'s counts (same class range) into this state."""
        if (other.low, other.high) != (self.low, self.high):
            raise ValueError(
                f"cannot merge compat accumulators with different value ranges: "
                f"{(self.low, self.high)} vs {(other.low, other.high)}"
            )
        for name in ("counts", "defects", "weights", "f1_counts", "f1_defects"):
            getattr(self, name)[:] += getattr(other, name)
        self.regions += other.regions

    @property
    def negatives(self) -> int:
        """Number of defect-free pixels added."""
        return int(self.counts.sum() - self.defects.sum())

    @property
    def positives(self) -> int:
        """Number of defect pixels added."""
        return int(self.defects.sum())

    def compute(self, pro_limit: float) -> dict[str, float]:
        """The four pixel metrics as the M2AD evaluator reports them (needs both classes)."""
        negatives, positives = self.negatives, self.positives
        # Points at the strip edges, highest edge first: counts of scores >= edge.
        tp = positives - np.cumsum(self.defects)[:-1][::-1]
        fp = negatives - np.cumsum(self.counts - self.defects)[:-1][::-1]
        weighted_tp = self.weights.sum() - np.cumsum(self.weights)[:-1][::-1]
        fpr, tpr = fp / negatives, tp / positives
        predicted = tp + fp
        precision = np.divide(tp, predicted, out=np.ones(tp.size), where=predicted > 0)
        predicted_f1 = self.f1_counts.sum() - np.cumsum(self.f1_counts)[:-1]
        hits = self.f1_defects.sum() - np.cumsum(self.f1_defects)[:-1]
        f1_precision = hits / (predicted_f1 + F1_EPS)
        f1_recall = hits / (positives + F1_EPS)
        f1 = 2 * f1_precision * f1_recall / (f1_precision + f1_recall + F1_EPS)
        aupro = float("nan")  # point clouds: no regions
        if self.regions:
            aupro = area_to_limit(fpr, weighted_tp / self.weights.sum(), pro_limit) / pro_limit
        return {
            "pixel_auroc": float(np.trapezoid(tpr, fpr)),
            "pixel_ap": float(np.trapezoid(precision, tpr)),
            "pixel_f1max": float(f1.max()),
            "aupro": aupro,
        }
