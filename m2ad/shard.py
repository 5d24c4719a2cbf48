"""Validate a release tree and write it as Arrow shards, a Parquet manifest and a dataset card.

``shard_tree(SRC, OUT, dataset=NAME)`` reads a release through a
:class:`~m2ad.schema.TreeSource` (a folder, or ``m2ad.archive.ZipSource`` for zips), checks
it with the dataset's layout parser (its spec's ``layout``, from the registry; without a
name, the registry detects the layout from the files and refuses an ambiguous tree), then
decodes, resizes and encodes every sample's modalities in a process pool and writes the
layout described in :mod:`m2ad.schema`.

Pixels
    Each modality (``m2ad.modalities``) stores its own columns.  At ``resolution="original"``
    images and masks are stored as the released bytes, unchanged (each is still fully decoded
    once, to catch truncated files).  At a resolution N the spec's geometry says the target:
    the longer side becomes N pixels (``longer-side``, M2AD) or the image becomes N x N
    (``square``, as the MVTec-AD, VisA and Real-IAD literature resizes).  Images are resized
    with PIL bilinear filtering, antialiased, exactly what ``torchvision.transforms.Resize``
    does to a PIL image; masks are stored under both rules of :data:`m2ad.schema.MASK_RULES`
    as 1-bit PNGs (``m2ad.modalities.mask``).  A mask pixel is foreground when its stored
    value is non-zero.

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
    normal specimens, split-file disagreements, empty category folders, symbolic links out of
    the tree) before any pixel work; pixel problems (unreadable or truncated files, a mask of
    the wrong size or mode, an image whose size differs from its specimen's others) after the
    other units are written, so that a rerun redoes only the failed ones.  With
    ``strict=False`` (``--skip-bad``) the whole specimen of each problem is quarantined,
    because the multi-view protocols score specimens and views as wholes and a specimen
    missing some images would bias them; stray files that belong to no specimen are ignored.
    Both are listed in the report, ``dataset.json`` and the dataset card.
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
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
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
from m2ad import modalities, ownership
from m2ad.card import dataset_card
from m2ad.datasets import registry
from m2ad.datasets.spec import DatasetSpec
from m2ad.datasets.synthetic import card_facts, read_marker
from m2ad.files import write_json_atomic, write_text_atomic
from m2ad.modalities.base import (
    Encoded,
    Refused,
    ResizeLimits,
    open_checked,
    resize_peak_bytes,
    size_text,
    target_size,
)
from m2ad.modalities.image import RESIZE as IMAGE_RESIZE
from m2ad.modalities.mask import resize_mask_exact, resize_mask_official
from m2ad.modalities.points import PROBLEM_KINDS as POINTS_PROBLEM_KINDS
from m2ad.processes import process_pool
from m2ad.schema import (
    CARD_FILE,
    FORMAT_VERSION,
    INFO_FILE,
    MANIFEST_FILE,
    MASK_RULES,
    SPLITS,
    DatasetInfo,
    ParsedRelease,
    Problem,
    ReleaseRecord,
    TreeSource,
    shard_dir_name,
)

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
MIN_RESOLUTION = 8
MEMORY_FRACTION = 0.5
"""Share of the available memory that the resizing workers may plan to use together."""
PIXEL_KINDS = ("unreadable-image", "unreadable-mask", "mask-size", "mask-mode", "image-size", "upsample", "too-large")
"""Problem kinds found while decoding (every image dataset), beside those of its layout parser."""
POINT_KINDS = ("unreadable-points", *POINTS_PROBLEM_KINDS)
"""Problem kinds found while decoding point clouds (``m2ad.modalities.points``)."""
SOURCE_KINDS = ("symlink-outside",)
"""Problem kinds a source reports about itself (:meth:`FolderSource.problems`)."""


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
    """A release tree in a folder on disk (the :class:`~m2ad.schema.TreeSource` of a folder).

    A symbolic link is listed (and read through) only when it points inside the tree; one
    that points outside is never followed: it is reported by :meth:`problems` as
    ``symlink-outside`` and reading it raises.  Folders with no file at any depth are listed
    by :meth:`empty_folders`, so that parsers can report empty category folders.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder")
        self._real_root = self.root.resolve()
        self._walked: tuple[list[str], list[str], list[Problem]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_walked": None}  # workers only read files: no listing to ship

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self._real_root)

    def _walk(self) -> tuple[list[str], list[str], list[Problem]]:
        if self._walked is None:
            found: list[str] = []
            folders: list[str] = []
            refused: list[Problem] = []
            for folder, dirnames, names in os.walk(self.root):  # links to folders are listed, not entered
                here = Path(folder)
                relative = here.relative_to(self.root)
                if relative != Path("."):
                    folders.append(relative.as_posix())
                for name in sorted(dirnames + names):
                    path = here / name
                    if path.is_symlink() and not self._inside(path):
                        refused.append(Problem("symlink-outside", (relative / name).as_posix(),
                                               f"a symbolic link to {os.readlink(path)} outside the tree; it is never followed"))
                    elif name in names and path.is_file():
                        found.append((relative / name).as_posix())
            with_files = {"/".join(path.split("/")[:depth]) for path in found for depth in range(1, path.count("/") + 1)}
            self._walked = (sorted(found), sorted(set(folders) - with_files), refused)
        return self._walked

    def list_files(self) -> list[str]:
        """Relative POSIX paths of every regular file under the root (links into the tree
        included), sorted."""
        return list(self._walk()[0])

    def empty_folders(self) -> list[str]:
        """Relative POSIX paths of the folders that hold no file at any depth."""
        return list(self._walk()[1])

    def problems(self) -> list[Problem]:
        """What the folder itself refuses: symbolic links that point out of the tree."""
        return list(self._walk()[2])

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
        full = self.root / relative
        if not self._inside(full):
            raise ValueError(f"{path!r} is a symbolic link out of {self.root}; it is never followed")
        return full


# --------------------------------------------------------------------------------------------
# Sizes
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


# --------------------------------------------------------------------------------------------
# Worker: one specimen's records -> stored columns (or problems)
# --------------------------------------------------------------------------------------------

_WORKER_SOURCE: TreeSource | None = None


def _init_worker(source: TreeSource) -> None:
    """Process-pool initialiser: keep the source in the worker, sent once instead of per task."""
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _open_member(source: TreeSource, path: str) -> BinaryIO:
    """A stream of one file of the tree: the source's own stream where it has one (folders and
    zips, so that a member is never held whole), else its bytes."""
    opener = getattr(source, "open", None)
    return opener(path) if opener is not None else io.BytesIO(source.read_bytes(path))


def _decode(source: TreeSource, path: str, limits: ResizeLimits | None = None) -> Image.Image:
    """A fully decoded PIL image of one file, checked against ``limits`` from its header
    before any pixel is decoded (see ``m2ad.modalities.base.open_checked``)."""
    with _open_member(source, path) as stream:
        return open_checked(stream, limits)


@dataclass(frozen=True)
class _Job:
    """What a worker needs besides the records: the limits, the modalities, the size rule."""

    limits: ResizeLimits
    modalities: tuple[str, ...]
    same_size_within_specimen: bool


@dataclass
class _Stored:
    """The stored columns of one record (``None`` bytes: the source file, unchanged, which the
    writer reads again rather than shipping it between processes) and its stored size."""

    columns: dict[str, bytes | None]
    width: int
    height: int


@dataclass
class _SpecimenResult:
    stored: list[_Stored]  # one per record, in order, when there are no problems
    problems: list[Problem]


def _unreadable(modality: str) -> str:
    return "unreadable-image" if modality == "image" else f"unreadable-{modality}"


def _process_specimen(records: Sequence[ReleaseRecord], job: _Job, source: TreeSource | None = None) -> _SpecimenResult:
    """Decode and check every modality of one specimen's records; resize and encode them
    unless the resolution is original."""
    source = source if source is not None else _WORKER_SOURCE
    stored: list[_Stored] = []
    problems: list[Problem] = []
    aligned: dict[tuple[str, str], Encoded | None] = {}  # (modality, path) -> columns (None: refused); M2AD's masks serve 10 images
    first_size: tuple[int, int] | None = None
    primary_name = job.modalities[0]
    for record in records:
        primary_path = record.files[primary_name]
        try:
            with _open_member(source, primary_path) as stream:
                primary = modalities.get(primary_name).encode(stream, primary_path, job.limits, None)
        except Refused as refused:
            problems.append(Problem(refused.kind, primary_path, str(refused), record.specimen_path))
            continue
        except Exception as error:  # PIL raises several types for broken files
            problems.append(Problem(_unreadable(primary_name), primary_path, f"cannot decode the {primary_name} ({error})",
                                    record.specimen_path))
            continue
        first_size = first_size or primary.size
        if job.same_size_within_specimen and primary.size != first_size:
            message = f"image is {primary.size[0]}x{primary.size[1]} but the other images of its specimen are {first_size[0]}x{first_size[1]}"
            problems.append(Problem("image-size", primary_path, message, record.specimen_path))
            continue
        columns = dict(primary.columns)
        for name in job.modalities[1:]:
            modality = modalities.get(name)
            path = record.files.get(name)
            if path is None:
                columns.update({column: None for column in modality.features})
                continue
            if (name, path) not in aligned:
                result = _encode_aligned(source, modality, path, job.limits, primary, record)
                if isinstance(result, Problem):
                    problems.append(result)
                aligned[(name, path)] = None if isinstance(result, Problem) else result
            encoded = aligned[(name, path)]
            if encoded is None:
                break
            columns.update(encoded.columns)
        else:
            stored.append(_Stored(columns, *primary.stored))
    return _SpecimenResult(stored, problems)


def _encode_aligned(source: TreeSource, modality: modalities.Modality, path: str, limits: ResizeLimits, primary: Encoded,
                    record: ReleaseRecord) -> Encoded | Problem:
    """One aligned modality's columns for a record, or the problem with its file."""
    try:
        with _open_member(source, path) as stream:
            return modality.encode(stream, path, limits, primary)
    except Refused as refused:
        return Problem(refused.kind, path, str(refused), record.specimen_path)
    except Exception as error:  # PIL raises several types for broken files
        return Problem(_unreadable(modality.name), path, f"cannot decode the {modality.name} ({error})", record.specimen_path)


def _row(record: ReleaseRecord, stored: _Stored, source: TreeSource, spec: DatasetSpec) -> dict[str, Any]:
    """The Arrow row of a record: its fields, extra columns and stored columns (the source
    files' bytes where a column is ``None`` at original resolution)."""
    row: dict[str, Any] = {
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
    }
    row.update({name: record.extras.get(name) for name in spec.extra_columns})
    for name in spec.modalities:
        path = record.files.get(name)
        for column in modalities.get(name).features:
            data = stored.columns.get(column)
            if data is None and path is not None:
                data = source.read_bytes(path)
            row[column] = None if data is None else modalities.get(name).row_value(data)
    row.update(width=stored.width, height=stored.height)
    return row


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

    def fingerprint(self, dataset: str, resolution: int | str, variant: str) -> str:
        """Hash of everything a finished unit depends on (format, resolution, variant, sample ids)."""
        digest = hashlib.sha256(json.dumps([FORMAT_VERSION, dataset, str(resolution), variant]).encode())
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
        self.pool = process_pool(workers, initializer=_init_worker, initargs=(source,)) if workers > 1 else None

    def map(self, groups: Iterable[list[ReleaseRecord]], job: _Job) -> Iterator[_SpecimenResult]:
        if self.pool is None:
            for group in groups:
                yield _process_specimen(group, job, self.source)
            return
        pending: deque[Future[_SpecimenResult]] = deque()
        for group in groups:
            pending.append(self.pool.submit(_process_specimen, group, job))
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
    job: _Job,
    spec: DatasetSpec,
    strict: bool,
    fingerprint: str,
    max_shard_size: str | int,
    advance: Callable[[int], None],
) -> list[Problem]:
    """Write one unit under ``partial`` and move it into place; returns the pixel problems
    found (in strict mode any problem leaves the unit unwritten)."""
    problems: list[Problem] = []

    def rows() -> Iterator[dict[str, Any]]:
        for group, result in zip(unit.specimens, results.map(unit.specimens, job)):
            problems.extend(result.problems)
            advance(len(group))
            if not result.problems and not (strict and problems):
                yield from (_row(record, stored, results.source, spec) for record, stored in zip(group, result.stored))

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
        built = datasets.Dataset.from_generator(all_rows, features=spec.features(), cache_dir=str(work / "cache"),
                                                fingerprint=fingerprint, split=datasets.NamedSplit(unit.split))
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
# Manifest
# --------------------------------------------------------------------------------------------


def _unit_manifest(out: Path, unit_name: str, spec: DatasetSpec) -> pa.Table:
    """Manifest rows of one written unit, read back from its Arrow dataset (no pixel bytes)."""
    table = datasets.load_from_disk(str(out / unit_name)).data.table
    stored = set(modalities.stored_columns(spec.modalities))
    manifest = table.select([name for name in table.column_names if name not in stored])
    for name in spec.modalities:
        for column, values in modalities.get(name).manifest_values(table).items():
            manifest = manifest.append_column(column, values)
    manifest = manifest.append_column("shard_dir", pa.array([unit_name] * table.num_rows, pa.string()))
    manifest = manifest.append_column("shard_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    schema = spec.manifest_schema()
    return manifest.select(schema.names).cast(schema)


def _write_manifest(out: Path, unit_names: Sequence[str], spec: DatasetSpec) -> pa.Table:
    """Write ``manifest.parquet`` from the finished units and return it."""
    tables = [_unit_manifest(out, name, spec) for name in unit_names]
    manifest = pa.concat_tables(tables) if tables else spec.manifest_schema().empty_table()
    temporary = out / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    pq.write_table(manifest, temporary)
    os.replace(temporary, out / MANIFEST_FILE)
    return manifest


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _check_first_image(tree: TreeSource, record: ReleaseRecord, limits: ResizeLimits, workers: int) -> None:
    """Refuse, before any work, a resolution that the first image shows to be an upsampling
    (without ``allow_upsample``) or to need more memory than the workers may use together
    (nothing to check for samples without an image: point clouds are never resized)."""
    if "image" not in record.files:
        return
    try:
        with _open_member(tree, record.image_path) as stream:
            size = Image.open(stream).size
    except Exception:  # PIL raises several types for broken files; the worker reports it
        return
    refused = limits.refusal(size)
    if refused is not None:
        share = f" ({workers} worker(s) share {size_text(int(MEMORY_FRACTION * available_memory()))})" if refused[0] == "too-large" else ""
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


def choose_dataset(tree: TreeSource, dataset: str | None) -> tuple[DatasetSpec, str, dict[str, Any] | None]:
    """(spec, dataset name, synthetic marker) of a tree: the spec of ``dataset`` (the name in
    sample ids), or, without one, the dataset its synthetic marker names or the registry
    detects from its files (``m2ad.datasets.LayoutError`` when none or several fit)."""
    marker = read_marker(tree)
    if dataset is not None:
        try:
            return registry.get(dataset), dataset.lower(), marker
        except KeyError as error:
            raise ValueError(str(error.args[0])) from None
    if marker is not None:
        return registry.get(marker["dataset"]), str(marker["dataset"]), marker
    spec = registry.detect(tree.list_files())
    return spec, spec.name, None


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
    variant: str | None = None,
) -> ShardReport:
    """Validate a release tree and write it to ``out`` as m2ad shards (see module doc).

    ``source`` is a folder or any :class:`~m2ad.schema.TreeSource`; ``dataset`` names the
    registered dataset (``m2ad``, ``mvtec-ad``, ``visa``, ``real-iad``, ``folder``, or
    ``NAME-synth``), which is also the sample-id prefix; without it the layout is detected (a
    synthetic tree names its own).  ``categories`` limits the work to those classes;
    ``strict=False`` quarantines bad specimens instead of raising :class:`ShardError`;
    ``source_info`` (url, revision, checksums, verified, ...) goes to ``dataset.json`` and the
    card; ``allow_upsample`` accepts a resolution above the source images' size (still within
    the memory bound); ``variant`` picks a release variant (Real-IAD's resolution folder).
    A point-cloud dataset (primary modality ``points``) is always stored at ``original``.
    Rerunning on the same ``out`` resumes.
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
    spec, name, marker = choose_dataset(tree, dataset)
    if spec.modalities[0] == "points":
        resolution = "original"  # point clouds are stored as released: a resolution resizes images only
    chosen_variant = spec.check_variant(variant)
    parsed: ParsedRelease = spec.layout.parse(tree, dataset_name=name, categories=categories, variant=chosen_variant or None)
    parsed.problems[:0] = getattr(tree, "problems", list)()
    if strict and parsed.problems:
        raise ShardError(parsed.problems, "fix them, or pass --skip-bad (strict=False) to quarantine the specimens concerned")
    skipped = list(parsed.problems)
    if not parsed.records:
        raise ShardError(skipped or [Problem("empty", ".", "the tree holds no images")], "nothing left to shard")

    units = _units(parsed.records)
    worker_count = min(workers or os.cpu_count() or 1, max(len(u.specimens) for u in units))
    limits = ResizeLimits(resolution, allow_upsample, int(MEMORY_FRACTION * available_memory()) // worker_count, spec.geometry)
    job = _Job(limits, tuple(spec.modalities), spec.same_size_within_specimen)
    _check_first_image(tree, parsed.records[0], limits, worker_count)
    _prepare_out(out, {"dataset": name, "resolution": resolution, "variant": chosen_variant, "format_version": FORMAT_VERSION})
    partial = ownership.claim_temp_dir(out / PARTIAL_DIR, out)
    report = ShardReport(out, name, resolution, list(dict.fromkeys(r.category for r in parsed.records)), 0)
    pixel_problems: list[Problem] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"), TimeElapsedColumn(), TimeRemainingColumn())
    results = _Results(tree, worker_count)
    try:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("shard", total=sum(unit.images for unit in units))
            for unit in units:
                fingerprint = unit.fingerprint(name, resolution, chosen_variant)
                marker_of_unit = _read_marker(out / unit.name)
                if marker_of_unit is not None and marker_of_unit.get("fingerprint") == fingerprint:
                    reused = [Problem(**item) for item in marker_of_unit.get("skipped", [])]
                    (pixel_problems if strict else skipped).extend(reused)
                    report.reused_units.append(unit.name)
                    bar.advance(task, unit.images)
                    continue
                bar.update(task, description=f"shard {unit.name}")
                found = _build_unit(unit, out, partial, results, job, spec, strict, fingerprint, max_shard_size, lambda n: bar.advance(task, n))
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
    earlier = [unit for unit in _finished_units(out) if unit.split("/")[0] not in categories_now]
    for unit in earlier:
        skipped.extend(Problem(**item) for item in (_read_marker(out / unit) or {}).get("skipped", []))
    kept = sorted(report.written_units + report.reused_units + earlier, key=lambda unit: (unit.split("/")[0], SPLITS.index(unit.split("/")[1])))
    manifest = pl.from_arrow(_write_manifest(out, kept, spec))
    license, version, description = card_facts(marker, spec.display_name) if marker is not None else (spec.license, "", spec.description)
    present = list(manifest["category"].unique(maintain_order=True))
    info = DatasetInfo(
        dataset=name,
        resolution=resolution,
        categories=present,
        source=dict(source_info or {"path": str(source) if isinstance(source, (str, Path)) else repr(source)}),
        version=str((source_info or {}).get("version") or parsed.version or version),
        license=str((source_info or {}).get("license") or parsed.license or license),
        mask_rules=MASK_RULES,
        code_version=m2ad.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        image_resize="" if resolution == "original" else f"{IMAGE_RESIZE}; geometry {spec.geometry}",
        skipped=[problem.to_dict() for problem in skipped],
        variant=chosen_variant,
        **spec.info_fields(present),
    )
    write_text_atomic(out / CARD_FILE, dataset_card(info, spec, manifest, parsed.description or description, parsed.notes))
    write_text_atomic(out / INFO_FILE, info.to_json() + "\n")
    report.categories = info.categories
    report.samples = manifest.height
    report.skipped = skipped
    report.seconds = time.perf_counter() - started
    return report
