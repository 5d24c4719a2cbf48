"""The predictions file: per-image anomaly scores and maps keyed by ``sample_id``.

A predictions file is a Parquet file with one row per image (the full specification, with a
plain-pyarrow example, is ``docs/predictions.md``):

==============  ===========  ====================================================================
column          type         meaning
==============  ===========  ====================================================================
``sample_id``   string       the id of the image in the sharded dataset (``m2ad.schema``)
``score``       float64      image anomaly score; higher means more anomalous
``map``         binary       the anomaly map: raw little-endian bytes of an H x W array of
                             ``map_dtype``, row-major; null when the file carries no maps
``map_height``  int32        H (null with the map)
``map_width``   int32        W (null with the map)
==============  ===========  ====================================================================

The file's key-value metadata ``m2ad.predictions`` holds JSON:
``{"format_version": 2, "map_dtype": "float16" | "float32", "map_kind": "pixel" | "point",
...free provenance...}``.

Map kinds (version 2): a ``pixel`` file holds 2-D anomaly maps, as above; a ``point`` file holds
one score per point of each sample's point cloud, ragged: ``map`` is the raw bytes of the N
scores in the cloud's point order, ``map_height`` is 1 and ``map_width`` is N, which must equal
the manifest's ``num_points`` of the sample.  Version-1 files (no ``map_kind``) are read as
``pixel`` files, unchanged.

Integrity: files written here carry a CRC-32 in every data page's header (Parquet page
checksums) and ``m2ad.predictions.sha256``, the sha256 of the ``m2ad.predictions`` JSON.  Reading
verifies both where present (files from other writers may lack them, and are read as they are),
so a file whose pages or header were damaged is refused (``PredictionsError``, kind ``corrupt
file``), never read as different numbers; and anything pyarrow cannot read is the same one-line
refusal, never a traceback.

Nothing here uses pickle: maps are raw numeric bytes, metadata is JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from m2ad.metrics import all_finite

FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
"""Versions this m2ad reads: 1 (pixel maps only, no ``map_kind``) and 2."""
MAP_KINDS = ("pixel", "point")
METADATA_KEY = "m2ad.predictions"
CHECKSUM_KEY = "m2ad.predictions.sha256"
"""Key-value metadata: the hex sha256 of the ``METADATA_KEY`` JSON (optional for other writers)."""
WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_page_checksum": True}
"""``pyarrow.parquet.ParquetWriter`` options of every predictions file m2ad writes."""
MAP_DTYPES = ("float16", "float32")
SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("score", pa.float64()),
        ("map", pa.binary()),
        ("map_height", pa.int32()),
        ("map_width", pa.int32()),
    ]
)
ROW_GROUP_BYTES = 4 * 2**20
"""The writer writes a row group once it holds this many bytes of maps; a batch at least this
large is written at once as its own row group, without being copied.  Reading keeps about one
row group in memory."""
SIZE_SLACK_BYTES = 4 * 2**20
SIZE_FACTOR = 1.5
"""Validation refuses a file larger than ``SIZE_FACTOR`` x (expected map bytes + 256 bytes per
row) + ``SIZE_SLACK_BYTES``: a float32 file where float16 was expected still passes, a file
with maps 2x too large in each direction does not."""
MAX_LISTED = 5
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class PredictionsError(ValueError):
    """A predictions file (or a batch written to one) breaks the format.

    ``problems`` maps each kind of problem (``"unknown ids"``, ``"missing ids"``, ...) to its
    first offenders, so callers and tests can tell the cases apart without parsing the message.
    """

    def __init__(self, path: str | Path | None, problems: Mapping[str, Sequence[str]], counts: Mapping[str, int] | None = None):
        self.path = None if path is None else Path(path)
        self.problems = {kind: list(items) for kind, items in problems.items()}
        self.counts = dict(counts or {kind: len(items) for kind, items in problems.items()})
        where = f"{self.path}: " if self.path is not None else ""
        parts = []
        for kind, items in self.problems.items():
            total = self.counts.get(kind, len(items))
            shown = ", ".join(" ".join(str(item).split()) for item in items[:MAX_LISTED])
            more = f" (and {total - min(total, MAX_LISTED)} more)" if total > MAX_LISTED else ""
            parts.append(f"{kind} [{total}]: {shown}{more}")
        super().__init__(f"{where}invalid predictions: " + "; ".join(parts))  # one line, however many problems


@dataclass(frozen=True)
class PredictionsInfo:
    """What a predictions file declares about itself."""

    path: Path
    format_version: int
    map_dtype: str
    num_rows: int
    has_maps: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    map_kind: str = "pixel"


@dataclass
class PredictionBatch:
    """Consecutive rows of a predictions file; ``maps`` is None when the file has no maps, else
    float32 arrays: (H, W) each in a pixel file, (N,) each in a point file."""

    sample_ids: list[str]
    scores: np.ndarray
    maps: list[np.ndarray] | None

    def __len__(self) -> int:
        return len(self.sample_ids)


def _check_map_dtype(map_dtype: str) -> np.dtype:
    if map_dtype not in MAP_DTYPES:
        raise ValueError(f"map_dtype must be one of {MAP_DTYPES}, got {map_dtype!r}")
    return np.dtype(map_dtype).newbyteorder("<")


def _check_map_kind(map_kind: str) -> str:
    if map_kind not in MAP_KINDS:
        raise ValueError(f"map_kind must be one of {MAP_KINDS}, got {map_kind!r}")
    return map_kind


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class PredictionsWriter:
    """Stream predictions into a Parquet file, batch by batch, with bounded memory.

    The file appears under ``path`` only when ``close()`` succeeds (it is written under a
    temporary name and moved into place with ``os.replace``), so a killed process never leaves
    a truncated predictions file behind.  Use it as a context manager; on an exception the
    temporary file is removed and nothing is published.

    Each batch is checked as it comes: ids unique over the whole file, scores and maps finite,
    maps 2-D and either given for every batch or for none, values representable in
    ``map_dtype`` (float16 overflows above 65504: pass ``map_dtype="float32"`` or rescale).
    ``map_kind="point"``: each map is a 1-D array of per-point scores (any length per sample).
    """

    def __init__(self, path: str | Path, *, map_dtype: str = "float16", metadata: Mapping[str, Any] | None = None,
                 row_group_bytes: int = ROW_GROUP_BYTES, map_kind: str = "pixel"):
        self.path = Path(path)
        self.map_dtype = map_dtype
        self._dtype = _check_map_dtype(map_dtype)
        self.map_kind = _check_map_kind(map_kind)
        provenance = dict(metadata or {})
        for reserved in ("format_version", "map_dtype", "map_kind"):
            provenance.pop(reserved, None)
        header = {"format_version": FORMAT_VERSION, "map_dtype": map_dtype, "map_kind": map_kind, **provenance}
        try:
            header_json = json.dumps(header, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"predictions metadata must be plain JSON: {error}") from None
        self._schema = SCHEMA.with_metadata(file_metadata(header_json))
        self._row_group_bytes = row_group_bytes
        self._temporary = _temporary_name(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._temporary, self._schema, **WRITE_OPTIONS)
        self._seen: set[str] = set()
        self._has_maps: bool | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_bytes = 0
        self.num_rows = 0

    def write_batch(self, sample_ids: Sequence[str], scores: Sequence[float] | np.ndarray,
                    maps: np.ndarray | Sequence[np.ndarray] | None = None) -> None:
        """Append one batch: ``B`` ids, ``B`` scores and optionally ``B`` maps (H x W each; in a
        point file, one 1-D array of per-point scores each)."""
        if self._writer is None:
            raise ValueError(f"{self.path}: the writer is closed")
        ids = [str(sample_id) for sample_id in sample_ids]
        score_array = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(score_array) != len(ids):
            raise PredictionsError(None, {"length mismatch": [f"{len(ids)} ids but {len(score_array)} scores"]})
        problems: dict[str, list[str]] = {}
        duplicates = [sample_id for sample_id, count in Counter(ids).items() if count > 1 or sample_id in self._seen]
        if duplicates:
            problems["duplicate ids"] = duplicates
        bad_scores = [ids[index] for index in np.flatnonzero(~np.isfinite(score_array))]
        if bad_scores:
            problems["NaN or inf scores"] = bad_scores
        map_values = maps.size if isinstance(maps, np.ndarray) else sum(np.size(item) for item in maps or [])
        map_bytes = map_values * self._dtype.itemsize
        held = bool(self._pending) or map_bytes < self._row_group_bytes  # kept past this call
        encoded, heights, widths = self._encode_maps(ids, maps, problems, owned=held)
        if problems:
            raise PredictionsError(None, problems)
        self._seen.update(ids)
        batch = pa.record_batch(
            [pa.array(ids, pa.string()), pa.array(score_array, pa.float64()), encoded,
             pa.array(heights, pa.int32()), pa.array(widths, pa.int32())],
            schema=self._schema,
        )
        self.num_rows += len(ids)
        if not held:
            self._writer.write_batch(batch)
            return
        self._pending.append(batch)
        self._pending_bytes += batch.nbytes
        if self._pending_bytes >= self._row_group_bytes:
            self._flush()

    def _encode_maps(self, ids: list[str], maps: np.ndarray | Sequence[np.ndarray] | None, problems: dict[str, list[str]],
                     owned: bool) -> tuple[pa.Array, list[int | None], list[int | None]]:
        """The map column of a batch (``owned``: in memory of its own, not the caller's)."""
        has_maps = maps is not None
        if self._has_maps is not None and has_maps != self._has_maps:
            raise PredictionsError(None, {"maps present for some rows only": [
                "this batch " + ("has maps but earlier ones had none" if has_maps else "has no maps but earlier ones had")]})
        self._has_maps = has_maps
        if maps is None:
            return pa.nulls(len(ids), pa.binary()), [None] * len(ids), [None] * len(ids)
        if len(maps) != len(ids):
            raise PredictionsError(None, {"length mismatch": [f"{len(ids)} ids but {len(maps)} maps"]})
        if self.map_kind == "point":  # ragged 1-D score arrays, each stored as a 1 x N map
            rows = [np.asarray(values) for values in maps]
            wrong = [f"{sample_id} {values.shape}" for sample_id, values in zip(ids, rows) if values.ndim != 1 or not values.size]
            if wrong:
                problems.setdefault("wrong point score shapes", []).extend(f"{item}: expected one 1-D array of N scores" for item in wrong)
                return pa.nulls(len(ids), pa.binary()), [None] * len(ids), [None] * len(ids)
            maps = [values[None, :] for values in rows]
        if isinstance(maps, np.ndarray) and maps.ndim == 3 and maps.dtype.kind in "fiub" and maps.size:
            # a batch array: converted and checked at once, copied only when kept (any problem
            # is then found and reported per map below)
            stored = as_map_dtype(maps, self.map_dtype)
            if (owned and stored is maps) or not stored.flags.c_contiguous:
                stored = np.array(stored, order="C")
            count, height, width = stored.shape
            if all_finite(stored) and stored.nbytes < 2**31:
                offsets = np.arange(count + 1, dtype=np.int32) * (height * width * stored.itemsize)
                array = pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(stored)])
                return array, [height] * count, [width] * count
        encoded: list[bytes | None] = []
        heights: list[int | None] = []
        widths: list[int | None] = []
        for sample_id, anomaly_map in zip(ids, maps):
            values = np.asarray(anomaly_map)
            if values.ndim == 3 and values.shape[0] == 1:
                values = values[0]
            if values.ndim != 2 or values.dtype.kind not in "fiub":
                problems.setdefault("wrong map shapes", []).append(f"{sample_id} {values.shape} {values.dtype}")
                continue
            if not all_finite(values):
                problems.setdefault("NaN or inf in maps", []).append(sample_id)
                continue
            if self.map_dtype == "float16" and values.dtype != np.float16 and values.size and float(np.abs(values).max()) > _FLOAT16_MAX:
                problems.setdefault("map values overflow float16", []).append(
                    f"{sample_id} (max |value| {float(np.abs(values).max()):.4g}; use map_dtype='float32' or rescale)")
                continue
            encoded.append(np.ascontiguousarray(as_map_dtype(values, self.map_dtype)).tobytes())
            heights.append(values.shape[0])
            widths.append(values.shape[1])
        return pa.array(encoded, pa.binary()), heights, widths

    def _flush(self) -> None:
        if self._pending and self._writer is not None:
            self._writer.write_table(pa.Table.from_batches(self._pending, schema=self._schema),
                                     row_group_size=sum(len(batch) for batch in self._pending))
        self._pending, self._pending_bytes = [], 0

    def close(self) -> Path:
        """Finish the file and move it into place; returns its path."""
        if self._writer is None:
            return self.path
        self._flush()
        self._writer.close()
        self._writer = None
        os.replace(self._temporary, self.path)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left as it was."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._temporary.unlink(missing_ok=True)
        self._pending, self._pending_bytes = [], 0

    def __enter__(self) -> PredictionsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def file_metadata(header_json: str) -> dict[str, str]:
    """The key-value metadata of a predictions file with this header: the header and its sha256."""
    return {METADATA_KEY: header_json, CHECKSUM_KEY: hashlib.sha256(header_json.encode()).hexdigest()}


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Whatever pyarrow cannot read (a failed page checksum, a truncated or damaged file)
    becomes one :class:`PredictionsError` line naming the file."""
    try:
        yield
    except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError) as error:
        first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise PredictionsError(path, {"corrupt file": [f"{first_line} (the file is damaged; write it again)"]}) from None


def as_map_dtype(maps: np.ndarray, map_dtype: str) -> np.ndarray:
    """``maps`` in ``map_dtype`` (no copy when they already are).

    Between float32 and float16 the conversion goes through torch, whose vectorised rounding
    gives the same values as NumPy's and is 10 to 50 times faster (NumPy converts float16
    element by element).  It runs on the calling thread only: waking torch's thread pool for a
    few microseconds per map made its threads compete with the image-decoding threads and
    cost more than the conversion itself (``benchmarks/runner.py``).
    """
    if {maps.dtype.name, map_dtype} == {"float32", "float16"}:
        import torch  # here, so that writing predictions from NumPy never pays torch's import

        native = np.require(maps, dtype=np.dtype(maps.dtype.name), requirements=["C", "W"])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return torch.from_numpy(native).to(getattr(torch, map_dtype)).numpy()
        finally:
            torch.set_num_threads(threads)
    return maps.astype(map_dtype, copy=False)


def write(path: str | Path, sample_ids: Sequence[str], scores: Sequence[float] | np.ndarray,
          maps: np.ndarray | Sequence[np.ndarray] | None = None, *, map_dtype: str = "float16",
          metadata: Mapping[str, Any] | None = None, map_kind: str = "pixel") -> Path:
    """Write a whole predictions file at once (atomically); see ``PredictionsWriter``."""
    with PredictionsWriter(path, map_dtype=map_dtype, metadata=metadata, map_kind=map_kind) as writer:
        writer.write_batch(sample_ids, scores, maps)
    return Path(path)


def _map_buffers(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``map`` column without copying its bytes: validity (bool, n), offsets (int64, n + 1)
    and the concatenated map bytes (uint8); row i is ``data[offsets[i]:offsets[i + 1]]``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    validity = column.is_valid().to_numpy(zero_copy_only=False)
    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    _, offset_buffer, data_buffer = column.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=offset_type)[column.offset:column.offset + len(column) + 1].astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, dtype=np.uint8)
    return validity, offsets, data


def _rows_as_block(offsets: np.ndarray, data: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """All rows' values as one (n, values per row) array when every row has the same byte
    length (one vectorised pass instead of one per map), else None."""
    lengths = np.diff(offsets)
    if len(lengths) == 0 or (lengths != lengths[0]).any() or lengths[0] == 0 or lengths[0] % dtype.itemsize:
        return None
    return data[offsets[0]:offsets[-1]].view(dtype).reshape(len(lengths), -1)


_EXPONENT_BITS = {2: (np.dtype("<u2"), 0x7C00), 4: (np.dtype("<u4"), 0x7F800000)}


def _finite(values: np.ndarray, axis: int | None = None) -> np.ndarray | bool:
    """Whether float16/float32 values are all finite, from their exponent bits (much faster
    than ``np.isfinite`` on float16, which numpy computes in software)."""
    bits, exponent = _EXPONENT_BITS[values.dtype.itemsize]
    return ((values.view(bits) & exponent) != exponent).all(axis=axis)


def _open(path: str | Path) -> pq.ParquetFile:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    source: Any = path
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # a name that is not UTF-8: pyarrow cannot take it, Python's open can
        source = open(path, "rb")  # noqa: SIM115 (kept open by the ParquetFile, as a path would be)
    try:
        return pq.ParquetFile(source, page_checksum_verification=True)
    except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError) as error:
        if source is not path:
            source.close()
        raise PredictionsError(path, {"not a Parquet file": [str(error).splitlines()[0] if str(error) else type(error).__name__]}) from None


def _read_header(path: Path, parquet: pq.ParquetFile) -> dict[str, Any]:
    with _reading(path):
        metadata = parquet.schema_arrow.metadata or {}
    raw = metadata.get(METADATA_KEY.encode())
    if raw is None:
        raise PredictionsError(path, {"missing metadata": [f"no '{METADATA_KEY}' key in the Parquet key-value metadata"]})
    checksum = metadata.get(CHECKSUM_KEY.encode())
    if checksum is not None and hashlib.sha256(raw).hexdigest().encode() != checksum:
        raise PredictionsError(path, {"corrupt file": [f"its '{METADATA_KEY}' metadata does not match its sha256 (the file is damaged)"]})
    try:
        header = json.loads(raw)
    except ValueError as error:
        raise PredictionsError(path, {"bad metadata": [f"'{METADATA_KEY}' is not JSON: {error}"]}) from None
    if not isinstance(header, dict):
        raise PredictionsError(path, {"bad metadata": [f"'{METADATA_KEY}' must be a JSON object"]})
    version = header.get("format_version")
    if version not in READ_VERSIONS or isinstance(version, bool):
        upgrade = "; upgrade m2ad" if isinstance(version, int) and version > FORMAT_VERSION else ""
        raise PredictionsError(path, {"unsupported format_version": [
            f"{version!r} (this m2ad reads versions {', '.join(map(str, READ_VERSIONS))}{upgrade})"]})
    if header.get("map_dtype") not in MAP_DTYPES:
        raise PredictionsError(path, {"wrong dtypes": [f"map_dtype {header.get('map_dtype')!r}; expected one of {MAP_DTYPES}"]})
    if version == 1 and "map_kind" in header:
        raise PredictionsError(path, {"bad metadata": ["a version-1 file has no map_kind (version 2 introduced it)"]})
    header = {**header, "map_kind": header.get("map_kind", "pixel")}
    if header["map_kind"] not in MAP_KINDS:
        raise PredictionsError(path, {"bad metadata": [f"map_kind {header['map_kind']!r}; expected one of {MAP_KINDS}"]})
    return header


def _check_columns(path: Path, parquet: pq.ParquetFile) -> None:
    schema = parquet.schema_arrow
    accepted = {
        "sample_id": (pa.string(), pa.large_string()),
        "score": (pa.float64(),),
        "map": (pa.binary(), pa.large_binary()),
        "map_height": (pa.int32(),),
        "map_width": (pa.int32(),),
    }
    wrong = []
    for name, types in accepted.items():
        index = schema.get_field_index(name)
        if index < 0:
            wrong.append(f"column {name!r} is missing")
        elif schema.field(index).type not in types:
            wrong.append(f"column {name!r} is {schema.field(index).type}, expected {types[0]}")
    if wrong:
        raise PredictionsError(path, {"wrong column types": wrong})


class PredictionsFile:
    """A predictions file opened for reading: its header, ids and scores, and maps on demand.

    Opening checks the metadata and the column types (``PredictionsError`` otherwise); it does
    not check the contents against a dataset: that is ``validate``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._parquet = _open(self.path)
        self.header = _read_header(self.path, self._parquet)
        with _reading(self.path):
            _check_columns(self.path, self._parquet)
        self.map_dtype: str = self.header["map_dtype"]
        self.map_kind: str = self.header["map_kind"]
        self._dtype = _check_map_dtype(self.map_dtype)
        self._index: dict[str, int] | None = None

    @property
    def num_rows(self) -> int:
        """Number of rows (images) in the file."""
        return self._parquet.metadata.num_rows

    @property
    def num_row_groups(self) -> int:
        """Number of Parquet row groups; each can be read on its own."""
        return self._parquet.num_row_groups

    def info(self) -> PredictionsInfo:
        """The header and shape of the file (reads the ``map`` validity, not the map bytes)."""
        with _reading(self.path):
            maps_present = self._parquet.read(columns=["map_height"]).column(0).null_count < self.num_rows
        provenance = {key: value for key, value in self.header.items() if key not in ("format_version", "map_dtype", "map_kind")}
        return PredictionsInfo(self.path, self.header["format_version"], self.map_dtype, self.num_rows,
                               bool(self.num_rows and maps_present), provenance, self.map_kind)

    def ids_and_scores(self) -> tuple[list[str], np.ndarray]:
        """All sample ids and scores in file order (no map bytes are read)."""
        with _reading(self.path):
            table = self._parquet.read(columns=["sample_id", "score"])
            return table.column("sample_id").to_pylist(), table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)

    def row_group_row_counts(self) -> list[int]:
        """Rows per row group, in order."""
        return [self._parquet.metadata.row_group(index).num_rows for index in range(self.num_row_groups)]

    def _decode(self, table: pa.Table | pa.RecordBatch) -> PredictionBatch:
        ids = table.column("sample_id").to_pylist()
        scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        validity, offsets, data = _map_buffers(table.column("map"))
        if not validity.any():
            return PredictionBatch(ids, scores, None)
        heights = table.column("map_height").to_numpy(zero_copy_only=False)
        widths = table.column("map_width").to_numpy(zero_copy_only=False)
        expected_bytes = np.nan_to_num(heights.astype(np.float64) * widths * self._dtype.itemsize, nan=-1)
        bad = ~validity | (np.diff(offsets) != expected_bytes)
        if bad.any():
            raise PredictionsError(self.path, {"wrong map shapes": [f"{ids[int(np.flatnonzero(bad)[0])]}: run validate() for details"]})
        block = _rows_as_block(offsets, data, self._dtype)
        if block is not None and (heights == heights[0]).all() and (widths == widths[0]).all():
            maps = list(block.astype(np.float32).reshape(len(ids), int(heights[0]), int(widths[0])))
        else:
            maps = [data[start:end].view(self._dtype).reshape(int(height), int(width)).astype(np.float32)
                    for start, end, height, width in zip(offsets[:-1], offsets[1:], heights, widths)]
        if self.map_kind == "point":
            maps = [values.reshape(-1) for values in maps]
        return PredictionBatch(ids, scores, maps)

    def read_row_group(self, index: int, *, with_maps: bool = True) -> PredictionBatch:
        """One row group, decoded (maps as float32 arrays)."""
        columns = list(SCHEMA.names) if with_maps else ["sample_id", "score"]
        with _reading(self.path):
            table = self._parquet.read_row_group(index, columns=columns)
        if not with_maps:
            return PredictionBatch(table.column("sample_id").to_pylist(),
                                   table.column("score").to_numpy(zero_copy_only=False).astype(np.float64), None)
        return self._decode(table)

    def iter_batches(self, *, batch_size: int = 64, with_maps: bool = True,
                     row_groups: Sequence[int] | None = None) -> Iterator[PredictionBatch]:
        """Stream the file (or only the given row groups) in order, ``batch_size`` rows at a
        time, maps decoded to float32 arrays."""
        columns = list(SCHEMA.names) if with_maps else ["sample_id", "score"]
        for record_batch in self._record_batches(batch_size, columns, row_groups):
            if with_maps:
                yield self._decode(record_batch)
            else:
                yield PredictionBatch(record_batch.column("sample_id").to_pylist(),
                                      record_batch.column("score").to_numpy(zero_copy_only=False).astype(np.float64), None)

    def _record_batches(self, batch_size: int, columns: list[str], row_groups: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
        """pyarrow's batches of the file, with read failures as one-line ``PredictionsError``s."""
        with _reading(self.path):
            yield from self._parquet.iter_batches(batch_size=batch_size, columns=columns, row_groups=row_groups)

    def lookup(self, sample_ids: Iterable[str]) -> PredictionBatch:
        """The rows of the given ids, in the order asked (reads only the row groups involved)."""
        if self._index is None:
            ids, _ = self.ids_and_scores()
            self._index = {sample_id: row for row, sample_id in enumerate(ids)}
        wanted = list(sample_ids)
        missing = [sample_id for sample_id in wanted if sample_id not in self._index]
        if missing:
            raise KeyError(f"{self.path}: no predictions for {', '.join(missing[:MAX_LISTED])}"
                           + (f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""))
        rows = [self._index[sample_id] for sample_id in wanted]
        starts = np.cumsum([0, *self.row_group_row_counts()])
        groups = sorted({int(np.searchsorted(starts, row, side="right") - 1) for row in rows})
        found: dict[str, tuple[float, np.ndarray | None]] = {}
        wanted_set = set(wanted)
        for group in groups:
            batch = self.read_row_group(group)
            for position, sample_id in enumerate(batch.sample_ids):
                if sample_id in wanted_set:
                    found[sample_id] = (float(batch.scores[position]), None if batch.maps is None else batch.maps[position])
        scores = np.array([found[sample_id][0] for sample_id in wanted], dtype=np.float64)
        maps = [found[sample_id][1] for sample_id in wanted]
        return PredictionBatch(wanted, scores, None if any(item is None for item in maps) else maps)


def read(path: str | Path) -> PredictionsFile:
    """Open a predictions file for reading (see ``PredictionsFile``)."""
    return PredictionsFile(path)


def size_cap(expected: Mapping[str, tuple[int, int] | None], optional_rows: int = 0, map_dtype: str = "float32") -> int:
    """The largest file size ``validate`` accepts, in bytes: ``SIZE_FACTOR`` x (the maps of the
    expected rows, plus ``optional_rows`` maps of the largest expected size, in ``map_dtype``,
    plus 256 bytes per row) + ``SIZE_SLACK_BYTES``."""
    itemsize = np.dtype(map_dtype).itemsize
    sizes = [height * width * itemsize for height, width in (shape for shape in expected.values() if shape)]
    map_bytes = sum(sizes) + optional_rows * max(sizes, default=0)
    return int(SIZE_FACTOR * (map_bytes + 256 * (len(expected) + optional_rows)) + SIZE_SLACK_BYTES)


class _Offenders:
    """First offenders of each kind of problem, with a total count per kind."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = {}
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, item: str) -> None:
        self.counts[kind] += 1
        listed = self.items.setdefault(kind, [])
        if len(listed) < MAX_LISTED:
            listed.append(item)


def validate(path: str | Path, expected: Mapping[str, tuple[int, int] | None], *, optional: Collection[str] = (),
             require_maps: bool = False, max_bytes: int | None = None, map_kind: str | None = None) -> PredictionsInfo:
    """Check a predictions file against the samples it should cover; raise ``PredictionsError``.

    ``expected`` maps every sample id that must be present to the (H, W) its map must have
    (``None``: any shape; for a point file (1, N), N the sample's point count).  ``map_kind``:
    the kind of maps the evaluation needs (``None``: either); a file of the other kind is
    refused (``wrong map kind``).  Ids in ``optional`` may be present or absent (their maps are checked
    against nothing but well-formedness); any other id is *unknown*.  The file must carry maps
    for all rows or for none, and for all when ``require_maps``.  Files larger than
    ``max_bytes`` (default: ``size_cap``: float32 maps of the expected and optional rows x 1.5
    + slack) are refused before reading.  Every problem kind is reported at once, with its first offenders.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    optional_set = set(optional) - set(expected)
    cap = size_cap(expected, len(optional_set)) if max_bytes is None else max_bytes
    size = path.stat().st_size
    if size > cap:
        raise PredictionsError(path, {"oversized file": [
            f"{size:,} bytes, more than the {cap:,} allowed for {len(expected):,} expected maps"]})
    handle = PredictionsFile(path)
    if map_kind is not None and handle.map_kind != _check_map_kind(map_kind) and handle.info().has_maps:
        what = "per-point scores of point clouds" if map_kind == "point" else "2-D anomaly maps"
        raise PredictionsError(path, {"wrong map kind": [
            f"the file holds {handle.map_kind} maps, this evaluation scores {map_kind} maps ({what}); write it with map_kind={map_kind!r}"]})
    points = handle.map_kind == "point"
    itemsize = handle._dtype.itemsize
    offenders = _Offenders()
    seen: set[str] = set()
    with_map = without_map = rows_read = 0
    for batch in handle._record_batches(256, list(SCHEMA.names)):
        rows_read += batch.num_rows
        ids = batch.column("sample_id").to_pylist()
        scores = batch.column("score").to_pylist()
        validity, offsets, data = _map_buffers(batch.column("map"))
        heights = batch.column("map_height").to_pylist()
        widths = batch.column("map_width").to_pylist()
        block = _rows_as_block(offsets, data, handle._dtype)
        finite_rows = _finite(block, axis=1) if block is not None else None
        for row, (sample_id, score, height, width) in enumerate(zip(ids, scores, heights, widths)):
            if sample_id is None:
                offenders.add("null ids", "(a row with no sample_id)")
                continue
            if sample_id in seen:
                offenders.add("duplicate ids", sample_id)
                continue
            seen.add(sample_id)
            if sample_id not in expected and sample_id not in optional_set:
                offenders.add("unknown ids", sample_id)
                continue
            if score is None or not math.isfinite(score):
                offenders.add("NaN or inf scores", f"{sample_id} ({score})")
            if not validity[row]:
                without_map += 1
                continue
            with_map += 1
            size = int(offsets[row + 1] - offsets[row])
            if height is None or width is None or height <= 0 or width <= 0 or size != height * width * itemsize:
                offenders.add("wrong map shapes", f"{sample_id}: {size} bytes for {height} x {width} {handle.map_dtype}")
                continue
            wanted = expected.get(sample_id)
            if points and height != 1:
                offenders.add("wrong map shapes", f"{sample_id}: {height} x {width}; a point map is stored as 1 x N")
                continue
            if points and wanted is not None and width != wanted[1]:
                offenders.add("wrong point counts", f"{sample_id}: {width} scores for a cloud of {wanted[1]} points")
                continue
            if wanted is not None and (height, width) != tuple(wanted):
                offenders.add("wrong map shapes", f"{sample_id}: {height} x {width}, expected {wanted[0]} x {wanted[1]}")
                continue
            finite = finite_rows[row] if finite_rows is not None else _finite(data[offsets[row]:offsets[row + 1]].view(handle._dtype))
            if not finite:
                offenders.add("NaN or inf in maps", sample_id)
    if rows_read != handle.num_rows:  # a damaged page header can make pyarrow read fewer rows quietly
        raise PredictionsError(path, {"corrupt file": [f"{rows_read} rows read of the {handle.num_rows} its footer declares "
                                                       "(the file is damaged; write it again)"]})
    missing = [sample_id for sample_id in expected if sample_id not in seen]
    for sample_id in missing:
        offenders.add("missing ids", sample_id)
    if with_map and without_map:
        offenders.add("maps present for some rows only", f"{with_map} rows with a map, {without_map} without")
    elif require_maps and without_map:
        offenders.add("missing maps", f"{without_map} rows have no map; this evaluation needs anomaly maps")
    if offenders.items:
        raise PredictionsError(path, offenders.items, offenders.counts)
    provenance = {key: value for key, value in handle.header.items() if key not in ("format_version", "map_dtype", "map_kind")}
    return PredictionsInfo(path, handle.header["format_version"], handle.map_dtype, handle.num_rows, with_map > 0, provenance,
                           handle.map_kind)


__all__ = [
    "CHECKSUM_KEY", "FORMAT_VERSION", "MAP_DTYPES", "MAP_KINDS", "READ_VERSIONS", "METADATA_KEY", "SCHEMA", "WRITE_OPTIONS", "file_metadata", "PredictionBatch", "PredictionsError", "PredictionsFile",
    "PredictionsInfo", "PredictionsWriter", "read", "size_cap", "validate", "write",
]
