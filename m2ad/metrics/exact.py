"""Exact mode: every score kept, every threshold evaluated, without sorting the negatives.

Only the positions of the (few) positive scores among the negatives matter: for each distinct
positive score ``v`` the curve needs the number of negatives below ``v`` and equal to ``v``.
Between two consecutive positive scores only negatives are added, which moves the curve
horizontally: no metric changes shape there (see ``m2ad.metrics.curve``).  So the curve is
described exactly by two points per distinct positive score: just before its tie block and just
after it.

Counting negatives below each positive score, without sorting them all:

1. give every score an order-preserving bin code (``m2ad.metrics.binning``) on a fine grid;
2. count the negatives per bin (``bincount``, one pass);
3. sort only the negatives that share a bin with some positive score ("mixed" bins);
4. below ``v`` = negatives in unmixed bins with a smaller code (a cumulative count) + sorted
   mixed negatives below ``v`` (``searchsorted``).

Because codes are monotone, a negative in an unmixed bin with a smaller code is below ``v`` and
one with a larger code is above it, and every negative equal to ``v`` lies in ``v``'s (mixed)
bin: the counts are exact whatever the grid.  The grid only decides how many negatives are
sorted.

float16 scores (the usual dtype of stored maps) take a shorter exact path: a float16 has only
65536 bit patterns, so the negatives are counted per value (one ``bincount`` of order-preserving
integer keys), with no grid, no sort and no conversion to float32.
"""

from __future__ import annotations

import numpy as np

from m2ad.metrics.binning import bin_codes, bin_scale
from m2ad.metrics.curve import Curve

MAX_REFINE_BITS = 22


def _refine_bins(negatives: int) -> int:
    """Grid size for the refinement: about 32 negatives per bin, between 16 and 2^22 bins."""
    return 1 << min(MAX_REFINE_BITS, max(4, (negatives // 32).bit_length()))


def count_negatives(
    negatives: list[np.ndarray], values: np.ndarray, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """For sorted distinct ``values``: how many negatives are ``< v`` and ``== v``, for each ``v``.

    ``negatives`` are 1-D chunks of ``values``' dtype; ``low`` and ``high`` bound every score
    (unused for float16, which is counted per value).
    """
    total = sum(chunk.size for chunk in negatives)
    if total == 0 or values.size == 0:
        return np.zeros(values.size, dtype=np.int64), np.zeros(values.size, dtype=np.int64)
    if values.dtype == np.float16:
        histogram = Float16Histogram()
        for chunk in negatives:
            histogram.add(chunk)
        return histogram.below_and_equal(values)
    bins = _refine_bins(total)
    dtype = values.dtype
    low_value, scale = dtype.type(low), bin_scale(low, high, bins, dtype)
    value_codes = bin_codes(values, low_value, scale, bins)
    mixed = np.zeros(bins, dtype=bool)
    mixed[value_codes] = True
    per_bin = np.zeros(bins, dtype=np.int64)
    in_mixed_bins = []
    groups = _groups(negatives, 2 * bins)
    buffer = np.empty(max(sum(chunk.size for chunk in group) for group in groups), dtype=np.intp)
    for group in groups:
        held = 0
        for chunk in group:
            codes = bin_codes(chunk, low_value, scale, bins, out=buffer[held : held + chunk.size])
            in_mixed_bins.append(chunk[mixed[codes]])
            held += chunk.size
        counted = np.bincount(buffer[:held])
        per_bin[: counted.size] += counted
    mixed_sorted = np.concatenate(in_mixed_bins)
    mixed_sorted.sort()
    unmixed_below = np.concatenate([[0], np.cumsum(np.where(mixed, 0, per_bin))])
    first = np.searchsorted(mixed_sorted, values, side="left")
    after = np.searchsorted(mixed_sorted, values, side="right")
    return unmixed_below[value_codes] + first, (after - first).astype(np.int64)


FLOAT16_KEYS = 1 << 16


def float16_keys(values: np.ndarray) -> np.ndarray:
    """An order-preserving key in ``[0, 65536)`` for each finite float16 value, as uint16: a
    larger value has a larger key.  Non-negative values get ``bits + 0x8000``, negative ones
    ``0xFFFF - bits`` (one XOR each), so ``-0.0`` gets ``ZERO_KEY - 1``: equal values share a key
    except the two zeros, which callers merge (see ``_count_float16_negatives``)."""
    bits = values.view(np.uint16)
    flip = (bits >> 15) * np.uint16(0x7FFF)  # 0x7FFF for negative values, else 0
    flip |= np.uint16(0x8000)
    return bits ^ flip


ZERO_KEY = 0x8000
"""The key of 0.0; -0.0 gets ``ZERO_KEY - 1``."""


def _bits_in_key_order() -> np.ndarray:
    """The float16 bit pattern of each key (the inverse of ``float16_keys``)."""
    keys = np.arange(FLOAT16_KEYS, dtype=np.int64)
    return np.where(keys >= ZERO_KEY, keys - ZERO_KEY, 0xFFFF - keys).astype(np.intp)


class Float16Histogram:
    """Exact counts of float16 scores per value, in 512 KiB whatever the number of scores.

    Scores are counted per bit pattern (one ``bincount`` of the raw bits, no key transform),
    then read in key order when queried.  Small chunks are held (copied) until about 2^20
    values are pending: one ``bincount`` per small chunk would spend its time zeroing and adding
    65536 mostly empty counts.
    """

    FOLD_VALUES = 16 * FLOAT16_KEYS
    COUNT_BLOCK = 1 << 18
    BITS_IN_KEY_ORDER = _bits_in_key_order()

    def __init__(self) -> None:
        self.counts = np.zeros(FLOAT16_KEYS, dtype=np.int64)  # per bit pattern
        self.total = 0
        self._pending: list[np.ndarray] = []
        self._pending_values = 0

    def add(self, chunk: np.ndarray) -> None:
        """Count a 1-D float16 chunk of finite scores (counted now when large, else copied)."""
        self.total += chunk.size
        if chunk.size >= self.FOLD_VALUES // 2:
            self._count(chunk)
            return
        self._pending.append(chunk.copy())
        self._pending_values += chunk.size
        if self._pending_values >= self.FOLD_VALUES:
            self._fold()

    def remove(self, chunk: np.ndarray) -> None:
        """Uncount scores added before (the defect pixels of a map added whole)."""
        np.subtract.at(self.counts, chunk.view(np.uint16), 1)
        self.total -= chunk.size

    def merge(self, other: Float16Histogram) -> None:
        """Add ``other``'s counts."""
        other._fold()
        self.counts += other.counts
        self.total += other.total

    def _count(self, chunk: np.ndarray) -> None:
        """Count in blocks of 2^18 values, widened to intp (``bincount``'s fast path) in one
        reused, cache-sized buffer rather than one array as large as the chunk."""
        bits = chunk.reshape(-1).view(np.uint16)
        buffer = np.empty(min(bits.size, self.COUNT_BLOCK), dtype=np.intp)
        for start in range(0, bits.size, self.COUNT_BLOCK):
            block = buffer[: min(self.COUNT_BLOCK, bits.size - start)]
            block[...] = bits[start : start + block.size]
            self.counts += np.bincount(block, minlength=FLOAT16_KEYS)

    def _fold(self) -> None:
        if self._pending:
            self._count(np.concatenate(self._pending))
            self._pending, self._pending_values = [], 0

    def _counts_in_key_order(self) -> np.ndarray:
        """Counts per key (increasing value), -0.0 counted as 0.0."""
        self._fold()
        per_key = self.counts[self.BITS_IN_KEY_ORDER]
        per_key[ZERO_KEY] += per_key[ZERO_KEY - 1]
        per_key[ZERO_KEY - 1] = 0
        return per_key

    def below_and_equal(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For float16 ``values``: how many counted scores are ``< v`` and ``== v``, for each ``v``."""
        per_key = self._counts_in_key_order()
        below_key = np.cumsum(per_key) - per_key
        keys = float16_keys(values).astype(np.intp)
        keys[keys == ZERO_KEY - 1] = ZERO_KEY
        return below_key[keys], per_key[keys]

    def values(self) -> np.ndarray:
        """Every counted score, in increasing order (to pool them with scores of a wider dtype)."""
        bits = self.BITS_IN_KEY_ORDER.astype(np.uint16)
        return np.repeat(bits.view(np.float16), self._counts_in_key_order())


def _groups(chunks: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
    """Consecutive chunks gathered until each group holds at least ``size`` values.

    One ``bincount`` per group rather than per chunk: its output is as long as the grid, so
    small chunks would spend their time zeroing and adding mostly empty counts.
    """
    groups: list[list[np.ndarray]] = [[]]
    held = 0
    for chunk in chunks:
        if held >= size:
            groups.append([])
            held = 0
        groups[-1].append(chunk)
        held += chunk.size
    return groups


def exact_curve(
    negatives: list[np.ndarray] | Float16Histogram,
    positives: np.ndarray,
    weights: np.ndarray,
    regions: int,
    low: float,
    high: float,
) -> Curve:
    """The full threshold curve of the pooled scores (see the module docstring).

    ``negatives``: 1-D chunks of negative scores, or their histogram when they are float16;
    ``positives``: the positive scores with their PRO ``weights`` (1/|region|); all in one
    floating dtype, bounded by ``low`` and ``high``.
    """
    n_negatives = negatives.total if isinstance(negatives, Float16Histogram) else sum(chunk.size for chunk in negatives)
    if positives.size == 0:
        zero = np.zeros(1, dtype=np.int64)
        return Curve(np.array([n_negatives]), zero, np.zeros(1), n_negatives, 0, regions)
    order = np.lexsort((weights, positives))  # tied scores' weights summed in one order, whatever the arrival order
    ordered = positives[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    values = ordered[starts]
    counts = np.diff(np.concatenate([starts, [ordered.size]]))
    weight_sums = np.add.reduceat(weights[order], starts)
    if isinstance(negatives, Float16Histogram):
        below, equal = negatives.below_and_equal(values)
    else:
        below, equal = count_negatives(negatives, values, low, high)
    # Thresholds in decreasing order: the highest positive score first.
    fp_after = (n_negatives - below)[::-1]
    fp_before = fp_after - equal[::-1]
    tp_after = np.cumsum(counts[::-1])
    weight_after = np.cumsum(weight_sums[::-1])
    tp_before = np.concatenate([[0], tp_after[:-1]])
    weight_before = np.concatenate([[0.0], weight_after[:-1]])

    def interleave(before: np.ndarray, after: np.ndarray, last: float) -> np.ndarray:
        return np.concatenate([np.stack([before, after], axis=1).ravel(), [last]])

    return Curve(
        false_positives=interleave(fp_before, fp_after, n_negatives).astype(np.int64),
        true_positives=interleave(tp_before, tp_after, positives.size).astype(np.int64),
        region_weight=interleave(weight_before, weight_after, weight_after[-1]),
        negatives=n_negatives,
        positives=int(positives.size),
        regions=regions,
    )


class ExactState:
    """Every score, split into negatives and positives (with PRO weights).  float16 negatives
    are counted per value as they come (``Float16Histogram``), so with float16 maps the memory
    is that of the positive pixels only; other dtypes keep every negative (O(pixels))."""

    def __init__(self) -> None:
        self.negatives: list[np.ndarray] = []
        self.float16_negatives = Float16Histogram()
        self.positives: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.regions = 0

    def add(self, values: np.ndarray, defect: np.ndarray | None, weights: np.ndarray, regions: int) -> None:
        """Add scores: flat finite ``values``, flat boolean ``defect`` (None: no defect pixel),
        the positive pixels' weights."""
        if values.size == 0:
            return
        positives = values[defect] if defect is not None and (regions or defect.any()) else None
        if values.dtype == np.float16:  # count every pixel, then uncount the few defect ones
            self.float16_negatives.add(values)
            if positives is not None:
                self.float16_negatives.remove(positives)
        elif positives is not None:
            self.negatives.append(values[~defect])
        else:
            self.negatives.append(values.copy())
        if positives is not None:
            self.positives.append(positives)
            self.weights.append(weights)
        self.regions += regions

    def merge(self, other: ExactState) -> None:
        """Pool ``other``'s scores into this state."""
        self.negatives += other.negatives
        self.float16_negatives.merge(other.float16_negatives)
        self.positives += other.positives
        self.weights += other.weights
        self.regions += other.regions

    def curve(self) -> Curve:
        """The exact threshold curve of everything added so far."""
        if not self.negatives and not self.positives and not self.float16_negatives.total:
            return Curve(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1), 0, 0, 0)
        dtypes = [chunk.dtype for chunk in self.negatives + self.positives]
        dtype = np.result_type(*dtypes, *([np.float16] if self.float16_negatives.total else []))
        positives = np.concatenate([chunk.astype(dtype, copy=False) for chunk in self.positives] or [np.zeros(0, dtype)])
        weights = np.concatenate(self.weights or [np.zeros(0)])
        if dtype == np.float16:  # counted per value: no range needed
            return exact_curve(self.float16_negatives, positives, weights, self.regions, 0.0, 0.0)
        negatives = [chunk.astype(dtype, copy=False) for chunk in self.negatives]
        if self.float16_negatives.total:  # maps of mixed dtypes: pool the float16 ones as values
            negatives.append(self.float16_negatives.values().astype(dtype))
        chunks = [chunk for chunk in [*negatives, positives] if chunk.size] or [np.zeros(1, dtype)]
        low, high = min(float(c.min()) for c in chunks), max(float(c.max()) for c in chunks)
        return exact_curve(negatives, positives, weights, self.regions, low, high)
