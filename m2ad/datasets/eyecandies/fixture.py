"""A synthetic Eyecandies in the official layout, from the renderer (``m2ad.render``).

Each sample is one rendered pose of a specimen (:mod:`m2ad.datasets.surface`) under six of the
renderer's lighting set-ups standing for Eyecandies' six (:data:`LIGHTS`), written as the
release names its items: ``<Category>/<split>/data/<index>_image_<k>.png``, ``_depth.png``
(16-bit, normalised to the sample's own range), ``_info_depth.yaml`` (that range, in "metres":
object units x 0.05), ``_normals.png`` (``(n + 1) * 127.5``), ``_pose.txt`` and, in
``test_public``, ``_metadata.yaml`` (``anomalous: 0|1``) and ``_mask.png`` (0/255).  The
index is zero-padded to the split's size, as released (``0_`` for up to 10 samples, ``00_``
up to 100).  Of the normal specimens 60 % are ``train``, one more (when at least two remain)
is ``val``, the rest are the normal half of ``test_public``; the defective ones are its other
half.  ``test_private`` is not written (its labels are not public).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from m2ad.datasets.surface import render_surface
from m2ad.datasets.synthetic import release_files, tar_files
from m2ad.render import category_seed, run_tasks

SHAPES = {"CandyCane": "Tube", "ChocolateCookie": "Cube", "GummyBear": "Dice", "Lollipop": "Ring", "Marshmallow": "Cube",
          "PeppermintCandy": "Ring"}
"""The categories the fixture renders, and the shape standing for each."""
DEFAULT_CATEGORIES = ("CandyCane", "GummyBear")
LIGHTS = (0, 4, 3, 2, 5, 1)
"""Renderer set-up for Eyecandies' image_0 .. image_5: all spotlights -> all segments + ring;
bottom, right, top, left -> the lower, right, upper, left segment; global -> the ring light."""
TRAIN_RATIO = 0.6
METRES_PER_UNIT = 0.05


@dataclass(frozen=True)
class _Task:
    root: str
    category: str
    anomalous: bool
    index: int
    prefix: str  # <Category>/<split>/data/<padded index>_
    labelled: bool
    seed: int
    resolution: int


def _write_one(task: _Task) -> None:
    surface = render_surface(SHAPES[task.category], task.anomalous, task.index, category_seed(task.seed, task.category),
                             task.resolution, task.resolution, LIGHTS)
    prefix = Path(task.root) / task.prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for light, image in enumerate(surface.images):
        Image.fromarray(image, mode="RGB").save(f"{prefix}image_{light}.png")
    low, high = float(surface.depth.min()), float(surface.depth.max())
    normalised = np.round((surface.depth - low) / max(high - low, 1e-12) * 65535).astype(np.uint16)
    Image.fromarray(normalised).save(f"{prefix}depth.png")
    Path(f"{prefix}info_depth.yaml").write_text(f"normalization:\n  min: {low * METRES_PER_UNIT!r}\n  max: {high * METRES_PER_UNIT!r}\n")
    normals = np.clip(np.round((surface.normals + 1) * 127.5), 0, 255).astype(np.uint8)
    Image.fromarray(normals, mode="RGB").save(f"{prefix}normals.png")
    Path(f"{prefix}pose.txt").write_text("\n".join(" ".join(f"{value:.1f}" for value in row) for row in np.eye(4)) + "\n")
    if task.labelled:
        Path(f"{prefix}metadata.yaml").write_text(f"anomalous: {int(task.anomalous)}\n")
        mask = surface.mask if surface.mask is not None else np.zeros(surface.depth.shape, bool)
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(f"{prefix}mask.png")


def _padded(count: int) -> int:
    """Digits of the index in a split of ``count`` samples (``000`` for 1,000, ``00`` for 50)."""
    return len(str(max(count - 1, 0)))


def write(root: Path, *, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
          workers: int | None, progress: bool) -> dict[str, Any]:
    """Write a synthetic Eyecandies tree into the empty folder ``root``."""
    tasks = []
    for category in categories:
        train = max(1, int(normal_specimens * TRAIN_RATIO))
        val = 1 if normal_specimens - train >= 2 else 0
        test_normal = normal_specimens - train - val
        splits = {"train": [(False, index) for index in range(train)],
                  "val": [(False, train + index) for index in range(val)],
                  "test_public": [(False, train + val + index) for index in range(test_normal)] + [(True, index) for index in range(ng_specimens)]}
        for split, members in splits.items():
            digits = _padded(len(members))
            for number, (anomalous, index) in enumerate(members):
                tasks.append(_Task(str(root), category, anomalous, index, f"{category}/{split}/data/{number:0{digits}d}_",
                                   split == "test_public", seed, resolution))
    run_tasks(_write_one, tasks, workers=workers, progress=progress, unit="samples")
    return {}


def pack(tree: Path, folder: Path) -> list[Path]:
    """One tar per category (``<Category>.tar``, the category folder inside), as ``eyec ec-get``
    leaves them extracted."""
    categories = sorted(path.name for path in tree.iterdir() if path.is_dir())
    return [tar_files(tree, release_files(tree, category), folder / f"{category}.tar") for category in categories]
