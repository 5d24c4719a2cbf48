"""MVTec 3D-AD: every test scan on its own, scored on 2-D anomaly maps (AUPRO up to FPR 0.3).

As the official MVTec 3D-AD evaluation defines the localisation metric
(``evaluate_experiment.py`` with ``pro_curve_util.compute_pro`` and ``generic_util.trapezoid``,
MVTec 2021; a copy is ``dreamyou070/SupervisedMED:evaluation/evaluation_code_MVTec3D-AD/``):
the PRO curve over every distinct threshold (8-connected GT regions pooled over the category's
test scans, FPR over every GT-0 pixel, ``test/good`` scans included), integrated with the
trapezoid rule up to FPR 0.3, interpolated at 0.3, and divided by 0.3.  That is m2ad's exact
``aupro`` (the same computation as MVTec AD's; checked against that code in
``tests/test_mvtec3d_protocols.py`` and docs/protocols.md).

- requires: the ``xyz`` modality (an MVTec 3D-AD-style dataset);
- test set: every test scan of the category; nothing is fused;
- metrics: ``image_auroc`` / ``image_ap`` / ``image_f1max`` on the submitted scan scores,
  ``pixel_auroc`` / ``pixel_ap`` / ``pixel_f1max`` and ``aupro`` on the maps, pooled.

Differences from the official script, on purpose: it takes the image score as the map's
maximum (``compute_classification_roc(..., scoring_function=np.max)``); m2ad scores the
image score the method submits (a method that wants the official rule submits its map's
maximum).  The 3D-ADS copy (``eliahuhorwitz/3D-ADS:utils/au_pro_util.py``), which BTF, M3DM
and later papers report, samples 100 thresholds at quantiles of the normal pixels' scores and
under-estimates the exact value; m2ad offers it as :func:`m2ad.metrics.sampled_aupro`, not as
a mode of this protocol.  Only the ``exact`` and ``streaming`` modes apply: the compat modes
reproduce M2AD's evaluator, not this one.
"""

from __future__ import annotations

from protocols.spec import Level, ProtocolSpec, Requirements

SPEC = ProtocolSpec(
    name="mvtec-3d",
    version="1",
    description="MVTec 3D-AD: every test scan independently; image metrics, pixel metrics and AUPRO@0.3 on 2-D maps",
    requires=Requirements(modalities=("image", "xyz")),
    levels=(Level("image", maps="mean"),),
    modes=("exact", "streaming"),
    mask_rules=("exact",),
)
