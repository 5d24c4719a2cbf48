"""A synthetic MVTec AD in the official layout, from the renderer (``m2ad.render``).

Each specimen is one rendered image (one pose, one light) named like the release:
``<category>/train/good/000.png``, ``test/good/000.png``, ``test/<defect>/000.png`` (3-digit
names counted per folder) and ``ground_truth/<defect>/000_mask.png`` (mode L, 0/255), with
``license.txt`` and ``readme.txt`` at the root.  60 % of the normal specimens train, the rest
are ``test/good``; defect folders are the category's real ones, in turn.  The greyscale
categories (grid, screw, zipper) are written as single-channel PNGs, as released.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from m2ad.datasets.synthetic import release_files, tar_files
from m2ad.render import category_seed, render_image, run_tasks

SHAPES = {"bottle": "Ring", "metal_nut": "Tube", "screw": "Tube", "grid": "Cube", "zipper": "Dice", "hazelnut": "Dice"}
"""The categories the fixture renders, and the shape standing for each."""
DEFAULT_CATEGORIES = ("bottle", "screw")
GREY = ("grid", "screw", "zipper")
DEFECT_FOLDERS = {
    "bottle": ("broken_large", "broken_small", "contamination"),
    "metal_nut": ("bent", "color", "flip", "scratch"),
    "screw": ("manipulated_front", "scratch_head", "scratch_neck", "thread_side", "thread_top"),
    "grid": ("bent", "broken", "glue", "metal_contamination", "thread"),
    "zipper": ("broken_teeth", "combined", "fabric_border", "fabric_interior", "rough", "split_teeth", "squeezed_teeth"),
    "hazelnut": ("crack", "cut", "hole", "print"),
}
TRAIN_RATIO = 0.6


@dataclass(frozen=True)
class _Task:
    root: str
    category: str
    shape: str
    grey: bool
    anomalous: bool
    index: int
    image_path: str
    mask_path: str | None
    seed: int
    resolution: int


def _write_one(task: _Task) -> None:
    rendered = render_image(task.shape, task.anomalous, task.index, category_seed(task.seed, task.category), task.resolution, task.resolution)
    image = Image.fromarray(rendered.image, mode="RGB")
    if task.grey:
        image = image.convert("L")
    path = Path(task.root) / task.image_path
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    if task.mask_path is not None:
        assert rendered.mask is not None, "a single-pose defect is always in view"
        mask = Path(task.root) / task.mask_path
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(rendered.mask, 255, 0).astype(np.uint8), mode="L").save(mask)


def write_folder_tree(root: Path, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
                      workers: int | None, progress: bool, *, shapes: dict[str, str], defect_folders: dict[str, Sequence[str]],
                      grey: Sequence[str] = ()) -> None:
    """Write images and masks in the folder layout (``m2ad.datasets.layouts.folder``), named
    as MVTec AD names them; ``shapes`` gives each category's shape, ``defect_folders`` its
    defect folders (used in turn), ``grey`` the categories written as single-channel PNGs."""
    found = []
    for category in categories:
        train = int(normal_specimens * TRAIN_RATIO)
        for index in range(normal_specimens):
            folder, number = ("train/good", index) if index < train else ("test/good", index - train)
            found.append(_Task(str(root), category, shapes[category], category in grey, False, index,
                               f"{category}/{folder}/{number:03d}.png", None, seed, resolution))
        counts: dict[str, int] = {}
        for index in range(ng_specimens):
            defect = defect_folders[category][index % len(defect_folders[category])]
            number = counts[defect] = counts.get(defect, -1) + 1
            image, mask = f"{category}/test/{defect}/{number:03d}.png", f"{category}/ground_truth/{defect}/{number:03d}_mask.png"
            found.append(_Task(str(root), category, shapes[category], category in grey, True, index, image, mask, seed, resolution))
    run_tasks(_write_one, found, workers=workers, progress=progress, unit="images")


def write(root: Path, *, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
          workers: int | None, progress: bool) -> dict[str, Any]:
    """Write a synthetic MVTec AD tree into the empty folder ``root``."""
    write_folder_tree(root, categories, normal_specimens, ng_specimens, resolution, seed, workers, progress,
                      shapes=SHAPES, defect_folders=DEFECT_FOLDERS, grey=GREY)
    (root / "license.txt").write_text("Synthetic data written by m2ad synth; Apache-2.0.\n")
    (root / "readme.txt").write_text("A synthetic tree in the layout of the MVTec AD release.\n")
    return {}


def pack(tree: Path, folder: Path) -> list[Path]:
    """The release's one file: ``mvtec_anomaly_detection.tar.xz`` with the categories at its root."""
    return [tar_files(tree, release_files(tree), folder / "mvtec_anomaly_detection.tar.xz")]
