"""The mergeable pixel-metric accumulator behind ``pixel_metrics`` and ``point_metrics``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Literal

import numpy as np

from m2ad.metrics.compat import MAP_DTYPES, CompatState
from m2ad.metrics.curve import Curve, aupro_from_curve, auroc, average_precision, certified_error_bounds, f1_max
from m2ad.metrics.exact import ExactState
from m2ad.metrics.regions import region_weights
from m2ad.metrics.streaming import DEFAULT_BINS, HistogramState

Mode = Literal["exact", "streaming", "compat", "compat-float32"]
MODES = ("exact", "streaming", "compat", "compat-float32")
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max")


class UndefinedMetricWarning(RuntimeWarning):
    """A metric is undefined for the data (one class only, no defect region): it is NaN."""


def as_score_array(value: object, index: int, *, keep_float16: bool = False) -> np.ndarray:
    """One map (or point-score array) as a float array: bool -> float32, integers -> float64,
    float16 -> float32 unless ``keep_float16`` (exact mode counts float16 scores as they are)."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"map {index}: expected real numbers, got dtype {array.dtype}")
    if array.dtype.kind in "iu":
        return array.astype(np.float64)
    if array.dtype == np.float16 and keep_float16:
        return array.astype(np.float16, copy=False)  # native byte order
    if array.dtype.kind == "b" or array.dtype.itemsize < 4:
        return array.astype(np.float32)
    return array


def all_finite(values: np.ndarray) -> bool:
    """True when no value is NaN or infinite (float16 read from its exponent bits: NumPy's
    float16 reductions are slow)."""
    if values.size == 0:
        return True
    if values.dtype == np.float16:  # all exponent bits set means inf or NaN
        return int((values.view(np.uint16) & 0x7C00).max()) != 0x7C00
    return bool(np.isfinite(values.min()) and np.isfinite(values.max()))


def as_defect_mask(value: object, index: int) -> np.ndarray:
    """One ground-truth mask as booleans: any non-zero value is a defect."""
    array = np.asarray(value)
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "iuf":
        raise ValueError(f"mask {index}: expected numbers or booleans, got dtype {array.dtype}")
    return array != 0


_END = object()


def _pairs(maps: Iterable[object], masks: Iterable[object]) -> Iterable[tuple[object, object]]:
    """Pairs of (map, mask); a clear error when one sequence ends before the other."""
    map_iterator, mask_iterator = iter(maps), iter(masks)
    while True:
        anomaly_map, mask = next(map_iterator, _END), next(mask_iterator, _END)
        if anomaly_map is _END and mask is _END:
            return
        if anomaly_map is _END or mask is _END:
            raise ValueError("maps and masks have different lengths")
        yield anomaly_map, mask


class PixelMetricAccumulator:
    """Pooled pixel AUROC, AP, F1-max and AUPRO of one category, fed batch by batch.

    ``mode``:

    * ``"exact"`` gives the exact values, identical to scikit-learn and to the MVTec AD AUPRO
      definition; it keeps every score of float32 maps (about 4 bytes per pixel), and of
      float16 maps only the defect pixels (normal ones are counted per value, in 512 KiB);
    * ``"streaming"`` keeps ``3 * bins`` numbers (24 bytes per bin) whatever the number of
      images; needs ``value_range=(low, high)``, the same for every accumulator that will be
      merged (scores outside it are clamped into the end bins).  ``error_bounds()`` gives a
      guaranteed bound on the deviation from exact;
    * ``"compat"`` reproduces the official M2AD evaluator on the float64 maps its CDO, RD++,
      Dinomaly and INP-Former trainers hand it, ``"compat-float32"`` on the float32 maps of its
      MSFlow trainer (``m2ad.metrics.compat``); both need ``value_range`` = the exact (min, max)
      of all the category's maps, e.g. from a first pass with ``map_value_range``.

    ``regions=False`` skips connected components and AUPRO, and accepts score arrays of any
    shape (point clouds).  ``merge`` adds another accumulator with the same settings; the object
    pickles (for Ray) as plain numpy arrays.
    """

    def __init__(
        self,
        mode: Mode = "exact",
        pro_limit: float = 0.3,
        *,
        value_range: tuple[float, float] | None = None,
        bins: int = DEFAULT_BINS,
        regions: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown metrics mode {mode!r}; choose one of {', '.join(MODES)}")
        if not 0 < pro_limit <= 1:
            raise ValueError(f"pro_limit must be in (0, 1], got {pro_limit}")
        self.mode, self.pro_limit, self.regions, self.samples = mode, float(pro_limit), regions, 0
        if mode == "exact":
            self._state: ExactState | HistogramState | CompatState = ExactState()
            return
        if value_range is None:
            raise ValueError(
                f"{mode} mode needs value_range=(low, high): the score range shared by every "
                f"accumulator that will be merged (take it from a first pass, see map_value_range)"
            )
        low, high = (float(bound) for bound in value_range)
        if not (np.isfinite(low) and np.isfinite(high) and low <= high):
            raise ValueError(f"value_range must be finite with low <= high, got {value_range}")
        if mode == "streaming":
            if not low < high:
                raise ValueError(f"streaming mode needs low < high in value_range, got {value_range}")
            if bins < 2:
                raise ValueError(f"bins must be at least 2, got {bins}")
            self._state = HistogramState(low, high, bins)
        else:
            self._state = CompatState(low, high, MAP_DTYPES[mode])

    def update(self, maps: Iterable[object], masks: Iterable[object]) -> None:
        """Add maps (2-D float arrays, or a 3-D batch) and their masks (non-zero = defect)."""
        if isinstance(maps, np.ndarray) and maps.ndim < 2 + self.regions:
            raise ValueError(f"maps must be a sequence of arrays or a batch array, got one array of shape {maps.shape}")
        if self.regions and isinstance(maps, np.ndarray) and isinstance(masks, np.ndarray) and maps.ndim == 3 and maps.shape == masks.shape:
            self._update_batch(maps, masks)
            return
        for anomaly_map, mask in _pairs(maps, masks):
            index = self.samples
            values = as_score_array(anomaly_map, index, keep_float16=self.mode != "streaming")
            defect = as_defect_mask(mask, index)
            if values.shape != defect.shape:
                raise ValueError(f"map {index} has shape {values.shape} but its mask has shape {defect.shape}")
            if self.regions and values.ndim != 2:
                raise ValueError(f"map {index} must be 2-D, got shape {values.shape}")
            if values.size and not all_finite(values):
                raise ValueError(f"map {index} contains NaN or infinite values")
            if self.regions:
                weights, count = region_weights(defect)
            else:
                weights, count = np.zeros(int(np.count_nonzero(defect))), 0
            self._state.add(values.ravel(), defect.ravel(), weights, count)
            self.samples += 1

    def _update_batch(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """``update`` for a (B, H, W) batch of maps and masks, added as one chunk of pixels:
        the metrics pool pixels, so only the PRO regions need the maps one by one."""
        values = as_score_array(maps, self.samples, keep_float16=self.mode != "streaming")
        defect = as_defect_mask(masks, self.samples)
        if not all_finite(values):
            first = next(index for index in range(len(values)) if not all_finite(values[index]))
            raise ValueError(f"map {self.samples + first} contains NaN or infinite values")
        regions = [region_weights(defect[index]) for index in np.flatnonzero(defect.any(axis=(1, 2)))]
        weights = np.concatenate([item[0] for item in regions]) if regions else np.zeros(0)  # row-major, map after map
        self._state.add(values.reshape(-1), defect.reshape(-1) if regions else None, weights, sum(item[1] for item in regions))
        self.samples += len(values)

    def merge(self, other: PixelMetricAccumulator) -> PixelMetricAccumulator:
        """Pool ``other`` (same mode and settings) into this accumulator; returns ``self``."""
        if (other.mode, other.pro_limit, other.regions) != (self.mode, self.pro_limit, self.regions):
            raise ValueError(
                f"cannot merge a {other.mode} accumulator (pro_limit={other.pro_limit}, regions={other.regions}) "
                f"into a {self.mode} one (pro_limit={self.pro_limit}, regions={self.regions})"
            )
        self._state.merge(other._state)  # type: ignore[arg-type]
        self.samples += other.samples
        return self

    def compute(self) -> dict[str, float]:
        """``pixel_auroc``, ``pixel_ap``, ``pixel_f1max`` and (with regions) ``aupro``.

        Undefined metrics are NaN with an ``UndefinedMetricWarning``: AUROC, AP and F1-max when
        all pixels are normal or all are defects; AUPRO when there is no defect region or no
        normal pixel.
        """
        if self.samples == 0:
            raise ValueError("no maps were added: metrics of an empty set are undefined")
        nan = float("nan")
        if isinstance(self._state, CompatState):
            negatives, positives, regions = self._state.negatives, self._state.positives, self._state.regions
            curve = None
        else:
            curve = self._state.curve()
            negatives, positives, regions = curve.negatives, curve.positives, curve.regions
        if negatives + positives == 0:
            raise ValueError("no pixels were added: metrics of an empty set are undefined")
        results = dict.fromkeys(PIXEL_KEYS, nan)
        if self.regions:
            results["aupro"] = nan
        if negatives == 0 or positives == 0:
            warnings.warn(
                f"pixel AUROC, AP and F1-max are undefined with {positives} defect and {negatives} normal "
                f"pixels: returning NaN",
                UndefinedMetricWarning,
                stacklevel=2,
            )
        if self.regions and (negatives == 0 or regions == 0):
            warnings.warn(
                f"AUPRO is undefined with {regions} defect regions and {negatives} normal pixels: returning NaN",
                UndefinedMetricWarning,
                stacklevel=2,
            )
        if isinstance(self._state, CompatState):
            if negatives and positives:
                values = self._state.compute(self.pro_limit)
                results.update({key: values[key] for key in results})
                if self.regions and regions and np.isnan(results["aupro"]):
                    warnings.warn(
                        f"AUPRO is undefined in the official evaluation of these maps (no binned point at "
                        f"FPR <= {self.pro_limit}, or PRO 0 on both sides of it): returning NaN",
                        UndefinedMetricWarning,
                        stacklevel=2,
                    )
            return results
        assert curve is not None
        if negatives and positives:
            results.update(pixel_auroc=auroc(curve), pixel_ap=average_precision(curve), pixel_f1max=f1_max(curve))
        if self.regions and negatives and regions:
            results["aupro"] = aupro_from_curve(curve, self.pro_limit)
        return results

    def error_bounds(self) -> dict[str, float]:
        """Guaranteed bound on |value - exact value| per metric: 0 in exact mode, from the bins in streaming.

        Compat mode reproduces a coarse reference evaluator and has no such bound.
        """
        if isinstance(self._state, CompatState):
            raise ValueError(f"{self.mode} mode reproduces the official binned evaluator; it has no error bound")
        if self.samples == 0:
            raise ValueError("no maps were added")
        curve: Curve = self._state.curve()
        bounds = certified_error_bounds(curve, self.pro_limit)
        if isinstance(self._state, ExactState):
            bounds = {key: (0.0 if np.isfinite(value) else value) for key, value in bounds.items()}
        if not self.regions:
            bounds.pop("aupro")
        return bounds
