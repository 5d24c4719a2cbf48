"""Real3D-AD (Liu et al., NeurIPS 2023 Datasets and Benchmarks): high-resolution point clouds
of 12 categories of real objects, with per-point defect labels.

1,254 samples: 4 normal training clouds per category (complete 360-degree scans, the
"prototypes"), 100 test clouds per category (partial scans, normal or with ``bulge`` or
``sink`` defects), each anomalous one with a ground-truth file of labelled points.  The layout
and how the official loader reads it are in :mod:`m2ad.datasets.real3d_ad.layout`; points are
stored with the ``points`` modality (:mod:`m2ad.modalities.points`).

Source: the authors publish ``real3d-ad-pcd.zip`` on Google Drive and Baidu Disk only
(README of M-3LAB/Real3D-AD), with no checksum: fetch it by hand and pass it with ``--source
PATH``; it cannot be verified, so the card says so.

Centring: the shards hold the coordinates as released.  The official loaders subtract each
cloud's mean (``norm_pcd``, ``if_norm=True`` by default, ``dataset_pc.py:21-26`` and ``61-66`` at
commit 9a9cd04) before features are computed; a method that wants this does it itself.
"""

from __future__ import annotations

from m2ad.datasets.real3d_ad import fixture
from m2ad.datasets.real3d_ad.layout import Real3DLayout
from m2ad.datasets.spec import DatasetSpec, FileSpec, Fixture, ManualSource

CATEGORIES = (
    "airplane", "car", "candybar", "chicken", "diamond", "duck",
    "fish", "gemstone", "seahorse", "shell", "starfish", "toffees",
)  # fmt: skip
"""``real3d_classes()`` of the official ``dataset_pc.py`` (line 9), in its order."""

SPEC = DatasetSpec(
    name="real3d-ad",
    display_name="Real3D-AD",
    title="Real3D-AD: a dataset of point clouds for anomaly detection",
    license="CC BY 4.0 (README of M-3LAB/Real3D-AD, section License)",
    license_id="cc-by-4.0",
    citation=(
        "Jiaqi Liu, Guoyang Xie, Ruitao Chen, Xinpeng Li, Jinbao Wang, Yong Liu, Chengjie Wang, Feng Zheng. "
        "Real3D-AD: A Dataset of Point Cloud Anomaly Detection. NeurIPS 2023 Datasets and Benchmarks Track."
    ),
    homepage="https://github.com/M-3LAB/Real3D-AD",
    description=(
        "Real3D-AD (Liu et al., NeurIPS 2023): 1,254 high-resolution point clouds of 12 categories; complete normal "
        "training scans, partial test scans with bulge and sink defects labelled per point."
    ),
    categories=CATEGORIES,
    files=(FileSpec(fixture.ARCHIVE),),
    source=ManualSource(
        "Download real3d-ad-pcd.zip by hand from the links in the README of https://github.com/M-3LAB/Real3D-AD "
        "(Google Drive, or Baidu Disk with code vrmi), then run `m2ad download real3d-ad --out OUT --source "
        "PATH/real3d-ad-pcd.zip --insecure-skip-verify` (no checksum is published) or extract it and `m2ad shard`."
    ),
    layout=Real3DLayout(categories=CATEGORIES),
    fixture=Fixture(fixture.write, tuple(fixture.SHAPES), fixture.DEFAULT_CATEGORIES, fixture.pack),
    modalities=("points",),
    mask_note=(
        "No masks: per-point labels (column `point_labels`, 1 = defect). An anomalous test cloud's points and labels "
        "come from `gt/<stem>.txt` (x y z label per line), as the official loader reads them, not from its test PCD; "
        "normal test clouds and training clouds get all-zero labels. Coordinates are stored as released, not centred "
        "(the official loader subtracts each cloud's mean; methods do that themselves)."
    ),
    geometry="longer-side",
    geometry_note="Point clouds are never resampled: --resolution does not apply to them (the points are stored as released).",
    protocols=("real3d-ad",),
    class_names={"verbatim": {category: category for category in CATEGORIES}},
    shot_unit="image",
    notes="Real3D-AD is published on Google Drive and Baidu Disk only; fetch real3d-ad-pcd.zip by hand and pass --source PATH.",
)
