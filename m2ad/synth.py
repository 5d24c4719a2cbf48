"""A procedural M2AD: 3-D specimens on a turntable, 12 views x 10 lights, in the official layout.

The output is a tree that reads exactly like the released M2AD-1024 (reference: m2ad.md §5-§8)::

    OUT/
      SYNTHETIC.json                        marker: this tree is ``m2ad-synth``, with its parameters
      jsons/meta_unsupervised.json          official record schema, order and split rule
      <Cat>/Good/<NNN>/A<vvv>_I<ii>.png     normal specimens
      <Cat>/NG/<token>_<n>[_<token>_<n>...]_<NNN>/A<vvv>_I<ii>.png
      <Cat>/GT/<NG dir>/A<vvv>_mask.png     mode L, 0/255, only for views that show a defect

Physics.  Every specimen is a signed-distance-function solid (rounded box, torus, tube with
side holes, die), ray-marched with numpy through a fixed pinhole camera looking down at the
turntable at 30 degrees elevation.  The turntable turns the specimen to the 12 azimuths
000..330; the 10 lighting set-ups (see ``LIGHTING_SETUPS``) are fixed in the world, so the 10
images of one (specimen, view) share their geometry and mask.  Shading is Lambert plus
Blinn-Phong plus ambient, with camera noise.

Normal specimens vary like real parts do: placement on the turntable (azimuth offset, small
tilt and shift), size, albedo, a faint surface texture, and one of two variants per category
(as in M2AD: two sizes, two colours or two hole counts).

Defects live on the surface in object coordinates, so a defect is seen only from the views in
which its surface faces the camera; masks exist only there and ``image_anomaly`` is 1 only
there.  Defect tokens:

``scratch``   a thin groove: tilts the normal across the line and adds a specular glint
``damage``    a dent: a smooth bowl in the normal field, nearly invisible under frontal light
``hole``      a small pit: dark albedo with a bevelled rim
``abrasion``  a rough, matte patch: noisy normals, no specular, slightly lighter albedo
``stain``     an albedo change of irregular outline, visible under every light

Each anomalous image gets a contrast: the mean absolute change of the rendered intensity over
its mask pixels, defect against no defect.  Below ``DETECTABLE_CONTRAST`` it is marked
``detectable: False`` (the defect is in view but this light does not reveal it): 6-14 % of the
anomalous images of the default set, mostly under the grazing lights 09 and 10 (the real
release marks 5.8 %).

Difficulty of the default set (seed 0, 128 px; measured with a scratch PatchCore-like kNN on
ImageNet EfficientNet-Lite0 features): image AUROC Cube 0.75, Ring 0.71, Tube 0.57, while the
per-image mean intensity scores 0.44-0.50 and the max-pooled difference to the mean normal
training image of the same (view, light) 0.43-0.54.

Determinism: each specimen draws from its own ``numpy.random.Generator`` seeded by
(seed, category, kind, index), so the bytes depend on the seed only, never on ``workers``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from m2ad import ownership
from m2ad.files import write_text_atomic
from m2ad.schema import M2AD_ILLUMINATIONS, M2AD_VIEWS

GENERATOR_NAME = "m2ad-synth"
GENERATOR_VERSION = "1"
MARKER_FILE = "SYNTHETIC.json"
META_FILE = "jsons/meta_unsupervised.json"

SUPPORTED_CATEGORIES = ("Cube", "Dice", "Ring", "Tube")
DEFAULT_CATEGORIES: tuple[str, ...] = ("Cube", "Ring", "Tube")
DEFECT_TOKENS = ("abrasion", "damage", "hole", "scratch", "stain")

NORMAL_TRAIN_RATIO = 0.6
SPLIT_SEED = 42
DETECTABLE_CONTRAST = 0.02
"""Mean absolute intensity change (0..1) over the mask below which an image is undetectable."""

PNG_COMPRESS_LEVEL = 1
_DEFECT_WEIGHTS = {"abrasion": 0.12, "damage": 0.25, "hole": 0.18, "scratch": 0.3, "stain": 0.15}
_CAMERA_DISTANCE = 6.0
_CAMERA_ELEVATION = np.deg2rad(30.0)
_HALF_FOV_TAN = 0.17
_BOUND_RADIUS = 1.35
_MARCH_STEPS = 96
_AMBIENT = 0.07
_CAMERA_NOISE = 1.2 / 255.0


# --------------------------------------------------------------------------------------------
# Shapes: signed distance functions in object coordinates (z up, object about 1.4 units wide)
# --------------------------------------------------------------------------------------------

SDF = Callable[[np.ndarray], np.ndarray]


def _rounded_box(half_size: float, radius: float) -> SDF:
    inner = half_size - radius

    def sdf(p: np.ndarray) -> np.ndarray:
        q = np.abs(p) - inner
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return outside + inside - radius

    return sdf


def _torus(major: float, minor: float, squash: float) -> SDF:
    def sdf(p: np.ndarray) -> np.ndarray:
        ring = np.hypot(p[..., 0], p[..., 1]) - major
        return np.hypot(ring, p[..., 2] / squash) * squash - minor

    return sdf


def _tube(outer: float, inner: float, half_height: float, holes: int, hole_radius: float) -> SDF:
    angles = np.arange(holes) * (2 * np.pi / holes)
    axes = np.stack([np.cos(angles), np.sin(angles), np.zeros(holes)], axis=1)

    def sdf(p: np.ndarray) -> np.ndarray:
        radial = np.hypot(p[..., 0], p[..., 1])
        wall = np.maximum(radial - outer, inner - radial)
        solid = np.maximum(wall, np.abs(p[..., 2]) - half_height)
        # Each side hole is a horizontal cylinder through the wall on one side only.
        for axis in axes:
            along = p @ axis
            off_axis = np.linalg.norm(p - along[..., None] * axis, axis=-1)
            drill = np.maximum(off_axis - hole_radius, -along)
            solid = np.maximum(solid, -drill)
        return solid

    return sdf


@dataclass(frozen=True)
class _Variant:
    """One of a category's two sub-variants: its shape, base colour and shininess."""

    name: str
    sdf: SDF
    colour: tuple[float, float, float]
    specular: float
    shininess: float
    pips: bool = False


def _variants(category: str) -> tuple[_Variant, _Variant]:
    """The two M2AD-like sub-variants of a category (m2ad.md §2)."""
    if category == "Cube":
        return (
            _Variant("6cm", _rounded_box(0.46, 0.08), (0.72, 0.70, 0.66), 0.35, 40.0),
            _Variant("8cm", _rounded_box(0.60, 0.10), (0.72, 0.70, 0.66), 0.35, 40.0),
        )
    if category == "Dice":
        return (
            _Variant("Yellow", _rounded_box(0.55, 0.14), (0.86, 0.74, 0.22), 0.45, 60.0, pips=True),
            _Variant("Pink", _rounded_box(0.55, 0.14), (0.88, 0.52, 0.62), 0.45, 60.0, pips=True),
        )
    if category == "Ring":
        return (
            _Variant("6cm", _torus(0.55, 0.17, 0.8), (0.78, 0.66, 0.40), 0.8, 90.0),
            _Variant("8cm", _torus(0.72, 0.21, 0.8), (0.78, 0.66, 0.40), 0.8, 90.0),
        )
    if category == "Tube":
        return (
            _Variant("Four-holes", _tube(0.42, 0.33, 0.68, 4, 0.13), (0.55, 0.60, 0.66), 0.6, 70.0),
            _Variant("Three-holes", _tube(0.42, 0.33, 0.68, 3, 0.13), (0.55, 0.60, 0.66), 0.6, 70.0),
        )
    raise ValueError(f"unknown synthetic category {category!r}; choose from {', '.join(SUPPORTED_CATEGORIES)}")


def _gradient(sdf: SDF, points: np.ndarray) -> np.ndarray:
    """Unit SDF gradients (outward surface normals) by the tetrahedron difference rule."""
    h = 1e-3
    offsets = np.array([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=np.float64)
    grad = sum(offset * sdf(points + h * offset)[..., None] for offset in offsets)
    return grad / np.maximum(np.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)


def _pip_darkness(points: np.ndarray, half_size: float) -> np.ndarray:
    """0..1 darkness of die pips at surface points (faces 1..6 in the usual arrangement)."""
    layouts = {
        1: [(0, 0)],
        2: [(-1, -1), (1, 1)],
        3: [(-1, -1), (0, 0), (1, 1)],
        4: [(-1, -1), (-1, 1), (1, -1), (1, 1)],
        5: [(-1, -1), (-1, 1), (0, 0), (1, -1), (1, 1)],
        6: [(-1, -1), (-1, 0), (-1, 1), (1, -1), (1, 0), (1, 1)],
    }
    faces = [(2, 1.0, 1), (2, -1.0, 6), (0, 1.0, 2), (0, -1.0, 5), (1, 1.0, 3), (1, -1.0, 4)]
    darkness = np.zeros(points.shape[0])
    spacing, radius = 0.5 * half_size, 0.11 * half_size
    for axis, sign, count in faces:
        on_face = points[:, axis] * sign > 0.8 * half_size
        u_axis, v_axis = [a for a in range(3) if a != axis]
        for du, dv in layouts[count]:
            distance = np.hypot(points[:, u_axis] - du * spacing, points[:, v_axis] - dv * spacing)
            darkness = np.maximum(darkness, on_face * np.clip((radius - distance) / (0.25 * radius) + 0.5, 0, 1))
    return darkness


# --------------------------------------------------------------------------------------------
# Camera, turntable, lights
# --------------------------------------------------------------------------------------------


def _camera_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Camera position and its right/up/forward unit vectors (world, z up)."""
    position = _CAMERA_DISTANCE * np.array([0.0, -np.cos(_CAMERA_ELEVATION), np.sin(_CAMERA_ELEVATION)])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return position, right, up, forward


def _lighting_setups() -> np.ndarray:
    """(10, K, 4) array: per set-up, K directional lights as (unit direction towards light, power)."""
    _, right, up, forward = _camera_frame()
    toward_camera = -forward

    def direction(vector: np.ndarray) -> np.ndarray:
        return vector / np.linalg.norm(vector)

    ring = direction(toward_camera)
    top, bottom = direction(toward_camera + 0.9 * up), direction(toward_camera - 0.9 * up)
    left, right_light = direction(toward_camera - 0.9 * right), direction(toward_camera + 0.9 * right)
    graze_left = direction(np.array([-1.0, -0.35, 0.12]))
    graze_right = direction(np.array([1.0, -0.35, 0.12]))
    setups = [
        [(ring, 0.35), (top, 0.2), (bottom, 0.2), (left, 0.2), (right_light, 0.2)],  # 01 everything on
        [(ring, 0.9)],  # 02 ring light only: frontal, flat
        [(top, 0.95)],  # 03 upper segment
        [(right_light, 0.95)],  # 04 right segment
        [(bottom, 0.95)],  # 05 lower segment
        [(left, 0.95)],  # 06 left segment
        [(top, 0.5), (bottom, 0.5)],  # 07 upper + lower
        [(left, 0.5), (right_light, 0.5)],  # 08 left + right
        [(graze_left, 1.1)],  # 09 grazing from the left
        [(graze_right, 1.1)],  # 10 grazing from the right
    ]
    width = max(len(setup) for setup in setups)
    table = np.zeros((len(setups), width, 4))
    for index, setup in enumerate(setups):
        for slot, (vector, power) in enumerate(setup):
            table[index, slot, :3] = vector
            table[index, slot, 3] = power
    return table


LIGHTING_SETUPS = (
    "01 all segments + ring",
    "02 ring light (frontal)",
    "03 upper segment",
    "04 right segment",
    "05 lower segment",
    "06 left segment",
    "07 upper + lower segments",
    "08 left + right segments",
    "09 grazing from the left",
    "10 grazing from the right",
)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about a unit axis."""
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


@dataclass
class _ViewGeometry:
    """What one view sees: per hit pixel, object-space point and normal, world normal, pixel size."""

    hit: np.ndarray  # (H, W) bool
    points: np.ndarray  # (M, 3) object space
    normals: np.ndarray  # (M, 3) object space
    world_normals: np.ndarray  # (M, 3)
    view_dirs: np.ndarray  # (M, 3) unit, from surface towards the camera (world)
    pixel_size: np.ndarray  # (M,) object units covered by one pixel at the hit point
    rotation: np.ndarray  # (3, 3) object -> world


def _march(sdf: SDF, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sphere-trace rays against ``sdf`` inside the bounding sphere; returns (hit, t)."""
    b = np.einsum("ij,ij->i", origins, dirs)
    c = np.einsum("ij,ij->i", origins, origins) - _BOUND_RADIUS**2
    disc = b * b - c
    t = np.maximum(-b - np.sqrt(np.maximum(disc, 0.0)), 0.0)
    t_far = -b + np.sqrt(np.maximum(disc, 0.0))
    hit = np.zeros(len(origins), dtype=bool)
    active = np.flatnonzero(disc > 0)
    for _ in range(_MARCH_STEPS):
        if active.size == 0:
            break
        distance = sdf(origins[active] + dirs[active] * t[active, None])
        t[active] += distance
        done = distance < 2e-4
        hit[active[done]] = True
        active = active[~done & (t[active] < t_far[active])]
    return hit, t


def _render_geometry(variant: _Variant, rotation: np.ndarray, shift: np.ndarray, scale: float, size: int) -> _ViewGeometry:
    """Ray-cast one pose of the specimen; everything the 10 lights need is computed once here."""
    position, right, up, forward = _camera_frame()
    pixel_centres = (np.arange(size) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(pixel_centres, -pixel_centres)
    dirs = forward + _HALF_FOV_TAN * (u[..., None] * right + v[..., None] * up)
    dirs = (dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)).reshape(-1, 3)
    # World -> object: p_obj = R^T (p - shift) / scale.  Directions only rotate.
    origin_obj = rotation.T @ (position - shift) / scale
    dirs_obj = dirs @ rotation
    origins = np.broadcast_to(origin_obj, dirs_obj.shape)
    hit, t = _march(variant.sdf, origins, dirs_obj)
    points = origins[hit] + dirs_obj[hit] * t[hit, None]
    normals = _gradient(variant.sdf, points)
    world_normals = normals @ rotation.T
    view_dirs = -dirs[hit]
    cosine = np.clip(np.einsum("ij,ij->i", world_normals, view_dirs), 0.15, 1.0)
    pixel_size = t[hit] * (2 * _HALF_FOV_TAN / size) / cosine
    return _ViewGeometry(hit.reshape(size, size), points, normals, world_normals, view_dirs, pixel_size, rotation)


# --------------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Defect:
    """One surface defect in object coordinates."""

    kind: str
    centre: np.ndarray
    normal: np.ndarray
    tangent: np.ndarray  # scratch direction / stain elongation
    radius: float  # footprint radius (half length for a scratch)
    width: float  # scratch half width, dent depth; stain: 1 dark, 0 light
    phase: float  # seed of the irregular outline / roughness


@dataclass
class _DefectEffect:
    """Per hit pixel changes that a set of defects makes to the clean surface."""

    footprint: np.ndarray  # (M,) bool: pixel belongs to the GT mask
    albedo_factor: np.ndarray  # (M, 3)
    normal_offset: np.ndarray  # (M, 3) object space, added to the normal
    specular_factor: np.ndarray  # (M,)


def _defect_effect(defects: Sequence[_Defect], geometry: _ViewGeometry) -> _DefectEffect:
    """Evaluate the defects at the hit points of one view."""
    count = len(geometry.points)
    effect = _DefectEffect(np.zeros(count, bool), np.ones((count, 3)), np.zeros((count, 3)), np.ones(count))
    for defect in defects:
        offset = geometry.points - defect.centre
        facing = geometry.normals @ defect.normal > 0.5
        half_pixel = 0.5 * geometry.pixel_size
        if defect.kind == "scratch":
            along = offset @ defect.tangent
            across_vector = offset - along[:, None] * defect.tangent - (offset @ defect.normal)[:, None] * defect.normal
            across = np.linalg.norm(across_vector, axis=1)
            reach = np.maximum(defect.width, half_pixel)
            inside = facing & (np.abs(along) < defect.radius) & (across < reach)
            # A sub-pixel groove covers only part of its pixel: weaken its effect accordingly.
            coverage = np.clip(defect.width / reach, 0.0, 1.0)[inside]
            side = np.sign(across_vector[inside] @ np.cross(defect.normal, defect.tangent))
            binormal = np.cross(defect.normal, defect.tangent)
            effect.normal_offset[inside] += (0.9 * coverage * side)[:, None] * binormal
            effect.specular_factor[inside] *= 1 + 2.5 * coverage
            effect.albedo_factor[inside] *= (1 - 0.25 * coverage)[:, None]
        else:
            distance = np.linalg.norm(offset - (offset @ defect.normal)[:, None] * defect.normal, axis=1)
            tangent_offset = offset - (offset @ defect.normal)[:, None] * defect.normal
            angle = np.arctan2(tangent_offset @ np.cross(defect.normal, defect.tangent), tangent_offset @ defect.tangent)
            wobble = 1 + 0.25 * np.sin(3 * angle + defect.phase) + 0.12 * np.sin(5 * angle + 2 * defect.phase)
            radius = defect.radius * (wobble if defect.kind in ("stain", "abrasion") else np.ones(count))
            reach = np.maximum(radius, half_pixel)
            inside = facing & (distance < reach)
            rho = np.clip(distance[inside] / reach[inside], 0, 1)
            coverage = np.clip(radius / reach, 0.0, 1.0)[inside]
            radial = tangent_offset[inside] / np.maximum(distance[inside], 1e-9)[:, None]
            if defect.kind == "damage":
                # Dent of profile depth*(1-rho^2)^2: its slope tilts the normal towards the centre.
                slope = defect.width * 4 * rho * (1 - rho**2) / max(defect.radius, 1e-6)
                effect.normal_offset[inside] += -(slope * coverage)[:, None] * radial
                effect.albedo_factor[inside] *= 0.97
            elif defect.kind == "hole":
                rim = np.clip((rho - 0.55) / 0.45, 0, 1)
                dark = 1 - (1 - rim) * 0.85 * coverage
                effect.albedo_factor[inside] *= dark[:, None]
                effect.normal_offset[inside] += -(1.2 * rim * coverage)[:, None] * radial
                effect.specular_factor[inside] *= 0.2 + 0.8 * rim
            elif defect.kind == "abrasion":
                rough = np.sin(np.outer(rho * 23 + defect.phase, [1.0, 1.7, 2.3]) + geometry.points[inside] * 61)
                effect.normal_offset[inside] += 0.35 * coverage[:, None] * rough
                effect.specular_factor[inside] *= 0.15
                effect.albedo_factor[inside] *= (1 + 0.12 * coverage)[:, None]
            elif defect.kind == "stain":
                tint = np.array([0.62, 0.55, 0.45]) if defect.width > 0.5 else np.array([1.25, 1.2, 1.1])
                effect.albedo_factor[inside] *= 1 + (tint - 1) * coverage[:, None]
        effect.footprint |= inside
    return effect


def _surface_point(sdf: SDF, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random point on the surface and its normal: project a random outer point onto it."""
    direction = rng.normal(size=3)
    direction[2] = abs(direction[2]) * 0.7  # the turntable hides the bottom: start from above
    point = direction / np.linalg.norm(direction) * _BOUND_RADIUS
    for _ in range(40):
        point = point - sdf(point[None])[0] * _gradient(sdf, point[None])[0]
    return point, _gradient(sdf, point[None])[0]


def _sample_defect(kind: str, sdf: SDF, rng: np.random.Generator) -> _Defect:
    """Draw one defect of ``kind`` with a random position, orientation and size."""
    centre, normal = _surface_point(sdf, rng)
    tangent = np.cross(normal, rng.normal(size=3))
    tangent /= np.linalg.norm(tangent)
    sizes = {
        "scratch": (rng.uniform(0.15, 0.3), rng.uniform(0.006, 0.016)),
        "damage": (rng.uniform(0.07, 0.12), rng.uniform(0.02, 0.035)),
        "hole": (rng.uniform(0.03, 0.055), 0.0),
        "abrasion": (rng.uniform(0.06, 0.1), 0.0),
        "stain": (rng.uniform(0.045, 0.08), float(rng.integers(2))),
    }
    radius, width = sizes[kind]
    return _Defect(kind, centre, normal, tangent, float(radius), float(width), float(rng.uniform(0, 2 * np.pi)))


# --------------------------------------------------------------------------------------------
# Shading and one specimen
# --------------------------------------------------------------------------------------------


def _shade(
    albedo: np.ndarray, world_normals: np.ndarray, view_dirs: np.ndarray, specular: np.ndarray, shininess: float, lights: np.ndarray
) -> np.ndarray:
    """Radiance (M, 3) of surface points under one lighting set-up (K directional lights)."""
    colour = _AMBIENT * albedo
    for direction, power in zip(lights[:, :3], lights[:, 3]):
        if power == 0:
            continue
        diffuse = np.clip(world_normals @ direction, 0, None)
        half = view_dirs + direction
        half /= np.linalg.norm(half, axis=1, keepdims=True)
        highlight = np.clip(np.einsum("ij,ij->i", world_normals, half), 0, None) ** shininess * (diffuse > 0)
        colour = colour + power * (albedo * diffuse[:, None] + (specular * highlight)[:, None])
    return colour


@dataclass(frozen=True)
class _SpecimenTask:
    """Everything a worker needs to render and write one specimen."""

    root: str
    category: str
    anomalous: bool
    index: int
    seed: int
    resolution: int


def _specimen_rng(seed: int, category: str, anomalous: bool, index: int) -> np.random.Generator:
    """The specimen's own random stream, independent of worker scheduling."""
    key = (zlib.crc32(category.encode()), int(anomalous), index)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _defect_kinds(rng: np.random.Generator) -> dict[str, int]:
    """Defect tokens of an NG specimen with their counts (mostly one type, sometimes 2 or 3)."""
    kinds = list(_DEFECT_WEIGHTS)
    weights = np.array(list(_DEFECT_WEIGHTS.values()))
    number_of_types = int(rng.choice([1, 2, 3], p=[0.78, 0.16, 0.06]))
    chosen = rng.choice(len(kinds), size=number_of_types, replace=False, p=weights / weights.sum())
    return {kinds[i]: int(rng.choice([1, 2], p=[0.8, 0.2])) for i in sorted(chosen)}


def _ng_dirname(kinds: dict[str, int], index: int) -> str:
    """Official NG directory name: ``<token>_<count>`` pairs, then the 3-digit specimen number."""
    return "_".join(f"{token}_{count}" for token, count in kinds.items()) + f"_{index:03d}"


def _place_defects(kinds: dict[str, int], sdf: SDF, geometries: list[_ViewGeometry], rng: np.random.Generator) -> list[_Defect]:
    """Sample defects until each is seen from at least one view but not from all 12."""
    defects: list[_Defect] = []
    for kind, count in kinds.items():
        for _ in range(count):
            for _attempt in range(100):
                candidate = _sample_defect(kind, sdf, rng)
                seen = sum(bool(_defect_effect([candidate], g).footprint.any()) for g in geometries)
                if 1 <= seen <= 11:
                    defects.append(candidate)
                    break
            else:
                raise RuntimeError(f"could not place a visible {kind} defect in 100 attempts")
    return defects


def _render_specimen(task: _SpecimenTask) -> list[dict[str, Any]]:
    """Render one specimen's 120 images (and masks), write them, and return its raw records."""
    rng = _specimen_rng(task.seed, task.category, task.anomalous, task.index)
    variant = _variants(task.category)[task.index % 2]
    size = task.resolution

    azimuth_offset = np.deg2rad(rng.normal(0, 4.0))
    tilt = _rotation(np.array([*rng.normal(size=2), 0.0]), np.deg2rad(rng.normal(0, 2.0)))
    shift = np.array([*rng.normal(0, 0.035, size=2), 0.0])
    scale = 1 + rng.normal(0, 0.025)
    albedo_base = np.clip(np.array(variant.colour) * (1 + rng.normal(0, 0.04)) + rng.normal(0, 0.015, 3), 0, 1)
    texture_freq = rng.normal(0, 6.0, size=(4, 3))
    texture_phase = rng.uniform(0, 2 * np.pi, size=4)
    light_gain = 1 + rng.normal(0, 0.02)

    geometries = []
    for view in M2AD_VIEWS:
        turn = _rotation(np.array([0.0, 0.0, 1.0]), np.deg2rad(int(view)) + azimuth_offset)
        geometries.append(_render_geometry(variant, turn @ tilt, shift, scale, size))

    kinds = _defect_kinds(rng) if task.anomalous else {}
    defects = _place_defects(kinds, variant.sdf, geometries, rng) if task.anomalous else []
    object_name = _ng_dirname(kinds, task.index) if task.anomalous else f"{task.index:03d}"
    group = "NG" if task.anomalous else "Good"
    image_dir = Path(task.root) / task.category / group / object_name
    mask_dir = Path(task.root) / task.category / "GT" / object_name
    image_dir.mkdir(parents=True, exist_ok=True)

    lighting = _lighting_setups()
    v_coords, u_coords = np.mgrid[0:size, 0:size] / size - 0.5
    background = 0.10 - 0.05 * v_coords - 0.03 * (u_coords**2 + v_coords**2)

    records: list[dict[str, Any]] = []
    for view, geometry in zip(M2AD_VIEWS, geometries):
        texture = 1 + 0.035 * np.sin(geometry.points @ texture_freq.T + texture_phase).sum(axis=1) / 2
        albedo = albedo_base * texture[:, None]
        if variant.pips:
            albedo = albedo * (1 - 0.88 * _pip_darkness(geometry.points, 0.55))[:, None]
        specular = np.full(len(albedo), variant.specular)
        effect = _defect_effect(defects, geometry)
        footprint = effect.footprint
        defect_normals = geometry.normals + effect.normal_offset
        defect_normals /= np.linalg.norm(defect_normals, axis=1, keepdims=True)
        mask_path = ""
        if footprint.any():
            mask = np.zeros((size, size), np.uint8)
            mask[geometry.hit] = np.where(footprint, 255, 0)
            mask_dir.mkdir(parents=True, exist_ok=True)
            mask_name = f"A{view}_mask.png"
            Image.fromarray(mask, mode="L").save(mask_dir / mask_name, compress_level=PNG_COMPRESS_LEVEL)
            mask_path = f"{task.category}/GT/{object_name}/{mask_name}"

        world_defect_normals = defect_normals @ geometry.rotation.T
        for illumination, lights in zip(M2AD_ILLUMINATIONS, lighting):
            lights = lights.copy()
            lights[:, 3] *= light_gain
            radiance = _shade(
                albedo * effect.albedo_factor,
                world_defect_normals,
                geometry.view_dirs,
                specular * effect.specular_factor,
                variant.shininess,
                lights,
            )
            image = np.repeat(background[..., None] * (0.6 + 0.4 * lights[:, 3].sum()), 3, axis=2)
            image[geometry.hit] = radiance
            image += rng.normal(0, _CAMERA_NOISE, image.shape)
            pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
            name = f"A{view}_I{illumination}.png"
            Image.fromarray(pixels, mode="RGB").save(image_dir / name, compress_level=PNG_COMPRESS_LEVEL)

            detectable: bool | str = ""
            if footprint.any():
                clean = _shade(albedo[footprint], geometry.world_normals[footprint], geometry.view_dirs[footprint],
                               specular[footprint], variant.shininess, lights)
                contrast = np.abs(np.clip(radiance[footprint], 0, 1) - np.clip(clean, 0, 1)).mean()
                detectable = bool(contrast >= DETECTABLE_CONTRAST)
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
                    "detectable": detectable,
                }
            )
    return records


# --------------------------------------------------------------------------------------------
# Split, metadata and the public entry point
# --------------------------------------------------------------------------------------------


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




def _check_arguments(categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int, workers: int | None) -> None:
    """Raise ``ValueError`` with a clear message for any unusable argument."""
    if isinstance(categories, str):
        raise ValueError("categories must be a sequence of names, not one string")
    if not categories:
        raise ValueError("at least one category is needed")
    unknown = [c for c in categories if c not in SUPPORTED_CATEGORIES]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; choose from {', '.join(SUPPORTED_CATEGORIES)}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"categories repeat: {list(categories)}")
    if not 1 <= normal_specimens <= 1000:
        raise ValueError(f"normal_specimens must be in 1..1000, got {normal_specimens}")
    if not 0 <= ng_specimens <= 1000:
        raise ValueError(f"ng_specimens must be in 0..1000, got {ng_specimens}")
    if not 16 <= resolution <= 4096:
        raise ValueError(f"resolution must be in 16..4096 pixels, got {resolution}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")


def is_synthetic_tree(path: str | Path) -> bool:
    """True if ``path`` holds a complete tree written by this generator (marker and meta JSON)."""
    root = Path(path)
    return (root / MARKER_FILE).is_file() and (root / META_FILE).is_file()


def generate(
    out: str | Path,
    *,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    normal_specimens: int = 10,
    ng_specimens: int = 10,
    resolution: int = 128,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic M2AD tree in the official layout to ``out`` and return its path.

    The tree is built in ``<out>.partial`` and renamed into place at the end, so an
    interrupted run never leaves a tree that looks complete.  ``out`` must be missing or
    empty; with ``overwrite`` an earlier synthetic tree there (one with ``SYNTHETIC.json``) is
    replaced, but never any other folder.  ``<out>.partial`` is owned (``m2ad.ownership``): an
    existing folder of that name that another command made is an error naming it, never
    deleted; a killed run's is taken over.
    """
    _check_arguments(categories, normal_specimens, ng_specimens, resolution, seed, workers)
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another folder, or pass overwrite=True (CLI: --overwrite) to replace an earlier synthetic tree")
        if not (out / MARKER_FILE).is_file():
            raise FileExistsError(f"refusing to overwrite {out}: it is not a synthetic M2AD tree (no {MARKER_FILE})")
    partial = ownership.claim_temp_dir(out.with_name(out.name + ".partial"), out)

    tasks = [
        _SpecimenTask(str(partial), category, anomalous, index, seed, resolution)
        for category in categories
        for anomalous, count in ((False, normal_specimens), (True, ng_specimens))
        for index in range(count)
    ]
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    records: list[dict[str, Any]] = []
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TextColumn("specimens"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("synth", total=len(tasks))
        if workers == 1:
            for task in tasks:
                records.extend(_render_specimen(task))
                bar.advance(job)
        else:
            # forkserver: never fork a parent that may run Ray or torch threads.
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
                for specimen_records in pool.map(_render_specimen, tasks):
                    records.extend(specimen_records)
                    bar.advance(job)

    marker = {
        "dataset": GENERATOR_NAME,
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "resolution": resolution,
        "categories": list(categories),
        "normal_specimens": normal_specimens,
        "ng_specimens": ng_specimens,
        "views": len(M2AD_VIEWS),
        "illuminations": len(M2AD_ILLUMINATIONS),
        "detectable_contrast": DETECTABLE_CONTRAST,
    }
    write_text_atomic(partial / MARKER_FILE, json.dumps(marker, indent=2) + "\n")
    write_text_atomic(partial / META_FILE, json.dumps(build_meta(records, categories), indent=4) + "\n")
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    ownership.unmark(partial)
    os.replace(partial, out)
    return out
