"""M2AD-Synergy: fuse the illuminations of a view, and the views of a specimen.

As the official M2AD code implements it (reference m2ad.md section 11.2, ``m2ad_fuse`` with
``fuse='add'`` and ``Evaluator.execute_view_instance`` / ``execute_object_instance``):

- requires: the ``view`` and ``illumination`` axes;
- test set: every test image of the category, ``detectable`` ignored;
- object unit = one specimen: score = mean of all its image scores (120 for M2AD), label = the
  specimen's ``object_label``;
- view unit = the images of one (specimen, view), i.e. its 10 illuminations: score = mean of
  the image scores, map = pixel-wise mean of the maps, mask = pixel-wise max of the masks,
  label = max of the image labels (an NG specimen's view without a visible defect is a normal
  view unit);
- metrics: ``object_*`` on object units, ``view_*`` on view units, and ``view_pixel_*`` and
  ``view_aupro`` on the fused view maps; the view AUROC per view (``breakdown``).

Units are keyed by (specimen, object_label) and (specimen, object_label, view), as the official
code keys them by object name and object anomaly.  Compat modes fuse as ``m2ad_fuse`` does (see
``protocols.fusion``): ``np.mean`` in illumination order, in the dtype the official trainer hands
over.
"""

from __future__ import annotations

from protocols.spec import Level, ProtocolSpec, Requirements

SPEC = ProtocolSpec(
    name="synergy",
    version="1",
    description="M2AD-Synergy: illuminations fused per view (mean score/map, max mask), views per specimen (mean score)",
    requires=Requirements(axes=("view", "illumination")),
    levels=(
        Level("object", keys=("specimen", "object_label"), score="mean", label="object_label"),
        Level("view", keys=("specimen", "object_label", "view"), score="mean", label="max", maps="mean", breakdown=("view",)),
    ),
)
