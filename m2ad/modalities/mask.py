"""The ``mask`` modality: a sample's binary ground-truth mask, under the two rules of
:data:`m2ad.schema.MASK_RULES` (columns ``mask`` and ``mask_official``).

A mask pixel is a defect when its stored value is not 0, read without any colour conversion:
MVTec AD and M2AD masks are 0/255, VisA masks hold defect-class ids (1..9; a ``> 127`` rule
would erase them), and a palette (mode ``P``) mask is read as its palette indices, never
through the palette's colours.  Release masks must be single-channel 8-bit images (PIL modes
``1``, ``L`` or ``P``) of the image's size: anything else is a problem (``mask-mode``,
``mask-size``).

At original resolution both columns are the release's mask file, byte for byte.  At a
resolution N, the image's stored size is the target and both rules are applied to the
foreground: ``mask`` (exact, :func:`resize_mask_exact`) and ``mask_official`` (the official M2AD
evaluator's bilinear-then-255 rule, :func:`resize_mask_official`), each written as a 1-bit PNG,
which ``datasets`` and PIL decode to an (H, W) array of {0, 1} (booleans).
"""

from __future__ import annotations

import io
from typing import BinaryIO, ClassVar

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from m2ad.modalities.base import Encoded, Modality, Refused, ResizeLimits, check_stored_size, open_checked, png

COLUMNS = {"exact": "mask", "official": "mask_official"}
"""Mask rule -> Arrow column."""
RELEASE_MODES = ("1", "L", "P")


def foreground(mask: Image.Image) -> np.ndarray:
    """Boolean (H, W): pixels whose stored value is not 0 (palette indices for mode ``P``;
    for a multi-channel mask, from a shard written by another tool, non-zero luminance)."""
    if mask.mode == "1":
        return np.asarray(mask, dtype=bool)
    if mask.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(mask) != 0
    return np.asarray(mask.convert("L")) != 0


def resize_mask_exact(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean mask (H, W) resized to ``size`` = (width, height) under the exact rule.

    A target pixel covers the source box ``[i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)``; it is
    set when any source pixel overlapping that box is set, so no defect vanishes when
    downscaling (box sums over an integral image; works for upscaling too).
    """
    mask = np.asarray(mask, dtype=bool)
    source_height, source_width = mask.shape
    width, height = size
    integral = np.zeros((source_height + 1, source_width + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(0, dtype=np.int64).cumsum(1)

    def bounds(count: int, source: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.arange(count, dtype=np.int64)
        start = (index * source) // count
        stop = -((-(index + 1) * source) // count)  # ceil((i+1) * source / count)
        return start, np.maximum(stop, start + 1)

    row_start, row_stop = bounds(height, source_height)
    col_start, col_stop = bounds(width, source_width)
    box = (
        integral[np.ix_(row_stop, col_stop)]
        - integral[np.ix_(row_start, col_stop)]
        - integral[np.ix_(row_stop, col_start)]
        + integral[np.ix_(row_start, col_start)]
    )
    return box > 0


def resize_mask_official(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean mask (H, W) resized to ``size`` = (width, height) as the official M2AD
    evaluator does: PIL bilinear resize of the 0/255 image, then keep pixels equal to 255
    (its ``ToTensor`` + ``astype(int)``), which erodes or erases thin defects."""
    image = Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), mode="L")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR)) == 255


def binary_png(mask: np.ndarray) -> bytes:
    """A 1-bit PNG of a boolean mask."""
    return png(Image.fromarray(np.asarray(mask, dtype=bool)))


class MaskModality(Modality):
    name: ClassVar[str] = "mask"
    features: ClassVar[dict] = {"mask": datasets.Image(), "mask_official": datasets.Image()}
    manifest_columns: ClassVar[dict[str, pa.DataType]] = {"has_mask": pa.bool_()}

    def manifest_values(self, table: pa.Table) -> dict[str, pa.Array]:
        return {"has_mask": pc.is_valid(table.column("mask"))}

    def encode(self, stream: BinaryIO, path: str, limits: ResizeLimits, primary: Encoded | None) -> Encoded:
        assert primary is not None, "a mask is aligned to its image"
        mask = open_checked(stream, limits)
        if mask.mode not in RELEASE_MODES:
            raise Refused(
                "mask-mode",
                f"mask of PIL mode {mask.mode} ({len(mask.getbands())} channel(s)); a mask must be one 8-bit channel "
                "(mode 1, L or P): 0 = background, anything else = defect",
            )
        if mask.size != primary.size:
            raise Refused("mask-size", f"mask is {mask.size[0]}x{mask.size[1]} but its image is {primary.size[0]}x{primary.size[1]}")
        if limits.resolution == "original":
            return Encoded({"mask": None, "mask_official": None}, mask.size, mask.size)
        defects = foreground(mask)
        columns = {"mask": binary_png(resize_mask_exact(defects, primary.stored)),
                   "mask_official": binary_png(resize_mask_official(defects, primary.stored))}
        return Encoded(columns, mask.size, primary.stored)

    def slot(self, height: int, width: int) -> tuple[tuple[int, ...], type]:
        return (height, width), bool

    def decode_into(self, data: memoryview | bytes, out: np.ndarray) -> None:
        mask = Image.open(io.BytesIO(data))
        check_stored_size(mask, out.shape[0], out.shape[1])
        out[...] = foreground(mask)


MODALITY = MaskModality()
