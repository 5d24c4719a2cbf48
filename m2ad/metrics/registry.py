"""The metric registry: every metric name a protocol reports, with what the leaderboard needs
to order, rank and label it.

Each entry is a :class:`MetricInfo`: the ``name`` results and leaderboard rows use, the
``level`` of the units it is computed on (``object``, ``view``, ``view-pixel``, ``sample``,
``image``, ``pixel``, ``point``), whether a higher value is better, the ``version`` of its
definition (bumped when the computation changes so that old and new numbers differ), and the
``label`` papers print it under.  :data:`METRICS` is in display order (object, view, sample,
image, pixel, point), the paper's order for M2AD.

Adding a metric is one entry here; protocols (``protocols.spec``) refuse metric names that are
not registered.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    """One registered metric (see the module docstring)."""

    name: str
    level: str
    higher_is_better: bool
    version: str
    label: str
    description: str


def _unit_metrics(prefix: str, level: str, label: str, unit: str) -> tuple[MetricInfo, ...]:
    """AUROC, AP and F1-max of one score per evaluation unit (``unit``: what a unit is)."""
    return (
        MetricInfo(f"{prefix}_auroc", level, True, "1", label.format("AUROC"), f"area under the ROC curve of the {unit} scores"),
        MetricInfo(f"{prefix}_ap", level, True, "1", label.format("AP"), f"average precision of the {unit} scores"),
        MetricInfo(f"{prefix}_f1max", level, True, "1", label.format("F1max"), f"best F1 over the thresholds of the {unit} scores"),
    )


def _dense_metrics(prefix: str, level: str, label: str, unit: str, *, regions: bool) -> tuple[MetricInfo, ...]:
    """AUROC, AP, F1-max over all pooled pixels (or points) and, with ``regions``, AUPRO."""
    pooled = (
        MetricInfo(f"{prefix}_auroc", level, True, "1", label.format("AUROC"), f"area under the ROC curve of all {unit}s pooled"),
        MetricInfo(f"{prefix}_ap", level, True, "1", label.format("AP"), f"average precision of all {unit}s pooled"),
        MetricInfo(f"{prefix}_f1max", level, True, "1", label.format("F1max"), f"best F1 over the thresholds of all {unit}s pooled"),
    )
    if not regions:
        return pooled
    aupro_name = "aupro" if prefix == "pixel" else f"{prefix.removesuffix('_pixel')}_aupro"
    aupro = MetricInfo(aupro_name, level, True, "1", label.format("AUPRO").removeprefix("P-"),
                       f"normalised area under the per-region overlap curve up to the FPR limit, on {unit}s")
    return (*pooled, aupro)


METRICS: tuple[MetricInfo, ...] = (
    *_unit_metrics("object", "object", "O-{}", "object (specimen)"),
    *_unit_metrics("view", "view", "I-{} (view)", "view instance (fused illuminations)"),
    *_dense_metrics("view_pixel", "view-pixel", "P-{} (view)", "fused view-map pixel", regions=True),
    *_unit_metrics("sample", "sample", "S-{}", "sample (fused views)"),
    *_unit_metrics("image", "image", "I-{}", "image"),
    *_dense_metrics("pixel", "pixel", "P-{}", "pixel", regions=True),
    *_dense_metrics("point", "point", "Point-{}", "point", regions=False),
)
"""Every registered metric, in display order."""

_BY_NAME = {info.name: info for info in METRICS}


def available() -> list[str]:
    """Registered metric names, in display order."""
    return [info.name for info in METRICS]


def get(name: str) -> MetricInfo:
    """The registered metric ``name``; ``KeyError`` with the known names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; registered: {', '.join(available())}") from None


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered metric."""
    return name in _BY_NAME


def display_order(names: list[str]) -> list[str]:
    """``names`` in registry order, names not registered last (sorted)."""
    known = [info.name for info in METRICS if info.name in set(names)]
    return known + sorted(set(names) - set(known))


def higher_is_better(name: str) -> bool:
    """Whether a higher value of ``name`` is better (True for names not registered, as for
    every metric registered today)."""
    return _BY_NAME[name].higher_is_better if name in _BY_NAME else True
