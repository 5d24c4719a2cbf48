"""Geometry maps of a rendered specimen for the RGB + 3-D fixtures (MVTec 3D-AD, Eyecandies).

The renderer (``m2ad.render``) ray-marches each pose once and keeps, per hit pixel, the
object-space surface point and normal (``Specimen.geometries``).  This module turns one pose
into the maps a 3-D release holds, aligned pixel for pixel with the RGB images, in the
renderer's world frame (the specimen's rotation applied; its few-percent placement shift and
scale are not, so the frame is approximate):

- ``xyz``: the surface point seen at each pixel, in millimetres (the object is about 70 mm
  wide): the object where a ray hits it, else the table it stands on (the plane
  :data:`TABLE_HEIGHT` below the object's centre, as MVTec 3D-AD's scans show the background
  plane around the object), and zeros (no data) where the table lies beyond
  :data:`MAX_RANGE` from the camera, as a scanner's range ends;
- ``depth``: the distance from the camera along each pixel's ray (object units), the table
  included;
- ``normals``: the unit surface normal, defects included (the normal field the shading used),
  ``(0, 0, 1)`` on the table.

A defect also changes the geometry, so that a 3-D method can see it: inside its mask the
surface is pushed in along the normal by :data:`DENT_DEPTH` (the points, and the depth by the
same amount).  These are fixture choices, not a physical scanner model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from m2ad.render import _HALF_FOV_TAN, Pose, Specimen, _camera_frame, _defect_effect

MILLIMETRES_PER_UNIT = 50.0
DENT_DEPTH = 0.04
"""How far (object units, about 3 % of the object's width) a defect pushes the surface in."""
TABLE_HEIGHT = -0.75
"""The table's height (world z, object units): below the bottom of every shape."""
MAX_RANGE = 8.0
"""Farthest measured distance from the camera (object units; the camera is 6 away)."""


def _pixel_rays(width: int, height: int, elevation: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera position and the unit world direction of each pixel's ray (H, W, 3), as the
    renderer casts them."""
    position, right, up, forward = _camera_frame(elevation)
    columns = (np.arange(width) + 0.5) / width * 2 - 1
    rows = (np.arange(height) + 0.5) / height * 2 - 1
    u, v = np.meshgrid(columns * (width / height), -rows)
    dirs = forward + _HALF_FOV_TAN * (u[..., None] * right + v[..., None] * up)
    return position, dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


@dataclass
class Surface:
    """One pose of a specimen: an RGB uint8 (H, W, 3) image per lighting set-up, the defect mask
    (bool (H, W), ``None`` for a normal specimen) and the geometry maps of the module docstring."""

    images: list[np.ndarray]
    mask: np.ndarray | None
    xyz: np.ndarray  # float32 (H, W, 3), millimetres, zeros = no data
    depth: np.ndarray  # float32 (H, W), object units from the camera
    normals: np.ndarray  # float32 (H, W, 3), unit vectors


def render_surface(shape: str, anomalous: bool, index: int, seed: int, width: int, height: int, lights: Sequence[int]) -> Surface:
    """A specimen seen once (azimuth 0, the default elevation) under ``lights`` (indices into
    ``m2ad.render.LIGHTING_SETUPS``), with its geometry maps; a defect is always in view."""
    pose = Pose(0)
    specimen = Specimen(shape, anomalous, index, seed, [pose], width, height)
    rendered = next(specimen.render(list(lights)))
    geometry = specimen.geometries[0]
    hit = geometry.hit
    effect = _defect_effect(specimen.defects, geometry)
    normals = geometry.normals + effect.normal_offset
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    cosine = np.clip(np.einsum("ij,ij->i", geometry.world_normals, geometry.view_dirs), 0.15, 1.0)
    distance = geometry.pixel_size * cosine * height / (2 * _HALF_FOV_TAN)  # the ray length the renderer used
    points = geometry.points @ geometry.rotation.T
    dent = effect.footprint
    points[dent] -= DENT_DEPTH * geometry.world_normals[dent]
    distance[dent] += DENT_DEPTH
    position, rays = _pixel_rays(width, height, pose.elevation)
    along = (TABLE_HEIGHT - position[2]) / np.minimum(rays[..., 2], -1e-9)  # every ray of the camera looks down
    table = position + along[..., None] * rays
    measured = ~hit & (along <= MAX_RANGE)
    xyz = np.zeros((height, width, 3), np.float32)
    xyz[measured] = table[measured] * MILLIMETRES_PER_UNIT
    xyz[hit] = points * MILLIMETRES_PER_UNIT
    depth = along.astype(np.float32)
    depth[hit] = distance
    normal_map = np.zeros((height, width, 3), np.float32)
    normal_map[..., 2] = 1.0
    normal_map[hit] = normals @ geometry.rotation.T
    return Surface(rendered.images, rendered.mask, xyz, depth, normal_map)
