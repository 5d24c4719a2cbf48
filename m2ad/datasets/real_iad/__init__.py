"""Real-IAD (Wang et al., CVPR 2024): 30 categories, about 150,000 images; each sample is seen
by five cameras (``C1`` from above, ``C2``..``C5`` from the sides), kept as the ``view`` axis.

Layout parser: :mod:`.layout`; fixture writer: :mod:`.fixture`.  The release is a gated Hugging
Face dataset (``Real-IAD/Real-IAD``): request access on its page, then log in with
``hf auth login`` or set ``HF_TOKEN``; the token is read by ``huggingface_hub``'s own lookup,
sent to the Hub only and never printed.  Files: ``realiad_jsons.zip`` and one zip per
category and resolution, ``realiad_<variant>/<category>.zip`` (variants ``256``, ``512``,
``1024``, ``raw``; these names come from third-party runbooks, as the Hub listing is not
public; a missing name is one clear error).  No checksum is published: files are verified
against the Hub's LFS sha256.
"""

from __future__ import annotations

from m2ad.datasets.real_iad import fixture
from m2ad.datasets.real_iad.layout import RealIADLayout
from m2ad.datasets.spec import DatasetSpec, FileSpec, Fixture, HubSource

CATEGORIES = (
    "audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint", "mounts", "pcb",
    "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll", "regulator", "rolled_strip_base",
    "sim_card_set", "switch", "tape", "terminalblock", "toothbrush", "toy", "toy_brick", "transistor1", "u_block",
    "usb", "usb_adaptor", "vcpill", "wooden_beads", "woodstick", "zipper",
)  # fmt: skip
VARIANTS = ("256", "512", "1024", "raw")
REPOSITORY = "Real-IAD/Real-IAD"
READABLE = {"transistor1": "transistor", "terminalblock": "terminal block"}  # our choice: no published mapping

SPEC = DatasetSpec(
    name="real-iad",
    display_name="Real-IAD",
    title="Real-IAD: a real-world multi-view dataset for industrial anomaly detection",
    license="CC BY-NC-SA 4.0 (research purposes only; gated access)",
    license_id="cc-by-nc-sa-4.0",
    citation=(
        "Chengjie Wang, Wenbing Zhu, Bin-Bin Gao, Zhenye Gan, Jiangning Zhang, Zhihao Gu, Shuguang Qian, Mingang Chen, "
        "Lizhuang Ma. Real-IAD: A Real-World Multi-View Dataset for Benchmarking Versatile Industrial Anomaly Detection. "
        "CVPR 2024."
    ),
    homepage="https://realiad4ad.github.io/Real-IAD/",
    description=(
        "Real-IAD (Wang et al., CVPR 2024): 30 categories of industrial parts, each sample seen by 5 cameras "
        "(C1 from above, C2-C5 from the sides), split by the realiad_jsons files (multi-view UIAD setting)."
    ),
    categories=CATEGORIES,
    files=(
        FileSpec("realiad_jsons.zip"),
        *(FileSpec(f"realiad_{variant}/{category}.zip", categories=(category,), variant=variant) for variant in VARIANTS for category in CATEGORIES),
    ),
    source=HubSource(
        REPOSITORY,
        revision="main",
        gated=True,
        access=(
            f"request access at https://huggingface.co/datasets/{REPOSITORY} (college e-mail addresses are approved at once, "
            "others by writing to realiad4ad@outlook.com), then run `hf auth login` or set HF_TOKEN"
        ),
    ),
    layout=RealIADLayout(),
    fixture=Fixture(fixture.write, tuple(fixture.SHAPES), fixture.DEFAULT_CATEGORIES, fixture.pack),
    axes=("view",),
    mask_note=(
        "Masks are the files the JSON's mask_path names (`<same stem>.png` beside each image), per view; some views "
        "of defective samples have none (mask_path null). ADEval binarises `> 127`, ADer `> 0`: they agree on 0/255 masks."
    ),
    geometry="square",
    geometry_note=(
        "The official code (UniAD) resizes to 224 x 224 (nearest for masks) and ADEval upsamples each anomaly map to "
        "the file's resolution (realiad_1024) before the pixel metrics; ADer and INP-Former resize to 256 x 256 and "
        "score there. Shard at 'original' (variant 1024) for the official pixel geometry, at 256 for ADer's."
    ),
    protocols=("standard", "realiad-sample"),
    class_names={
        "verbatim": {category: category for category in CATEGORIES},
        "readable": {category: READABLE.get(category, category.replace("_", " ")) for category in CATEGORIES},
    },
    shot_unit="specimen",
    variants=VARIANTS,
    default_variant="1024",
    notes="The Hub listing of Real-IAD is not public: file names follow third-party runbooks (realiad_<res>/<category>.zip).",
)
