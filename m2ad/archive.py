"""Safe archive reading and extraction.

Datasets arrive as zips (M2AD, Real3D-AD) or tars (MVTec-AD's ``.tar.xz``).  Every member is
checked before anything is read or written:

- its name is a plain relative path: no absolute path, no drive letter, no ``..``, no NUL;
- it is a regular file or a folder: no device, FIFO or socket, no zip symlink entry, and tar
  links only when they point inside the target;
- the archive's total uncompressed size stays under ``max_ratio`` times the archive's size on
  disk (zip and tar-compression bombs), and zip members never yield more than they declare;
- a zip member is read as a stream (:meth:`ZipSource.open`) with a running size cap
  (``max_member_bytes``): reading past it raises, and no read ever allocates more than the
  member's declared size, so a member just under the ratio cap is never held whole.

:class:`ZipSource` exposes the members of several zips as one release tree (the ``TreeSource``
contract of :mod:`m2ad.shard`), reading them straight out of the zips so that no extracted
copy ever needs disk.  :func:`extract` unpacks a zip or tar into a folder that appears
atomically, for datasets whose archives cannot be read in place.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from m2ad import ownership

DEFAULT_MAX_RATIO = 200.0
"""Largest accepted ratio of total uncompressed size to archive size.  Real datasets stay far
below it (PNG zips are about 1:1, JSON about 1:30); a deflate bomb needs about 1000:1."""

DEFAULT_MAX_MEMBER_BYTES = 1 << 30
"""Largest zip member that :class:`ZipSource` reads (1 GiB).  Dataset members are images of a
few MB and meta JSON files of tens of MB; a larger one is refused as it is being read."""

_COPY_CHUNK = 1 << 20


class UnsafeArchiveError(ValueError):
    """The archive has a member that could escape the target, or it is a decompression bomb."""


def safe_member_path(name: str, archive: str | Path = "") -> PurePosixPath:
    """The relative POSIX path of an archive member ``name``; raises
    :class:`UnsafeArchiveError` when extracting it could write outside the target folder."""
    where = f"{archive}: " if archive else ""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"{where}member with an empty or NUL-containing name {name!r}")
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) >= 2 and normalised[1] == ":"):
        raise UnsafeArchiveError(f"{where}member {name!r} has an absolute path")
    parts = [part for part in normalised.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{where}member {name!r} contains '..' (path traversal)")
    if not parts:
        raise UnsafeArchiveError(f"{where}member {name!r} names no file")
    return PurePosixPath(*parts)


def _check_total(total: int, archive: Path, max_ratio: float) -> None:
    """Raise when ``total`` uncompressed bytes exceed ``max_ratio`` times the archive size."""
    limit = max_ratio * max(archive.stat().st_size, 1)
    if total > limit:
        raise UnsafeArchiveError(
            f"{archive}: uncompressed size {total:,} B is more than {max_ratio:g}x the archive size "
            f"({archive.stat().st_size:,} B); refusing a possible decompression bomb"
        )


def _zip_member_kind(info: zipfile.ZipInfo) -> str:
    """``"dir"``, ``"file"`` or the name of a forbidden kind, from a zip entry's Unix mode."""
    mode = info.external_attr >> 16
    file_type = stat.S_IFMT(mode)
    if info.is_dir() or file_type == stat.S_IFDIR:
        return "dir"
    if file_type in (0, stat.S_IFREG):
        return "file"
    if file_type == stat.S_IFLNK:
        return "symlink"
    return "special file"


def safe_zip_members(zip_file: zipfile.ZipFile, archive: Path, max_ratio: float) -> dict[str, zipfile.ZipInfo]:
    """Validate every member of an open zip and return its regular files by relative path."""
    files: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in zip_file.infolist():
        path = safe_member_path(info.filename, archive)
        kind = _zip_member_kind(info)
        if kind == "dir":
            continue
        if kind != "file":
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a {kind}; only regular files are allowed")
        key = path.as_posix()
        if key in files:
            raise UnsafeArchiveError(f"{archive}: member {key!r} appears twice")
        files[key] = info
        total += info.file_size
    _check_total(total, archive, max_ratio)
    return files


class MemberStream(io.RawIOBase):
    """A zip member as a readable (and seekable) binary stream that stops at ``limit`` bytes:
    a read that would go past it raises :class:`UnsafeArchiveError`, after at most ``limit``
    bytes have been decompressed."""

    def __init__(self, member: BinaryIO, limit: int, name: str) -> None:
        super().__init__()
        self._member = member
        self._limit = limit
        self._name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._member.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._member.seek(offset, whence)

    def tell(self) -> int:
        return self._member.tell()

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        room = self._limit + 1 - self._member.tell()
        data = self._member.read(max(0, min(len(buffer), room)))
        if self._member.tell() > self._limit:
            raise UnsafeArchiveError(f"{self._name} holds more than {self._limit:,} B; refusing to read it (a possible decompression bomb)")
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._member.close()
        super().close()


class ZipSource:
    """The members of one or more zips as one release tree, read without extraction.

    M2AD's Hub files ``jsons.zip`` and ``<Category>.zip`` unpack to ``jsons/...`` and
    ``<Category>/{Good,NG,GT}/...``; ``ZipSource([jsons, bird])`` lists exactly those paths.
    Every member of every zip is validated when the source is created.  The source can be
    pickled or forked to worker processes: each process reopens the zips on first read.
    """

    def __init__(self, zips: Sequence[str | Path], *, max_ratio: float = DEFAULT_MAX_RATIO,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> None:
        if not zips:
            raise ValueError("ZipSource needs at least one zip file")
        self.zips = [Path(path) for path in zips]
        self.max_member_bytes = max_member_bytes
        self._members: dict[str, tuple[int, zipfile.ZipInfo]] = {}
        for index, path in enumerate(self.zips):
            if not path.is_file():
                raise FileNotFoundError(f"no such zip file: {path}")
            try:
                with zipfile.ZipFile(path) as zip_file:
                    members = safe_zip_members(zip_file, path, max_ratio)
            except zipfile.BadZipFile as error:
                raise UnsafeArchiveError(f"{path}: not a readable zip file ({error})") from error
            for name, info in members.items():
                if name in self._members:
                    other = self.zips[self._members[name][0]]
                    raise UnsafeArchiveError(f"{name!r} is in both {other} and {path}")
                self._members[name] = (index, info)
        self._open: dict[int, zipfile.ZipFile] = {}
        self._opened_in = os.getpid()

    def list_files(self) -> list[str]:
        """Relative POSIX paths of every regular file, sorted."""
        return sorted(self._members)

    def open(self, path: str) -> MemberStream:
        """Member ``path`` as a stream capped at ``max_member_bytes`` (a larger declared size
        is refused at once); a corrupted member raises ``zipfile.BadZipFile`` when read."""
        try:
            index, info = self._members[path]
        except KeyError:
            raise FileNotFoundError(f"{path!r} is not in {', '.join(str(p) for p in self.zips)}") from None
        where = f"{self.zips[index]}: member {path!r}"
        if info.file_size > self.max_member_bytes:
            raise UnsafeArchiveError(f"{where} is {info.file_size:,} B, more than the {self.max_member_bytes:,} B a member may have")
        if self._opened_in != os.getpid():  # a forked worker: never share the parent's file offsets
            self._open, self._opened_in = {}, os.getpid()
        zip_file = self._open.get(index)
        if zip_file is None:
            zip_file = self._open[index] = zipfile.ZipFile(self.zips[index])
        # ZipExtFile never yields more than the declared size and checks the CRC at the end.
        return MemberStream(zip_file.open(info), self.max_member_bytes, where)

    def read_bytes(self, path: str) -> bytes:
        """The content of member ``path``, read through :meth:`open` (so within its cap)."""
        with self.open(path) as stream:
            return stream.read(self._members[path][1].file_size)  # sized by the declared size, never more

    def close(self) -> None:
        """Close the zip files opened by reads (later reads reopen them)."""
        for zip_file in self._open.values():
            zip_file.close()
        self._open.clear()

    def __enter__(self) -> ZipSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def __repr__(self) -> str:
        return f"ZipSource({[str(path) for path in self.zips]!r})"


def _tar_member_check(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """Validate one tar member (name, type, link target) and return its relative path."""
    path = safe_member_path(member.name, archive)
    if member.isdir() or member.isreg():
        return path
    if member.issym() or member.islnk():
        target = member.linkname.replace("\\", "/")
        if target.startswith("/") or (len(target) >= 2 and target[1] == ":"):
            raise UnsafeArchiveError(f"{archive}: link {member.name!r} points to the absolute path {member.linkname!r}")
        base = path.parent if member.issym() else PurePosixPath()
        depth = 0
        for part in (base / target).parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                raise UnsafeArchiveError(
                    f"{archive}: link {member.name!r} -> {member.linkname!r} points outside the target folder"
                )
        return path
    raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device, FIFO or other special file")


def _iter_tar(archive: Path, max_ratio: float) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Stream the members of a tar, each validated, with a running uncompressed-size cap."""
    total = 0
    with tarfile.open(archive, mode="r:*") as tar:
        for member in tar:
            _tar_member_check(member, archive)
            total += member.size
            _check_total(total, archive, max_ratio)
            yield tar, member


def _extract_zip(archive: Path, target: Path, max_ratio: float, bar: Progress, task: TaskID) -> None:
    with zipfile.ZipFile(archive) as zip_file:
        members = safe_zip_members(zip_file, archive, max_ratio)
        bar.update(task, total=sum(info.file_size for info in members.values()))
        for name, info in members.items():
            destination = target.joinpath(*PurePosixPath(name).parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zip_file.open(info) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, _COPY_CHUNK)
            bar.advance(task, info.file_size)


def _extract_tar(archive: Path, target: Path, max_ratio: float, bar: Progress, task: TaskID) -> None:
    for tar, member in _iter_tar(archive, max_ratio):
        # The explicit checks above give clear errors; the "data" filter is a second line of defence.
        tar.extract(member, target, filter="data")
        bar.advance(task, member.size)


def is_tar(path: str | Path) -> bool:
    """Whether ``path`` names a tar archive (plain or compressed), judged by its name."""
    name = Path(path).name.lower()
    return name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2"))


def extract(archive: str | Path, dest: str | Path, *, max_ratio: float = DEFAULT_MAX_RATIO, progress: bool = False) -> Path:
    """Safely unpack a zip or tar ``archive`` into the new folder ``dest`` and return it.

    The archive is unpacked into a sibling ``<dest>.partial`` folder that is renamed to
    ``dest`` only when every member passed the checks, so ``dest`` is either complete or absent
    and nothing is written outside it.  ``dest`` must not exist yet.  The ``.partial`` folder
    is owned (``m2ad.ownership``): an existing one that another command made is an error, a
    killed extraction's is taken over.  ``progress`` shows a rich bar of the bytes written.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"no such archive: {archive}")
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; remove it or choose another folder")
    partial = ownership.claim_temp_dir(dest.with_name(dest.name + ".partial"), dest)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task(f"extract {archive.name}", total=None)
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, partial, max_ratio, bar, task)
            elif is_tar(archive) or tarfile.is_tarfile(archive):
                _extract_tar(archive, partial, max_ratio, bar, task)
            else:
                raise UnsafeArchiveError(f"{archive}: neither a zip nor a tar archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile, lzma.LZMAError, zlib.error) as error:
        ownership.remove_temp_dir(partial)
        raise UnsafeArchiveError(f"{archive}: cannot be read ({error})") from error
    except BaseException:
        ownership.remove_temp_dir(partial)
        raise
    ownership.unmark(partial)
    os.replace(partial, dest)
    return dest
