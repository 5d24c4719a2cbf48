"""A builder of tiny M2AD release trees in the official layout, for tests.

``write_tree(root)`` writes, per category, normal specimens ``Good/<NNN>`` and defective ones
``NG/<defect>_1_<NNN>``, each with all 12 x 10 configurations as small RGB PNGs whose pixels
depend on (category, specimen, view, illumination), masks ``GT/<NG dir>/A<vvv>_mask.png``
(mode L, 0/255) for the views listed in ``DEFECT_VIEWS``, and ``jsons/meta_unsupervised.json``
with the official record schema, order and split rule (60 % of the sorted normal specimens,
shuffled with seed 42, to train).  Tests corrupt the tree afterwards to provoke each error.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VIEWS = tuple(f"{azimuth:03d}" for azimuth in range(0, 360, 30))
LIGHTS = tuple(f"{index:02d}" for index in range(1, 11))
DEFECT_VIEWS = ("000", "030", "090")  # views of an NG specimen that show the defect
META = "jsons/meta_unsupervised.json"


def specimen_names(normal: int, defective: int) -> tuple[list[str], list[str]]:
    """Folder names of the normal and defective specimens of one category."""
    kinds = ("scratch", "hole", "damage")
    return [f"{index:03d}" for index in range(normal)], [f"{kinds[index % 3]}_1_{normal + index:03d}" for index in range(defective)]


def official_split(normal_names: list[str]) -> set[str]:
    """Normal specimens that go to train: sort, shuffle with seed 42, first int(0.6 N)."""
    ordered = sorted(normal_names)
    random.Random(42).shuffle(ordered)
    return set(ordered[: int(0.6 * len(ordered))])


def mask_array(size: int, view: str) -> np.ndarray:
    """A 0/255 mask with a block whose place depends on the view."""
    mask = np.zeros((size, size), np.uint8)
    offset = VIEWS.index(view) % (size // 2)
    mask[offset : offset + size // 4, 1 : 1 + size // 4] = 255
    return mask


def image_array(size: int, seed: int) -> np.ndarray:
    """Deterministic RGB noise for one image."""
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def write_tree(root: Path, *, categories: dict[str, tuple[int, int]] | None = None, size: int = 16) -> dict[str, Any]:
    """Write a release tree; ``categories`` maps a class to (normal, defective) specimen
    counts (default ``{"Bird": (3, 2)}``).  Returns the meta JSON content."""
    categories = categories or {"Bird": (3, 2)}
    meta: dict[str, dict[str, list[dict[str, Any]]]] = {"train": {}, "test": {}}
    seed = 0
    for category, (normal, defective) in categories.items():
        normal_names, ng_names = specimen_names(normal, defective)
        train = official_split(normal_names)
        meta["train"][category], meta["test"][category] = [], []
        for anomalous, names in ((0, normal_names), (1, ng_names)):
            for name in names:
                group = "NG" if anomalous else "Good"
                (root / category / group / name).mkdir(parents=True)
                for view in VIEWS:
                    mask_path = ""
                    if anomalous and view in DEFECT_VIEWS:
                        mask_path = f"{category}/GT/{name}/A{view}_mask.png"
                        (root / mask_path).parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(mask_array(size, view), mode="L").save(root / mask_path)
                    for light in LIGHTS:
                        seed += 1
                        img_path = f"{category}/{group}/{name}/A{view}_I{light}.png"
                        Image.fromarray(image_array(size, seed), mode="RGB").save(root / img_path)
                        record = {
                            "img_path": img_path,
                            "view": view,
                            "illumination": light,
                            "object_name": name,
                            "object_anomaly": anomalous,
                            "image_anomaly": int(bool(mask_path)),
                            "cls_name": category,
                            "mask_path": mask_path,
                            "seg_path": "",
                            "detectable": (light != "10") if mask_path else "",
                        }
                        meta["train" if name in train else "test"][category].append(record)
    write_meta(root, meta)
    return meta


def write_meta(root: Path, meta: dict[str, Any]) -> None:
    """(Re)write the meta JSON of a tree."""
    (root / META).parent.mkdir(parents=True, exist_ok=True)
    (root / META).write_text(json.dumps(meta, indent=1))


def read_meta(root: Path) -> dict[str, Any]:
    """The meta JSON of a tree."""
    return json.loads((root / META).read_text())
