"""What every modality module provides, and the size rules they share.

A modality is one kind of data a sample carries (``image``, ``mask``; the 3-D issue adds
``xyz``, ``points``, ``depth``, ``normals``).  Its module says, in one place:

- which Arrow columns it adds to a dataset's samples (``features``) and which manifest columns
  it derives from them (``manifest_columns``, ``manifest_values``);
- how the sharder turns a release file into those columns (``encode``): decode and check it,
  and at a shard resolution resize and re-encode it; problems are raised as :class:`Refused`
  with a stable problem kind;
- how the reader turns stored bytes back into an array (``decode_into``, into a slot of the
  batch array that ``slot`` describes).

The *primary* modality (``image``) fixes a sample's size and its target size; the others are
aligned to it (``encode(..., primary=...)``).
"""

from __future__ import annotations

import abc
import io
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar

import numpy as np
import pyarrow as pa
from PIL import Image

PNG_LEVEL = 6
BYTES_PER_SOURCE_PIXEL = 40
"""Peak bytes per source pixel of one image and its mask: the decoded image and its RGB copy,
the boolean mask, its int64 integral image and the two cumulative sums behind it."""
BYTES_PER_TARGET_PIXEL = 64
"""Peak bytes per target pixel: the resized image and its PNG, the exact rule's four int64
box corners and their sum, the official rule's resized mask."""


class Refused(Exception):
    """A release file that a modality refuses; ``kind`` is the problem kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def target_size(width: int, height: int, resolution: int | str, geometry: str = "longer-side") -> tuple[int, int]:
    """(width, height) at ``resolution``: the longer side becomes ``resolution`` pixels
    (``longer-side``), or both sides do (``square``)."""
    if resolution == "original":
        return width, height
    if geometry == "square":
        return int(resolution), int(resolution)
    scale = int(resolution) / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_peak_bytes(source: tuple[int, int], target: tuple[int, int] | None) -> int:
    """Estimated peak memory, in bytes, of decoding one ``source`` = (width, height) image and
    its mask and resizing both to ``target`` (``None``: decoding only, at original resolution)."""
    source_pixels = source[0] * source[1]
    if target is None:
        return 4 * source_pixels
    return BYTES_PER_SOURCE_PIXEL * source_pixels + BYTES_PER_TARGET_PIXEL * target[0] * target[1]


def size_text(size: int) -> str:
    """A byte count as MiB or GiB."""
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


@dataclass(frozen=True)
class ResizeLimits:
    """What one image may cost a worker: the resolution and geometry, whether upsampling is
    allowed, and the worker's share of the memory (bytes, see :func:`resize_peak_bytes`)."""

    resolution: int | str
    allow_upsample: bool = False
    max_image_bytes: int | None = None
    geometry: str = "longer-side"

    def target(self, size: tuple[int, int]) -> tuple[int, int] | None:
        """The stored size of an image of ``size`` = (width, height); ``None`` at original resolution."""
        return None if self.resolution == "original" else target_size(*size, self.resolution, self.geometry)

    def refusal(self, size: tuple[int, int]) -> tuple[str, str] | None:
        """``(problem kind, message)`` when an image of ``size`` = (width, height) must not be
        resized under these limits, else ``None``."""
        width, height = size
        if self.resolution != "original" and int(self.resolution) > max(width, height) and not self.allow_upsample:
            return "upsample", (
                f"resolution {self.resolution} px is larger than the image ({width}x{height}); upsampling adds no "
                "information and costs memory: choose at most its size, or pass --allow-upsample (allow_upsample=True)"
            )
        target = self.target(size)
        needed = resize_peak_bytes(size, target)
        if self.max_image_bytes is not None and needed > self.max_image_bytes:
            what = f"resizing {width}x{height} to {target[0]}x{target[1]}" if target else f"decoding {width}x{height}"
            return "too-large", (
                f"{what} needs about {size_text(needed)} of memory, more than the {size_text(self.max_image_bytes)} "
                "each worker may use; choose a smaller resolution or fewer workers"
            )
        return None


def open_checked(stream: BinaryIO, limits: ResizeLimits | None) -> Image.Image:
    """A fully decoded PIL image, checked against ``limits`` from its header before any pixel
    is decoded; raises on unreadable or truncated data, :class:`Refused` over the limits."""
    image = Image.open(stream)
    refused = limits.refusal(image.size) if limits is not None else None
    if refused is not None:
        raise Refused(*refused)
    image.load()
    return image


def png(image: Image.Image) -> bytes:
    """PNG bytes of an image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


@dataclass(frozen=True)
class Encoded:
    """What a modality made of one release file: its columns' bytes (``None``: the source file,
    unchanged, which the writer reads again rather than shipping it between processes), the
    file's size and the stored size (width, height)."""

    columns: dict[str, bytes | None]
    size: tuple[int, int]
    stored: tuple[int, int]


class Modality(abc.ABC):
    """One modality (see the module docstring)."""

    name: ClassVar[str]
    features: ClassVar[dict[str, Any]]
    """Arrow columns (``datasets`` features) it adds to a sample, in order."""
    manifest_columns: ClassVar[dict[str, pa.DataType]] = {}
    """Manifest columns derived from its Arrow columns."""

    def manifest_values(self, table: pa.Table) -> dict[str, pa.Array]:
        """The derived manifest columns of a written unit's table."""
        return {}

    def row_value(self, data: bytes) -> Any:
        """What the sharder writes in one of its Arrow columns for stored bytes ``data``: the
        ``{"bytes", "path"}`` struct of a ``datasets.Image`` column by default; a modality with
        plain binary columns returns the bytes."""
        return {"bytes": data, "path": None}

    @abc.abstractmethod
    def encode(self, stream: BinaryIO, path: str, limits: ResizeLimits, primary: Encoded | None) -> Encoded:
        """The stored columns of the release file ``path`` read from ``stream``; ``primary`` is
        the sample's primary modality (``None`` when this one is primary).  Raises
        :class:`Refused` or the decoder's own error for a file it cannot take."""

    @abc.abstractmethod
    def slot(self, height: int, width: int) -> tuple[tuple[int, ...], type]:
        """Shape and dtype of one sample's array."""

    @abc.abstractmethod
    def decode_into(self, data: memoryview | bytes, out: np.ndarray) -> None:
        """Decode stored bytes into ``out`` (a slot of a batch array); raises if they do not fit."""


def check_stored_size(image: Image.Image, out_height: int, out_width: int) -> None:
    """Raise when a decoded image differs from the size the manifest promised."""
    if image.size != (out_width, out_height):
        raise ValueError(f"stored size {image.size[0]}x{image.size[1]} differs from the manifest's {out_width}x{out_height}")
