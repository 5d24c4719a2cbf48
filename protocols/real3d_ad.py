"""Real3D-AD: object-level and point-level AUROC and AP of point-cloud anomaly detection.

Every test cloud is one object (``object_auroc``, ``object_ap`` on the submitted object
scores, as the official ``image_rocauc``/``image_aupr``), and the per-point scores of every
test cloud of a category are pooled (``point_auroc``, ``point_ap``, as ``pixel_rocauc``/
``pixel_aupr``): scikit-learn's ``roc_auc_score`` and ``average_precision_score`` on the
concatenated labels and scores, ``feature_extractors/pc_features.py:127-134`` of
M-3LAB/Real3D-AD at commit 9a9cd04 (identical in ``M3DM/features.py:142-147``).  The official
evaluation normalises nothing; only the Reg3D-AD baseline script (``main_reg3dad.py:139-167``)
min-max normalises its scores per class before fusing two feature scores, which a single score
does not need (AUROC and AP are invariant under a monotone map).  F1-max and AUPRO are not
reported, as the official code reports none.

Modes: ``exact`` (every point's score kept: the official numbers) and ``streaming`` (binned,
bounded memory); the official code has no compat variant to reproduce beyond exact.
"""

from __future__ import annotations

from protocols.spec import Level, ProtocolSpec, Requirements

SPEC = ProtocolSpec(
    name="real3d-ad",
    version="1",
    description="each test cloud one object; object AUROC/AP and pooled point AUROC/AP (Real3D-AD's official evaluation)",
    levels=(Level("object", maps="mean"),),
    requires=Requirements(modalities=("points",)),
    map_kind="point",
    sample_unit="cloud",
    metrics=("object_auroc", "object_ap", "point_auroc", "point_ap"),
    modes=("exact", "streaming"),
    mask_rules=("exact",),
)
