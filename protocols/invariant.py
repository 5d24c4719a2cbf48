"""M2AD-Invariant: every test image on its own, undetectable defects left out.

As the official M2AD code implements it (reference m2ad.md section 11.3, ``M2AD.__init__``
keeps test records with ``detectable != False``, then ``Evaluator.execute_img_instance``):

- test set: the category's test images except those with ``detectable == False`` (the defect
  is in view but judged undetectable under that light); ``True`` and empty (null) are kept;
- an NG specimen's image whose view shows no defect has label 0 and counts as normal;
- no fusion: image metrics on the images, pixel metrics pooled over all their maps;
- metrics: ``image_auroc``, ``image_ap``, ``image_f1max``, ``pixel_auroc``, ``pixel_ap``,
  ``pixel_f1max``, ``aupro``; plus the image AUROC per view, per illumination and per
  view x illumination (``Evaluator.breakdown``).

Predictions for the left-out images are accepted and ignored by ``protocols.evaluate``.
"""

from __future__ import annotations

import polars as pl

from protocols.base import ImageEvaluator, Protocol


class Invariant(Protocol):
    """M2AD-Invariant: independent images, ``detectable == False`` images dropped."""

    name = "invariant"
    metric_names = ImageEvaluator.metric_names
    description = "M2AD-Invariant: every test image independently, detectable == False images dropped"

    def _test_filter(self, test: pl.DataFrame) -> pl.DataFrame:
        if "detectable" not in test.columns:
            raise ValueError("the manifest lacks the 'detectable' column")
        return test.filter(pl.col("detectable").fill_null(True))

    def new_evaluator(self, test_samples: pl.DataFrame, *, mode: str = "exact", mask_rule: str | None = None,
                      pro_limit: float = 0.3, value_range: tuple[float, float] | None = None) -> ImageEvaluator:
        return ImageEvaluator(test_samples, mode=mode, mask_rule=mask_rule, pro_limit=pro_limit, value_range=value_range)
