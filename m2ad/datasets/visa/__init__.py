"""VisA (Zou et al., ECCV 2022, "SPot-the-Difference"): 12 categories of complex and
multi-instance objects, 10,821 images (9,621 normal, 1,200 anomalous).

Layout parser (the raw release and its ``split_csv/1cls.csv``): :mod:`.layout`; fixture
writer: :mod:`.fixture`.  The 1cls split: 8,659 training images; 962 normal and 1,200
anomalous test images.  Images are RGB JPEGs (``.JPG``) of about 1.5 : 1; masks hold
defect-class ids per category (``utils/id2class.py`` of the release: 0 = background, up to 9).
"""

from __future__ import annotations

from m2ad.datasets.spec import DatasetSpec, FileSpec, Fixture, UrlSource
from m2ad.datasets.visa import fixture
from m2ad.datasets.visa.layout import VisALayout

CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip
ARCHIVE = "VisA_20220922.tar"
READABLE = {
    "pcb1": "printed circuit board", "pcb2": "printed circuit board", "pcb3": "printed circuit board",
    "pcb4": "printed circuit board", "macaroni1": "macaroni", "macaroni2": "macaroni", "chewinggum": "chewing gum",
    "pipe_fryum": "pipe fryum", "capsules": "capsule",
}  # fmt: skip

SPEC = DatasetSpec(
    name="visa",
    display_name="VisA",
    title="VisA: the Visual Anomaly dataset",
    license="CC BY 4.0",
    license_id="cc-by-4.0",
    citation=(
        "Yang Zou, Jongheon Jeong, Latha Pemula, Dongqing Zhang, Onkar Dabeer. SPot-the-Difference Self-Supervised "
        "Pre-training for Anomaly Detection and Segmentation. ECCV 2022."
    ),
    homepage="https://github.com/amazon-science/spot-diff",
    description=(
        "VisA (Zou et al., ECCV 2022): 12 categories of complex and multi-instance objects (PCBs, capsules, "
        "macaroni, ...), one image per specimen, split by the release's split_csv/1cls.csv."
    ),
    categories=CATEGORIES,
    files=(FileSpec(ARCHIVE, sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
                    url=f"https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/{ARCHIVE}"),),
    source=UrlSource(),
    layout=VisALayout(),
    fixture=Fixture(fixture.write, tuple(fixture.SHAPES), fixture.DEFAULT_CATEGORIES, fixture.pack),
    mask_note=(
        "`Data/Masks/Anomaly/<stem>.png` holding defect-class ids (0 = background, 1..9 per category), paired with "
        "their images through split_csv/1cls.csv; normal images have no mask. A `> 127` threshold would erase them: "
        "m2ad binarises `!= 0`, as the official prepare_data.py does."
    ),
    geometry="square",
    geometry_note=(
        "VisA images are not square (about 1.5 : 1). Nearly all multi-class and zero-shot papers (ADer, anomalib, "
        "AdaCLIP, April-GAN, INP-Former) squash them to a square (256, 448 or 518), which is this rule; the "
        "PatchCore lineage keeps the aspect ratio and centre-crops, losing the left and right edges. The official "
        "metrics code prescribes no size and counts normal images in the localisation metrics."
    ),
    protocols=("standard",),
    class_names={
        "verbatim": {category: category for category in CATEGORIES},
        "readable": {category: READABLE.get(category, category) for category in CATEGORIES},
    },
    shot_unit="image",
)
