"""M2AD-Synergy: fuse the illuminations of a view, and the views of a specimen.

As the official M2AD code implements it (reference m2ad.md section 11.2, ``m2ad_fuse`` with
``fuse='add'`` and ``Evaluator.execute_view_instance`` / ``execute_object_instance``):

- test set: every test image of the category, ``detectable`` ignored;
- view instance = the images of one (specimen, view), i.e. its 10 illuminations:
  score = mean of the image scores, map = pixel-wise mean of the maps, mask = pixel-wise max of
  the masks, label = max of the image labels (an NG specimen's view without a visible defect is
  a normal view instance);
- object instance = one specimen: score = mean of all its image scores (120 for M2AD), label =
  the specimen's ``object_label``;
- metrics: ``object_*`` on object instances, ``view_*`` on view instances, and ``view_pixel_*``
  and ``view_aupro`` on the fused view maps.

Instances are keyed by (specimen, object_label, view) and (specimen, object_label), as the
official code keys them by object name and object anomaly.

Compat modes fuse as ``m2ad_fuse`` does, on the dtype the official trainer hands over
(``Evaluator.official_dtype``): the view map is ``np.mean`` of the maps stacked in illumination
order (summed one after the other in that dtype, then divided), and the view and object scores
are ``np.mean`` (pairwise summation) of the image scores in (view, illumination) order, the
order of the official test loader (``sort_list_by_criteria``) and of ``test_samples``.  The
other modes fuse in float64 whatever the order, and round the view map to float32.

Memory: maps are fused as they arrive.  Each view instance with some but not all of its images
seen keeps one float64 running sum and one mask (compat modes: a copy of each of its maps); feed
samples ordered by (specimen, view) (the order of ``test_samples``) and at most one view is open
at a time.  Any order works, at the cost of more open views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from protocols.base import IMAGE_METRICS, PIXEL_METRICS, Evaluator, Protocol, _listing, grouped_auroc, image_metrics

OBJECT_METRICS = ("object_auroc", "object_ap", "object_f1max")
VIEW_METRICS = ("view_auroc", "view_ap", "view_f1max")
VIEW_PIXEL_METRICS = ("view_pixel_auroc", "view_pixel_ap", "view_pixel_f1max", "view_aupro")


@dataclass
class _OpenView:
    """The running fusion of a view instance whose images have not all been seen yet."""

    map_sum: np.ndarray | None  # float64, so that the mean does not depend on the arrival order
    maps: dict[int, np.ndarray] | None  # compat modes: each map by test-sample row, fused once complete
    mask: np.ndarray  # bool
    count: int

    def fold_in(self, other: _OpenView) -> None:
        """Add ``other``'s maps (other images of the same view) into this one."""
        if self.map_sum is not None and other.map_sum is not None:
            self.map_sum += other.map_sum
        if self.maps is not None and other.maps is not None:
            self.maps.update(other.maps)
        self.mask |= other.mask
        self.count += other.count


def _group_means(values: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """``np.mean`` of each group's values taken in row order, as ``m2ad_fuse`` averages a list."""
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(count + 1))
    return np.array([np.mean(values[order[start:end]]) for start, end in zip(bounds[:-1], bounds[1:])], dtype=values.dtype)


class SynergyEvaluator(Evaluator):
    """Fuses image predictions into view and object instances and scores both."""

    metric_names = OBJECT_METRICS + VIEW_METRICS + VIEW_PIXEL_METRICS

    def __init__(self, test_samples: pl.DataFrame, *, mode: str = "exact", mask_rule: str | None = None, pro_limit: float = 0.3,
                 value_range: tuple[float, float] | None = None):
        super().__init__(test_samples, mode=mode, mask_rule=mask_rule, pro_limit=pro_limit, value_range=value_range)
        if test_samples["view"].null_count() or test_samples["illumination"].null_count():
            raise ValueError("the synergy protocol needs views and illuminations (M2AD-style data); use 'standard'")
        specimens = test_samples["specimen"].to_list()
        object_labels = test_samples["object_label"].cast(pl.Int8).fill_null(0).to_list()
        view_index: dict[tuple[str, int, str], int] = {}
        object_index: dict[tuple[str, int], int] = {}
        self.view_of_row = np.array([view_index.setdefault((specimen, label, view), len(view_index))
                                     for specimen, label, view in zip(specimens, object_labels, self.views)], dtype=np.int64)
        self.object_of_row = np.array([object_index.setdefault((specimen, label), len(object_index))
                                       for specimen, label in zip(specimens, object_labels)], dtype=np.int64)
        self.view_keys = list(view_index)
        self.object_keys = list(object_index)
        self.view_sizes = np.bincount(self.view_of_row, minlength=len(self.view_keys))
        self._open: dict[int, _OpenView] = {}
        self.fused_views = 0

    def _add_map(self, view: int, row: int, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        open_view = self._open.get(view)
        if open_view is None:
            compat = self.official_dtype is not None
            open_view = self._open[view] = _OpenView(None if compat else np.zeros(anomaly_map.shape), {} if compat else None,
                                                     np.zeros(anomaly_map.shape, dtype=bool), 0)
        if open_view.mask.shape != anomaly_map.shape:
            specimen, _, view_name = self.view_keys[view]
            raise ValueError(f"maps of view ({specimen}, {view_name}) differ in shape: {open_view.mask.shape} and {anomaly_map.shape}")
        if open_view.maps is not None:
            open_view.maps[row] = np.array(anomaly_map)  # a copy: the caller may reuse its buffer
        else:
            assert open_view.map_sum is not None
            open_view.map_sum += anomaly_map
        open_view.mask |= mask
        open_view.count += 1
        self._fuse_if_complete(view)

    def _fuse_if_complete(self, view: int) -> None:
        open_view = self._open[view]
        if open_view.count == self.view_sizes[view]:
            if open_view.maps is not None:  # m2ad_fuse: np.mean(maps, axis=0) in the maps' dtype, illumination order
                stacked = np.stack([open_view.maps[row] for row in sorted(open_view.maps)]).astype(self.official_dtype)
                mean_map = np.mean(stacked, axis=0)
            else:
                assert open_view.map_sum is not None
                mean_map = (open_view.map_sum / open_view.count).astype(np.float32)
            self._add_pixels([mean_map], [open_view.mask])
            del self._open[view]
            self.fused_views += 1

    def update(self, sample_ids: Sequence[str], scores: Sequence[float] | np.ndarray,
               maps: Sequence[np.ndarray] | np.ndarray | None = None,
               masks: Sequence[np.ndarray] | np.ndarray | None = None) -> None:
        sample_ids = list(sample_ids)
        rows, values = self._rows(sample_ids, scores)
        self._check_maps(len(rows), maps, masks)
        if maps is not None:
            compat = self.official_dtype is not None
            for row, anomaly_map, mask in zip(rows, maps, masks):
                anomaly_map = np.asarray(anomaly_map) if compat else np.asarray(anomaly_map, dtype=np.float64)
                self._add_map(int(self.view_of_row[row]), int(row), anomaly_map, np.asarray(mask) > 0)
        self._record(rows, values, maps, masks)

    def merge(self, other: Evaluator) -> SynergyEvaluator:
        self._merge_samples(other)
        assert isinstance(other, SynergyEvaluator)
        for view, theirs in other._open.items():
            mine = self._open.get(view)
            if mine is None:
                self._open[view] = _OpenView(None if theirs.map_sum is None else theirs.map_sum.copy(),
                                             None if theirs.maps is None else dict(theirs.maps), theirs.mask.copy(), theirs.count)
            else:
                if mine.mask.shape != theirs.mask.shape:
                    raise ValueError(f"maps of view {self.view_keys[view]} differ in shape between the merged evaluators")
                mine.fold_in(theirs)
            self._fuse_if_complete(view)
        self.fused_views += other.fused_views
        return self

    def _check_views_complete(self) -> None:
        self._check_complete()
        if self._open:
            incomplete = [f"({self.view_keys[view][0]}, view {self.view_keys[view][2]}): {item.count} of {self.view_sizes[view]} maps"
                          for view, item in self._open.items()]
            raise ValueError(f"incomplete view instances: {_listing(incomplete)}")

    def view_instances(self) -> pl.DataFrame:
        """One row per view instance: specimen, object_label, view, fused score and label."""
        self._check_views_complete()
        labels = self.labels()
        count = len(self.view_keys)
        # scores are stored per test-sample row, so the sums do not depend on arrival or merge order
        if self.official_dtype is not None:
            scores = _group_means(self._scores_for_metrics(), self.view_of_row, count)
        else:
            scores = np.bincount(self.view_of_row, weights=self.scores, minlength=count) / self.view_sizes
        label_max = np.zeros(count, dtype=np.int8)
        np.maximum.at(label_max, self.view_of_row, labels)
        return pl.DataFrame({
            "specimen": [key[0] for key in self.view_keys],
            "object_label": [key[1] for key in self.view_keys],
            "view": [key[2] for key in self.view_keys],
            "images": self.view_sizes,
            "score": scores,
            "label": label_max,
        })

    def object_instances(self) -> pl.DataFrame:
        """One row per specimen: its mean image score and its ``object_label``."""
        self._check_views_complete()
        count = len(self.object_keys)
        sizes = np.bincount(self.object_of_row, minlength=count)
        if self.official_dtype is not None:
            scores = _group_means(self._scores_for_metrics(), self.object_of_row, count)
        else:
            scores = np.bincount(self.object_of_row, weights=self.scores, minlength=count) / sizes
        return pl.DataFrame({
            "specimen": [key[0] for key in self.object_keys],
            "images": sizes,
            "score": scores,
            "label": np.array([key[1] for key in self.object_keys], dtype=np.int8),
        })

    def compute(self) -> dict[str, float]:
        views = self.view_instances()
        objects = self.object_instances()
        object_values = image_metrics(objects["score"].to_numpy(), objects["label"].to_numpy())
        view_values = image_metrics(views["score"].to_numpy(), views["label"].to_numpy())
        pixel_values = self._pixel_metrics()
        return {
            **{name: object_values[key] for name, key in zip(OBJECT_METRICS, IMAGE_METRICS)},
            **{name: view_values[key] for name, key in zip(VIEW_METRICS, IMAGE_METRICS)},
            **{name: pixel_values[key] for name, key in zip(VIEW_PIXEL_METRICS, PIXEL_METRICS)},
        }

    def counts(self) -> dict[str, int]:
        views = self.view_instances()["label"].to_numpy()
        objects = self.object_instances()["label"].to_numpy()
        return {
            "images": len(self.sample_ids),
            "views": len(views), "normal_views": int((views == 0).sum()), "anomalous_views": int((views == 1).sum()),
            "objects": len(objects), "normal_objects": int((objects == 0).sum()), "anomalous_objects": int((objects == 1).sum()),
        }

    def breakdown(self) -> dict[str, Any]:
        views = self.view_instances()
        return {"view": grouped_auroc(views["score"].to_numpy(), views["label"].to_numpy(), views["view"].to_list())}


class Synergy(Protocol):
    """M2AD-Synergy: every test image; view instances (10 lights fused) and object instances."""

    name = "synergy"
    metric_names = SynergyEvaluator.metric_names
    description = "M2AD-Synergy: illuminations fused per view (mean score/map, max mask), views per specimen (mean score)"
    fuses_maps = True

    def new_evaluator(self, test_samples: pl.DataFrame, *, mode: str = "exact", mask_rule: str | None = None,
                      pro_limit: float = 0.3, value_range: tuple[float, float] | None = None) -> SynergyEvaluator:
        return SynergyEvaluator(test_samples, mode=mode, mask_rule=mask_rule, pro_limit=pro_limit, value_range=value_range)
