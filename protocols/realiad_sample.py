"""Real-IAD sample level: a sample's five views (cameras C1..C5) fused into one unit.

As the official Real-IAD evaluation does it (``Tencent/AnomalyDetection_Real-IAD`` at 98c28ff,
README.md:96-114, runs ADEval 1.1.0 with ``--sample_key_pat``; file:line in docs/metrics.md,
section "realiad-sample"):

- requires: the ``view`` axis (Real-IAD);
- test set: every test image of the category;
- sample unit = one sample folder (``specimen``, e.g. ``NG/HS/S0064``; ADEval's key
  ``<category>_<NNNN>_<OK|NG_code>`` captured from the file name names the same images):
  score = the max of its views' image scores, label = the max of its views' labels, so a
  sample is anomalous when any view is (``adeval/__main__.py:211-226``);
- a view's label comes from its mask: no mask (``mask_path`` null, or an OK sample) is normal
  (``datasets/explicit_dataset.py:118-129``), otherwise anomalous when a mask pixel is set
  (``adeval/__main__.py:92-113``, ``> 127``; m2ad reads a mask pixel as set when it is not 0,
  the same on Real-IAD's 0/255 masks).  ``mask_rule="official"`` takes the labels from the
  masks' pixels as ADEval does; ``exact`` from the stored ``label`` (1 for an NG view with a
  mask file), which differs only for a mask file with no pixel set;
- image level: every view on its own (I-AUROC, ``adeval/__main__.py:231-235``);
- pixel maps are not fused: the pixel metrics pool every view's map
  (``adeval/__main__.py:256-259``);
- metrics: ``sample_auroc`` (the paper's S-AUROC), ``sample_ap``, ``sample_f1max``,
  ``image_*``, ``pixel_*``, ``aupro``; the image AUROC per view (``breakdown``).

ADEval computes its AUROC and AP on a histogram of 1000 strips between the min and max score
(``adeval/mem_effic.py:82-92, 277-284``); m2ad's values are exact (scikit-learn's).
"""

from __future__ import annotations

from protocols.spec import Level, ProtocolSpec, Requirements

SPEC = ProtocolSpec(
    name="realiad-sample",
    version="1",
    description="Real-IAD sample level: a sample's 5 views fused (max score, any anomalous view); views and pixels unfused",
    requires=Requirements(axes=("view",)),
    levels=(
        Level("sample", keys=("specimen",), score="max", label="max"),
        Level("image", maps="mean", breakdown=("view",)),
    ),
)
