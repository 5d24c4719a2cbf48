"""Validate a release tree and write it as Arrow shards, a Parquet manifest and a dataset card.

``shard_tree(SRC, OUT)`` reads a release through a :class:`~m2ad.schema.TreeSource` (a folder,
or ``m2ad.archive.ZipSource`` for zips), checks it with the dataset's layout parser, then
decodes, resizes and encodes every image in a process pool and writes the layout described
in :mod:`m2ad.schema`.

Pixels
    At ``resolution="original"`` images and masks are stored as the released bytes, unchanged
    (each is still fully decoded once, to catch truncated files).  At a resolution N the longer
    side becomes N pixels: images are resized with PIL bilinear filtering, which is antialiased
    (its kernel widens with the scale factor) and is exactly what the official pipeline's
    ``torchvision.transforms.Resize`` does to a PIL image, so 256-px shards hold the pixels the
    official code feeds its models at 256.  Masks are stored under both rules of
    :data:`m2ad.schema.MASK_RULES`: ``mask`` (exact: a target pixel is set if any source pixel
    it covers is set; :func:`resize_mask_exact`) and ``mask_official`` (bilinear resize of the
    0/255 mask, then keep pixels equal to 255; :func:`resize_mask_official`).  A mask pixel is
    foreground when its luminance is non-zero.

Memory
    A resolution above the source images' size is refused unless ``allow_upsample``
    (``--allow-upsample``): upsampling adds no information and its memory grows with the square
    of the resolution.  Every resize is bounded before it starts: :func:`resize_peak_bytes`
    estimates the peak memory of decoding, resizing and encoding one image and its mask, and
    the first image's estimate times the worker count must fit in half of the memory
    available (:func:`available_memory`), else nothing is written; each later image is checked
    against its worker's share (a problem ``too-large`` or ``upsample`` otherwise).  Images are
    decoded from a stream of the source (a zip member is never held whole).

Units, resume, atomicity
    One ``datasets`` Arrow dataset per (category, split) is one unit.  A unit is built under
    ``OUT/.partial/`` and moved to ``OUT/<category>/<split>`` with ``os.replace`` once complete,
    together with its marker ``m2ad-unit.json``; so a folder under its final name is always
    complete, and a rerun after a crash or a kill reuses every finished unit whose inputs are
    unchanged.  The manifest, ``dataset.json`` and ``README.md`` are written last, atomically,
    and cover every finished unit in OUT: a dataset can be sharded category by category
    (``categories=[...]`` per call, same dataset and resolution; the last call's
    ``source_info`` describes the source).  Only one process may shard into an OUT at a time:
    its ``.partial`` folder is owned (``m2ad.ownership``), so a second one is refused while the
    first lives, and a killed run's ``.partial`` is taken over by the next.

Bad input
    Every problem is collected, never dropped silently.  Strict mode (the default) raises
    :class:`ShardError` with all of them: tree problems (file names, completeness, masks of
    normal specimens, meta JSON disagreements) before any pixel work; pixel problems
    (unreadable or truncated PNG, mask of the wrong size) after the other units are written,
    so that a rerun redoes only the failed ones.  With ``strict=False`` (``--skip-bad``) the
    whole specimen of each problem is quarantined, because the M2AD protocols score specimens
    and views as wholes and a specimen missing some images would bias them; stray files that
    belong to no specimen are ignored.  Both are listed in the report, ``dataset.json`` and
    the dataset card.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import m2ad
from m2ad import ownership
from m2ad.datasets import m2ad as m2ad_layout
from m2ad.files import write_json_atomic, write_text_atomic
from m2ad.schema import (
    CARD_FILE,
    FORMAT_VERSION,
    IMAGE_FEATURES,
    INFO_FILE,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    MASK_RULES,
    PIXEL_COLUMNS,
    SPLITS,
    DatasetInfo,
    ParsedRelease,
    Problem,
    ReleaseRecord,
    TreeSource,
    shard_dir_name,
)
from m2ad.text import printable

__all__ = [
    "FolderSource",
    "ResizeLimits",
    "ShardError",
    "ShardReport",
    "TreeSource",
    "available_memory",
    "parse_resolution",
    "resize_peak_bytes",
    "resize_mask_exact",
    "resize_mask_official",
    "shard_tree",
    "target_size",
]

UNIT_MARKER = "m2ad-unit.json"
JOB_FILE = ".m2ad-shard-job.json"
PARTIAL_DIR = ".partial"
IMAGE_RESIZE = "PIL bilinear, antialiased (as torchvision Resize on a PIL image), PNG"
MIN_RESOLUTION = 8
_PNG_LEVEL = 6
BYTES_PER_SOURCE_PIXEL = 40
"""Peak bytes per source pixel of one image and its mask: the decoded image and its RGB copy,
the boolean mask, its int64 integral image and the two cumulative sums behind it."""
BYTES_PER_TARGET_PIXEL = 64
"""Peak bytes per target pixel: the resized image and its PNG, the exact rule's four int64
box corners and their sum, the official rule's resized mask."""
MEMORY_FRACTION = 0.5
"""Share of the available memory that the resizing workers may plan to use together."""


class ShardError(Exception):
    """The release tree has problems (listed in ``problems``) and strict mode refuses it."""

    def __init__(self, problems: Sequence[Problem], hint: str = "") -> None:
        self.problems = list(problems)
        kinds = sorted({problem.kind for problem in self.problems})
        message = f"{len(self.problems)} problem(s) in the release tree ({', '.join(kinds)})"
        super().__init__(message + (f"; {hint}" if hint else ""))


@dataclass
class ShardReport:
    """What one ``shard_tree`` call did."""

    out: Path
    dataset: str
    resolution: int | str
    categories: list[str]
    samples: int
    written_units: list[str] = field(default_factory=list)
    reused_units: list[str] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


class FolderSource:
    """A release tree in a folder on disk (the :class:`~m2ad.schema.TreeSource` of a folder)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder")

    def list_files(self) -> list[str]:
        """Relative POSIX paths of every regular file under the root, sorted."""
        found = []
        for folder, _, names in os.walk(self.root):
            relative = Path(folder).relative_to(self.root)
            found.extend((relative / name).as_posix() for name in names if (Path(folder) / name).is_file())
        return sorted(found)

    def read_bytes(self, path: str) -> bytes:
        """The bytes of the file at relative POSIX ``path`` (which may not leave the root)."""
        return self._file(path).read_bytes()

    def open(self, path: str) -> BinaryIO:
        """The file at relative POSIX ``path``, opened for reading."""
        return open(self._file(path), "rb")

    def _file(self, path: str) -> Path:
        relative = PurePosixPath(path)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{path!r} is not a relative path inside {self.root}")
        return self.root / relative


# --------------------------------------------------------------------------------------------
# Sizes and the two mask rules
# --------------------------------------------------------------------------------------------


def parse_resolution(value: int | str) -> int | str:
    """``"original"`` or a pixel count (int, or digits such as ``"256"``) of at least 8."""
    if isinstance(value, str) and value.strip().lower() == "original":
        return "original"
    try:
        pixels = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be 'original' or a number of pixels such as 256, got {value!r}") from None
    if pixels < MIN_RESOLUTION:
        raise ValueError(f"resolution must be at least {MIN_RESOLUTION} pixels, got {pixels}")
    return pixels


def target_size(width: int, height: int, resolution: int | str) -> tuple[int, int]:
    """(width, height) after resizing so that the longer side is ``resolution`` pixels."""
    if resolution == "original":
        return width, height
    scale = int(resolution) / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_peak_bytes(source: tuple[int, int], target: tuple[int, int] | None) -> int:
    """Estimated peak memory, in bytes, of decoding one ``source`` = (width, height) image and
    its mask and resizing both to ``target`` (``None``: decoding only, at original resolution)."""
    source_pixels = source[0] * source[1]
    if target is None:
        return 4 * source_pixels
    return BYTES_PER_SOURCE_PIXEL * source_pixels + BYTES_PER_TARGET_PIXEL * target[0] * target[1]


def available_memory() -> int:
    """Bytes of memory this process can still use: ``MemAvailable`` of ``/proc/meminfo``, or
    less under a cgroup (container) limit; the free physical memory where neither exists."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


def _size_text(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


@dataclass(frozen=True)
class ResizeLimits:
    """What one image may cost a worker: the resolution, whether upsampling is allowed, and
    the worker's share of the memory (bytes, see :func:`resize_peak_bytes`)."""

    resolution: int | str
    allow_upsample: bool = False
    max_image_bytes: int | None = None

    def refusal(self, size: tuple[int, int]) -> tuple[str, str] | None:
        """``(problem kind, message)`` when an image of ``size`` = (width, height) must not be
        resized under these limits, else ``None``."""
        width, height = size
        if self.resolution != "original" and int(self.resolution) > max(width, height) and not self.allow_upsample:
            return "upsample", (
                f"resolution {self.resolution} px is larger than the image ({width}x{height}); upsampling adds no "
                "information and costs memory: choose at most its size, or pass --allow-upsample (allow_upsample=True)"
            )
        target = None if self.resolution == "original" else target_size(width, height, self.resolution)
        needed = resize_peak_bytes(size, target)
        if self.max_image_bytes is not None and needed > self.max_image_bytes:
            what = f"resizing {width}x{height} to {target[0]}x{target[1]}" if target else f"decoding {width}x{height}"
            return "too-large", (
                f"{what} needs about {_size_text(needed)} of memory, more than the {_size_text(self.max_image_bytes)} "
                "each worker may use; choose a smaller resolution or fewer workers"
            )
        return None


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


def _png(image: Image.Image) -> bytes:
    """PNG bytes of an image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=_PNG_LEVEL)
    return buffer.getvalue()


def _mask_png(mask: np.ndarray) -> bytes:
    """PNG (mode L, 0/255) of a boolean mask."""
    return _png(Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L"))


# --------------------------------------------------------------------------------------------
# Worker: one specimen's images -> rows (or problems)
# --------------------------------------------------------------------------------------------

_WORKER_SOURCE: TreeSource | None = None


def _init_worker(source: TreeSource) -> None:
    """Process-pool initialiser: keep the source in the worker, sent once instead of per task."""
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


class _Refused(Exception):
    """An image that the resize limits refuse (``kind`` is the problem kind)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _open_member(source: TreeSource, path: str) -> BinaryIO:
    """A stream of one file of the tree: the source's own stream where it has one (folders and
    zips, so that a member is never held whole), else its bytes."""
    opener = getattr(source, "open", None)
    return opener(path) if opener is not None else io.BytesIO(source.read_bytes(path))


def _decode(source: TreeSource, path: str, limits: ResizeLimits | None = None) -> Image.Image:
    """A fully decoded PIL image, checked against ``limits`` from its header before any pixel
    is decoded; raises on unreadable or truncated data, :class:`_Refused` over the limits."""
    with _open_member(source, path) as stream:
        image = Image.open(stream)
        refused = limits.refusal(image.size) if limits is not None else None
        if refused is not None:
            raise _Refused(*refused)
        image.load()
    return image


@dataclass
class _Pixels:
    """The stored pixels of one record.  ``None`` bytes at original resolution mean "the
    source file, unchanged": the writer reads it again rather than shipping it between
    processes (a 1024-px specimen is about 170 MB)."""

    width: int
    height: int
    image: bytes | None
    mask: bytes | None
    mask_official: bytes | None


@dataclass
class _SpecimenResult:
    pixels: list[_Pixels]  # one per record, in order, when there are no problems
    problems: list[Problem]


def _process_specimen(records: Sequence[ReleaseRecord], limits: ResizeLimits, source: TreeSource | None = None) -> _SpecimenResult:
    """Decode and check the images and masks of one specimen; resize and encode them unless
    the resolution is original."""
    source = source if source is not None else _WORKER_SOURCE
    resolution = limits.resolution
    pixels: list[_Pixels] = []
    problems: list[Problem] = []
    masks: dict[str, tuple[bytes | None, bytes | None, tuple[int, int]] | None] = {}  # path -> (exact, official, source size)
    for record in records:
        try:
            image = _decode(source, record.image_path, limits)
        except _Refused as refused:
            problems.append(Problem(refused.kind, record.image_path, str(refused), record.specimen_path))
            continue
        except Exception as error:  # PIL raises several types for broken files
            problems.append(Problem("unreadable-image", record.image_path, f"cannot decode the PNG ({error})", record.specimen_path))
            continue
        width, height = target_size(image.width, image.height, resolution)
        encoded = None
        if resolution != "original":
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            encoded = _png(rgb.resize((width, height), Image.Resampling.BILINEAR))
        exact = official = None
        if record.mask_path is not None:
            if record.mask_path not in masks:
                masks[record.mask_path] = _load_mask(source, record, limits, problems)
            loaded = masks[record.mask_path]
            if loaded is None:
                continue
            exact, official, mask_size = loaded
            if mask_size != (image.width, image.height):
                message = f"mask is {mask_size[0]}x{mask_size[1]} but {record.image_path} is {image.width}x{image.height}"
                problems.append(Problem("mask-size", record.mask_path, message, record.specimen_path))
                masks[record.mask_path] = None
                continue
        pixels.append(_Pixels(width, height, encoded, exact, official))
    return _SpecimenResult(pixels, problems)


def _load_mask(source: TreeSource, record: ReleaseRecord, limits: ResizeLimits, problems: list[Problem]) -> tuple[bytes | None, bytes | None, tuple[int, int]] | None:
    """(exact PNG, official PNG, source size) of a record's mask (PNGs ``None`` at original
    resolution), or ``None`` and a problem if it does not decode."""
    try:
        mask = _decode(source, record.mask_path, limits)
    except _Refused as refused:
        problems.append(Problem(refused.kind, record.mask_path, str(refused), record.specimen_path))
        return None
    except Exception as error:  # PIL raises several types for broken files
        problems.append(Problem("unreadable-mask", record.mask_path, f"cannot decode the PNG ({error})", record.specimen_path))
        return None
    if limits.resolution == "original":
        return None, None, mask.size
    foreground = np.asarray(mask.convert("L")) > 0
    size = target_size(mask.width, mask.height, limits.resolution)
    return _mask_png(resize_mask_exact(foreground, size)), _mask_png(resize_mask_official(foreground, size)), mask.size


def _row(record: ReleaseRecord, pixels: _Pixels, source: TreeSource) -> dict[str, Any]:
    """The Arrow row of a record: its fields and its pixels (the source bytes at original
    resolution, where both mask rules are the released mask)."""
    image, mask, official = pixels.image, pixels.mask, pixels.mask_official
    if image is None:
        image = source.read_bytes(record.image_path)
        if record.mask_path is not None:
            mask = official = source.read_bytes(record.mask_path)
    return {
        "sample_id": record.sample_id,
        "dataset": record.dataset,
        "category": record.category,
        "split": record.split,
        "specimen": record.specimen,
        "view": record.view,
        "illumination": record.illumination,
        "label": record.label,
        "object_label": record.object_label,
        "defect_types": list(record.defect_types),
        "detectable": record.detectable,
        "image": {"bytes": image, "path": None},
        "mask": None if mask is None else {"bytes": mask, "path": None},
        "mask_official": None if official is None else {"bytes": official, "path": None},
        "width": pixels.width,
        "height": pixels.height,
    }


# --------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------


@dataclass
class _Unit:
    category: str
    split: str
    specimens: list[list[ReleaseRecord]]  # records grouped by specimen, in release order

    @property
    def name(self) -> str:
        return shard_dir_name(self.category, self.split)

    @property
    def images(self) -> int:
        return sum(len(group) for group in self.specimens)

    def fingerprint(self, dataset: str, resolution: int | str) -> str:
        """Hash of everything a finished unit depends on (format, resolution, sample ids)."""
        digest = hashlib.sha256(json.dumps([FORMAT_VERSION, dataset, str(resolution)]).encode())
        for group in self.specimens:
            for record in group:
                digest.update(record.sample_id.encode() + b"\0")
        return digest.hexdigest()


def _units(records: Sequence[ReleaseRecord]) -> list[_Unit]:
    """Records grouped into (category, split) units and, inside, by specimen; release order."""
    units: dict[tuple[str, str], dict[str, list[ReleaseRecord]]] = {}
    for record in records:
        units.setdefault((record.category, record.split), {}).setdefault(record.specimen_path, []).append(record)
    categories = list(dict.fromkeys(record.category for record in records))
    ordered = sorted(units, key=lambda key: (categories.index(key[0]), SPLITS.index(key[1])))
    return [_Unit(category, split, list(units[(category, split)].values())) for category, split in ordered]


def _read_marker(unit_dir: Path) -> dict[str, Any] | None:
    """The completion marker of a finished unit, or ``None``."""
    try:
        return json.loads((unit_dir / UNIT_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _finished_units(out: Path) -> list[str]:
    """``<category>/<split>`` of every finished unit under ``out`` (those with a marker)."""
    return sorted(marker.parent.relative_to(out).as_posix() for split in SPLITS for marker in out.glob(f"*/{split}/{UNIT_MARKER}"))






class _Results:
    """Ordered results of specimen tasks, run in a process pool with a bounded backlog (so a
    slow writer never makes the workers pile up gigabytes of encoded images)."""

    def __init__(self, source: TreeSource, workers: int) -> None:
        self.source = source
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(source,)) if workers > 1 else None

    def map(self, groups: Iterable[list[ReleaseRecord]], limits: ResizeLimits) -> Iterator[_SpecimenResult]:
        if self.pool is None:
            for group in groups:
                yield _process_specimen(group, limits, self.source)
            return
        pending: deque[Future[_SpecimenResult]] = deque()
        for group in groups:
            pending.append(self.pool.submit(_process_specimen, group, limits))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


@contextmanager
def _datasets_quiet() -> Iterator[None]:
    """Silence the ``datasets`` progress bars (ours shows the progress) for a block."""
    were_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if were_enabled:
            datasets.enable_progress_bars()


def _build_unit(
    unit: _Unit,
    out: Path,
    partial: Path,
    results: _Results,
    limits: ResizeLimits,
    strict: bool,
    fingerprint: str,
    max_shard_size: str | int,
    advance: Callable[[int], None],
) -> list[Problem]:
    """Write one unit under ``partial`` and move it into place; returns the pixel problems
    found (in strict mode any problem leaves the unit unwritten)."""
    problems: list[Problem] = []

    def rows() -> Iterator[dict[str, Any]]:
        for group, result in zip(unit.specimens, results.map(unit.specimens, limits)):
            problems.extend(result.problems)
            advance(len(group))
            if not result.problems and not (strict and problems):
                yield from (_row(record, pixels, results.source) for record, pixels in zip(group, result.pixels))

    work = partial / unit.name.replace("/", "__")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stream = rows()
    first = next(stream, None)
    if first is None:  # every specimen of the unit is bad: nothing to write, nothing stale kept
        shutil.rmtree(work, ignore_errors=True)
        if not strict:
            shutil.rmtree(out / unit.name, ignore_errors=True)
        return problems

    def all_rows() -> Iterator[dict[str, Any]]:
        yield first
        yield from stream

    with _datasets_quiet():
        built = datasets.Dataset.from_generator(all_rows, features=IMAGE_FEATURES, cache_dir=str(work / "cache"), fingerprint=fingerprint)
        if strict and problems:
            del built
            shutil.rmtree(work, ignore_errors=True)
            return problems
        final_tmp = work / "unit"
        built.save_to_disk(str(final_tmp), max_shard_size=max_shard_size)
        del built
    skipped = [problem.to_dict() for problem in problems]
    write_json_atomic(final_tmp / UNIT_MARKER, {"fingerprint": fingerprint, "skipped": skipped})
    target = out / unit.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(final_tmp, target)
    shutil.rmtree(work, ignore_errors=True)
    return problems


# --------------------------------------------------------------------------------------------
# Manifest and dataset card
# --------------------------------------------------------------------------------------------


def _unit_manifest(out: Path, unit_name: str) -> pa.Table:
    """Manifest rows of one written unit, read back from its Arrow dataset (no pixel bytes)."""
    table = datasets.load_from_disk(str(out / unit_name)).data.table
    meta_columns = [name for name in table.column_names if name not in PIXEL_COLUMNS]
    manifest = table.select(meta_columns)
    manifest = manifest.append_column("has_mask", pc.is_valid(table.column("mask")))
    manifest = manifest.append_column("shard_dir", pa.array([unit_name] * table.num_rows, pa.string()))
    manifest = manifest.append_column("shard_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return manifest.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def _write_manifest(out: Path, unit_names: Sequence[str]) -> pa.Table:
    """Write ``manifest.parquet`` from the finished units and return it."""
    tables = [_unit_manifest(out, name) for name in unit_names]
    manifest = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
    temporary = out / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    pq.write_table(manifest, temporary)
    os.replace(temporary, out / MANIFEST_FILE)
    return manifest


def _dataset_card(info: DatasetInfo, manifest: pl.DataFrame, description: str) -> str:
    """The dataset card (``README.md``): source, version, license, resolution, mask rules,
    counts and anything skipped."""
    resolution = "original (released bytes, unchanged)" if info.resolution == "original" else f"{info.resolution} px on the longer side ({info.image_resize})"
    lines = [
        "---",
        f"license: {info.license.split(' ', 1)[0].lower() if info.license else 'unknown'}",
        f"pretty_name: {info.dataset} ({info.resolution})",
        "tags: [anomaly-detection, m2ad-shards]",
        "---",
        "",
        f"# {info.dataset} — m2ad shards",
        "",
        description,
        "",
        "| | |",
        "|---|---|",
        f"| dataset | `{info.dataset}` |",
        f"| version | {info.version or 'not stated'} |",
        f"| license | {info.license or 'not stated'} |",
        f"| source | {printable(', '.join(f'{key}: {value}' for key, value in sorted(info.source.items()) if key != 'checksums') or 'not stated')} |",
        f"| resolution | {resolution} |",
        f"| samples | {manifest.height} |",
        f"| created | {info.created} by m2ad {info.code_version} |",
        "",
        "## Mask rules",
        "",
        "- `mask` (**exact**): a pixel is defective if any source pixel it covers is; no defect vanishes when downscaling.",
        "- `mask_official` (**official**): bilinear resize of the 0/255 mask, keep pixels equal to 255, as the official",
        "  M2AD evaluator does; tiny defects are eroded or erased. At original resolution both are the released mask bytes.",
        "",
        "## Counts",
        "",
        "| category | split | images | anomalous | specimens | detectable=False |",
        "|---|---|---:|---:|---:|---:|",
    ]
    if manifest.height:
        counts = (
            manifest.group_by(["category", "split"], maintain_order=True)
            .agg(
                pl.len().alias("images"),
                pl.col("label").sum().alias("anomalous"),
                pl.col("specimen").n_unique().alias("specimens"),
                (pl.col("detectable") == False).sum().alias("undetectable"),  # noqa: E712 (polars expression)
            )
        )
        for row in counts.iter_rows(named=True):
            lines.append(f"| {row['category']} | {row['split']} | {row['images']} | {row['anomalous']} | {row['specimens']} | {row['undetectable']} |")
    checksums = info.source.get("checksums")
    if checksums:
        lines += ["", "## Source checksums", "", f"Verified: {info.source.get('verified', 'not stated')}", "", "| file | checksum |", "|---|---|"]
        lines += [f"| {printable(name)} | `{printable(value)}` |" for name, value in sorted(dict(checksums).items())]
    lines += ["", "## Skipped input", ""]
    if info.skipped:
        lines.append(f"{len(info.skipped)} problem(s); their specimens were quarantined (`--skip-bad`):")
        lines.append("")
        lines += [f"- `{printable(item['path'])}`: {printable(item['message'])} [{item['kind']}]" for item in info.skipped]
    else:
        lines.append("None: every file of the source is in these shards.")
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "import datasets, polars",
        f"train = datasets.load_from_disk('<this folder>/{info.categories[0] if info.categories else '<category>'}/train')",
        "manifest = polars.read_parquet('<this folder>/manifest.parquet')",
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _check_first_image(tree: TreeSource, record: ReleaseRecord, limits: ResizeLimits, workers: int) -> None:
    """Refuse, before any work, a resolution that the first image shows to be an upsampling
    (without ``allow_upsample``) or to need more memory than the workers may use together."""
    try:
        with _open_member(tree, record.image_path) as stream:
            size = Image.open(stream).size
    except Exception:  # PIL raises several types for broken files; the worker reports it
        return
    refused = limits.refusal(size)
    if refused is not None:
        share = f" ({workers} worker(s) share {_size_text(int(MEMORY_FRACTION * available_memory()))})" if refused[0] == "too-large" else ""
        raise ValueError(f"{record.image_path}: {refused[1]}{share}")


def _prepare_out(out: Path, job: dict[str, Any]) -> None:
    """Create OUT, or accept an earlier run of the same job there; refuse anything else."""
    job_path = out / JOB_FILE
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not job_path.is_file():
            raise FileExistsError(f"{out} is not empty and holds no earlier `m2ad shard` run; choose an empty or new folder")
        earlier = json.loads(job_path.read_text())
        if earlier != job:
            differences = ", ".join(f"{key} {earlier.get(key)!r} (now {value!r})" for key, value in job.items() if earlier.get(key) != value)
            raise FileExistsError(f"{out} holds shards of another job: {differences}; choose another folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job_path, job)


def shard_tree(
    source: str | Path | TreeSource,
    out: str | Path,
    *,
    resolution: int | str = "original",
    dataset: str | None = None,
    categories: Sequence[str] | None = None,
    strict: bool = True,
    workers: int | None = None,
    progress: bool = True,
    max_shard_size: str | int = "256MB",
    source_info: dict[str, Any] | None = None,
    allow_upsample: bool = False,
) -> ShardReport:
    """Validate an M2AD release tree and write it to ``out`` as m2ad shards (see module doc).

    ``source`` is a folder or any :class:`~m2ad.schema.TreeSource`; ``dataset`` defaults to
    ``m2ad``, or ``m2ad-synth`` for a synthetic tree; ``categories`` limits the work to those
    classes; ``strict=False`` quarantines bad specimens instead of raising
    :class:`ShardError`; ``source_info`` (url, revision, checksums, verified, ...) goes to
    ``dataset.json`` and the card; ``allow_upsample`` accepts a resolution above the source
    images' size (still within the memory bound).  Rerunning on the same ``out`` resumes.
    """
    started = time.perf_counter()
    resolution = parse_resolution(resolution)
    if isinstance(categories, str):
        raise ValueError("categories must be a sequence of names, not one string")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    tree: TreeSource = FolderSource(source) if isinstance(source, (str, Path)) else source
    out = Path(out).absolute()
    if isinstance(tree, FolderSource) and out.is_relative_to(tree.root):
        raise ValueError(f"the output folder {out} is inside the source tree {tree.root}; choose a folder outside it")
    name = dataset or m2ad_layout.detect_dataset_name(tree)
    parsed: ParsedRelease = m2ad_layout.parse(tree, dataset_name=name, categories=categories)
    if strict and parsed.problems:
        raise ShardError(parsed.problems, "fix them, or pass --skip-bad (strict=False) to quarantine the specimens concerned")
    skipped = list(parsed.problems)
    if not parsed.records:
        raise ShardError(skipped or [Problem("empty", ".", "the tree holds no images")], "nothing left to shard")

    units = _units(parsed.records)
    worker_count = min(workers or os.cpu_count() or 1, max(len(u.specimens) for u in units))
    limits = ResizeLimits(resolution, allow_upsample, int(MEMORY_FRACTION * available_memory()) // worker_count)
    _check_first_image(tree, parsed.records[0], limits, worker_count)
    _prepare_out(out, {"dataset": name, "resolution": resolution, "format_version": FORMAT_VERSION})
    partial = ownership.claim_temp_dir(out / PARTIAL_DIR, out)
    report = ShardReport(out, name, resolution, list(dict.fromkeys(r.category for r in parsed.records)), 0)
    pixel_problems: list[Problem] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"), TimeElapsedColumn(), TimeRemainingColumn())
    results = _Results(tree, worker_count)
    try:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("shard", total=sum(unit.images for unit in units))
            for unit in units:
                fingerprint = unit.fingerprint(name, resolution)
                marker = _read_marker(out / unit.name)
                if marker is not None and marker.get("fingerprint") == fingerprint:
                    reused = [Problem(**item) for item in marker.get("skipped", [])]
                    (pixel_problems if strict else skipped).extend(reused)
                    report.reused_units.append(unit.name)
                    bar.advance(task, unit.images)
                    continue
                bar.update(task, description=f"shard {unit.name}")
                found = _build_unit(unit, out, partial, results, limits, strict, fingerprint, max_shard_size, lambda n: bar.advance(task, n))
                if strict and found:
                    pixel_problems.extend(found)
                    continue
                skipped.extend(found)
                if (out / unit.name).is_dir():
                    report.written_units.append(unit.name)
    finally:
        results.close()
        ownership.remove_temp_dir(partial)
    if pixel_problems:
        raise ShardError(pixel_problems, "the other units are written and will be reused; fix the files, or pass --skip-bad")

    # units of other categories, finished by earlier runs of this job (category by category)
    categories_now = {unit.category for unit in units}
    earlier = [name for name in _finished_units(out) if name.split("/")[0] not in categories_now]
    for name in earlier:
        skipped.extend(Problem(**item) for item in (_read_marker(out / name) or {}).get("skipped", []))
    kept = sorted(report.written_units + report.reused_units + earlier, key=lambda name: (name.split("/")[0], SPLITS.index(name.split("/")[1])))
    manifest = pl.from_arrow(_write_manifest(out, kept))
    info = DatasetInfo(
        dataset=name,
        resolution=resolution,
        categories=list(manifest["category"].unique(maintain_order=True)),
        source=dict(source_info or {"path": str(source) if isinstance(source, (str, Path)) else repr(source)}),
        version=str((source_info or {}).get("version") or parsed.version),
        license=str((source_info or {}).get("license") or parsed.license),
        mask_rules=MASK_RULES,
        code_version=m2ad.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        image_resize="" if resolution == "original" else IMAGE_RESIZE,
        skipped=[problem.to_dict() for problem in skipped],
    )
    write_text_atomic(out / CARD_FILE, _dataset_card(info, manifest, parsed.description))
    write_text_atomic(out / INFO_FILE, info.to_json() + "\n")
    report.categories = info.categories
    report.samples = manifest.height
    report.skipped = skipped
    report.seconds = time.perf_counter() - started
    return report
