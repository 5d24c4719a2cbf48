"""The ``xyz`` modality: an organised point cloud, one 3-D point per image pixel (MVTec 3D-AD).

The release file is a TIFF holding an H x W x 3 float array (x, y, z per pixel, in the
scanner's units, stored as released: the unit of MVTec 3D-AD's scans is not verified here, see
docs/methods.md ``btf``), aligned with the RGB image; a pixel whose three
coordinates are all 0 has no measurement (background, shadow, invalid).  Anything else is a
problem: a map that is not H x W x 3 floats or holds NaN / infinite values (``xyz-format``),
or one whose size differs from its image (``xyz-size``).

Stored column ``xyz``: at original resolution the release's TIFF, byte for byte; at a
resolution N, the map resized to the image's stored size by nearest neighbour
(:mod:`m2ad.modalities.dense`: never across no-data) and written as a lossless float32 TIFF.
The ``datasets`` feature is an undecoded image (``{"bytes", "path"}``; read the bytes with
``tifffile.imread``).  The reader returns float32 (3, H, W), channels first like the images,
zeros where there is no data.
"""

from __future__ import annotations

from typing import BinaryIO, ClassVar

import datasets
import numpy as np

from m2ad.modalities.base import Encoded, Modality, Refused, ResizeLimits
from m2ad.modalities.dense import check_aligned, read_all, read_tiff, resize_nearest, tiff_bytes, tiff_shape

RESIZE = "nearest neighbour (never across no-data), lossless float32 TIFF"


def check_xyz(array: np.ndarray) -> np.ndarray:
    """The map as float32 (H, W, 3), or :class:`Refused` (``xyz-format``)."""
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype.kind != "f":
        raise Refused("xyz-format", f"xyz map of shape {array.shape} and dtype {array.dtype}; expected H x W x 3 floats (x, y, z per pixel)")
    if not np.isfinite(array).all():
        raise Refused("xyz-format", "xyz map holds NaN or infinite values; no-data pixels must be (0, 0, 0)")
    return array.astype(np.float32, copy=False)


class XyzModality(Modality):
    name: ClassVar[str] = "xyz"
    features: ClassVar[dict] = {"xyz": datasets.Image(decode=False)}

    def encode(self, stream: BinaryIO, path: str, limits: ResizeLimits, primary: Encoded | None) -> Encoded:
        data = read_all(stream)
        shape, _ = tiff_shape(data)
        if len(shape) != 3:
            raise Refused("xyz-format", f"xyz map of shape {shape}; expected H x W x 3 floats (x, y, z per pixel)")
        size = (shape[1], shape[0])
        check_aligned("xyz", size, primary)
        array = check_xyz(read_tiff(data))
        assert primary is not None
        if limits.resolution == "original":
            return Encoded({"xyz": None}, size, size)
        return Encoded({"xyz": tiff_bytes(resize_nearest(array, primary.stored))}, size, primary.stored)

    def slot(self, height: int, width: int) -> tuple[tuple[int, ...], type]:
        return (3, height, width), np.float32

    def decode_into(self, data: memoryview | bytes, out: np.ndarray) -> None:
        array = check_xyz(read_tiff(bytes(data)))
        if array.shape[:2] != out.shape[1:]:
            raise ValueError(f"stored xyz map is {array.shape[1]}x{array.shape[0]}, the manifest says {out.shape[2]}x{out.shape[1]}")
        out[...] = array.transpose(2, 0, 1)


MODALITY = XyzModality()
