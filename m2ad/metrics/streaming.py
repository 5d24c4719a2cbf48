"""Streaming mode: fixed-size histograms over an agreed score range; bounded memory, exact merge.

Every score gets an order-preserving code on a uniform grid of ``bins`` bins over
``[low, high]`` (scores outside go to the end bins; float64 scores are first rounded to
float32, which is monotone too).  Per bin the state keeps the pixel count, the defect-pixel
count and the summed PRO weight, so ``merge`` is an addition and the state is 24 bytes per bin
(plus a buffer of at most ``bins / 2`` codes, so that small maps share one ``bincount``)
whatever the number of images.

Each non-empty bin is one tie block of the curve, and because codes are monotone the binned
curve *is* the exact curve sampled at the bin edges.  The only loss is inside a bin, and
``m2ad.metrics.curve.certified_error_bounds`` turns the per-bin counts into a guaranteed bound
on |streaming - exact| for every metric.
"""

from __future__ import annotations

import numpy as np

from m2ad.metrics.binning import bin_codes, bin_scale
from m2ad.metrics.curve import Curve

DEFAULT_BINS = 1 << 20


class HistogramState:
    """Pixel count, defect-pixel count and PRO weight per bin of a fixed grid."""

    def __init__(self, low: float, high: float, bins: int) -> None:
        self.low, self.high, self.bins = float(low), float(high), int(bins)
        self._low32 = np.float32(self.low)
        self._scale32 = bin_scale(self.low, self.high, self.bins, np.dtype(np.float32))
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.defects = np.zeros(self.bins, dtype=np.int64)
        self.weights = np.zeros(self.bins, dtype=np.float64)
        self.regions = 0
        self._pending: list[np.ndarray] = []  # codes not yet counted, fewer than bins // 2
        self._pending_size = 0

    def add(self, values: np.ndarray, defect: np.ndarray | None, weights: np.ndarray, regions: int) -> None:
        """Add scores: flat finite ``values``, flat boolean ``defect`` (None: no defect pixel),
        the positive pixels' weights."""
        if values.size == 0:
            return
        codes = bin_codes(values.astype(np.float32, copy=False), self._low32, self._scale32, self.bins)
        self._pending.append(codes)
        self._pending_size += codes.size
        if self._pending_size >= self.bins // 2:
            self._flush()
        if defect is not None and (regions or defect.any()):
            bins, inverse = np.unique(codes[defect], return_inverse=True)
            self.defects[bins] += np.bincount(inverse)
            self.weights[bins] += np.bincount(inverse, weights=weights)
        self.regions += regions

    def _flush(self) -> None:
        """Count the buffered codes (one ``bincount`` for many small maps instead of one each)."""
        if self._pending:
            counted = np.bincount(np.concatenate(self._pending))
            self.counts[: counted.size] += counted
            self._pending, self._pending_size = [], 0

    def merge(self, other: HistogramState) -> None:
        """Add ``other``'s histograms (same grid) into this state."""
        if (other.low, other.high, other.bins) != (self.low, self.high, self.bins):
            raise ValueError(
                f"cannot merge streaming accumulators with different grids: "
                f"{(self.low, self.high, self.bins)} vs {(other.low, other.high, other.bins)}"
            )
        self._flush()
        other._flush()
        self.counts += other.counts
        self.defects += other.defects
        self.weights += other.weights
        self.regions += other.regions

    def curve(self) -> Curve:
        """The binned curve: one tie block per bin, highest bin first (empty bins repeat a point)."""
        self._flush()
        negatives_per_bin = self.counts[::-1] - self.defects[::-1]
        return Curve(
            false_positives=np.cumsum(negatives_per_bin),
            true_positives=np.cumsum(self.defects[::-1]),
            region_weight=np.cumsum(self.weights[::-1]),
            negatives=int(self.counts.sum() - self.defects.sum()),
            positives=int(self.defects.sum()),
            regions=self.regions,
        )
