"""Eyecandies: the six lights of a sample fused as M2AD-Synergy fuses a view's illuminations.

Each Eyecandies sample is one object seen from one camera under six lighting set-ups
(``image_0`` .. ``image_5``), so it is what M2AD calls a view instance, and the fusion of
M2AD-Synergy's view level applies as it is (``protocols.synergy``; reference m2ad.md section
11.2, ``m2ad_fuse`` with ``fuse='add'``):

- requires: the ``illumination`` axis (and the dataset must list the protocol: Eyecandies);
- test set: every ``test_public`` image of the category;
- view unit = the six images of one sample: score = mean of the image scores, map = pixel-wise
  mean of the maps, mask = pixel-wise max of the masks (the six share one mask), label = max
  of the image labels; metrics ``view_auroc`` / ``view_ap`` / ``view_f1max`` and
  ``view_pixel_*`` / ``view_aupro`` on the fused maps;
- image level: every image on its own (``image_*``), with the image AUROC per light
  (``breakdown``), which is how single-light methods (M3DM, CFM: ``image_4`` or ``image_5``)
  are compared light by light.

There is no official Eyecandies evaluator for fused lights (the public leaderboard scores
``test_private`` by e-mail); the fusion rule is M2AD's, a choice recorded here.  Only the
``exact`` and ``streaming`` modes apply (the compat modes reproduce M2AD's own evaluator).
"""

from __future__ import annotations

from protocols.spec import Level, ProtocolSpec, Requirements

SPEC = ProtocolSpec(
    name="eyecandies",
    version="1",
    description="Eyecandies: a sample's 6 lights fused (mean score/map, max mask) as M2AD-Synergy fuses a view; images per light",
    requires=Requirements(axes=("illumination",)),
    levels=(
        Level("view", keys=("specimen", "object_label"), score="mean", label="max", maps="mean"),
        Level("image", breakdown=("illumination",)),
    ),
    modes=("exact", "streaming"),
    mask_rules=("exact",),
)
