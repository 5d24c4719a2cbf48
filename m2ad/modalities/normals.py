"""The ``normals`` modality: a surface normal per pixel, as an 8-bit RGB PNG (Eyecandies).

Each channel maps a normal component in [-1, 1] to 0..255 (Eyecandies' ``normals.png``; its
``DepthToPCStage`` decodes ``v / 127.5 - 1`` and notes that the Y and Z axes are flipped
relative to the camera frame: m2ad keeps the release's axes as they are).

A release normal map must be an RGB image of its image's size (``normals-format``,
``normals-size``).  Stored column ``normals``: at original resolution the release's PNG, byte
for byte; at a resolution N, resized to the image's stored size by nearest neighbour
(:mod:`m2ad.modalities.dense`: interpolated normals would not be unit vectors) and written as
PNG.  The reader returns float32 (3, H, W) in [-1, 1]: ``v / 127.5 - 1``.
"""

from __future__ import annotations

import io
from typing import BinaryIO, ClassVar

import datasets
import numpy as np
from PIL import Image

from m2ad.modalities.base import Encoded, Modality, Refused, ResizeLimits, check_stored_size, png
from m2ad.modalities.dense import check_aligned, resize_nearest

RESIZE = "nearest neighbour, RGB PNG"


def normal_values(image: Image.Image) -> np.ndarray:
    """The stored (H, W, 3) uint8 channels, or :class:`Refused` (``normals-format``)."""
    if image.mode != "RGB":
        raise Refused("normals-format", f"normal map of PIL mode {image.mode}; expected an 8-bit RGB image (x, y, z mapped to 0..255)")
    return np.asarray(image)


class NormalsModality(Modality):
    name: ClassVar[str] = "normals"
    features: ClassVar[dict] = {"normals": datasets.Image(decode=False)}

    def encode(self, stream: BinaryIO, path: str, limits: ResizeLimits, primary: Encoded | None) -> Encoded:
        image = Image.open(stream)
        check_aligned("normals", image.size, primary)  # before any pixel is decoded
        image.load()
        values = normal_values(image)
        assert primary is not None
        if limits.resolution == "original":
            return Encoded({"normals": None}, image.size, image.size)
        return Encoded({"normals": png(Image.fromarray(resize_nearest(values, primary.stored), "RGB"))}, image.size, primary.stored)

    def slot(self, height: int, width: int) -> tuple[tuple[int, ...], type]:
        return (3, height, width), np.float32

    def decode_into(self, data: memoryview | bytes, out: np.ndarray) -> None:
        image = Image.open(io.BytesIO(data))
        check_stored_size(image, out.shape[1], out.shape[2])
        out[...] = normal_values(image).transpose(2, 0, 1) / np.float32(127.5) - np.float32(1.0)


MODALITY = NormalsModality()
