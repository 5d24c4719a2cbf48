"""Synthetic 3-D fixtures of the BTF tests (imported as ``from clouds import ...``): point clouds
sampled from a smooth closed surface with bulge and sink defects, organised xyz maps of an
object on a table, and method batches of them.  Not a dataset: geometry only, made here."""

from __future__ import annotations

import numpy as np
import torch

from baselines.base import Batch

RADIUS = 10.0
"""Radius of the blob, in Real3D-AD-like units (BTF's point voxel is 0.5)."""


def _blob_radius(directions: np.ndarray) -> np.ndarray:
    """The blob's radius along unit ``directions`` (N, 3): a sphere with gentle low-frequency lobes."""
    x, y, z = directions.T
    return RADIUS * (1.0 + 0.08 * np.sin(3.0 * x) * np.cos(2.0 * y) + 0.05 * z * z)


def blob_cloud(count: int, seed: int, defect: str | None = None, patch: float = 3.0, height: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points (N, 3) sampled uniformly by direction from the blob, and their labels
    (N,) uint8.  ``defect`` ``bulge`` or ``sink`` pushes the points within arc length ``patch``
    of a random centre out or in by up to ``height`` (a smooth cap); they are labelled 1."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = _blob_radius(directions)
    labels = np.zeros(count, dtype=np.uint8)
    if defect is not None:
        if defect not in ("bulge", "sink"):
            raise ValueError(f"defect must be bulge or sink, got {defect!r}")
        centre = rng.normal(size=3)
        centre /= np.linalg.norm(centre)
        arc = RADIUS * np.arccos(np.clip(directions @ centre, -1.0, 1.0))
        inside = arc < patch
        radii[inside] += (1.0 if defect == "bulge" else -1.0) * height * (1.0 - (arc[inside] / patch) ** 2)
        labels[inside] = 1
    return (directions * radii[:, None]).astype(np.float32), labels


def table_xyz(size: int, seed: int, defect: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An organised (size, size, 3) map in metres, camera at the origin looking down +z: a tilted
    table 0.5 m away with a dome on it, a few missing pixels (zeros); with ``defect`` a bump
    or a dent on the dome.  Returns the map and the defect mask (size, size) bool."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size]
    x = (u + 0.5 - size / 2) / size * 0.2  # pixel centres: no coordinate is exactly 0 (which means "no data")
    y = (v + 0.5 - size / 2) / size * 0.2
    z = 0.5 + 0.05 * x - 0.03 * y  # the table plane
    dome = np.clip(0.05**2 - x**2 - y**2, 0, None)
    z = z - 6.0 * dome  # a dome 15 mm high, towards the camera
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        cx, cy = rng.uniform(-0.025, 0.025, size=2)
        bump = np.clip(1 - ((x - cx) ** 2 + (y - cy) ** 2) / 0.008**2, 0, None)
        z = z + (-1.0 if defect == "bulge" else 1.0) * 0.006 * bump
        mask = bump > 0
    z = z + rng.normal(scale=1e-4, size=z.shape)
    xyz = np.stack([x * z / 0.5, y * z / 0.5, z], axis=-1)
    xyz[rng.random((size, size)) < 0.01] = 0.0  # missing measurements
    return xyz.astype(np.float32), mask


def point_batch(clouds: list[np.ndarray], prefix: str = "c") -> Batch:
    """A method batch of point clouds (``Batch.points``, no images)."""
    count = len(clouds)
    return Batch(sample_ids=[f"{prefix}{index}" for index in range(count)], images=None, categories=["blob"] * count,
                 views=[None] * count, illuminations=[None] * count, points=list(clouds))


def xyz_batch(maps: list[np.ndarray], prefix: str = "x", image_size: int | None = None) -> Batch:
    """A method batch of organised maps (``modalities["xyz"]``, (B, H, W, 3)) with grey images."""
    count, size = len(maps), maps[0].shape[0]
    side = image_size or size
    return Batch(sample_ids=[f"{prefix}{index}" for index in range(count)],
                 images=torch.full((count, 3, side, side), 128, dtype=torch.uint8), categories=["table"] * count,
                 views=[None] * count, illuminations=[None] * count, modalities={"xyz": torch.from_numpy(np.stack(maps))})
