"""Read m2ad shards: the manifest as a polars frame, and batches of decoded images and masks.

Selecting samples is a polars filter on :func:`load_manifest`; reading them is
:func:`iter_batches` (or :func:`read_images` / :func:`read_masks`) on the selected rows.  Each
row names its Arrow dataset (``shard_dir``) and its row there (``shard_row``).  The reader
takes the encoded bytes straight out of the memory-mapped Arrow columns, skipping the per-row
formatting of ``datasets``, and decodes the PNGs in a thread pool (PIL releases the GIL
while decoding).

Each modality decodes its own column (``m2ad.modalities``): images come as RGB whatever
their stored mode; masks under one of the two rules of :data:`m2ad.schema.MASK_RULES`
(``exact`` reads the ``mask`` column, ``official`` the ``mask_official`` column), a pixel
being a defect where its stored value is not 0; a sample without a mask gets an all-False mask.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch

from m2ad import modalities
from m2ad.modalities.mask import COLUMNS as _MASK_COLUMNS
from m2ad.schema import CORE_MANIFEST_COLUMNS, MANIFEST_FILE, MASK_RULES, DatasetInfo

__all__ = ["LoadedBatch", "ShardReader", "iter_batches", "load_manifest", "read_images", "read_masks", "read_modality", "read_points"]

_LOCATION_COLUMNS = ("sample_id", "shard_dir", "shard_row", "width", "height")


def load_manifest(root: str | Path) -> pl.DataFrame:
    """The manifest of a sharded dataset (one row per sample, no pixels), after checking
    ``dataset.json``; raises a clear error if ROOT is not a complete sharded dataset."""
    root = Path(root)
    info = DatasetInfo.read(root)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {MANIFEST_FILE}; the sharding did not finish, rerun `m2ad shard` to resume it")
    frame = pl.read_parquet(path)
    expected = [*CORE_MANIFEST_COLUMNS, *info.extra_columns, *modalities.manifest_columns(info.modalities)]
    missing = [name for name in expected if name not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; it was not written by this m2ad")
    return frame


@dataclass
class LoadedBatch:
    """Samples read from the shards: images as uint8 (B, 3, H, W), masks as bool (B, H, W)
    when asked for, and ``frame``, the manifest rows of the batch in the same order.

    For a point-cloud dataset (modality ``points``) ``images`` is None and ``points`` holds
    one float32 (N_i, 3) array per sample (N_i = the manifest's ``num_points``), and
    ``point_labels`` one bool (N_i,) array per sample when ground truth was asked for."""

    sample_ids: list[str]
    images: torch.Tensor | None
    masks: np.ndarray | None
    frame: pl.DataFrame
    points: list[np.ndarray] | None = None
    point_labels: list[np.ndarray] | None = None
    modalities: dict[str, np.ndarray] = field(default_factory=dict)
    """The arrays of the other modalities asked for (``iter_batches(modalities=...)``), e.g.
    ``xyz``: float32 (B, 3, H, W)."""

    @property
    def ground_truth(self) -> np.ndarray | list[np.ndarray] | None:
        """What an evaluator scores the batch's maps against: the masks (B, H, W), or the
        per-point labels of a point-cloud batch."""
        return self.point_labels if self.points is not None else self.masks

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
    """(height, width) shared by every row of ``frame``; raises if they differ.  (Plain Python
    on purpose: a polars query per batch wakes polars' thread pool, which then competes with
    the decoding threads.)"""
    sizes = sorted(set(zip(frame["height"].to_list(), frame["width"].to_list())))
    if len(sizes) != 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sizes[:4])
        raise ValueError(f"these samples have different sizes ({shown}); batch them separately or shard at a fixed --resolution")
    height, width = sizes[0]
    return int(height), int(width)


class _EncodedColumn:
    """The encoded bytes of one column (an image column's ``struct<bytes, path>``, or a plain
    binary column such as ``points``) of a memory-mapped Arrow table, as one zero-copy view per row: no Arrow ``take``, no Python ``bytes`` per read."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self._views: list[memoryview | None] = []
        for chunk in column.chunks:
            values = pc.struct_field(chunk, "bytes") if pa.types.is_struct(chunk.type) else chunk  # image columns, or plain binary
            offset_type = np.int64 if pa.types.is_large_binary(values.type) else np.int32
            _, offsets, data = values.buffers()
            bounds = np.frombuffer(offsets, dtype=offset_type)[values.offset : values.offset + len(values) + 1].tolist()
            present = values.is_valid().to_pylist()
            stored = memoryview(data if data is not None else b"")
            self._views += [stored[bounds[row] : bounds[row + 1]] if present[row] else None for row in range(len(values))]

    def __getitem__(self, row: int) -> memoryview | None:
        """The bytes stored at ``row`` (``None`` where null)."""
        if not 0 <= row < len(self._views):
            raise IndexError(f"row {row} is outside the shard's {len(self._views)} rows")
        return self._views[row]


@dataclass
class _PendingBatch:
    """A batch whose samples are being decoded in the reader's threads, straight into its arrays."""

    frame: pl.DataFrame
    images: np.ndarray | None
    masks: np.ndarray | None
    futures: list[Future[None]]
    points: list[np.ndarray] | None = None
    point_labels: list[np.ndarray] | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def wait(self) -> _PendingBatch:
        """Wait for every sample, re-raising the first decoding error."""
        for future in self.futures:
            future.result()
        return self

    def loaded(self) -> LoadedBatch:
        """The finished batch, images included (waits for it)."""
        self.wait()
        ids = self.frame["sample_id"].to_list()
        if self.points is not None:
            return LoadedBatch(ids, None, None, self.frame, self.points, self.point_labels)
        assert self.images is not None
        return LoadedBatch(ids, torch.from_numpy(self.images), self.masks, self.frame, modalities=self.extra)


def _refuse_clouds(frame: pl.DataFrame, what: str, instead: str) -> None:
    """One clear line when image data is asked of point-cloud samples."""
    if "num_points" in frame.columns:
        raise ValueError(f"these are point-cloud samples: they have no {what}; read {instead} instead")


class ShardReader:
    """Decodes the images and masks of one sharded dataset in a pool of threads.

    Opened datasets are kept (memory-mapped), so reuse one reader for many batches.  PIL
    releases the GIL while decoding, so the threads decode in parallel; each sample is decoded
    straight into its slot of the batch arrays.
    """

    def __init__(self, root: str | Path, *, threads: int | None = None) -> None:
        self.root = Path(root)
        self._tables: dict[str, pa.Table] = {}
        self._columns: dict[tuple[str, str], _EncodedColumn] = {}
        self._pool = ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1), thread_name_prefix="m2ad-decode")

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the decoding threads (dropping work not yet started)."""
        self._pool.shutdown(cancel_futures=True)

    def _column(self, shard_dir: str, name: str) -> _EncodedColumn:
        if (shard_dir, name) not in self._columns:
            if shard_dir not in self._tables:
                path = self.root / shard_dir
                if not path.is_dir():
                    raise FileNotFoundError(f"{path} is missing: the manifest of {self.root} names a shard folder that is not there")
                self._tables[shard_dir] = datasets.load_from_disk(str(path)).data.table
            self._columns[(shard_dir, name)] = _EncodedColumn(self._tables[shard_dir].column(name))
        return self._columns[(shard_dir, name)]

    def encoded(self, frame: pl.DataFrame, column: str) -> list[memoryview | None]:
        """Zero-copy views of the encoded bytes of ``column`` for each row of ``frame`` (``None`` where null)."""
        _check_frame(frame)
        return [self._column(shard_dir, column)[row] for shard_dir, row in zip(frame["shard_dir"].to_list(), frame["shard_row"].to_list())]

    def _submit_points(self, frame: pl.DataFrame, *, with_points: bool = True, with_labels: bool = False) -> _PendingBatch:
        """Start decoding the point clouds of ``frame`` (and their labels) in the threads."""
        if "num_points" not in frame.columns:
            raise ValueError("the frame lacks the manifest column 'num_points': these are not point-cloud samples")
        sample_ids, counts = frame["sample_id"].to_list(), frame["num_points"].to_list()
        point_bytes = self.encoded(frame, "points") if with_points else [None] * frame.height
        label_bytes = self.encoded(frame, "point_labels") if with_labels else [None] * frame.height
        points = [np.empty((count, 3), np.float32) for count in counts] if with_points else None
        labels = [np.zeros(count, bool) for count in counts] if with_labels else None
        modality = modalities.get("points")

        def decode(index: int) -> None:
            try:
                if points is not None:
                    if point_bytes[index] is None:
                        raise ValueError("no point bytes")
                    modality.decode_into(point_bytes[index], points[index])
                if labels is not None:
                    stored = label_bytes[index]
                    if stored is None or len(stored) != counts[index]:
                        raise ValueError(f"{0 if stored is None else len(stored)} labels, the manifest says {counts[index]} points")
                    labels[index][...] = np.frombuffer(stored, np.uint8) != 0
            except Exception as error:
                raise ValueError(f"{sample_ids[index]}: cannot decode its point cloud: {error}") from error

        futures = [self._pool.submit(decode, index) for index in range(frame.height)]
        return _PendingBatch(frame, None, None, futures, points if points is not None else [], labels)

    def points(self, frame: pl.DataFrame) -> list[np.ndarray]:
        """The point clouds of ``frame``: one float32 (N_i, 3) array per row, in frame order."""
        pending = self._submit_points(frame).wait()
        assert pending.points is not None
        return pending.points

    def point_labels(self, frame: pl.DataFrame) -> list[np.ndarray]:
        """The per-point labels of ``frame``: one bool (N_i,) array per row (True = defect)."""
        pending = self._submit_points(frame, with_points=False, with_labels=True).wait()
        assert pending.point_labels is not None
        return pending.point_labels

    def ground_truth(self, frame: pl.DataFrame, mask_rule: str = "exact") -> np.ndarray | list[np.ndarray]:
        """What maps of ``frame`` are scored against: masks under ``mask_rule``, or, for
        point-cloud samples, per-point labels (point clouds have one rule, ``exact``)."""
        return self.point_labels(frame) if "num_points" in frame.columns else self.masks(frame, mask_rule)

    def _submit(self, frame: pl.DataFrame, *, with_images: bool = True, mask_rule: str | None = None,
                extra_modalities: Sequence[str] = ()) -> _PendingBatch:
        """Start decoding the rows of ``frame`` (images, and masks under ``mask_rule`` unless it
        is None; point clouds and their labels for point-cloud samples) in the threads;
        ``wait()`` on the result for the arrays."""
        if mask_rule is not None and mask_rule not in MASK_RULES:
            raise ValueError(f"unknown mask rule {mask_rule!r}; expected one of {MASK_RULES}")
        if "num_points" in frame.columns:
            return self._submit_points(frame, with_points=with_images, with_labels=mask_rule is not None)
        height, width = _uniform_size(frame) if frame.height else (0, 0)
        sample_ids = frame["sample_id"].to_list()
        image, mask = modalities.get("image"), modalities.get("mask")
        images = np.empty((frame.height, *image.slot(height, width)[0]), dtype=np.uint8) if with_images else None
        masks = np.zeros((frame.height, *mask.slot(height, width)[0]), dtype=bool) if mask_rule is not None else None
        image_bytes = self.encoded(frame, "image") if with_images else [None] * frame.height
        mask_bytes = self.encoded(frame, _MASK_COLUMNS[mask_rule]) if mask_rule is not None else [None] * frame.height

        def decode(index: int) -> None:
            try:
                if images is not None:
                    if image_bytes[index] is None:
                        raise ValueError("no image bytes")
                    image.decode_into(image_bytes[index], images[index])
                if masks is not None and mask_bytes[index] is not None:
                    mask.decode_into(mask_bytes[index], masks[index])
            except Exception as error:
                raise ValueError(f"{sample_ids[index]}: cannot decode its {'mask' if images is None else 'image or mask'}: {error}") from error

        futures = [self._pool.submit(decode, index) for index in range(frame.height)]
        extra = {}
        for name in extra_modalities:
            extra[name], decoding = self._submit_modality(frame, name)
            futures += decoding
        return _PendingBatch(frame, images, masks, futures, extra=extra)

    def images(self, frame: pl.DataFrame) -> torch.Tensor:
        """The images of ``frame`` as one uint8 tensor (B, 3, H, W), in frame order."""
        _refuse_clouds(frame, "images", "points(frame)")
        pending = self._submit(frame).wait()
        assert pending.images is not None
        return torch.from_numpy(pending.images)

    def modality(self, frame: pl.DataFrame, name: str) -> np.ndarray:
        """The arrays of modality ``name`` (e.g. ``xyz``: float32 (B, 3, H, W)) for the rows of
        ``frame``, in frame order, decoded in the threads; a row without that file raises."""
        out, futures = self._submit_modality(frame, name)
        for future in futures:
            future.result()
        return out

    def _submit_modality(self, frame: pl.DataFrame, name: str) -> tuple[np.ndarray, list[Future[None]]]:
        """Start decoding modality ``name`` of the rows of ``frame`` into one array."""
        modality = modalities.get(name)
        height, width = _uniform_size(frame) if frame.height else (0, 0)
        shape, dtype = modality.slot(height, width)
        columns = list(modality.features)
        out = np.zeros((frame.height, *shape), dtype=dtype)
        encoded = self.encoded(frame, columns[0])
        sample_ids = frame["sample_id"].to_list()

        def decode(index: int) -> None:
            if encoded[index] is None:
                raise ValueError(f"{sample_ids[index]} has no {name}")
            try:
                modality.decode_into(encoded[index], out[index])
            except Exception as error:
                raise ValueError(f"{sample_ids[index]}: cannot decode its {name}: {error}") from error

        return out, [self._pool.submit(decode, index) for index in range(frame.height)]

    def masks(self, frame: pl.DataFrame, mask_rule: str = "exact") -> np.ndarray:
        """The masks of ``frame`` under ``mask_rule`` as bool (B, H, W); all False where a
        sample has none.  A pixel is foreground where the mask's stored value is non-zero."""
        if mask_rule not in MASK_RULES:
            raise ValueError(f"unknown mask rule {mask_rule!r}; expected one of {MASK_RULES}")
        _refuse_clouds(frame, "masks", "point_labels(frame)")
        pending = self._submit(frame, with_images=False, mask_rule=mask_rule).wait()
        assert pending.masks is not None
        return pending.masks


def iter_batches(
    root: str | Path,
    frame: pl.DataFrame,
    *,
    batch_size: int = 32,
    with_masks: bool = False,
    mask_rule: str = "exact",
    threads: int | None = None,
    prefetch: int = 2,
    extra_modalities: Sequence[str] = (),
) -> Iterator[LoadedBatch]:
    """Batches of the samples in ``frame`` (manifest rows), in frame order: ids, images
    (uint8 (B, 3, H, W)), masks under ``mask_rule`` if ``with_masks``, and the rows.  For
    point-cloud samples: ``points`` (a list of float32 (N_i, 3)) and, if ``with_masks``,
    ``point_labels`` (a list of bool (N_i,)) instead of images and masks.  ``extra_modalities``
    (e.g. ``("xyz",)``) are decoded too, into ``LoadedBatch.modalities``.

    The next ``prefetch`` batches are decoding while the caller works on the current one, so
    decoding overlaps the caller's work and the threads never wait at a batch boundary.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be at least 0, got {prefetch}")
    if mask_rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {mask_rule!r}; expected one of {MASK_RULES}")
    _check_frame(frame)
    with ShardReader(root, threads=threads) as reader:
        pending: deque[_PendingBatch] = deque()
        for start in range(0, frame.height, batch_size):
            pending.append(reader._submit(frame.slice(start, batch_size), mask_rule=mask_rule if with_masks else None,
                                          extra_modalities=extra_modalities))
            if len(pending) > prefetch:
                yield pending.popleft().loaded()
        while pending:
            yield pending.popleft().loaded()


def read_images(root: str | Path, frame: pl.DataFrame, *, threads: int | None = None) -> torch.Tensor:
    """All images of ``frame`` as one uint8 tensor (N, 3, H, W)."""
    with ShardReader(root, threads=threads) as reader:
        return reader.images(frame)


def read_masks(root: str | Path, frame: pl.DataFrame, mask_rule: str = "exact", *, threads: int | None = None) -> np.ndarray:
    """All masks of ``frame`` under ``mask_rule`` as bool (N, H, W)."""
    with ShardReader(root, threads=threads) as reader:
        return reader.masks(frame, mask_rule)


def read_points(root: str | Path, frame: pl.DataFrame, *, with_labels: bool = False, threads: int | None = None
                ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """All point clouds of ``frame`` (float32 (N_i, 3) each) and, if ``with_labels``, their
    per-point labels (bool (N_i,) each)."""
    with ShardReader(root, threads=threads) as reader:
        pending = reader._submit_points(frame, with_labels=with_labels).wait()
        assert pending.points is not None
        return pending.points, pending.point_labels


def read_modality(root: str | Path, frame: pl.DataFrame, name: str, *, threads: int | None = None) -> np.ndarray:
    """All arrays of modality ``name`` for ``frame`` (``ShardReader.modality``)."""
    with ShardReader(root, threads=threads) as reader:
        return reader.modality(frame, name)
