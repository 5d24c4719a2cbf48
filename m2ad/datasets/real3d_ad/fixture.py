"""A synthetic Real3D-AD in the official layout, from the renderer's surfaces (``m2ad.render``).

Each specimen is one point cloud: the surface of a synthetic solid, sampled
(:func:`m2ad.render.surface_cloud`), written as binary PCD, fields ``x y z`` (as Open3D writes
Real3D-AD's files).  Names follow the release: ``<category>/train/<i>_template.pcd`` for the
normal training clouds, ``<category>/test/<i>_good.pcd`` for the normal test clouds and
``<category>/test/<i>_<bulge|sink>.pcd`` for the anomalous ones (alternating), each with its
``<category>/gt/<i>_<bulge|sink>.txt`` of ``x y z label`` lines (the same points, labelled).
Half the normal specimens train (at least one), the rest are ``test/good``.  ``resolution`` sets
the cloud size, :func:`points_per_cloud` = 4 x resolution (at least 64) points, plus a few per
specimen index so that the clouds are ragged, as Real3D-AD's are.  Defects displace the points
within a random radius (0.12 to 0.22 of a unit-sized solid) by 0.06 to 0.1 along their normals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2ad.datasets.synthetic import release_files, zip_files
from m2ad.pointcloud import write_labelled_text, write_pcd
from m2ad.render import POINT_DEFECTS, category_seed, run_tasks, surface_cloud

SHAPES = {"airplane": "Tube", "candybar": "Cube", "duck": "Dice", "shell": "Ring"}
"""The categories the fixture renders, and the shape standing for each."""
DEFAULT_CATEGORIES = ("candybar", "shell")
ARCHIVE = "real3d-ad-pcd.zip"


def points_per_cloud(resolution: int) -> int:
    """The cloud size the fixture writes for a ``--resolution``."""
    return max(64, 4 * int(resolution))


@dataclass(frozen=True)
class _Task:
    root: str
    category: str
    defect: str
    index: int
    pcd_path: str
    gt_path: str | None
    seed: int
    num_points: int


def _write_one(task: _Task) -> None:
    cloud = surface_cloud(SHAPES[task.category], task.defect, task.index, category_seed(task.seed, task.category), task.num_points)
    path = Path(task.root) / task.pcd_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(write_pcd(cloud.points))
    if task.gt_path is not None:
        gt = Path(task.root) / task.gt_path
        gt.parent.mkdir(parents=True, exist_ok=True)
        gt.write_bytes(write_labelled_text(cloud.points, cloud.labels))


def write(root: Path, *, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
          workers: int | None, progress: bool) -> dict[str, Any]:
    """Write a synthetic Real3D-AD tree into the empty folder ``root``."""
    count = points_per_cloud(resolution)
    tasks = []
    for category in categories:
        train = max(1, normal_specimens // 2)
        for index in range(normal_specimens):
            name = f"{category}/train/{index + 1}_template.pcd" if index < train else f"{category}/test/{index - train + 1}_good.pcd"
            tasks.append(_Task(str(root), category, "", index, name, None, seed, count + 5 * index))  # ragged clouds
        for index in range(ng_specimens):
            defect = POINT_DEFECTS[index % len(POINT_DEFECTS)]
            stem = f"{index + 1}_{defect}"
            tasks.append(_Task(str(root), category, defect, index, f"{category}/test/{stem}.pcd", f"{category}/gt/{stem}.txt", seed,
                               count + 3 * index))
    run_tasks(_write_one, tasks, workers=workers, progress=progress, unit="clouds")
    return {"points_per_cloud": count}


def pack(tree: Path, folder: Path) -> list[Path]:
    """The release's one file: ``real3d-ad-pcd.zip`` with the categories at its root."""
    return [zip_files(tree, release_files(tree), folder / ARCHIVE)]
