"""Who owns a temporary folder, a lock or a temporary file, and whether that owner still lives.

Commands that write in several steps keep their work in temporary places until it is complete.
A killed command leaves them behind; a careless cleanup deletes someone else's.  Everything
here rests on one notion, the :class:`Owner`: the process (pid, host, start time, command) that
made a thing.  An owner is *dead* when it ran on this host and its pid is gone, is a zombie,
or now belongs to a process that started at another time; an owner on another host is never
taken for dead (nothing here can tell).

- :func:`claim_temp_dir` makes a temporary folder with a marker file (:data:`OWNER_FILE`,
  JSON: the owner and the target it is built for).  An existing folder without our marker is
  never removed: it is an error that names it.  One whose owner is dead and whose target is
  the same is taken over.  :func:`unmark` removes the marker before the folder is published
  under its final name; :func:`remove_temp_dir` removes it after a failure.
- :class:`ExclusiveLock` is an ``flock`` on a lock file that records its holder.  The kernel
  releases the lock of a dead process, so a later one takes it over with no stale-lock
  heuristics; the refusal names the live holder; the lock file is removed on release (under
  the lock, and every acquirer checks that it locked the file still at that path, so a
  removed file never lets two processes in).
- :func:`shared_lock` and :func:`wait_until_unheld`: any number of processes hold a shared
  ``flock`` on a file that is never removed (the tasks of a run), and one waits until none does
  (a new run, so that no task of a killed run still writes next to its own).
- :func:`temp_file_name` names a temporary file after its owner
  (``.<final>.<pid>-<start>@<host>.tmp``), so that :func:`remove_dead_temp_files` can delete
  those of dead owners and never a live writer's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

OWNER_FILE = ".m2ad-owner.json"
_TAG = re.compile(r"^(?P<pid>\d+)-(?P<start>\d+)@(?P<host>[A-Za-z0-9._-]+)$")
_TEMP_FILE = re.compile(r"^\.(?P<final>.+)\.(?P<tag>\d+-\d+@[A-Za-z0-9._-]+)\.tmp$")


def _start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc``), or ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22; the command name may hold spaces


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class Owner:
    """A process: what :func:`current_owner` records and :meth:`alive` checks."""

    pid: int
    host: str
    start: int | None
    command: str
    since: str

    def alive(self) -> bool:
        """False only when this owner surely died: same host, and its pid is gone, a zombie, or
        another process's (started at another time)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, under another account
        if _is_zombie(self.pid):
            return False
        return self.start is None or _start_ticks(self.pid) in (None, self.start)

    def describe(self) -> str:
        """``pid 123 on host h (m2ad run ...) since 2025-...``, for error messages."""
        return f"pid {self.pid} on host {self.host} ({self.command}) since {self.since}"

    def tag(self) -> str:
        """``<pid>-<start>@<host>``: this owner in a file name."""
        return f"{self.pid}-{self.start or 0}@{self.host}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Owner:
        return cls(int(data["pid"]), str(data["host"]), None if data.get("start") is None else int(data["start"]),
                   str(data.get("command", "?")), str(data.get("since", "?")))

    @classmethod
    def from_tag(cls, tag: str) -> Owner | None:
        match = _TAG.match(tag)
        if match is None:
            return None
        start = int(match["start"]) or None
        return cls(int(match["pid"]), match["host"], start, "?", "?")


def current_owner() -> Owner:
    """This process as an owner."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("", "-c") else "python -c"
    command = " ".join([program, *sys.argv[1:]])
    return Owner(
        pid=os.getpid(),
        host=socket.gethostname(),
        start=_start_ticks(os.getpid()),
        command=command[:200],
        since=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _read_owner(path: Path) -> tuple[Owner, str] | None:
    """(owner, target) from a marker or lock file, or ``None`` when it holds none."""
    try:
        data = json.loads(path.read_text())
        return Owner.from_dict(data["owner"]), str(data.get("target", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _owner_record(owner: Owner, target: Path | str) -> str:
    return json.dumps({"owner": asdict(owner), "target": str(target)}, indent=2) + "\n"


# --------------------------------------------------------------------------- temporary folders


class NotOursError(FileExistsError):
    """A folder at a temporary path was not made by this command, or its owner is alive."""


def claim_temp_dir(path: str | Path, target: str | Path) -> Path:
    """Create the temporary folder ``path``, owned by this process, for building ``target``.

    An existing ``path`` is taken over (emptied) only when its marker names ``target`` and an
    owner that is dead (or this very process); otherwise :class:`NotOursError` names it and
    its owner, and nothing is removed.
    """
    path, target = Path(path).absolute(), Path(target).absolute()
    owner = current_owner()
    for _ in range(5):
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            _take_over(path, target, owner)
            continue
        (path / OWNER_FILE).write_text(_owner_record(owner, target))
        return path
    raise NotOursError(f"{path} keeps reappearing while being replaced; is another m2ad command building {target}?")


def _take_over(path: Path, target: Path, owner: Owner) -> None:
    """Remove the existing temporary folder ``path`` if it is a dead owner's (or ours) for
    ``target``; raise :class:`NotOursError` otherwise."""
    if not path.is_dir():
        raise NotOursError(f"{path} exists and is not a folder; move or delete it (m2ad uses this name for temporary work)")
    found = _read_owner(path / OWNER_FILE)
    if found is None:
        raise NotOursError(
            f"{path} exists and was not made by m2ad (no {OWNER_FILE}); m2ad uses this name for temporary work "
            f"while building {target}: move or delete it"
        )
    earlier, earlier_target = found
    ours = earlier.pid == owner.pid and earlier.host == owner.host and earlier.start == owner.start
    if Path(earlier_target) != target:
        raise NotOursError(f"{path} belongs to an m2ad command building {earlier_target}, not {target}; move or delete it")
    if not ours and earlier.alive():
        raise NotOursError(f"{path} is in use by {earlier.describe()}; wait for it to finish")
    aside = path.with_name(f"{path.name}.removing-{owner.tag()}")
    try:
        os.rename(path, aside)  # atomic: of two processes taking over, one wins
    except FileNotFoundError:
        return
    shutil.rmtree(aside)


def is_ours(path: str | Path) -> bool:
    """Whether the folder ``path`` carries this process's marker."""
    found = _read_owner(Path(path) / OWNER_FILE)
    if found is None:
        return False
    owner, mine = found[0], current_owner()
    return (owner.pid, owner.host, owner.start) == (mine.pid, mine.host, mine.start)


def unmark(path: str | Path) -> None:
    """Remove this process's marker from ``path``, just before it is renamed into place."""
    marker = Path(path) / OWNER_FILE
    if not is_ours(path):
        raise NotOursError(f"{path} is not a temporary folder of this process")
    marker.unlink()


def remove_temp_dir(path: str | Path) -> None:
    """Delete the temporary folder ``path`` if it is this process's (else leave it alone)."""
    if Path(path).is_dir() and is_ours(path):
        shutil.rmtree(path, ignore_errors=True)


def remove_dead_temp_dirs(parent: str | Path, pattern: str) -> list[Path]:
    """Delete the folders under ``parent`` matching ``pattern`` whose marker names a dead
    owner (a killed command's leftovers); folders without a marker are left alone."""
    removed = []
    for candidate in sorted(Path(parent).glob(pattern)):
        found = _read_owner(candidate / OWNER_FILE)
        if candidate.is_dir() and found is not None and not found[0].alive():
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


# --------------------------------------------------------------------------- temporary files


def temp_file_name(final: str | Path) -> Path:
    """The temporary name for writing ``final``: ``.<name>.<pid>-<start>@<host>.tmp`` next to it."""
    final = Path(final)
    return final.with_name(f".{final.name}.{current_owner().tag()}.tmp")


def remove_dead_temp_files(folder: str | Path, final_glob: str = "*") -> list[Path]:
    """Delete the temporary files (named by :func:`temp_file_name`) in ``folder`` for final
    names matching ``final_glob`` whose owner is dead; a live writer's are never touched."""
    removed = []
    for candidate in sorted(Path(folder).glob(f".{final_glob}.tmp")):
        match = _TEMP_FILE.match(candidate.name)
        owner = Owner.from_tag(match["tag"]) if match else None
        if owner is not None and not owner.alive():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


# --------------------------------------------------------------------------- locks


class LockedError(RuntimeError):
    """The lock is held by another live process; the message names it."""

    def __init__(self, message: str, holder: Owner | None) -> None:
        super().__init__(message)
        self.holder = holder


class ExclusiveLock:
    """An exclusive ``flock`` on ``path`` recording its holder; see the module docstring.

    ``what`` names the locked thing in the refusal (``"the run folder runs/x"``).  With
    ``timeout=0`` a held lock raises :class:`LockedError` at once; with a number it waits
    that many seconds; with ``None`` it waits for as long as it takes.
    """

    def __init__(self, path: str | Path, what: str, timeout: float | None = 0) -> None:
        self.path = Path(path)
        self.what = what
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> ExclusiveLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this object")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    found = _read_owner(self.path)
                    holder = found[0] if found else None
                    who = holder.describe() if holder else "another process"
                    raise LockedError(f"{self.what} is in use by {who}; wait for it to finish", holder) from None
                time.sleep(0.1)
                continue
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, _owner_record(current_owner(), self.what).encode(), 0)
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # under the lock: see the module docstring
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> ExclusiveLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@contextlib.contextmanager
def shared_lock(path: str | Path) -> Iterator[None]:
    """Hold a shared ``flock`` on ``path`` (created if missing, never removed) during the block;
    the kernel drops it when this process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def wait_until_unheld(path: str | Path, timeout: float) -> bool:
    """Wait until no process holds a lock on ``path`` (an exclusive ``flock``, taken and dropped
    at once); False when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
    finally:
        os.close(fd)
