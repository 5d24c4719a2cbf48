"""Geometry maps of a rendered specimen for the RGB + 3-D fixtures (MVTec 3D-AD, Eyecandies).

The renderer (``m2ad.render``) ray-marches each pose once and keeps, per hit pixel, the
object-space surface point and normal (``Specimen.geometries``).  This module turns one pose
into the maps a 3-D release holds, aligned pixel for pixel with the RGB images:

- ``xyz``: the object-space point of each hit pixel, scaled to millimetres (the object is
  about 70 mm wide), zeros where the ray misses (MVTec 3D-AD's no-data convention);
- ``depth``: the distance from the camera along the ray (object units), the background set to
  the farthest surface distance plus a margin (a table behind the object);
- ``normals``: the unit surface normal in world coordinates, defects included (the normal
  field the shading used), ``(0, 0, 1)`` on the background.

A defect also changes the geometry, so that a 3-D method can see it: inside its mask the
surface is pushed in along the normal by :data:`DENT_DEPTH` (the points, and the depth by the
same amount).  These are fixture choices, not a physical scanner model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from m2ad.render import _HALF_FOV_TAN, Pose, Specimen, _defect_effect

MILLIMETRES_PER_UNIT = 50.0
DENT_DEPTH = 0.04
"""How far (object units, about 3 % of the object's width) a defect pushes the surface in."""
BACKGROUND_MARGIN = 0.5


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
    specimen = Specimen(shape, anomalous, index, seed, [Pose(0)], width, height)
    rendered = next(specimen.render(list(lights)))
    geometry = specimen.geometries[0]
    hit = geometry.hit
    effect = _defect_effect(specimen.defects, geometry)
    normals = geometry.normals + effect.normal_offset
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    world_normals = normals @ geometry.rotation.T
    cosine = np.clip(np.einsum("ij,ij->i", geometry.world_normals, geometry.view_dirs), 0.15, 1.0)
    distance = geometry.pixel_size * cosine * height / (2 * _HALF_FOV_TAN)  # the ray length the renderer used
    points = geometry.points.copy()
    dent = effect.footprint
    points[dent] -= DENT_DEPTH * geometry.normals[dent]
    distance[dent] += DENT_DEPTH
    xyz = np.zeros((height, width, 3), np.float32)
    xyz[hit] = points * MILLIMETRES_PER_UNIT
    depth = np.full((height, width), float(distance.max(initial=0.0)) + BACKGROUND_MARGIN, np.float32)
    depth[hit] = distance
    normal_map = np.zeros((height, width, 3), np.float32)
    normal_map[..., 2] = 1.0
    normal_map[hit] = world_normals
    return Surface(rendered.images, rendered.mask, xyz, depth, normal_map)
