"""``folder``: a user's own data in the MVTec AD folder layout (:mod:`m2ad.datasets.layouts.folder`).

``m2ad shard MY_DATA OUT --dataset folder`` reads ``<category>/train/good``,
``<category>/test/<good|defect>`` and ``<category>/ground_truth/<defect>/<stem>_mask.png``, with
PNG, JPEG, BMP or TIFF images; defective images may lack a mask (their pixels then count as
unannotated: the image label still holds).  Category names become dataset-card configs, so
they are letters, digits, ``_``, ``.`` and ``-``.  Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2ad.datasets.layouts.folder import FolderLayout
from m2ad.datasets.mvtec_ad.fixture import write_folder_tree
from m2ad.datasets.spec import DatasetSpec, Fixture, ManualSource
from m2ad.datasets.synthetic import release_files, tar_files

SHAPES = {"cube": "Cube", "dice": "Dice", "ring": "Ring", "tube": "Tube"}


def write(root: Path, *, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
          workers: int | None, progress: bool) -> dict[str, Any]:
    """Write a synthetic tree of one's own data: defect folders ``dent`` and ``stain``."""
    write_folder_tree(root, categories, normal_specimens, ng_specimens, resolution, seed, workers, progress,
                      shapes=SHAPES, defect_folders={category: ("dent", "stain") for category in SHAPES})
    return {}


def pack(tree: Path, folder: Path) -> list[Path]:
    """One's own data travels as one archive (``data.tar``)."""
    return [tar_files(tree, release_files(tree), folder / "data.tar")]


SPEC = DatasetSpec(
    name="folder",
    display_name="Images in the MVTec AD folder layout",
    title="A folder of images in the MVTec AD layout",
    license="",
    license_id="other",
    citation="Your own data: cite its source.",
    homepage="",
    description="Images in the MVTec AD folder layout (train/good, test/<good|defect>, ground_truth/<defect>/<stem>_mask.png).",
    categories=(),
    files=(),
    source=ManualSource("a folder of your own: shard it with `m2ad shard SRC OUT --dataset folder`; nothing is downloaded"),
    layout=FolderLayout(image_suffixes=(".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"), exact_suffix=False, masks_required=False),
    fixture=Fixture(write, tuple(SHAPES), ("cube", "ring"), pack),
    mask_note="`<stem>_mask.png` beside each defective image, in `ground_truth/<defect>/`; optional.",
    geometry="square",
    geometry_note="A resolution N makes every image N x N, as the MVTec AD and VisA literature resizes; shard at 'original' to keep the aspect ratio.",
    protocols=("standard",),
    shot_unit="image",
)
