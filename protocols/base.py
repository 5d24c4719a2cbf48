"""What a protocol is, and the mergeable evaluators that score predictions under it.

A protocol declares which manifest rows train and which test (``train_samples`` and
``test_samples``, polars frames of manifest rows), the evaluation units and their fusion, and
the metric set (``metric_names``); ``new_evaluator`` returns an ``Evaluator`` for one category.

Evaluators are fed per-image predictions (``update``), can be merged across processes when
disjoint parts of one category were scored in different Ray tasks (``merge``), and compute
metrics that are fractions in [0, 1] (``compute``); NaN means undefined (a single class among
the samples, or no anomaly maps given).  The metric math is ``m2ad.metrics``'.

Labels
------
``mask_rule=None`` (the default) means ``official`` in the compat modes, which reproduce the
official evaluation, and ``exact`` otherwise (``default_mask_rule``).
``mask_rule="exact"``: image labels are the stored ``label`` of the manifest.
``mask_rule="official"``: as the official M2AD evaluator does (reference m2ad.md section
11.4/11.6), a sample's label is recomputed as the max of its GT mask under the official
(eroded) rule, so an image whose tiny defect vanished when resizing counts as normal.  The
caller must then pass the masks of every sample (``m2ad.data`` reads them under that rule).

Metric modes
------------
``mode`` is the ``m2ad.metrics`` mode of the pixel metrics (image-level metrics are always
exact).  ``exact`` needs nothing more.  ``streaming`` and ``compat`` bin the map values, so they
need the value range of the maps the accumulator sees, shared by evaluators that will be merged:
pass ``value_range=(low, high)`` (for ``streaming`` any range that holds every value; for
``compat`` the exact min and max of the category's evaluated maps, which under ``synergy`` are
the fused view maps).  Without ``value_range`` the evaluator keeps those maps in memory and takes
their exact range at ``compute``, which is exact and simple but not bounded in memory.
The compat modes also hand the official evaluator's inputs over in its dtype
(``COMPAT_MAP_DTYPES``): float64, or float32 for ``compat-float32`` (scores included).
"""

from __future__ import annotations

import abc
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import polars as pl

from m2ad.metrics import COMPAT_MAP_DTYPES, PixelMetricAccumulator, grouped_auroc, image_metrics, map_value_range
from m2ad.metrics import MODES as EVAL_MODES
from m2ad.schema import MASK_RULES

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
MAX_LISTED = 5
_REQUIRED_COLUMNS = ("sample_id", "category", "split", "specimen", "view", "illumination", "label", "object_label")


def _listing(items: Sequence[Any]) -> str:
    shown = ", ".join(str(item) for item in items[:MAX_LISTED])
    return shown + (f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def _as_map(anomaly_map: Any, keep_float64: bool = False) -> np.ndarray:
    """A map (or a (B, H, W) batch) as float32, or as it is when float16 (the metrics score
    float16 exactly, and faster than after a conversion) or, if ``keep_float64``, float64."""
    array = np.asarray(anomaly_map)
    if array.dtype == np.float16 or (keep_float64 and array.dtype == np.float64):
        return array
    return array.astype(np.float32, copy=False)


def _as_mask(mask: Any) -> np.ndarray:
    """A GT mask (or a batch of them) as booleans: positive values are defects (boolean masks
    are taken as they are)."""
    array = np.asarray(mask)
    return array if array.dtype == bool else array > 0


def _as_batch(items: Sequence[np.ndarray] | np.ndarray, convert: Callable[[Any], np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """A (B, H, W) array converted at once (the metrics then work per batch), else a list."""
    if isinstance(items, np.ndarray) and items.ndim == 3:
        return convert(items)
    return [convert(item) for item in items]


def default_mask_rule(mode: str) -> str:
    """The mask rule when none is given: ``official`` for the compat modes (they reproduce the
    official evaluation, eroded masks and mask-derived labels included), else ``exact``."""
    return "official" if mode in COMPAT_MAP_DTYPES else "exact"


def check_settings(mode: str, mask_rule: str, pro_limit: float) -> None:
    """Refuse an unknown metric mode or mask rule, or an AUPRO limit outside (0, 1]."""
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; expected one of {', '.join(EVAL_MODES)}")
    if mask_rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {mask_rule!r}; expected one of {', '.join(MASK_RULES)}")
    if not 0 < pro_limit <= 1:
        raise ValueError(f"pro_limit must be in (0, 1], got {pro_limit}")


class Evaluator(abc.ABC):
    """Scores one category's predictions under a protocol; mergeable across processes.

    It knows its test samples up front (a frame of manifest rows), records one score per
    sample, optionally streams anomaly maps into a pixel-metric accumulator, and refuses
    unknown or repeated ids immediately and missing ones at ``compute``.
    """

    metric_names: tuple[str, ...]

    def __init__(self, test_samples: pl.DataFrame, *, mode: str = "exact", mask_rule: str | None = None, pro_limit: float = 0.3,
                 value_range: tuple[float, float] | None = None):
        mask_rule = default_mask_rule(mode) if mask_rule is None else mask_rule
        check_settings(mode, mask_rule, pro_limit)
        missing_columns = [name for name in _REQUIRED_COLUMNS if name not in test_samples.columns]
        if missing_columns:
            raise ValueError(f"test_samples lacks the manifest columns {missing_columns}")
        if test_samples.height == 0:
            raise ValueError("test_samples is empty: nothing to evaluate")
        self.mode, self.mask_rule, self.pro_limit = mode, mask_rule, pro_limit
        self.official_dtype = COMPAT_MAP_DTYPES.get(mode)
        """The dtype the official trainer hands the evaluator, in the compat modes (else None)."""
        self.sample_ids: list[str] = test_samples["sample_id"].to_list()
        self._row = {sample_id: row for row, sample_id in enumerate(self.sample_ids)}
        if len(self._row) != len(self.sample_ids):
            raise ValueError("test_samples has duplicate sample ids")
        self.stored_labels = test_samples["label"].cast(pl.Int8).fill_null(0).to_numpy().astype(np.int8)
        self.views: list[str | None] = test_samples["view"].to_list()
        self.illuminations: list[str | None] = test_samples["illumination"].to_list()
        self.scores = np.full(len(self.sample_ids), np.nan)
        self.seen = np.zeros(len(self.sample_ids), dtype=bool)
        self.mask_labels = np.full(len(self.sample_ids), -1, dtype=np.int8)
        self.with_maps = 0
        self.without_maps = 0
        self.value_range = value_range
        self._deferred: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._pixels: PixelMetricAccumulator | None = None
        self._range: tuple[float, float] | None = None  # set by measure_range_only
        if mode == "exact" or value_range is not None:
            self._pixels = PixelMetricAccumulator(mode, pro_limit, value_range=value_range)
        else:
            self._deferred = []

    def measure_range_only(self) -> None:
        """Make this fresh evaluator a first pass that only records the (min, max) of the maps
        its pixel metrics see (under ``synergy`` the fused view maps): ``evaluated_range()``.
        Masks are then only needed for their shape."""
        if self.seen.any():
            raise ValueError("measure_range_only needs an evaluator that has not been fed yet")
        self._deferred, self._pixels, self._range = None, None, (math.inf, -math.inf)

    def evaluated_range(self) -> tuple[float, float]:
        """The (min, max) recorded after ``measure_range_only``."""
        if self._range is None:
            raise ValueError("evaluated_range needs measure_range_only first")
        return self._range

    def _add_pixels(self, maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        """Feed evaluated maps (image or fused) to the pixel metrics, or keep them until the
        value range is known (``streaming`` / ``compat`` without ``value_range``)."""
        if self._range is not None:
            low, high = self._range
            for anomaly_map in maps:
                low, high = min(low, float(np.min(anomaly_map))), max(high, float(np.max(anomaly_map)))
            self._range = (low, high)
        elif self._deferred is not None:
            self._deferred.extend(zip(maps, masks))
        else:
            assert self._pixels is not None
            self._pixels.update(maps, masks)

    def _rows(self, sample_ids: Sequence[str], scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row indices and float64 scores of a batch, after checking ids and scores."""
        unknown = [sample_id for sample_id in sample_ids if sample_id not in self._row]
        if unknown:
            raise ValueError(f"not test samples of this evaluator: {_listing(unknown)}")
        rows = np.array([self._row[sample_id] for sample_id in sample_ids], dtype=np.int64)
        repeated = [self.sample_ids[row] for row in rows[self.seen[rows]]]
        repeated += [sample_id for sample_id, count in Counter(sample_ids).items() if count > 1]
        if repeated:
            raise ValueError(f"predictions given twice for: {_listing(sorted(set(repeated)))}")
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(values) != len(rows):
            raise ValueError(f"{len(rows)} sample ids but {len(values)} scores")
        if not np.isfinite(values).all():
            raise ValueError(f"NaN or inf scores for: {_listing([sample_ids[i] for i in np.flatnonzero(~np.isfinite(values))])}")
        return rows, values

    def _check_maps(self, count: int, maps: Sequence[np.ndarray] | np.ndarray | None,
                    masks: Sequence[np.ndarray] | np.ndarray | None) -> None:
        if maps is not None:
            if masks is None:
                raise ValueError("anomaly maps need the GT masks of the same samples (all-zero for normal images)")
            if len(maps) != count:
                raise ValueError(f"{count} sample ids but {len(maps)} maps")
        if masks is not None and len(masks) != count:
            raise ValueError(f"{count} sample ids but {len(masks)} masks")
        same_batch_shape = isinstance(maps, np.ndarray) and isinstance(masks, np.ndarray) and maps.shape == masks.shape
        if maps is not None and masks is not None and not same_batch_shape:
            for anomaly_map, mask in zip(maps, masks):
                if np.shape(anomaly_map) != np.shape(mask):
                    raise ValueError(f"map shape {np.shape(anomaly_map)} differs from mask shape {np.shape(mask)}")
        if self.mask_rule == "official" and masks is None:
            raise ValueError("mask_rule='official' recomputes labels from the GT masks: pass the masks of every sample")

    def _record(self, rows: np.ndarray, values: np.ndarray, maps: Any, masks: Any) -> None:
        self.scores[rows] = values
        self.seen[rows] = True
        if isinstance(masks, np.ndarray):
            self.mask_labels[rows] = masks.any(axis=tuple(range(1, masks.ndim)))
        elif masks is not None:
            self.mask_labels[rows] = [int(np.any(np.asarray(mask))) for mask in masks]
        if maps is None:
            self.without_maps += len(rows)
        else:
            self.with_maps += len(rows)

    @abc.abstractmethod
    def update(self, sample_ids: Sequence[str], scores: Sequence[float] | np.ndarray,
               maps: Sequence[np.ndarray] | np.ndarray | None = None,
               masks: Sequence[np.ndarray] | np.ndarray | None = None) -> None:
        """Add the predictions of some test samples: scores (B,), maps and masks (B, H, W) or None."""

    def _merge_samples(self, other: Evaluator) -> None:
        if type(other) is not type(self) or other.sample_ids != self.sample_ids:
            raise ValueError("can only merge evaluators of the same protocol built on the same test samples")
        if (other.mode, other.mask_rule, other.pro_limit, other.value_range) != (self.mode, self.mask_rule, self.pro_limit, self.value_range):
            raise ValueError("can only merge evaluators with the same mode, mask rule, pro_limit and value_range")
        both = np.flatnonzero(self.seen & other.seen)
        if len(both):
            raise ValueError(f"both evaluators scored: {_listing([self.sample_ids[row] for row in both])}")
        self.scores[other.seen] = other.scores[other.seen]
        self.seen |= other.seen
        known = other.mask_labels >= 0
        self.mask_labels[known] = other.mask_labels[known]
        self.with_maps += other.with_maps
        self.without_maps += other.without_maps
        if self._deferred is not None and other._deferred is not None:
            self._deferred.extend(other._deferred)
        elif self._pixels is not None and other._pixels is not None:
            self._pixels.merge(other._pixels)
        else:
            raise ValueError("cannot merge an evaluator given a value_range with one that was not")

    @abc.abstractmethod
    def merge(self, other: Evaluator) -> Evaluator:
        """Fold in an evaluator that scored other samples of the same test set; returns self."""

    def _check_complete(self) -> None:
        missing = [self.sample_ids[row] for row in np.flatnonzero(~self.seen)]
        if missing:
            raise ValueError(f"no predictions for {len(missing)} of {len(self.sample_ids)} test samples: {_listing(missing)}")
        if self.with_maps and self.without_maps:
            raise ValueError(f"anomaly maps were given for {self.with_maps} samples but not for {self.without_maps}")

    def _scores_for_metrics(self) -> np.ndarray:
        """The image scores, in the compat modes as the official trainer hands them over."""
        return self.scores if self.official_dtype is None else self.scores.astype(self.official_dtype)

    def labels(self) -> np.ndarray:
        """Per-sample labels under the mask rule (see the module docstring)."""
        if self.mask_rule == "official":
            if (self.mask_labels < 0).any():
                raise ValueError("mask_rule='official' needs the masks of every sample")
            return self.mask_labels.copy()
        return self.stored_labels.copy()

    def _pixel_metrics(self) -> dict[str, float]:
        if not self.with_maps:
            return dict.fromkeys(PIXEL_METRICS, math.nan)
        if self._deferred is None:
            assert self._pixels is not None
            return self._pixels.compute()
        maps = [item[0] for item in self._deferred]
        low, high = map_value_range(maps)
        if self.mode == "streaming" and low == high:  # constant maps: any non-empty range holds them
            high = low + 1.0
        pixels = PixelMetricAccumulator(self.mode, self.pro_limit, value_range=(low, high))
        pixels.update(maps, [item[1] for item in self._deferred])
        return pixels.compute()

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """All metrics of ``metric_names``, fractions in [0, 1] (NaN where undefined)."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """How many evaluation units of each kind and label (after ``compute`` is possible)."""

    @abc.abstractmethod
    def breakdown(self) -> dict[str, Any] | None:
        """Image AUROC per view / illumination where the data have them, else None."""


class ImageEvaluator(Evaluator):
    """Every test image is one independent sample (protocols ``invariant`` and ``standard``)."""

    metric_names = IMAGE_METRICS + PIXEL_METRICS

    def update(self, sample_ids: Sequence[str], scores: Sequence[float] | np.ndarray,
               maps: Sequence[np.ndarray] | np.ndarray | None = None,
               masks: Sequence[np.ndarray] | np.ndarray | None = None) -> None:
        sample_ids = list(sample_ids)
        rows, values = self._rows(sample_ids, scores)
        self._check_maps(len(rows), maps, masks)
        if maps is not None:
            keep_float64 = self.official_dtype is not None
            self._add_pixels(_as_batch(maps, lambda item: _as_map(item, keep_float64)), _as_batch(masks, _as_mask))
        self._record(rows, values, maps, masks)

    def merge(self, other: Evaluator) -> ImageEvaluator:
        self._merge_samples(other)
        return self

    def compute(self) -> dict[str, float]:
        self._check_complete()
        return {**image_metrics(self._scores_for_metrics(), self.labels()), **self._pixel_metrics()}

    def counts(self) -> dict[str, int]:
        labels = self.labels()
        return {"images": len(labels), "normal_images": int((labels == 0).sum()), "anomalous_images": int((labels == 1).sum())}

    def breakdown(self) -> dict[str, Any] | None:
        if any(view is None for view in self.views) or any(light is None for light in self.illuminations):
            return None
        self._check_complete()
        labels, scores = self.labels(), self._scores_for_metrics()
        pairs = list(zip(self.views, self.illuminations))
        per_pair = grouped_auroc(scores, labels, pairs)
        view_illumination: dict[str, dict[str, float]] = {}
        for (view, light), value in per_pair.items():
            view_illumination.setdefault(view, {})[light] = value
        return {
            "view": grouped_auroc(scores, labels, self.views),
            "illumination": grouped_auroc(scores, labels, self.illuminations),
            "view_illumination": view_illumination,
        }


class Protocol(abc.ABC):
    """Which samples train and test, the evaluation units and the metric set.

    Subclasses set ``name``, ``metric_names`` and ``description``, pick the test rows
    (``_test_filter``) and build their evaluator (``new_evaluator``).  Every protocol trains
    on all training images of the category, as the official M2AD code does (section 11.1).
    """

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]
    description: ClassVar[str]
    fuses_maps: ClassVar[bool] = False
    """True when the pixel metrics see fused maps rather than the image maps as given."""

    def _category_rows(self, manifest: pl.DataFrame, category: str, split: str) -> pl.DataFrame:
        missing_columns = [name for name in _REQUIRED_COLUMNS if name not in manifest.columns]
        if missing_columns:
            raise ValueError(f"the manifest lacks the columns {missing_columns}")
        rows = manifest.filter(pl.col("category") == category)
        if rows.height == 0:
            known = sorted(manifest["category"].unique().to_list())
            raise ValueError(f"unknown category {category!r}; the dataset has: {', '.join(known)}")
        return rows.filter(pl.col("split") == split).sort(["specimen", "view", "illumination", "sample_id"], nulls_last=True)

    def train_samples(self, manifest: pl.DataFrame, category: str) -> pl.DataFrame:
        """All training images of the category, ordered by (specimen, view, illumination)."""
        return self._category_rows(manifest, category, "train")

    def test_samples(self, manifest: pl.DataFrame, category: str) -> pl.DataFrame:
        """The test images this protocol scores, ordered by (specimen, view, illumination)."""
        return self._test_filter(self._category_rows(manifest, category, "test"))

    def ignored_samples(self, manifest: pl.DataFrame, category: str) -> pl.DataFrame:
        """Test images of the category that this protocol leaves out (predictions for them
        are accepted and ignored)."""
        test = self._category_rows(manifest, category, "test")
        kept = self._test_filter(test)
        return test.filter(~pl.col("sample_id").is_in(kept["sample_id"].implode()))

    def _test_filter(self, test: pl.DataFrame) -> pl.DataFrame:
        return test

    @abc.abstractmethod
    def new_evaluator(self, test_samples: pl.DataFrame, *, mode: str = "exact", mask_rule: str | None = None,
                      pro_limit: float = 0.3, value_range: tuple[float, float] | None = None) -> Evaluator:
        """A fresh evaluator for the test samples of one category (from ``test_samples``);
        ``mask_rule=None``: ``default_mask_rule(mode)``; ``value_range``: see "Metric modes" in
        the module docstring."""

    def __repr__(self) -> str:
        return f"<protocol {self.name}>"
