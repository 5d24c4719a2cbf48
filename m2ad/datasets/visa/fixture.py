"""A synthetic VisA in the layout of the raw release, from the renderer (``m2ad.render``).

Its quirks are those of the release: ``split_csv/1cls.csv`` (``object,split,label,image,mask``;
90 % of the normal images train), upper-case ``.JPG`` images of about 1.5 : 1, normal names of
4 digits for some categories (``candle``: ``0000.JPG``) and of 3 for others (``capsules``:
``000.JPG``, the same stems as the anomalies), anomaly names of 3 digits, and masks
``Data/Masks/Anomaly/<stem>.png`` holding defect-class ids (1..5; 0 = background), for
``capsules`` as a palette image whose colours for the ids are nearly black, so that only a
rule reading the stored values (``!= 0``) sees every defect.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from m2ad.datasets.synthetic import release_files, tar_files
from m2ad.render import category_seed, render_image, run_tasks

SHAPES = {"candle": "Ring", "capsules": "Dice", "cashew": "Cube", "pcb1": "Tube"}
NORMAL_DIGITS = {"candle": 4, "capsules": 3, "cashew": 3, "pcb1": 4}
DEFAULT_CATEGORIES = ("candle", "capsules")
PALETTE_MASKS = ("capsules",)
TRAIN_RATIO = 0.9
MAX_ID = 5
JPEG_QUALITY = 95


@dataclass(frozen=True)
class _Task:
    root: str
    category: str
    anomalous: bool
    index: int
    image_path: str
    mask_path: str
    seed: int
    resolution: int


def _write_one(task: _Task) -> None:
    width, height = task.resolution, max(16, round(task.resolution * 2 / 3))
    rendered = render_image(SHAPES[task.category], task.anomalous, task.index, category_seed(task.seed, task.category), width, height)
    path = Path(task.root) / task.image_path
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rendered.image, mode="RGB").save(path, format="JPEG", quality=JPEG_QUALITY)
    if task.mask_path:
        assert rendered.mask is not None, "a single-pose defect is always in view"
        ids = np.where(rendered.mask, 1 + task.index % MAX_ID, 0).astype(np.uint8)
        mask = Image.fromarray(ids, mode="L")
        if task.category in PALETTE_MASKS:
            mask = Image.fromarray(ids, mode="P")
            mask.putpalette([channel for index in range(256) for channel in (index, 0, 0)])
        target = Path(task.root) / task.mask_path
        target.parent.mkdir(parents=True, exist_ok=True)
        mask.save(target)


def rows_and_tasks(root: Path, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int,
                   seed: int) -> tuple[list[dict[str, str]], list[_Task]]:
    """The 1cls.csv rows and one task per image."""
    rows, tasks = [], []
    for category in categories:
        train = int(normal_specimens * TRAIN_RATIO)
        for index in range(normal_specimens):
            image = f"{category}/Data/Images/Normal/{index:0{NORMAL_DIGITS[category]}d}.JPG"
            rows.append({"object": category, "split": "train" if index < train else "test", "label": "normal", "image": image, "mask": ""})
            tasks.append(_Task(str(root), category, False, index, image, "", seed, resolution))
        for index in range(ng_specimens):
            image, mask = f"{category}/Data/Images/Anomaly/{index:03d}.JPG", f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            rows.append({"object": category, "split": "test", "label": "anomaly", "image": image, "mask": mask})
            tasks.append(_Task(str(root), category, True, index, image, mask, seed, resolution))
    return rows, tasks


def _csv(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: row[column] for column in columns} for row in rows)
    return buffer.getvalue()


def write(root: Path, *, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
          workers: int | None, progress: bool) -> dict[str, Any]:
    """Write a synthetic VisA tree into the empty folder ``root``."""
    rows, tasks = rows_and_tasks(root, categories, normal_specimens, ng_specimens, resolution, seed)
    run_tasks(_write_one, tasks, workers=workers, progress=progress, unit="images")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text(_csv(rows, ["object", "split", "label", "image", "mask"]))
    for category in categories:
        own = [{"image": row["image"], "label": row["label"], "mask": row["mask"]} for row in rows if row["object"] == category]
        (root / category / "image_anno.csv").write_text(_csv(own, ["image", "label", "mask"]))
    return {}


def pack(tree: Path, folder: Path) -> list[Path]:
    """The release's one file: ``VisA_20220922.tar`` with the categories and ``split_csv`` at its root."""
    return [tar_files(tree, release_files(tree), folder / "VisA_20220922.tar")]
