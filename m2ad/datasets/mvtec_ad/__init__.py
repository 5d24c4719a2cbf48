"""MVTec AD (Bergmann et al., CVPR 2019): 15 categories of industrial objects and textures.

One image per specimen, no views or lights: ``<category>/train/good``, ``test/<good|defect>``
and ``ground_truth/<defect>/<stem>_mask.png`` (the folder layout,
:mod:`m2ad.datasets.layouts.folder`).  3,629 training and 1,725 test images (467 good, 1,258
defective), PNG, square, 700-1024 px.

Greyscale categories (grid, screw, zipper are single-channel ``L`` PNGs): every loader of the
literature converts them to RGB.  m2ad keeps the release's bytes unchanged at original
resolution (so the shards are byte-identical to the release) and converts at decode: the
reader (``m2ad.data``) returns RGB, a resized shard stores RGB, and ``datasets`` users get
the ``L`` image and call ``.convert("RGB")`` (the card's recipe does).

Download: the official links (mydrive.ch, behind a licence form) rotate; the registry holds
the link anomalib used last, and ``--source`` takes another (the file's URL, a mirror's base
URL or a local copy).  The archive is verified against its pinned sha256, whatever the URL.
"""

from __future__ import annotations

from m2ad.datasets.layouts.folder import FolderLayout
from m2ad.datasets.mvtec_ad import fixture
from m2ad.datasets.spec import DatasetSpec, FileSpec, Fixture, UrlSource

CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
GREY_CATEGORIES = ("grid", "screw", "zipper")
ARCHIVE = "mvtec_anomaly_detection.tar.xz"
ARCHIVE_URL = "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/mvtec_anomaly_detection.tar.xz"

SPEC = DatasetSpec(
    name="mvtec-ad",
    display_name="MVTec AD",
    title="MVTec AD: the MVTec anomaly detection dataset",
    license="CC BY-NC-SA 4.0 (research and non-commercial use)",
    license_id="cc-by-nc-sa-4.0",
    citation=(
        "Paul Bergmann, Michael Fauser, David Sattlegger, Carsten Steger. MVTec AD - A Comprehensive Real-World "
        "Dataset for Unsupervised Anomaly Detection. CVPR 2019. And: Paul Bergmann, Kilian Batzner, Michael Fauser, "
        "David Sattlegger, Carsten Steger. The MVTec Anomaly Detection Dataset: A Comprehensive Real-World Dataset "
        "for Unsupervised Anomaly Detection. IJCV 129, 1038-1059, 2021."
    ),
    homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
    description=(
        "MVTec AD (Bergmann et al., CVPR 2019): 15 categories of industrial objects and textures, one image per "
        "specimen; defect-free training images, test images with pixel masks of 73 defect types."
    ),
    categories=CATEGORIES,
    files=(FileSpec(ARCHIVE, sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d", url=ARCHIVE_URL),),
    source=UrlSource(),
    layout=FolderLayout(categories=CATEGORIES),
    fixture=Fixture(fixture.write, tuple(fixture.SHAPES), fixture.DEFAULT_CATEGORIES, fixture.pack),
    mask_note=(
        "`<stem>_mask.png`, mode L, 0/255; no masks for `test/good`. transistor/misplaced masks mark where a part is "
        f"missing. Greyscale categories ({', '.join(GREY_CATEGORIES)}) keep their single-channel images at original "
        "resolution (byte-identical) and become RGB when decoded or resized."
    ),
    geometry="square",
    geometry_note=(
        "The images are square, so a square resize and the longer-side rule coincide. Leaderboard conventions: 256 x 256 "
        "(ADer, anomalib, UniAD-style tables; masks resized the same way), 256 then a 224 centre crop (the PatchCore "
        "lineage: the crop drops a border, and the defects in it), and 448 then a 392 crop (Dinomaly, INP-Former). "
        "Crops are a method's input transform; these shards are never cropped."
    ),
    protocols=("standard",),
    class_names={
        "verbatim": {category: category for category in CATEGORIES},
        "readable": {category: category.replace("_", " ") for category in CATEGORIES},
    },
    shot_unit="image",
    image_size=1024,
    notes="The official download links rotate; pass --source with the current URL (verified against the pinned sha256).",
)
