"""Read m2ad shards: the manifest as a polars frame, and batches of decoded images and masks.

Selecting samples is a polars filter on :func:`load_manifest`; reading them is
:func:`iter_batches` (or :func:`read_images` / :func:`read_masks`) on the selected rows.  Each
row names its Arrow dataset (``shard_dir``) and its row there (``shard_row``).  The reader
takes the encoded bytes straight out of the memory-mapped Arrow columns, skipping the per-row
formatting of ``datasets``, and decodes the PNGs in a thread pool (PIL releases the GIL
while decoding).

Masks come under one of the two rules of :data:`m2ad.schema.MASK_RULES` (``exact`` reads
the ``mask`` column, ``official`` the ``mask_official`` column); a sample without a mask gets
an all-False mask.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from m2ad.schema import MANIFEST_FILE, MANIFEST_SCHEMA, MASK_RULES, DatasetInfo

__all__ = ["LoadedBatch", "ShardReader", "iter_batches", "load_manifest", "read_images", "read_masks"]

_MASK_COLUMNS = {"exact": "mask", "official": "mask_official"}
_LOCATION_COLUMNS = ("sample_id", "shard_dir", "shard_row", "width", "height")


def load_manifest(root: str | Path) -> pl.DataFrame:
    """The manifest of a sharded dataset (one row per sample, no pixels), after checking
    ``dataset.json``; raises a clear error if ROOT is not a complete sharded dataset."""
    root = Path(root)
    DatasetInfo.read(root)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {MANIFEST_FILE}; the sharding did not finish, rerun `m2ad shard` to resume it")
    frame = pl.read_parquet(path)
    missing = [name for name in MANIFEST_SCHEMA.names if name not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; it was not written by this m2ad")
    return frame


@dataclass
class LoadedBatch:
    """Samples read from the shards: images as uint8 (B, 3, H, W), masks as bool (B, H, W)
    when asked for, and ``frame``, the manifest rows of the batch in the same order."""

    sample_ids: list[str]
    images: torch.Tensor
    masks: np.ndarray | None
    frame: pl.DataFrame

    @property
    def categories(self) -> list[str]:
        """Category of each sample."""
        return self.frame["category"].to_list()

    @property
    def views(self) -> list[str | None]:
        """View of each sample (``None`` for datasets without views)."""
        return self.frame["view"].to_list()

    @property
    def illuminations(self) -> list[str | None]:
        """Illumination of each sample (``None`` for datasets without lights)."""
        return self.frame["illumination"].to_list()

    @property
    def labels(self) -> np.ndarray:
        """Image-level labels (1 = anomalous), int8."""
        return self.frame["label"].to_numpy()

    def __len__(self) -> int:
        return len(self.sample_ids)


def _check_frame(frame: pl.DataFrame) -> None:
    """Raise if ``frame`` is not a selection of manifest rows."""
    missing = [name for name in _LOCATION_COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks manifest columns {missing}; select rows of load_manifest(root)")


def _uniform_size(frame: pl.DataFrame) -> tuple[int, int]:
    """(height, width) shared by every row of ``frame``; raises if they differ."""
    sizes = frame.select("height", "width").unique()
    if sizes.height != 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sizes.head(4).iter_rows())
        raise ValueError(f"these samples have different sizes ({shown}); batch them separately or shard at a fixed --resolution")
    height, width = sizes.row(0)
    return int(height), int(width)


class ShardReader:
    """Reads encoded pixels out of the Arrow datasets of one sharded dataset.

    Opened datasets are kept (memory-mapped), so reuse one reader for many batches.
    """

    def __init__(self, root: str | Path, *, threads: int | None = None) -> None:
        self.root = Path(root)
        self._tables: dict[str, pa.Table] = {}
        self._pool = ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1))

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the decoding threads."""
        self._pool.shutdown()

    def _table(self, shard_dir: str) -> pa.Table:
        if shard_dir not in self._tables:
            path = self.root / shard_dir
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is missing: the manifest of {self.root} names a shard folder that is not there")
            self._tables[shard_dir] = datasets.load_from_disk(str(path)).data.table
        return self._tables[shard_dir]

    def encoded(self, frame: pl.DataFrame, column: str) -> list[bytes | None]:
        """The encoded bytes of ``column`` for each row of ``frame`` (``None`` where null)."""
        _check_frame(frame)
        result: list[bytes | None] = [None] * frame.height
        located = frame.select("shard_dir", "shard_row").with_row_index("position")
        for (shard_dir,), group in located.group_by("shard_dir", maintain_order=True):
            rows = group["shard_row"].to_numpy()
            stored = self._table(shard_dir).column(column)
            if rows.size and (np.diff(rows) == 1).all():  # consecutive rows (the usual case): a zero-copy slice
                taken = stored.slice(int(rows[0]), rows.size)
            else:
                taken = stored.take(pa.array(rows))
            values = pc.struct_field(taken, "bytes").to_pylist()
            for position, value in zip(group["position"].to_list(), values):
                result[position] = value
        return result

    def images(self, frame: pl.DataFrame) -> torch.Tensor:
        """The images of ``frame`` as one uint8 tensor (B, 3, H, W), in frame order."""
        height, width = _uniform_size(frame) if frame.height else (0, 0)
        pixels = np.empty((frame.height, 3, height, width), dtype=np.uint8)

        def decode(item: tuple[int, bytes | None]) -> None:
            index, data = item
            if data is None:
                raise ValueError(f"{frame['sample_id'][index]} has no image bytes")
            image = Image.open(io.BytesIO(data))
            if image.mode != "RGB":
                image = image.convert("RGB")
            pixels[index] = np.asarray(image).transpose(2, 0, 1)  # HWC -> CHW here, in the decoding threads

        list(self._pool.map(decode, enumerate(self.encoded(frame, "image"))))
        return torch.from_numpy(pixels)

    def masks(self, frame: pl.DataFrame, mask_rule: str = "exact") -> np.ndarray:
        """The masks of ``frame`` under ``mask_rule`` as bool (B, H, W); all False where a
        sample has none.  A pixel is foreground where the mask's luminance is non-zero."""
        if mask_rule not in MASK_RULES:
            raise ValueError(f"unknown mask rule {mask_rule!r}; expected one of {MASK_RULES}")
        height, width = _uniform_size(frame) if frame.height else (0, 0)
        masks = np.zeros((frame.height, height, width), dtype=bool)

        def decode(item: tuple[int, bytes | None]) -> None:
            index, data = item
            if data is not None:
                masks[index] = np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 0

        list(self._pool.map(decode, enumerate(self.encoded(frame, _MASK_COLUMNS[mask_rule]))))
        return masks


def iter_batches(
    root: str | Path,
    frame: pl.DataFrame,
    *,
    batch_size: int = 32,
    with_masks: bool = False,
    mask_rule: str = "exact",
    threads: int | None = None,
) -> Iterator[LoadedBatch]:
    """Batches of the samples in ``frame`` (manifest rows), in frame order: ids, images
    (uint8 (B, 3, H, W)), masks under ``mask_rule`` if ``with_masks``, and the rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if mask_rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {mask_rule!r}; expected one of {MASK_RULES}")
    _check_frame(frame)
    with ShardReader(root, threads=threads) as reader:
        for start in range(0, frame.height, batch_size):
            rows = frame.slice(start, batch_size)
            yield LoadedBatch(
                sample_ids=rows["sample_id"].to_list(),
                images=reader.images(rows),
                masks=reader.masks(rows, mask_rule) if with_masks else None,
                frame=rows,
            )


def read_images(root: str | Path, frame: pl.DataFrame, *, threads: int | None = None) -> torch.Tensor:
    """All images of ``frame`` as one uint8 tensor (N, 3, H, W)."""
    with ShardReader(root, threads=threads) as reader:
        return reader.images(frame)


def read_masks(root: str | Path, frame: pl.DataFrame, mask_rule: str = "exact", *, threads: int | None = None) -> np.ndarray:
    """All masks of ``frame`` under ``mask_rule`` as bool (N, H, W)."""
    with ShardReader(root, threads=threads) as reader:
        return reader.masks(frame, mask_rule)
