"""MVTec 3D-AD (Bergmann et al., VISAPP 2022): 10 categories, RGB + organised point cloud per scan.

Layout parser: :mod:`.layout`; fixture writer: :mod:`.fixture`.  4,147 scans = 2,656 train +
294 validation + 1,197 test (paper); each scan is an RGB PNG, an ``xyz`` TIFF (float32
H x W x 3, zeros = no data; modality :mod:`m2ad.modalities.xyz`) and, in the test split, a
0/255 ground-truth PNG (all zeros for ``test/good``).

Download: the mydrive.ch link rotates (the registry holds the one anomalib used last; pass
``--source`` with the current one).  MVTec publishes only an **md5** for the archive
(``d8bb2800fbf3ac88e798da6ae10dc819``); anomalib compares that md5 string with a sha256
digest, so its hash check can never pass.  m2ad pins the md5 and checks it (recorded as
``md5`` in the card: a weaker check than a sha256, the only one available); a mirror's
``SHA256SUMS`` takes precedence.
"""

from __future__ import annotations

from m2ad.datasets.mvtec_3d import fixture
from m2ad.datasets.mvtec_3d.layout import MVTec3DLayout
from m2ad.datasets.spec import DatasetSpec, FileSpec, Fixture, UrlSource

CATEGORIES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")
ARCHIVE = fixture.ARCHIVE
ARCHIVE_URL = ("https://www.mydrive.ch/shares/150646/25de33f1276dd418cd856f2f48a84cdb/download/428824485-1643299897/"
               "mvtec_3d_anomaly_detection.tar.xz")
ARCHIVE_MD5 = "d8bb2800fbf3ac88e798da6ae10dc819"

SPEC = DatasetSpec(
    name="mvtec-3d",
    display_name="MVTec 3D-AD",
    title="MVTec 3D-AD: the MVTec 3D anomaly detection dataset",
    license="CC BY-NC-SA 4.0 (research and non-commercial use)",
    license_id="cc-by-nc-sa-4.0",
    citation=(
        "Paul Bergmann, Xin Jin, David Sattlegger, Carsten Steger. The MVTec 3D-AD Dataset for Unsupervised 3D Anomaly "
        "Detection and Localization. VISAPP 2022."
    ),
    homepage="https://www.mvtec.com/company/research/datasets/mvtec-3d-ad",
    description=(
        "MVTec 3D-AD (Bergmann et al., VISAPP 2022): 10 categories scanned with a structured-light sensor; each scan "
        "is an RGB image and an organised point cloud (xyz TIFF) of the same size, with pixel masks for the test scans."
    ),
    categories=CATEGORIES,
    files=(FileSpec(ARCHIVE, md5=ARCHIVE_MD5, url=ARCHIVE_URL),),
    source=UrlSource(),
    layout=MVTec3DLayout(categories=CATEGORIES),
    fixture=Fixture(fixture.write, tuple(fixture.SHAPES), fixture.DEFAULT_CATEGORIES, fixture.pack),
    modalities=("image", "mask", "xyz"),
    mask_note=(
        "`<split>/<defect>/gt/NNN.png`, 0/255, for every test scan (all zeros for `test/good`); training scans have none. "
        "The xyz maps mark missing measurements with (0, 0, 0); at a shard resolution they are resized by nearest "
        "neighbour, so no point is interpolated across them."
    ),
    geometry="square",
    geometry_note=(
        "The scans are 800 x 800 (a few categories differ; UNCERTAIN), so a square resize and the longer-side rule "
        "coincide. 3D-ADS, BTF and M3DM resize RGB (bicubic) and xyz (nearest) to 224 x 224 and most remove the "
        "background plane of the point cloud first (a method's preprocessing, not the shards')."
    ),
    protocols=("standard", "mvtec-3d"),
    class_names={
        "verbatim": {category: category for category in CATEGORIES},
        "readable": {category: category.replace("_", " ") for category in CATEGORIES},
    },
    shot_unit="image",
    notes=(
        "The official download link rotates; pass --source with the current URL. The archive is checked against its "
        "published md5 (the only checksum MVTec gives)."
    ),
)
