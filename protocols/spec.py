"""What a protocol is: a frozen spec, data rather than code.

A :class:`ProtocolSpec` says

- ``name``, ``version`` (bumped when the definition changes, so that results under the old and
  the new definition are never ranked together) and ``description``;
- ``requires``: what a dataset must have (:class:`Requirements`: extra columns, sample axes,
  modalities); :meth:`ProtocolSpec.check_dataset` refuses a dataset that lacks any of them, or
  whose spec does not list the protocol, with one line;
- ``test_filter``: a polars expression choosing the test samples that are scored (None: all);
  the others are accepted in a predictions file and ignored;
- ``levels``: the evaluation units (:class:`Level`): a test sample on its own (``keys=()``), or
  the test samples that share the values of ``keys``, fused: the score by ``score`` (mean or
  max), the label by ``label`` (the max of the samples' labels, or a manifest column), and, on
  the one level that has pixel metrics, the maps by ``maps`` (mean or max) and the masks by
  their union (max);
- ``map_kind``: what the maps are: ``pixel`` (2-D anomaly maps; pixel metrics and AUPRO) or
  ``point`` (1-D per-point scores of a point cloud; no AUPRO), as a predictions file declares;
- ``metrics``: the derived metric names the protocol reports (None: all of them), e.g. AUROC
  and AP only, as Real3D-AD's official code;
- ``modes`` and ``mask_rules``: the metric modes and mask rules that apply (all by default);
- ``sample_unit``: what one test sample is, for the counts (``image``, or ``object`` for point
  clouds).

Metric names follow from the levels: level ``L`` reports ``L_auroc``, ``L_ap`` and ``L_f1max``
on its units; the level with maps reports ``pixel_auroc``, ``pixel_ap``, ``pixel_f1max`` and
``aupro`` when it is a sample on its own, ``L_pixel_*`` and ``L_aupro`` when fused
(``point_*`` / ``L_point_*`` for points).  Every name must be registered in
``m2ad.metrics.registry``, which gives the leaderboard its order, direction and labels.

One evaluator, :class:`protocols.fusion.FusionEvaluator`, scores every protocol.  Every
protocol trains on all training samples of the category (the official M2AD code does, section
11.1 of the reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from m2ad.metrics import MODES as EVAL_MODES
from m2ad.metrics import registry as metric_registry
from m2ad.schema import MASK_RULES, DatasetInfo
from protocols.fusion import REQUIRED_COLUMNS, FusionEvaluator

Reduce = Literal["mean", "max"]
REDUCES = ("mean", "max")
MAP_KINDS = ("pixel", "point")


@dataclass(frozen=True)
class Requirements:
    """What a dataset must have for a protocol to fit it (names as ``dataset.json`` has them)."""

    columns: tuple[str, ...] = ()
    """Extra manifest columns, e.g. M2AD's ``detectable``."""
    axes: tuple[str, ...] = ()
    """Sample axes, e.g. ``view`` and ``illumination``."""
    modalities: tuple[str, ...] = ("image",)


@dataclass(frozen=True)
class Level:
    """One kind of evaluation unit (see the module docstring)."""

    name: str
    keys: tuple[str, ...] = ()
    """Manifest columns whose values make one unit; () means each test sample is one unit."""
    score: Reduce = "mean"
    label: str = "max"
    """``max``: a unit is anomalous if any of its samples is (labels under the mask rule);
    else a manifest column holding the unit's label, e.g. ``object_label``."""
    maps: Reduce | None = None
    """None: no pixel metrics on this level; else how the samples' maps fuse (a sample on its
    own is its map)."""
    breakdown: tuple[str, ...] = ()
    """Axes to report this level's AUROC per (a grid for two), when every unit has them."""

    @property
    def fused(self) -> bool:
        """Whether a unit groups several test samples."""
        return bool(self.keys)


def _score_names(level: Level) -> tuple[str, ...]:
    return tuple(f"{level.name}_{metric}" for metric in ("auroc", "ap", "f1max"))


def _dense_names(level: Level, map_kind: str) -> tuple[str, ...]:
    prefix = f"{level.name}_" if level.fused else ""
    names = tuple(f"{prefix}{map_kind}_{metric}" for metric in ("auroc", "ap", "f1max"))
    return names + ((f"{prefix}aupro",) if map_kind == "pixel" else ())


@dataclass(frozen=True)
class ProtocolSpec:
    """A protocol (see the module docstring)."""

    name: str
    version: str
    description: str
    levels: tuple[Level, ...]
    requires: Requirements = Requirements()
    test_filter: pl.Expr | None = field(default=None, compare=False)
    map_kind: Literal["pixel", "point"] = "pixel"
    sample_unit: str = "image"
    metrics: tuple[str, ...] | None = None
    modes: tuple[str, ...] = EVAL_MODES
    mask_rules: tuple[str, ...] = MASK_RULES

    def __post_init__(self) -> None:
        problems = []
        if not self.levels:
            problems.append("it has no level")
        if len({level.name for level in self.levels}) != len(self.levels):
            problems.append("two levels share a name")
        if sum(level.maps is not None for level in self.levels) > 1:
            problems.append("more than one level has pixel metrics")
        if sum(bool(level.breakdown) for level in self.levels) > 1:
            problems.append("more than one level has a breakdown")
        if self.map_kind not in MAP_KINDS:
            problems.append(f"map_kind must be one of {MAP_KINDS}")
        if self.metrics is not None and not set(self.metrics) <= set(self._derived_names()):
            problems.append(f"metrics {sorted(set(self.metrics) - set(self._derived_names()))} are not among its levels' metrics")
        if not set(self.modes) <= set(EVAL_MODES) or not set(self.mask_rules) <= set(MASK_RULES) or not self.modes or not self.mask_rules:
            problems.append(f"modes must be among {EVAL_MODES} and mask rules among {MASK_RULES}")
        for level in self.levels:
            if level.score not in REDUCES or (level.maps is not None and level.maps not in REDUCES):
                problems.append(f"level {level.name!r} reduces by something other than {' or '.join(REDUCES)}")
            if level.fused and not set(level.breakdown) <= set(level.keys):
                problems.append(f"level {level.name!r} breaks down by axes that are not among its keys")
            if len(level.breakdown) > 2:
                problems.append(f"level {level.name!r} breaks down by more than two axes")
        unregistered = [name for name in self.metric_names if not metric_registry.is_registered(name)]
        if unregistered:
            problems.append(f"metrics not in m2ad.metrics.registry: {', '.join(unregistered)}")
        if problems:
            raise ValueError(f"protocol {self.name!r}: {'; '.join(problems)}")

    def _derived_names(self) -> tuple[str, ...]:
        names = tuple(name for level in self.levels for name in _score_names(level))
        dense = self.dense_level
        return names + (_dense_names(dense, self.map_kind) if dense is not None else ())

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric ``compute`` returns, in order: each level's, then the pixel (or point)
        metrics; only those of ``metrics`` when it is given."""
        names = self._derived_names()
        return names if self.metrics is None else tuple(name for name in names if name in self.metrics)

    def check_mode(self, mode: str, mask_rule: str) -> None:
        """Refuse, with one line, a metric mode or mask rule that does not apply to this protocol."""
        if mode not in self.modes:
            raise ValueError(f"protocol {self.name!r} evaluates in the {', '.join(self.modes)} mode(s), not {mode!r}")
        if mask_rule not in self.mask_rules:
            raise ValueError(f"protocol {self.name!r} takes the {', '.join(self.mask_rules)} mask rule(s), not {mask_rule!r}")

    @property
    def dense_level(self) -> Level | None:
        """The level whose maps the pixel (or point) metrics see, if any."""
        return next((level for level in self.levels if level.maps is not None), None)

    @property
    def fuses_maps(self) -> bool:
        """True when the pixel metrics see fused maps rather than the maps as given."""
        return self.dense_level is not None and self.dense_level.fused

    @property
    def breakdown_metric(self) -> str | None:
        """The metric that ``breakdown`` reports per axis value (the AUROC of its level)."""
        level = next((level for level in self.levels if level.breakdown), None)
        return None if level is None else f"{level.name}_auroc"

    def check_dataset(self, info: DatasetInfo) -> None:
        """Refuse, with one line, a dataset this protocol does not fit: one without the
        required columns, axes or modalities, or whose spec does not list the protocol."""
        lacking = [f"the column {name!r}" for name in self.requires.columns if name not in info.extra_columns]
        lacking += [f"the axis {name!r}" for name in self.requires.axes if name not in info.axes]
        lacking += [f"the modality {name!r}" for name in self.requires.modalities if name not in info.modalities]
        if lacking:
            fits = f"; it fits: {', '.join(info.protocols)}" if info.protocols else ""
            raise ValueError(f"protocol {self.name!r} does not fit the dataset {info.dataset!r}: it needs {', '.join(lacking)}, "
                             f"which the dataset lacks{fits}")
        info.check_protocol(self.name)

    def _category_rows(self, manifest: pl.DataFrame, category: str, split: str) -> pl.DataFrame:
        missing = [name for name in (*REQUIRED_COLUMNS, *self.requires.columns) if name not in manifest.columns]
        if missing:
            raise ValueError(f"the manifest lacks the columns {missing} (protocol {self.name!r} needs them)")
        rows = manifest.filter(pl.col("category") == category)
        if rows.height == 0:
            known = sorted(manifest["category"].unique().to_list())
            raise ValueError(f"unknown category {category!r}; the dataset has: {', '.join(known)}")
        return rows.filter(pl.col("split") == split).sort(["specimen", "view", "illumination", "sample_id"], nulls_last=True)

    def train_samples(self, manifest: pl.DataFrame, category: str) -> pl.DataFrame:
        """All training samples of the category, ordered by (specimen, view, illumination)."""
        return self._category_rows(manifest, category, "train")

    def test_samples(self, manifest: pl.DataFrame, category: str) -> pl.DataFrame:
        """The test samples this protocol scores, ordered by (specimen, view, illumination)."""
        test = self._category_rows(manifest, category, "test")
        return test if self.test_filter is None else test.filter(self.test_filter)

    def ignored_samples(self, manifest: pl.DataFrame, category: str) -> pl.DataFrame:
        """Test samples of the category that this protocol leaves out (predictions for them
        are accepted and ignored)."""
        test = self._category_rows(manifest, category, "test")
        kept = self.test_samples(manifest, category)
        return test.filter(~pl.col("sample_id").is_in(kept["sample_id"].implode()))

    def new_evaluator(self, test_samples: pl.DataFrame, *, mode: str = "exact", mask_rule: str | None = None,
                      pro_limit: float = 0.3, value_range: tuple[float, float] | None = None) -> FusionEvaluator:
        """A fresh evaluator for the test samples of one category (from ``test_samples``);
        ``mask_rule=None``: ``default_mask_rule(mode)``; ``value_range``: see "Metric modes" in
        ``protocols.fusion``."""
        return FusionEvaluator(self, test_samples, mode=mode, mask_rule=mask_rule, pro_limit=pro_limit, value_range=value_range)

    def __repr__(self) -> str:
        return f"<protocol {self.name} v{self.version}>"
