"""A synthetic MVTec 3D-AD in the official layout, from the renderer (``m2ad.render``).

Each scan is one rendered pose of a specimen under one light (:mod:`m2ad.datasets.surface`):
``<category>/<split>/<defect>/rgb/NNN.png`` (RGB), ``xyz/NNN.tiff`` (float32 H x W x 3, the
surface points in millimetres: the object, and around it the table plane a background-plane
removal can fit, zeros where the table lies out of the scanner's range; a defect dents the
surface) and, in ``test``, ``gt/NNN.png`` (mode L, 0/255; all zeros for ``test/good``), with
``calibration/camera_parameters.json`` per category and ``license.txt`` / ``readme.txt`` at the
root.  Of the normal specimens 60 % train, one more (when at least two remain) is
``validation``, the rest are ``test/good``; defect folders are the category's real ones, in turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from m2ad.datasets.surface import render_surface
from m2ad.datasets.synthetic import release_files, tar_files
from m2ad.render import category_seed, run_tasks

SHAPES = {"bagel": "Ring", "cable_gland": "Tube", "cookie": "Cube", "dowel": "Tube", "foam": "Cube", "tire": "Ring"}
"""The categories the fixture renders, and the shape standing for each."""
DEFAULT_CATEGORIES = ("bagel", "cable_gland")
DEFECT_FOLDERS = {
    "bagel": ("combined", "contamination", "crack", "hole"),
    "cable_gland": ("bent", "color", "cut", "hole", "thread"),
    "cookie": ("combined", "contamination", "crack", "hole"),
    "dowel": ("bent", "combined", "contamination", "cut"),
    "foam": ("color", "combined", "contamination", "cut"),
    "tire": ("combined", "contamination", "cut", "hole"),
}
TRAIN_RATIO = 0.6
ARCHIVE = "mvtec_3d_anomaly_detection.tar.xz"


@dataclass(frozen=True)
class _Task:
    root: str
    category: str
    anomalous: bool
    index: int
    folder: str  # <category>/<split>/<defect>
    number: int
    with_mask: bool
    seed: int
    resolution: int


def _write_one(task: _Task) -> None:
    surface = render_surface(SHAPES[task.category], task.anomalous, task.index, category_seed(task.seed, task.category),
                             task.resolution, task.resolution, [0])
    folder = Path(task.root) / task.folder
    for kind in ("rgb", "xyz", *(("gt",) if task.with_mask else ())):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    Image.fromarray(surface.images[0], mode="RGB").save(folder / f"rgb/{task.number:03d}.png")
    tifffile.imwrite(folder / f"xyz/{task.number:03d}.tiff", surface.xyz, photometric="rgb")
    if task.with_mask:
        mask = surface.mask if surface.mask is not None else np.zeros(surface.xyz.shape[:2], bool)
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(folder / f"gt/{task.number:03d}.png")


def write(root: Path, *, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
          workers: int | None, progress: bool) -> dict[str, Any]:
    """Write a synthetic MVTec 3D-AD tree into the empty folder ``root``."""
    tasks = []
    for category in categories:
        train = max(1, int(normal_specimens * TRAIN_RATIO))
        validation = 1 if normal_specimens - train >= 2 else 0
        for index in range(normal_specimens):
            if index < train:
                folder, number = "train/good", index
            elif index < train + validation:
                folder, number = "validation/good", index - train
            else:
                folder, number = "test/good", index - train - validation
            tasks.append(_Task(str(root), category, False, index, f"{category}/{folder}", number, folder.startswith("test"), seed, resolution))
        counts: dict[str, int] = {}
        for index in range(ng_specimens):
            defect = DEFECT_FOLDERS[category][index % len(DEFECT_FOLDERS[category])]
            number = counts[defect] = counts.get(defect, -1) + 1
            tasks.append(_Task(str(root), category, True, index, f"{category}/test/{defect}", number, True, seed, resolution))
        calibration = root / category / "calibration"
        calibration.mkdir(parents=True, exist_ok=True)
        (calibration / "camera_parameters.json").write_text(json.dumps({"note": "synthetic; the renderer's pinhole camera"}))
    run_tasks(_write_one, tasks, workers=workers, progress=progress, unit="scans")
    (root / "license.txt").write_text("Synthetic data written by m2ad synth; Apache-2.0.\n")
    (root / "readme.txt").write_text("A synthetic tree in the layout of the MVTec 3D-AD release.\n")
    return {}


def pack(tree: Path, folder: Path) -> list[Path]:
    """The release's one file: ``mvtec_3d_anomaly_detection.tar.xz`` with the categories at its root."""
    return [tar_files(tree, release_files(tree), folder / ARCHIVE)]
