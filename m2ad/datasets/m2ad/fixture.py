"""The synthetic M2AD writer: rendered specimens, 12 views x 10 lights, in the official layout.

The output reads exactly like the released M2AD-1024 (reference: m2ad.md sections 5-8)::

    ROOT/
      jsons/meta_unsupervised.json          official record schema, order and split rule
      <Cat>/Good/<NNN>/A<vvv>_I<ii>.png     normal specimens
      <Cat>/NG/<token>_<n>[_<token>_<n>...]_<NNN>/A<vvv>_I<ii>.png
      <Cat>/GT/<NG dir>/A<vvv>_mask.png     mode L, 0/255, only for views that show a defect

Categories are the renderer's shapes (``Cube``, ``Dice``, ``Ring``, ``Tube``), each with its
two M2AD-like variants.  The turntable turns each specimen to the 12 azimuths 000..330 under a
camera at 30 degrees; the 10 lighting set-ups are ``m2ad.render.LIGHTING_SETUPS``.  A defect is
seen only from the views in which its surface faces the camera: masks exist only there and
``image_anomaly`` is 1 only there.  An anomalous image whose defect the light does not reveal
(contrast below ``m2ad.render.DETECTABLE_CONTRAST``) is ``detectable: False``: 6-14 % of the
anomalous images of the default set, mostly under the grazing lights 09 and 10 (the real
release marks 5.8 %).

Difficulty of the default set (seed 0, 128 px; measured with a scratch PatchCore-like kNN on
ImageNet EfficientNet-Lite0 features): image AUROC Cube 0.75, Ring 0.71, Tube 0.57, while the
per-image mean intensity scores 0.44-0.50 and the max-pooled difference to the mean normal
training image of the same (view, light) 0.43-0.54.

This is the one M2AD writer: ``m2ad synth`` (the embedded default dataset) and the tests'
M2AD trees both come from it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from m2ad.datasets.m2ad.layout import ILLUMINATIONS, META_PATH, VIEWS
from m2ad.datasets.synthetic import release_files, zip_files
from m2ad.files import write_text_atomic
from m2ad.render import DETECTABLE_CONTRAST, SHAPES, Pose, Specimen, run_tasks

CATEGORIES = SHAPES
DEFAULT_CATEGORIES: tuple[str, ...] = ("Cube", "Ring", "Tube")
NORMAL_TRAIN_RATIO = 0.6
SPLIT_SEED = 42
PNG_COMPRESS_LEVEL = 1
POSES = tuple(Pose(int(view)) for view in VIEWS)


@dataclass(frozen=True)
class SpecimenTask:
    """Everything a worker needs to render and write one specimen."""

    root: str
    category: str
    anomalous: bool
    index: int
    seed: int
    resolution: int


def ng_dirname(kinds: dict[str, int], index: int) -> str:
    """Official NG directory name: ``<token>_<count>`` pairs, then the 3-digit specimen number."""
    return "_".join(f"{token}_{count}" for token, count in kinds.items()) + f"_{index:03d}"


def render_specimen(task: SpecimenTask) -> list[dict[str, Any]]:
    """Render one specimen's 120 images (and masks), write them, and return its raw records."""
    specimen = Specimen(task.category, task.anomalous, task.index, task.seed, POSES, task.resolution, task.resolution)
    object_name = ng_dirname(specimen.defect_kinds, task.index) if task.anomalous else f"{task.index:03d}"
    group = "NG" if task.anomalous else "Good"
    image_dir = Path(task.root) / task.category / group / object_name
    mask_dir = Path(task.root) / task.category / "GT" / object_name
    image_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for view, rendered in zip(VIEWS, specimen.render(range(len(ILLUMINATIONS)))):
        mask_path = ""
        if rendered.mask is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
            mask_name = f"A{view}_mask.png"
            Image.fromarray(np.where(rendered.mask, 255, 0).astype(np.uint8), mode="L").save(mask_dir / mask_name, compress_level=PNG_COMPRESS_LEVEL)
            mask_path = f"{task.category}/GT/{object_name}/{mask_name}"
        for illumination, pixels, revealed in zip(ILLUMINATIONS, rendered.images, rendered.revealed):
            name = f"A{view}_I{illumination}.png"
            Image.fromarray(pixels, mode="RGB").save(image_dir / name, compress_level=PNG_COMPRESS_LEVEL)
            records.append(
                {
                    "img_path": f"{task.category}/{group}/{object_name}/{name}",
                    "view": view,
                    "illumination": illumination,
                    "object_name": object_name,
                    "object_anomaly": int(task.anomalous),
                    "image_anomaly": int(bool(mask_path)),
                    "cls_name": task.category,
                    "mask_path": mask_path,
                    "seg_path": "",
                    "detectable": "" if revealed is None else revealed,
                }
            )
    return records


def split_normal_specimens(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Official split of a class's normal specimens: sort, shuffle with seed 42, first 60 % train.

    Equivalent to ``random.seed(42); random.shuffle(sorted(names))`` in the official
    ``data/gen_metadata/m2ad.py`` (m2ad.md §7), without touching the global random state.
    """
    ordered = sorted(names)
    random.Random(SPLIT_SEED).shuffle(ordered)
    cut = int(len(ordered) * NORMAL_TRAIN_RATIO)
    return ordered[:cut], ordered[cut:]


def _record_order(record: dict[str, Any]) -> tuple[int, int, int, int]:
    """The official record order: (object_anomaly, specimen number, view, illumination)."""
    return (int(record["object_anomaly"]), int(record["object_name"][-3:]), int(record["view"]), int(record["illumination"]))


def build_meta(records: Sequence[dict[str, Any]], categories: Sequence[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``meta_unsupervised.json`` content from image records: official split, order and fields."""
    meta: dict[str, dict[str, list[dict[str, Any]]]] = {"train": {}, "test": {}}
    for category in categories:
        own = [record for record in records if record["cls_name"] == category]
        normal_names = sorted({r["object_name"] for r in own if not r["object_anomaly"]})
        train_names, _ = split_normal_specimens(normal_names)
        train = set(train_names)
        meta["train"][category] = sorted((r for r in own if r["object_name"] in train and not r["object_anomaly"]), key=_record_order)
        meta["test"][category] = sorted(
            (r for r in own if r["object_anomaly"] or r["object_name"] not in train), key=_record_order
        )
    return meta


def write_meta(root: Path, meta: dict[str, Any]) -> None:
    """(Re)write a tree's meta JSON as the official writer formats it."""
    write_text_atomic(root / META_PATH, json.dumps(meta, indent=4) + "\n")


def read_meta(root: Path) -> dict[str, Any]:
    """The meta JSON of a tree."""
    return json.loads((root / META_PATH).read_text())


def write(root: Path, *, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
          workers: int | None, progress: bool) -> dict[str, Any]:
    """Write a synthetic M2AD tree into the empty folder ``root``; returns the marker's extras."""
    tasks = [
        SpecimenTask(str(root), category, anomalous, index, seed, resolution)
        for category in categories
        for anomalous, count in ((False, normal_specimens), (True, ng_specimens))
        for index in range(count)
    ]
    records = [record for specimen in run_tasks(render_specimen, tasks, workers=workers, progress=progress) for record in specimen]
    write_meta(root, build_meta(records, categories))
    return {"views": len(VIEWS), "illuminations": len(ILLUMINATIONS), "detectable_contrast": DETECTABLE_CONTRAST}


def pack(tree: Path, folder: Path) -> list[Path]:
    """The Hub's files of a tree: ``jsons.zip`` (``jsons/...``) and one ``<Category>.zip``
    per category (``<Category>/{Good,NG,GT}/...``)."""
    categories = sorted(path.name for path in tree.iterdir() if path.is_dir() and path.name != "jsons")
    return [zip_files(tree, release_files(tree, top), folder / f"{top}.zip") for top in ("jsons", *categories)]
