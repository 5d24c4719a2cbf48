"""Standard: the single-image protocol of datasets without views (MVTec-AD style).

Every test image is one independent sample, nothing is filtered or fused, and the metric set is
the one of ``invariant``: ``image_auroc``, ``image_ap``, ``image_f1max``, ``pixel_auroc``,
``pixel_ap``, ``pixel_f1max``, ``aupro``.  On data with views and illuminations it also reports
the per-view / per-illumination breakdown of image AUROC.
"""

from __future__ import annotations

import polars as pl

from protocols.base import ImageEvaluator, Protocol


class Standard(Protocol):
    """Independent test images, no filtering, no fusion."""

    name = "standard"
    metric_names = ImageEvaluator.metric_names
    description = "every test image independently (datasets without views)"

    def new_evaluator(self, test_samples: pl.DataFrame, *, mode: str = "exact", mask_rule: str | None = None,
                      pro_limit: float = 0.3, value_range: tuple[float, float] | None = None) -> ImageEvaluator:
        return ImageEvaluator(test_samples, mode=mode, mask_rule=mask_rule, pro_limit=pro_limit, value_range=value_range)
