"""Exact, streaming and compat anomaly-detection metrics: AUROC, AP, F1-max, AUPRO.

* ``image_metrics(scores, labels)`` -> ``image_auroc``, ``image_ap``, ``image_f1max`` (exact);
* ``grouped_auroc(scores, labels, groups)`` -> image AUROC per group, all groups in one sort;
* ``pixel_metrics(maps, masks, *, pro_limit=0.3, mode="exact")`` -> ``pixel_auroc``,
  ``pixel_ap``, ``pixel_f1max``, ``aupro``, all pixels of all maps pooled;
* ``point_metrics(scores, labels)`` -> the same without AUPRO, over ragged point clouds;
* ``sampled_aupro(maps, masks)``: AUPRO on 100 sampled thresholds, as the 3D-ADS copy of the
  MVTec 3D-AD code (and the papers quoting it) computes it;
* ``COMPAT_MAP_DTYPES``: the compat modes and the map dtype each reproduces the official code on;
* ``PixelMetricAccumulator``: the mergeable accumulator behind them (``update``, ``merge``,
  ``compute``, ``error_bounds``), for streaming and for Ray workers.

Definitions, modes and error guarantees: ``docs/metrics.md``.  This package depends on numpy
and scipy only.
"""

from m2ad.metrics.accumulator import MODES, PixelMetricAccumulator, UndefinedMetricWarning, all_finite
from m2ad.metrics.api import grouped_auroc, image_metrics, map_value_range, pixel_metrics, point_metrics
from m2ad.metrics.compat import MAP_DTYPES as COMPAT_MAP_DTYPES
from m2ad.metrics.sampled import sampled_aupro
from m2ad.metrics.streaming import DEFAULT_BINS

__all__ = [
    "COMPAT_MAP_DTYPES",
    "DEFAULT_BINS",
    "MODES",
    "PixelMetricAccumulator",
    "UndefinedMetricWarning",
    "all_finite",
    "grouped_auroc",
    "image_metrics",
    "map_value_range",
    "pixel_metrics",
    "point_metrics",
    "sampled_aupro",
]
