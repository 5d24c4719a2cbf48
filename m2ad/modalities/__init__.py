"""The modality registry: what a sample can carry besides its fields, one module each.

``image``, ``mask`` and ``points`` (point clouds with per-point labels) now; the 3-D
datasets add ``xyz``, ``depth`` and ``normals``.  Adding a modality is one module with a :class:`~m2ad.modalities.base.Modality`
instance called ``MODALITY`` and one line in :data:`MODALITY_MODULES`; the sharder, the
reader and the dataset specs take everything else from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from m2ad.modalities.base import Modality

MODALITY_MODULES: dict[str, str] = {
    "image": "m2ad.modalities.image",
    "mask": "m2ad.modalities.mask",
    "points": "m2ad.modalities.points",
    "xyz": "m2ad.modalities.xyz",
    "depth": "m2ad.modalities.depth",
    "normals": "m2ad.modalities.normals",
}
"""Modality name -> module holding its ``MODALITY``."""
PRIMARY_MODALITIES = ("image", "points")
"""The modalities a dataset's samples can be built around (the first of its ``modalities``):
an image fixes the sample's size, a point cloud stands alone (width and height 0)."""


def available() -> list[str]:
    """Names of the registered modalities."""
    return list(MODALITY_MODULES)


def get(name: str) -> Modality:
    """The modality called ``name``."""
    if name not in MODALITY_MODULES:
        raise KeyError(f"unknown modality {name!r}; available: {', '.join(available())}")
    modality = importlib.import_module(MODALITY_MODULES[name]).MODALITY
    if not isinstance(modality, Modality):
        raise TypeError(f"{MODALITY_MODULES[name]}.MODALITY is not a Modality")
    return modality


def features(names: Sequence[str]) -> dict[str, Any]:
    """The Arrow columns of these modalities, in order."""
    return {column: feature for name in names for column, feature in get(name).features.items()}


def manifest_columns(names: Sequence[str]) -> dict[str, pa.DataType]:
    """The manifest columns these modalities derive, in order."""
    return {column: kind for name in names for column, kind in get(name).manifest_columns.items()}


def stored_columns(names: Sequence[str]) -> tuple[str, ...]:
    """Every Arrow column these modalities store (left out of the manifest)."""
    return tuple(features(names))
