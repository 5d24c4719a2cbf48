"""The ``depth`` modality: a depth map per pixel, as a 16-bit greyscale PNG (Eyecandies).

Eyecandies stores each sample's depth as a 16-bit PNG normalised to 0..65535 over the
sample's own range (``info_depth.yaml``: ``normalization.min`` / ``max``, in metres); metric
depth is ``png / 65535 * (max - min) + min`` (``eyecandies/stages/depth.py``,
``DepthToMetersStage``).  The dataset keeps those two numbers as extra columns
(``depth_min``, ``depth_max``), so this modality stays the file's normalised values.

A release depth map must be one 16-bit (or 32-bit integer) channel of its image's size
(``depth-format``, ``depth-size``).  Stored column ``depth``: at original resolution the
release's PNG, byte for byte; at a resolution N, resized to the image's stored size by nearest
neighbour (:mod:`m2ad.modalities.dense`) and written as a 16-bit PNG.  The reader returns
float32 (H, W) in [0, 1]: the stored value / 65535.
"""

from __future__ import annotations

import io
from typing import BinaryIO, ClassVar

import datasets
import numpy as np
from PIL import Image

from m2ad.modalities.base import Encoded, Modality, Refused, ResizeLimits, check_stored_size, png
from m2ad.modalities.dense import check_aligned, resize_nearest

RESIZE = "nearest neighbour, 16-bit PNG"
MODES = ("I;16", "I;16B", "I;16L", "I")
FULL_SCALE = 65535.0


def depth_values(image: Image.Image) -> np.ndarray:
    """The stored 16-bit values (H, W) as uint16, or :class:`Refused` (``depth-format``)."""
    if image.mode not in MODES:
        raise Refused("depth-format", f"depth map of PIL mode {image.mode}; expected one 16-bit channel (a 16-bit greyscale PNG)")
    values = np.asarray(image)
    if values.min(initial=0) < 0 or values.max(initial=0) > FULL_SCALE:
        raise Refused("depth-format", "depth map holds values outside 0..65535")
    return values.astype(np.uint16)


class DepthModality(Modality):
    name: ClassVar[str] = "depth"
    features: ClassVar[dict] = {"depth": datasets.Image(decode=False)}

    def encode(self, stream: BinaryIO, path: str, limits: ResizeLimits, primary: Encoded | None) -> Encoded:
        image = Image.open(stream)
        check_aligned("depth", image.size, primary)  # before any pixel is decoded
        image.load()
        values = depth_values(image)
        assert primary is not None
        if limits.resolution == "original":
            return Encoded({"depth": None}, image.size, image.size)
        return Encoded({"depth": png(Image.fromarray(resize_nearest(values, primary.stored)))}, image.size, primary.stored)

    def slot(self, height: int, width: int) -> tuple[tuple[int, ...], type]:
        return (height, width), np.float32

    def decode_into(self, data: memoryview | bytes, out: np.ndarray) -> None:
        image = Image.open(io.BytesIO(data))
        check_stored_size(image, out.shape[0], out.shape[1])
        out[...] = depth_values(image) / np.float32(FULL_SCALE)


MODALITY = DepthModality()
