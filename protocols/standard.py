"""Standard: the single-image protocol of datasets without views (MVTec-AD style).

Every test image is one independent sample, nothing is filtered or fused: ``image_auroc``,
``image_ap``, ``image_f1max`` on the image scores, ``pixel_auroc``, ``pixel_ap``,
``pixel_f1max`` and ``aupro`` on all maps pooled.  On data with views and illuminations it also
reports the image AUROC per view, per illumination and per view x illumination.
"""

from __future__ import annotations

from protocols.spec import Level, ProtocolSpec

SPEC = ProtocolSpec(
    name="standard",
    version="1",
    description="every test image independently (datasets without views)",
    levels=(Level("image", maps="mean", breakdown=("view", "illumination")),),
)
