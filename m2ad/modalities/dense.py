"""What the per-pixel geometry modalities (``xyz``, ``depth``, ``normals``) share: nearest-
neighbour resizing, TIFF reading and writing, and the size check against the sample's image.

Resizing at a shard resolution is **nearest neighbour**: target pixel (i, j) of an (h, w) map
takes source pixel ``(floor((i + 0.5) * H / h), floor((j + 0.5) * W / w))``, the source pixel
under the target pixel's centre, in exact integer arithmetic (PIL's ``NEAREST`` filter aims at
the same centres in floating point and can land one pixel off on an exact boundary).  No value is ever
interpolated, so a no-data pixel (xyz ``(0, 0, 0)``) never blends into its valid neighbours and
a stored point is always a point the scanner measured.  Bilinear or antialiased filtering would
invent points half-way between the object and the zeros around it.

TIFFs are read and written with ``tifffile`` (float32 H x W x 3 maps; PIL reads no 3-channel
float TIFF).
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
import tifffile

from m2ad.modalities.base import Encoded, Refused

TIFF_COMPRESSION = "zlib"
"""Compression of the TIFFs written at a shard resolution (lossless deflate, stdlib zlib)."""


def nearest_indices(source: int, target: int) -> np.ndarray:
    """Source index under the centre of each of ``target`` pixels along one axis."""
    index = ((np.arange(target, dtype=np.int64) * 2 + 1) * source) // (2 * target)
    return np.minimum(index, source - 1)


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``array`` (H, W[, C]) resized to ``size`` = (width, height) by nearest neighbour (see the
    module docstring)."""
    width, height = size
    rows = nearest_indices(array.shape[0], height)
    columns = nearest_indices(array.shape[1], width)
    return np.ascontiguousarray(array[rows][:, columns])


def read_tiff(data: bytes) -> np.ndarray:
    """The first image of a TIFF file's bytes as an array."""
    return tifffile.imread(io.BytesIO(data))


def tiff_shape(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a TIFF's first image, from its header (no pixel decoded)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        page = tiff.pages.first
        return tuple(page.shape), np.dtype(page.dtype)


def tiff_bytes(array: np.ndarray) -> bytes:
    """A lossless TIFF of an (H, W, 3) ``array``, three contiguous samples per pixel (float32
    maps stay bit-exact)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="rgb", compression=TIFF_COMPRESSION)
    return buffer.getvalue()


def read_all(stream: BinaryIO) -> bytes:
    """Every byte of a release file's stream (a TIFF needs random access)."""
    return stream.read()


def check_aligned(name: str, size: tuple[int, int], primary: Encoded | None) -> None:
    """Refuse a map whose (width, height) differs from its image's (``<name>-size``)."""
    assert primary is not None, f"the {name} map is aligned to its image"
    if size != primary.size:
        raise Refused(f"{name}-size", f"{name} map is {size[0]}x{size[1]} but its image is {primary.size[0]}x{primary.size[1]}")
