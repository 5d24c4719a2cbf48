"""The ``image`` modality: the photograph of a sample (the primary modality: it fixes the size).

Stored as the release's bytes at original resolution (any format PIL reads: PNG, JPEG, grey
or colour, so MVTec AD's greyscale classes stay byte-identical), else resized with PIL bilinear
filtering, which is antialiased (its kernel widens with the scale factor) and is exactly what
``torchvision.transforms.Resize`` does to a PIL image, after conversion to RGB, and stored as
PNG.  The reader always returns RGB: a grey image is converted when it is decoded.
"""

from __future__ import annotations

import io
from typing import BinaryIO, ClassVar

import datasets
import numpy as np
from PIL import Image

from m2ad.modalities.base import Encoded, Modality, ResizeLimits, check_stored_size, open_checked, png

RESIZE = "PIL bilinear, antialiased (as torchvision Resize on a PIL image), RGB, PNG"


class ImageModality(Modality):
    name: ClassVar[str] = "image"
    features: ClassVar[dict] = {"image": datasets.Image()}

    def encode(self, stream: BinaryIO, path: str, limits: ResizeLimits, primary: Encoded | None) -> Encoded:
        image = open_checked(stream, limits)
        target = limits.target(image.size)
        if target is None:
            return Encoded({"image": None}, image.size, image.size)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return Encoded({"image": png(rgb.resize(target, Image.Resampling.BILINEAR))}, image.size, target)

    def slot(self, height: int, width: int) -> tuple[tuple[int, ...], type]:
        return (3, height, width), np.uint8

    def decode_into(self, data: memoryview | bytes, out: np.ndarray) -> None:
        image = Image.open(io.BytesIO(data))
        if image.mode != "RGB":
            image = image.convert("RGB")
        check_stored_size(image, out.shape[1], out.shape[2])
        out[...] = np.asarray(image).transpose(2, 0, 1)  # HWC -> CHW here, in the decoding threads


MODALITY = ImageModality()
