"""The one evaluator behind every protocol: per-sample predictions in, fused units and metrics out.

A :class:`FusionEvaluator` scores one category under a protocol spec (``protocols.spec``).  It
knows its test samples up front (a frame of manifest rows), records one score per sample
(``update``), fuses the maps of the protocol's map level as they arrive, and can be merged with
evaluators that scored other samples of the same test set in other processes (``merge``, as a
torchmetrics state).  ``compute`` returns metrics that are fractions in [0, 1]; NaN means
undefined (a single class among the units, or no maps given).  Scores are stored per test-sample
row, so no result depends on the order of updates or merges.  The metric math is
``m2ad.metrics``'.

Units
-----
A level's units are its test samples keyed by the level's ``keys`` (in the order of the test
samples).  A unit's score is the mean or the max of its samples' scores; its label the max of
their labels, or the max of a manifest column (``object_label``); its map, on the map level, the
pixel-wise mean or max of their maps, and its mask the union of their masks.

Labels
------
``mask_rule=None`` (the default) means ``official`` in the compat modes, which reproduce the
official evaluation, and ``exact`` otherwise (``default_mask_rule``).
``mask_rule="exact"``: sample labels are the stored ``label`` of the manifest.
``mask_rule="official"``: as the official M2AD evaluator (reference m2ad.md section 11.4/11.6)
and ADEval (Real-IAD) do, a sample's label is recomputed as the max of its GT mask under the
official rule, so an image whose tiny defect vanished when resizing counts as normal.  The
caller must then pass the masks of every sample (``m2ad.data`` reads them under that rule).

Metric modes
------------
``mode`` is the ``m2ad.metrics`` mode of the pixel metrics (unit-level metrics are always
exact).  ``exact`` needs nothing more.  ``streaming`` and ``compat`` bin the map values, so they
need the value range of the maps the accumulator sees, shared by evaluators that will be merged:
pass ``value_range=(low, high)`` (for ``streaming`` any range that holds every value; for
``compat`` the exact min and max of the category's evaluated maps, which on a fused map level
are the fused maps).  Without ``value_range`` the evaluator keeps those maps in memory and takes
their exact range at ``compute``, which is exact and simple but not bounded in memory.
The compat modes also hand the official evaluator's inputs over in its dtype
(``COMPAT_MAP_DTYPES``): float64, or float32 for ``compat-float32`` (scores included).

Fusion in the compat modes is ``m2ad_fuse``'s: a mean map is ``np.mean`` of the maps stacked in
test-sample order (illumination order), in the official dtype, and a mean score is ``np.mean``
(pairwise summation) of the scores in test-sample order.  The other modes average in float64
whatever the order and round the fused map to float32.  Max fusion is exact in every mode.

Memory: each unit of the map level with some but not all of its samples seen keeps one float64
running map and one mask (compat mean: a copy of each of its maps); feed samples in test-sample
order and at most one unit is open at a time.  Any order works, at the cost of more open units.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from m2ad.metrics import COMPAT_MAP_DTYPES, PixelMetricAccumulator, grouped_auroc, image_metrics, map_value_range
from m2ad.metrics import MODES as EVAL_MODES
from m2ad.schema import MASK_RULES

if TYPE_CHECKING:
    from protocols.spec import Level, ProtocolSpec

MAX_LISTED = 5
REQUIRED_COLUMNS = ("sample_id", "category", "split", "specimen", "view", "illumination", "label", "object_label")
"""Manifest columns every protocol reads."""


def listing(items: Sequence[Any]) -> str:
    """The first few items, comma-separated, and how many more there are."""
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


def _group_means(values: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """``np.mean`` of each group's values taken in row order, as ``m2ad_fuse`` averages a list."""
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(count + 1))
    return np.array([np.mean(values[order[start:end]]) for start, end in zip(bounds[:-1], bounds[1:])], dtype=values.dtype)


@dataclass
class _Units:
    """The units of one fused level: which unit each test-sample row belongs to."""

    of_row: np.ndarray  # int64, one unit index per row
    keys: list[tuple[Any, ...]]
    sizes: np.ndarray  # samples per unit

    @classmethod
    def group(cls, test_samples: pl.DataFrame, keys: Sequence[str]) -> _Units:
        index: dict[tuple[Any, ...], int] = {}
        columns = [test_samples[key].to_list() for key in keys]
        of_row = np.array([index.setdefault(key, len(index)) for key in zip(*columns)], dtype=np.int64)
        return cls(of_row, list(index), np.bincount(of_row, minlength=len(index)))


@dataclass
class _OpenUnit:
    """The running fusion of a map-level unit whose samples have not all been seen yet."""

    running: np.ndarray | None  # float64 sum or max, so that the result does not depend on the arrival order
    maps: dict[int, np.ndarray] | None  # compat mean: each map by test-sample row, fused once complete
    mask: np.ndarray  # bool
    count: int

    def fold_in(self, other: _OpenUnit, reduce: str) -> None:
        """Add ``other``'s maps (other samples of the same unit) into this one."""
        if self.running is not None and other.running is not None:
            if reduce == "max":
                np.maximum(self.running, other.running, out=self.running)
            else:
                self.running += other.running
        if self.maps is not None and other.maps is not None:
            self.maps.update(other.maps)
        self.mask |= other.mask
        self.count += other.count

    def copy(self) -> _OpenUnit:
        return _OpenUnit(None if self.running is None else self.running.copy(), None if self.maps is None else dict(self.maps),
                         self.mask.copy(), self.count)


class FusionEvaluator:
    """Scores one category's predictions under a protocol spec; mergeable across processes.

    It refuses unknown or repeated ids immediately and missing ones at ``compute``.
    """

    def __init__(self, spec: ProtocolSpec, test_samples: pl.DataFrame, *, mode: str = "exact", mask_rule: str | None = None,
                 pro_limit: float = 0.3, value_range: tuple[float, float] | None = None):
        mask_rule = default_mask_rule(mode) if mask_rule is None else mask_rule
        check_settings(mode, mask_rule, pro_limit)
        spec.check_mode(mode, mask_rule)
        missing_columns = [name for name in REQUIRED_COLUMNS if name not in test_samples.columns]
        if missing_columns:
            raise ValueError(f"test_samples lacks the manifest columns {missing_columns}")
        if test_samples.height == 0:
            raise ValueError("test_samples is empty: nothing to evaluate")
        axes = [axis for axis in spec.requires.axes if test_samples[axis].null_count()]
        if axes:
            raise ValueError(f"the {spec.name} protocol needs {' and '.join(spec.requires.axes)} on every test sample "
                             f"({' and '.join(axes)} missing); use 'standard'")
        self.spec = spec
        self.metric_names = spec.metric_names
        self.mode, self.mask_rule, self.pro_limit = mode, mask_rule, pro_limit
        self.official_dtype = COMPAT_MAP_DTYPES.get(mode)
        """The dtype the official trainer hands the evaluator, in the compat modes (else None)."""
        self.test_samples = test_samples
        self.sample_ids: list[str] = test_samples["sample_id"].to_list()
        self._row = {sample_id: row for row, sample_id in enumerate(self.sample_ids)}
        if len(self._row) != len(self.sample_ids):
            raise ValueError("test_samples has duplicate sample ids")
        self.stored_labels = test_samples["label"].cast(pl.Int8).fill_null(0).to_numpy().astype(np.int8)
        self.units = {level.name: _Units.group(test_samples, level.keys) for level in spec.levels if level.fused}
        self.scores = np.full(len(self.sample_ids), np.nan)
        self.seen = np.zeros(len(self.sample_ids), dtype=bool)
        self.mask_labels = np.full(len(self.sample_ids), -1, dtype=np.int8)
        self.with_maps = 0
        self.without_maps = 0
        self.value_range = value_range
        self.map_level: Level | None = spec.dense_level
        self._open: dict[int, _OpenUnit] = {}
        self.fused_units = 0
        self._deferred: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._pixels: PixelMetricAccumulator | None = None
        self._range: tuple[float, float] | None = None  # set by measure_range_only
        if mode == "exact" or value_range is not None:
            self._pixels = self._accumulator(value_range)
        else:
            self._deferred = []

    def _accumulator(self, value_range: tuple[float, float] | None) -> PixelMetricAccumulator:
        return PixelMetricAccumulator(self.mode, self.pro_limit, value_range=value_range, regions=self.spec.map_kind == "pixel")

    # ------------------------------------------------------------------ feeding

    def measure_range_only(self) -> None:
        """Make this fresh evaluator a first pass that only records the (min, max) of the maps
        its pixel metrics see (fused, on a fused map level): ``evaluated_range()``.  Masks are
        then only needed for their shape."""
        if self.seen.any():
            raise ValueError("measure_range_only needs an evaluator that has not been fed yet")
        self._deferred, self._pixels, self._range = None, None, (math.inf, -math.inf)

    def evaluated_range(self) -> tuple[float, float]:
        """The (min, max) recorded after ``measure_range_only``."""
        if self._range is None:
            raise ValueError("evaluated_range needs measure_range_only first")
        return self._range

    def _add_pixels(self, maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray) -> None:
        """Feed evaluated maps (as given or fused) to the pixel metrics, or keep them until the
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
            raise ValueError(f"not test samples of this evaluator: {listing(unknown)}")
        rows = np.array([self._row[sample_id] for sample_id in sample_ids], dtype=np.int64)
        repeated = [self.sample_ids[row] for row in rows[self.seen[rows]]]
        repeated += [sample_id for sample_id, count in Counter(sample_ids).items() if count > 1]
        if repeated:
            raise ValueError(f"predictions given twice for: {listing(sorted(set(repeated)))}")
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(values) != len(rows):
            raise ValueError(f"{len(rows)} sample ids but {len(values)} scores")
        if not np.isfinite(values).all():
            raise ValueError(f"NaN or inf scores for: {listing([sample_ids[i] for i in np.flatnonzero(~np.isfinite(values))])}")
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

    def update(self, sample_ids: Sequence[str], scores: Sequence[float] | np.ndarray,
               maps: Sequence[np.ndarray] | np.ndarray | None = None,
               masks: Sequence[np.ndarray] | np.ndarray | None = None) -> None:
        """Add the predictions of some test samples: scores (B,), maps and masks (B, H, W)
        (or (B, N) point scores and labels) or None."""
        sample_ids = list(sample_ids)
        rows, values = self._rows(sample_ids, scores)
        self._check_maps(len(rows), maps, masks)
        if maps is not None and self.map_level is not None:
            assert masks is not None
            if self.map_level.fused:
                compat = self.official_dtype is not None
                for row, anomaly_map, mask in zip(rows, maps, masks):
                    anomaly_map = np.asarray(anomaly_map) if compat else np.asarray(anomaly_map, dtype=np.float64)
                    self._add_to_unit(int(row), anomaly_map, np.asarray(mask) > 0)
            else:
                keep_float64 = self.official_dtype is not None
                self._add_pixels(_as_batch(maps, lambda item: _as_map(item, keep_float64)), _as_batch(masks, _as_mask))
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

    def _add_to_unit(self, row: int, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        assert self.map_level is not None
        unit = int(self.units[self.map_level.name].of_row[row])
        open_unit = self._open.get(unit)
        if open_unit is None:
            keep_each = self.official_dtype is not None and self.map_level.maps == "mean"
            start = None if keep_each else np.full(anomaly_map.shape, -np.inf if self.map_level.maps == "max" else 0.0)
            open_unit = self._open[unit] = _OpenUnit(start, {} if keep_each else None, np.zeros(anomaly_map.shape, dtype=bool), 0)
        if open_unit.mask.shape != anomaly_map.shape:
            raise ValueError(f"maps of {self.map_level.name} {self._unit_name(unit)} differ in shape: "
                             f"{open_unit.mask.shape} and {anomaly_map.shape}")
        if open_unit.maps is not None:
            open_unit.maps[row] = np.array(anomaly_map)  # a copy: the caller may reuse its buffer
        elif self.map_level.maps == "max":
            assert open_unit.running is not None
            np.maximum(open_unit.running, anomaly_map, out=open_unit.running)
        else:
            assert open_unit.running is not None
            open_unit.running += anomaly_map
        open_unit.mask |= mask
        open_unit.count += 1
        self._fuse_if_complete(unit)

    def _fuse_if_complete(self, unit: int) -> None:
        assert self.map_level is not None
        open_unit = self._open[unit]
        if open_unit.count < self.units[self.map_level.name].sizes[unit]:
            return
        if open_unit.maps is not None:  # m2ad_fuse: np.mean(maps, axis=0) in the maps' dtype, test-sample order
            stacked = np.stack([open_unit.maps[row] for row in sorted(open_unit.maps)]).astype(self.official_dtype)
            fused = np.mean(stacked, axis=0)
        else:
            assert open_unit.running is not None
            fused = open_unit.running / open_unit.count if self.map_level.maps == "mean" else open_unit.running
            fused = fused.astype(self.official_dtype if self.official_dtype is not None else np.float32)
        self._add_pixels([fused], [open_unit.mask])
        del self._open[unit]
        self.fused_units += 1

    def _unit_name(self, unit: int) -> str:
        assert self.map_level is not None
        return "(" + ", ".join(f"{key} {value}" for key, value in zip(self.map_level.keys, self.units[self.map_level.name].keys[unit])) + ")"

    def merge(self, other: FusionEvaluator) -> FusionEvaluator:
        """Fold in an evaluator that scored other samples of the same test set; returns self."""
        if not isinstance(other, FusionEvaluator) or (other.spec.name, other.spec.version) != (self.spec.name, self.spec.version) \
                or other.sample_ids != self.sample_ids:
            raise ValueError("can only merge evaluators of the same protocol built on the same test samples")
        if (other.mode, other.mask_rule, other.pro_limit, other.value_range) != (self.mode, self.mask_rule, self.pro_limit, self.value_range):
            raise ValueError("can only merge evaluators with the same mode, mask rule, pro_limit and value_range")
        both = np.flatnonzero(self.seen & other.seen)
        if len(both):
            raise ValueError(f"both evaluators scored: {listing([self.sample_ids[row] for row in both])}")
        if (self._range is None) != (other._range is None):
            raise ValueError("cannot merge a range-only evaluator with one that computes metrics")
        self.scores[other.seen] = other.scores[other.seen]
        self.seen |= other.seen
        known = other.mask_labels >= 0
        self.mask_labels[known] = other.mask_labels[known]
        self.with_maps += other.with_maps
        self.without_maps += other.without_maps
        if self._range is not None and other._range is not None:
            self._range = (min(self._range[0], other._range[0]), max(self._range[1], other._range[1]))
        elif self._deferred is not None and other._deferred is not None:
            self._deferred.extend(other._deferred)
        elif self._pixels is not None and other._pixels is not None:
            self._pixels.merge(other._pixels)
        else:
            raise ValueError("cannot merge an evaluator given a value_range with one that was not")
        for unit, theirs in other._open.items():
            mine = self._open.get(unit)
            if mine is None:
                self._open[unit] = theirs.copy()
            else:
                if mine.mask.shape != theirs.mask.shape:
                    raise ValueError(f"maps of {self._unit_name(unit)} differ in shape between the merged evaluators")
                assert self.map_level is not None and self.map_level.maps is not None
                mine.fold_in(theirs, self.map_level.maps)
            self._fuse_if_complete(unit)
        self.fused_units += other.fused_units
        return self

    # ------------------------------------------------------------------ results

    def _check_complete(self) -> None:
        missing = [self.sample_ids[row] for row in np.flatnonzero(~self.seen)]
        if missing:
            raise ValueError(f"no predictions for {len(missing)} of {len(self.sample_ids)} test samples: {listing(missing)}")
        if self.with_maps and self.without_maps:
            raise ValueError(f"anomaly maps were given for {self.with_maps} samples but not for {self.without_maps}")
        if self._open:
            assert self.map_level is not None
            sizes = self.units[self.map_level.name].sizes
            incomplete = [f"{self._unit_name(unit)}: {item.count} of {sizes[unit]} maps" for unit, item in self._open.items()]
            raise ValueError(f"incomplete {self.map_level.name} units: {listing(incomplete)}")

    def _scores_for_metrics(self) -> np.ndarray:
        """The sample scores, in the compat modes as the official trainer hands them over."""
        return self.scores if self.official_dtype is None else self.scores.astype(self.official_dtype)

    def labels(self) -> np.ndarray:
        """Per-sample labels under the mask rule (see the module docstring)."""
        if self.mask_rule == "official":
            if (self.mask_labels < 0).any():
                raise ValueError("mask_rule='official' needs the masks of every sample")
            return self.mask_labels.copy()
        return self.stored_labels.copy()

    def _level_scores_and_labels(self, level: Level, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One score and one label per unit of ``level``, in unit order."""
        scores = self._scores_for_metrics()
        if not level.fused:
            return scores, labels
        units = self.units[level.name]
        count = len(units.keys)
        if level.score == "max":
            unit_scores = np.full(count, -np.inf, dtype=scores.dtype)
            np.maximum.at(unit_scores, units.of_row, scores)
        elif self.official_dtype is not None:
            unit_scores = _group_means(scores, units.of_row, count)
        else:
            unit_scores = np.bincount(units.of_row, weights=scores, minlength=count) / units.sizes
        source = labels if level.label == "max" else self.test_samples[level.label].cast(pl.Int8).fill_null(0).to_numpy().astype(np.int8)
        unit_labels = np.zeros(count, dtype=np.int8)
        np.maximum.at(unit_labels, units.of_row, source)
        return unit_scores, unit_labels

    def unit_frame(self, level_name: str) -> pl.DataFrame:
        """One row per unit of a level: its key columns (``sample_id`` for a sample on its
        own), ``samples`` (how many it fuses), ``score`` and ``label``."""
        self._check_complete()
        level = next((level for level in self.spec.levels if level.name == level_name), None)
        if level is None:
            raise ValueError(f"protocol {self.spec.name!r} has no level {level_name!r}; it has {', '.join(item.name for item in self.spec.levels)}")
        scores, labels = self._level_scores_and_labels(level, self.labels())
        if not level.fused:
            columns: dict[str, Any] = {"sample_id": self.sample_ids, "samples": np.ones(len(scores), dtype=np.int64)}
        else:
            units = self.units[level.name]
            columns = {key: [unit[index] for unit in units.keys] for index, key in enumerate(level.keys)}
            columns["samples"] = units.sizes
        return pl.DataFrame({**columns, "score": scores.astype(np.float64), "label": labels})

    def sample_frame(self) -> pl.DataFrame:
        """One row per test sample: ``sample_id``, ``specimen``, ``view``, ``illumination``, its
        ``score`` and ``label`` (under the mask rule), and for each fused level ``L`` the score
        and label of the unit it belongs to (``L_score``, ``L_label``)."""
        self._check_complete()
        labels = self.labels()
        columns: dict[str, Any] = {name: self.test_samples[name] for name in ("sample_id", "specimen", "view", "illumination")}
        columns.update(score=self.scores, label=labels)
        for level in self.spec.levels:
            if level.fused:
                scores, unit_labels = self._level_scores_and_labels(level, labels)
                of_row = self.units[level.name].of_row
                columns[f"{level.name}_score"] = scores.astype(np.float64)[of_row]
                columns[f"{level.name}_label"] = unit_labels[of_row]
        return pl.DataFrame(columns)

    def _dense_metrics(self) -> dict[str, float]:
        """The pixel (or point) metrics under their protocol names."""
        level = self.map_level
        if level is None:
            return {}
        if not self.with_maps:
            values = dict.fromkeys(("pixel_auroc", "pixel_ap", "pixel_f1max", *(("aupro",) if self.spec.map_kind == "pixel" else ())), math.nan)
        elif self._deferred is None:
            assert self._pixels is not None
            values = self._pixels.compute()
        else:
            maps = [item[0] for item in self._deferred]
            low, high = map_value_range(maps)
            if self.mode == "streaming" and low == high:  # constant maps: any non-empty range holds them
                high = low + 1.0
            pixels = self._accumulator((low, high))
            pixels.update(maps, [item[1] for item in self._deferred])
            values = pixels.compute()
        prefix = f"{level.name}_" if level.fused else ""
        return {prefix + key.replace("pixel", self.spec.map_kind): value for key, value in values.items()}

    def compute(self) -> dict[str, float]:
        """All metrics of ``metric_names``, fractions in [0, 1] (NaN where undefined)."""
        self._check_complete()
        labels = self.labels()
        results: dict[str, float] = {}
        for level in self.spec.levels:
            values = image_metrics(*self._level_scores_and_labels(level, labels))
            results.update({f"{level.name}_{key.removeprefix('image_')}": value for key, value in values.items()})
        results.update(self._dense_metrics())
        return {name: results[name] for name in self.metric_names}

    def counts(self) -> dict[str, int]:
        """How many test samples, and units of each level and label."""
        self._check_complete()
        labels = self.labels()
        counts = {f"{self.spec.sample_unit}s": len(self.sample_ids)}
        for level in self.spec.levels:
            unit_labels = self._level_scores_and_labels(level, labels)[1]
            counts.update({f"{level.name}s": len(unit_labels), f"normal_{level.name}s": int((unit_labels == 0).sum()),
                           f"anomalous_{level.name}s": int((unit_labels == 1).sum())})
        return counts

    def breakdown(self) -> dict[str, Any] | None:
        """The AUROC of the breakdown level per value of each of its axes (and per pair of
        values, ``A_B``: {a: {b: value}}), or None when the protocol has no breakdown or some
        unit lacks an axis value."""
        level = next((level for level in self.spec.levels if level.breakdown), None)
        if level is None:
            return None
        self._check_complete()
        scores, labels = self._level_scores_and_labels(level, self.labels())
        if level.fused:
            frame = self.unit_frame(level.name)
            axes = {axis: frame[axis].to_list() for axis in level.breakdown}
        else:
            axes = {axis: self.test_samples[axis].to_list() for axis in level.breakdown}
        if any(value is None for values in axes.values() for value in values):
            return None
        result: dict[str, Any] = {axis: grouped_auroc(scores, labels, values) for axis, values in axes.items()}
        if len(axes) == 2:
            (first, first_values), (second, second_values) = axes.items()
            grid: dict[str, dict[str, float]] = {}
            for (a, b), value in grouped_auroc(scores, labels, list(zip(first_values, second_values))).items():
                grid.setdefault(a, {})[b] = value
            result[f"{first}_{second}"] = grid
        return result
