"""M2AD-Invariant: every test image on its own, undetectable defects left out.

As the official M2AD code implements it (reference m2ad.md section 11.3, ``M2AD.__init__``
keeps test records with ``detectable != False``, then ``Evaluator.execute_img_instance``):

- requires: the ``detectable`` column (M2AD);
- test set: the category's test images except those with ``detectable == False`` (the defect
  is in view but judged undetectable under that light); ``True`` and empty (null) are kept;
- an NG specimen's image whose view shows no defect has label 0 and counts as normal;
- no fusion: image metrics on the images, pixel metrics pooled over all their maps;
- metrics: ``image_auroc``, ``image_ap``, ``image_f1max``, ``pixel_auroc``, ``pixel_ap``,
  ``pixel_f1max``, ``aupro``; plus the image AUROC per view, per illumination and per
  view x illumination (``breakdown``).

Predictions for the left-out images are accepted and ignored by ``protocols.evaluate``.
"""

from __future__ import annotations

import polars as pl

from protocols.spec import Level, ProtocolSpec, Requirements

SPEC = ProtocolSpec(
    name="invariant",
    version="1",
    description="M2AD-Invariant: every test image independently, detectable == False images dropped",
    requires=Requirements(columns=("detectable",)),
    test_filter=pl.col("detectable").fill_null(True),
    levels=(Level("image", maps="mean", breakdown=("view", "illumination")),),
)
