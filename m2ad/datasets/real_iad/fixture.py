"""A synthetic Real-IAD in the layout of the release, from the renderer (``m2ad.render``).

Each sample is one rendered specimen seen by the five cameras, under one light (Real-IAD has
no lighting axis): ``C1`` from above (80 degrees) and ``C2``..``C5`` from the four sides at 45
degrees.  Files are named as released: ``realiad_1024/<category>/OK/S0001/<category>_0001_OK_C1_<timestamp>.jpg``
and ``.../NG/<code>/S0007/<category>_0007_NG_<code>_C1_<timestamp>.jpg`` (``audiojack``'s
defective files with the double underscore of the release, ``audiojack__0007_NG_...``), masks as
``<same stem>.png`` (0/255) for the views that show the defect only, so that some views of
defective samples have ``mask_path: null``, as in the release.  The split files are
``realiad_jsons/realiad_jsons/<category>.json`` (60 % of the OK samples train).  The folder is
``realiad_1024`` whatever the render size (the variant names the release folder).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from m2ad.datasets.synthetic import release_files, zip_files
from m2ad.render import Pose, Specimen, category_seed, run_tasks

SHAPES = {"audiojack": "Tube", "bottle_cap": "Ring", "switch": "Cube", "toy": "Dice"}
DEFAULT_CATEGORIES = ("audiojack", "bottle_cap")
POSES = (Pose(0, 80), Pose(0, 45), Pose(90, 45), Pose(180, 45), Pose(270, 45))
CODES = {"abrasion": "CH", "damage": "PS", "hole": "AK", "scratch": "HS", "stain": "ZW"}
"""Defect token -> Real-IAD defect code (CH abrasion, PS damage, AK pit, HS scratch, ZW contamination)."""
VARIANT_FOLDER = "realiad_1024"
TRAIN_RATIO = 0.6
JPEG_QUALITY = 95


@dataclass(frozen=True)
class _Task:
    root: str
    category: str
    anomalous: bool
    index: int
    number: int
    seed: int
    resolution: int


def _write_sample(task: _Task) -> list[dict[str, Any]]:
    """Render and write one sample's five views; return its JSON records."""
    specimen = Specimen(SHAPES[task.category], task.anomalous, task.index, category_seed(task.seed, task.category), POSES,
                        task.resolution, task.resolution)
    code = CODES[next(iter(specimen.defect_kinds))] if task.anomalous else ""
    folder = f"NG/{code}/S{task.number:04d}" if task.anomalous else f"OK/S{task.number:04d}"
    stem_prefix = f"{task.category}{'__' if task.anomalous and task.category == 'audiojack' else '_'}{task.number:04d}"
    stem_prefix += f"_NG_{code}" if task.anomalous else "_OK"
    records = []
    for camera, rendered in enumerate(specimen.render([0]), start=1):
        stem = f"{stem_prefix}_C{camera}_{20231023092610 + 100 * task.number + camera}"
        target = Path(task.root) / VARIANT_FOLDER / task.category / folder
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rendered.images[0], mode="RGB").save(target / f"{stem}.jpg", format="JPEG", quality=JPEG_QUALITY)
        mask = None
        if rendered.mask is not None:
            Image.fromarray(np.where(rendered.mask, 255, 0).astype(np.uint8), mode="L").save(target / f"{stem}.png")
            mask = f"{folder}/{stem}.png"
        records.append({"category": task.category, "anomaly_class": code or "OK", "image_path": f"{folder}/{stem}.jpg", "mask_path": mask})
    return records


def write(root: Path, *, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
          workers: int | None, progress: bool) -> dict[str, Any]:
    """Write a synthetic Real-IAD tree into the empty folder ``root``."""
    tasks = []
    for category in categories:
        tasks += [_Task(str(root), category, False, index, index + 1, seed, resolution) for index in range(normal_specimens)]
        tasks += [_Task(str(root), category, True, index, normal_specimens + index + 1, seed, resolution) for index in range(ng_specimens)]
    samples = run_tasks(_write_sample, tasks, workers=workers, progress=progress, unit="samples")
    listing = root / "realiad_jsons" / "realiad_jsons"
    listing.mkdir(parents=True)
    for category in categories:
        own = [(task, records) for task, records in zip(tasks, samples) if task.category == category]
        train = int(normal_specimens * TRAIN_RATIO)
        content = {
            "meta": {"prefix": f"{category}/", "normal_class": "OK"},
            "train": [record for task, records in own if not task.anomalous and task.index < train for record in records],
            "test": [record for task, records in own if task.anomalous or task.index >= train for record in records],
        }
        (listing / f"{category}.json").write_text(json.dumps(content, indent=1))
    return {"views": len(POSES), "variant": "1024"}


def pack(tree: Path, folder: Path) -> list[Path]:
    """The Hub's files of a tree: ``realiad_jsons.zip`` (``realiad_jsons/realiad_jsons/...``) and
    ``realiad_1024/<category>.zip`` per category, each holding a top-level ``<category>/`` folder."""
    packed = [zip_files(tree, release_files(tree, "realiad_jsons"), folder / "realiad_jsons.zip")]
    for category in sorted(path.name for path in (tree / VARIANT_FOLDER).iterdir()):
        files = release_files(tree, f"{VARIANT_FOLDER}/{category}")
        packed.append(zip_files(tree, files, folder / VARIANT_FOLDER / f"{category}.zip", prefix=VARIANT_FOLDER))
    return packed
