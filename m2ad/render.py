"""The renderer behind every synthetic dataset: 3-D specimens ray-marched with numpy.

Every specimen is a signed-distance-function solid (rounded box, torus, tube with side holes,
die), seen through a pinhole camera looking down at a turntable.  The turntable turns the
specimen to each pose's azimuth and the camera sits at the pose's elevation (M2AD: 12 azimuths
at 30 degrees; Real-IAD: a top view and four side views); the 10 lighting set-ups (see
``LIGHTING_SETUPS``) are fixed relative to the camera, so the images of one pose under
several lights share their geometry and mask.  Shading is Lambert plus Blinn-Phong plus
ambient, with camera noise.

Normal specimens vary like real parts do: placement on the turntable (azimuth offset, small
tilt and shift), size, albedo, a faint surface texture, and one of two variants per shape
(as in M2AD: two sizes, two colours or two hole counts).

Defects live on the surface in object coordinates, so a defect is seen only from the poses in
which its surface faces the camera; masks exist only there.  Defect tokens:

``scratch``   a thin groove: tilts the normal across the line and adds a specular glint
``damage``    a dent: a smooth bowl in the normal field, nearly invisible under frontal light
``hole``      a small pit: dark albedo with a bevelled rim
``abrasion``  a rough, matte patch: noisy normals, no specular, slightly lighter albedo
``stain``     an albedo change of irregular outline, visible under every light

Each defective image gets a contrast: the mean absolute change of the rendered intensity over
its mask pixels, defect against no defect; below ``DETECTABLE_CONTRAST`` the defect is in view
but this light does not reveal it (M2AD's ``detectable: False``).

Determinism: each specimen draws from its own ``numpy.random.Generator`` seeded by
(seed, shape, kind, index), so the pixels depend on the seed only, never on the worker count.
The dataset writers (``m2ad.datasets.<name>.fixture``) decide names, layout and files.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from m2ad.processes import process_pool

SHAPES = ("Cube", "Dice", "Ring", "Tube")
DEFECT_TOKENS = ("abrasion", "damage", "hole", "scratch", "stain")
DETECTABLE_CONTRAST = 0.02
"""Mean absolute intensity change (0..1) over the mask below which an image is undetectable."""

_DEFECT_WEIGHTS = {"abrasion": 0.12, "damage": 0.25, "hole": 0.18, "scratch": 0.3, "stain": 0.15}
_CAMERA_DISTANCE = 6.0
_CAMERA_ELEVATION = 30.0
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
    """One of a shape's two sub-variants: its solid, base colour and shininess."""

    name: str
    sdf: SDF
    colour: tuple[float, float, float]
    specular: float
    shininess: float
    pips: bool = False


def _variants(category: str) -> tuple[_Variant, _Variant]:
    """The two M2AD-like sub-variants of a shape (m2ad.md §2)."""
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
    raise ValueError(f"unknown synthetic shape {category!r}; choose from {', '.join(SHAPES)}")


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


def _camera_frame(elevation: float = _CAMERA_ELEVATION) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Camera position and its right/up/forward unit vectors (world, z up), ``elevation``
    degrees above the turntable (below 90)."""
    angle = np.deg2rad(elevation)
    position = _CAMERA_DISTANCE * np.array([0.0, -np.cos(angle), np.sin(angle)])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return position, right, up, forward


def _lighting_setups(elevation: float = _CAMERA_ELEVATION) -> np.ndarray:
    """(10, K, 4) array: per set-up, K directional lights as (unit direction towards light,
    power), placed relative to a camera at ``elevation`` degrees."""
    _, right, up, forward = _camera_frame(elevation)
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


def _render_geometry(variant: _Variant, rotation: np.ndarray, shift: np.ndarray, scale: float, width: int, height: int,
                     elevation: float) -> _ViewGeometry:
    """Ray-cast one pose of the specimen; everything the lights need is computed once here.
    The vertical field of view is fixed; a wider image sees more to the sides."""
    position, right, up, forward = _camera_frame(elevation)
    columns = (np.arange(width) + 0.5) / width * 2 - 1
    rows = (np.arange(height) + 0.5) / height * 2 - 1
    u, v = np.meshgrid(columns * (width / height), -rows)
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
    pixel_size = t[hit] * (2 * _HALF_FOV_TAN / height) / cosine
    return _ViewGeometry(hit.reshape(height, width), points, normals, world_normals, view_dirs, pixel_size, rotation)


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



def _place_defects(kinds: dict[str, int], sdf: SDF, geometries: list[_ViewGeometry], rng: np.random.Generator) -> list[_Defect]:
    """Sample defects until each is seen from at least one pose but (with several poses) not
    from all of them."""
    most = max(1, len(geometries) - 1)
    defects: list[_Defect] = []
    for kind, count in kinds.items():
        for _ in range(count):
            for _attempt in range(100):
                candidate = _sample_defect(kind, sdf, rng)
                seen = sum(bool(_defect_effect([candidate], g).footprint.any()) for g in geometries)
                if 1 <= seen <= most:
                    defects.append(candidate)
                    break
            else:
                raise RuntimeError(f"could not place a visible {kind} defect in 100 attempts")
    return defects



# --------------------------------------------------------------------------------------------
# The public entry point: a specimen, rendered pose by pose
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """Where the camera looks from: the turntable's azimuth and the camera's elevation (degrees)."""

    azimuth: float
    elevation: float = _CAMERA_ELEVATION


@dataclass
class RenderedPose:
    """One pose of a specimen: an RGB uint8 (H, W, 3) image per lighting set-up asked for, the
    defect mask (bool (H, W); ``None`` when no defect is in view) and, per image, whether the
    defect is revealed (``None`` without a defect in view)."""

    images: list[np.ndarray]
    mask: np.ndarray | None
    revealed: list[bool | None]


class Specimen:
    """One synthetic specimen: its placement and, if ``anomalous``, its defects, drawn from its
    own random stream; :meth:`render` then renders its poses one by one.

    ``shape`` is one of :data:`SHAPES`; ``index`` picks the variant (even/odd) and, with
    ``seed``, the random stream.  The poses must be given up front, because defects are placed
    where at least one pose (and, with several, not every pose) sees them.
    """

    def __init__(self, shape: str, anomalous: bool, index: int, seed: int, poses: Sequence[Pose], width: int, height: int) -> None:
        self.rng = _specimen_rng(seed, shape, anomalous, index)
        self.variant = _variants(shape)[index % 2]
        self.poses = list(poses)
        self.width, self.height = width, height
        rng = self.rng
        azimuth_offset = np.deg2rad(rng.normal(0, 4.0))
        tilt = _rotation(np.array([*rng.normal(size=2), 0.0]), np.deg2rad(rng.normal(0, 2.0)))
        shift = np.array([*rng.normal(0, 0.035, size=2), 0.0])
        scale = 1 + rng.normal(0, 0.025)
        self.albedo_base = np.clip(np.array(self.variant.colour) * (1 + rng.normal(0, 0.04)) + rng.normal(0, 0.015, 3), 0, 1)
        self.texture_freq = rng.normal(0, 6.0, size=(4, 3))
        self.texture_phase = rng.uniform(0, 2 * np.pi, size=4)
        self.light_gain = 1 + rng.normal(0, 0.02)
        self.geometries = []
        for pose in self.poses:
            turn = _rotation(np.array([0.0, 0.0, 1.0]), np.deg2rad(pose.azimuth) + azimuth_offset)
            self.geometries.append(_render_geometry(self.variant, turn @ tilt, shift, scale, width, height, pose.elevation))
        self.defect_kinds: dict[str, int] = _defect_kinds(rng) if anomalous else {}
        self.defects = _place_defects(self.defect_kinds, self.variant.sdf, self.geometries, rng) if anomalous else []

    @property
    def variant_name(self) -> str:
        """The variant of the shape (e.g. ``6cm``)."""
        return self.variant.name

    def render(self, lights: Sequence[int]) -> Iterator[RenderedPose]:
        """The poses in order, each under the lighting set-ups ``lights`` (indices into
        :data:`LIGHTING_SETUPS`)."""
        v_coords, u_coords = np.mgrid[0 : self.height, 0 : self.width] / np.array([self.height, self.width])[:, None, None] - 0.5
        background = 0.10 - 0.05 * v_coords - 0.03 * (u_coords**2 + v_coords**2)
        for pose, geometry in zip(self.poses, self.geometries):
            yield self._render_pose(geometry, _lighting_setups(pose.elevation)[list(lights)], background)

    def _render_pose(self, geometry: _ViewGeometry, lighting: np.ndarray, background: np.ndarray) -> RenderedPose:
        rng, variant = self.rng, self.variant
        texture = 1 + 0.035 * np.sin(geometry.points @ self.texture_freq.T + self.texture_phase).sum(axis=1) / 2
        albedo = self.albedo_base * texture[:, None]
        if variant.pips:
            albedo = albedo * (1 - 0.88 * _pip_darkness(geometry.points, 0.55))[:, None]
        specular = np.full(len(albedo), variant.specular)
        effect = _defect_effect(self.defects, geometry)
        footprint = effect.footprint
        defect_normals = geometry.normals + effect.normal_offset
        defect_normals /= np.linalg.norm(defect_normals, axis=1, keepdims=True)
        mask = None
        if footprint.any():
            mask = np.zeros((self.height, self.width), bool)
            mask[geometry.hit] = footprint
        world_defect_normals = defect_normals @ geometry.rotation.T
        images, revealed = [], []
        for lights in lighting:
            lights = lights.copy()
            lights[:, 3] *= self.light_gain
            radiance = _shade(albedo * effect.albedo_factor, world_defect_normals, geometry.view_dirs,
                              specular * effect.specular_factor, variant.shininess, lights)
            image = np.repeat(background[..., None] * (0.6 + 0.4 * lights[:, 3].sum()), 3, axis=2)
            image[geometry.hit] = radiance
            image += rng.normal(0, _CAMERA_NOISE, image.shape)
            images.append((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
            if mask is None:
                revealed.append(None)
                continue
            clean = _shade(albedo[footprint], geometry.world_normals[footprint], geometry.view_dirs[footprint],
                           specular[footprint], variant.shininess, lights)
            contrast = np.abs(np.clip(radiance[footprint], 0, 1) - np.clip(clean, 0, 1)).mean()
            revealed.append(bool(contrast >= DETECTABLE_CONTRAST))
        return RenderedPose(images, mask, revealed)


Task = TypeVar("Task")


def run_tasks(function: Callable[[Task], Any], tasks: Sequence[Task], *, workers: int | None, progress: bool,
              unit: str = "specimens") -> list[Any]:
    """``[function(task) for task in tasks]`` in a pool of ``workers`` processes (default: one
    per core), in order, with a progress bar; one worker runs in this process."""
    workers = min(workers or os.cpu_count() or 1, max(len(tasks), 1))
    results: list[Any] = []
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("synth", total=len(tasks))
        if workers == 1:
            for task in tasks:
                results.append(function(task))
                bar.advance(job)
            return results
        with process_pool(workers) as pool:  # safe from a plain script; workers die with this process
            for result in pool.map(function, tasks):
                results.append(result)
                bar.advance(job)
    return results


@dataclass
class RenderedImage:
    """One image of a single-pose specimen: RGB uint8 (H, W, 3), its defect mask (bool
    (H, W), ``None`` for a normal specimen) and the defect tokens with their counts."""

    image: np.ndarray
    mask: np.ndarray | None
    defect_kinds: dict[str, int]


def render_image(shape: str, anomalous: bool, index: int, seed: int, width: int, height: int, light: int = 0) -> RenderedImage:
    """A specimen seen once (azimuth 0 at the default elevation, one lighting set-up), as the
    single-image datasets (MVTec AD, VisA) show their objects; a defect is always in view."""
    specimen = Specimen(shape, anomalous, index, seed, [Pose(0)], width, height)
    rendered = next(specimen.render([light]))
    return RenderedImage(rendered.images[0], rendered.mask, specimen.defect_kinds)


def category_seed(seed: int, category: str) -> int:
    """A seed of its own for each category of a dataset whose categories share a shape."""
    return (seed << 32) | zlib.crc32(category.encode())


# --------------------------------------------------------------------------------------------
# Point clouds: the surface of a specimen, sampled, with bulge and sink defects
# --------------------------------------------------------------------------------------------

POINT_DEFECTS = ("bulge", "sink")
"""Real3D-AD's defect kinds: material added (the surface pushed out along its normals) or
missing (pushed in)."""


@dataclass(frozen=True)
class SurfaceCloud:
    """A sampled specimen surface: float32 points (N, 3), unit normals (N, 3) and uint8 labels
    (N,) (1 = displaced by the defect), the defect kind (``""`` for a normal specimen), and the
    specimen's variant and pose: object coordinates are ``(points / scale) @ rotation`` (up to
    the noise)."""

    points: np.ndarray
    normals: np.ndarray
    labels: np.ndarray
    defect: str
    variant: str
    rotation: np.ndarray
    scale: float


def surface_cloud(shape: str, defect: str, index: int, seed: int, num_points: int) -> SurfaceCloud:
    """``num_points`` points of a specimen's surface (the whole solid, as a 360-degree scan
    sees it), with one defect (``bulge`` or ``sink``, ``""`` for none): the points within a
    random radius of a random surface point move along their normals by a smooth bump, and
    are labelled 1.  Specimens vary by variant, scale, orientation and a small noise; the
    draws depend on (seed, shape, defect, index) only."""
    if defect not in ("", *POINT_DEFECTS):
        raise ValueError(f"unknown point-cloud defect {defect!r}; choose from {', '.join(POINT_DEFECTS)} or ''")
    rng = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, zlib.crc32(f"{shape}/{defect}".encode()), index])
    variant = _variants(shape)[int(rng.integers(2))]
    start = rng.normal(size=(num_points * 2, 3))
    points = start / np.linalg.norm(start, axis=1, keepdims=True) * _BOUND_RADIUS
    for _ in range(40):
        points = points - variant.sdf(points)[:, None] * _gradient(variant.sdf, points)
    on_surface = np.abs(variant.sdf(points)) < 1e-3
    points = points[on_surface][:num_points]
    if len(points) < num_points:  # rare: top up with jittered copies of found points
        extra = points[rng.integers(len(points), size=num_points - len(points))] + rng.normal(scale=1e-3, size=(num_points - len(points), 3))
        points = np.concatenate([points, extra])
    normals = _gradient(variant.sdf, points)
    labels = np.zeros(num_points, np.uint8)
    if defect:
        centre = points[int(rng.integers(num_points))]
        radius = float(rng.uniform(0.12, 0.22))
        distance = np.linalg.norm(points - centre, axis=1)
        inside = distance < radius
        height = float(rng.uniform(0.06, 0.1)) * (1 if defect == "bulge" else -1)
        points = points + (height * (1 - (distance / radius) ** 2) * inside)[:, None] * normals
        labels[inside] = 1
    rotation = _rotation(rng.normal(size=3), float(rng.uniform(0, 2 * np.pi)))
    scale = float(rng.uniform(0.95, 1.05))
    points = (points @ rotation.T) * scale + rng.normal(scale=2e-3, size=points.shape)
    return SurfaceCloud(points.astype(np.float32), (normals @ rotation.T).astype(np.float32), labels, defect, variant.name, rotation, scale)
