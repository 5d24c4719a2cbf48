"""Worker process pools that work from a plain script and die with the process that made them.

- **Plain scripts.**  The ``spawn`` and ``forkserver`` start methods import the caller's
  ``__main__`` again in every worker, so a script without an ``if __name__ == "__main__":``
  guard runs its top level once more there and the pool breaks (``BrokenProcessPool``).  On
  Linux the pools fork instead: nothing is imported again.  Forking is unsafe only while other
  threads hold locks the child would need; the workers run NumPy and PIL code only, and the one
  parent whose threads matter, a Ray driver (gRPC), gets ``forkserver`` (which then needs the
  guard, as Python's documentation asks).
- **No orphans.**  Every worker asks the kernel to kill it when its parent dies
  (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, Linux), so a ``kill -9`` of ``m2ad shard`` or
  ``m2ad synth`` leaves no worker running; a worker whose parent died before that call exits at
  once.  (A ``forkserver`` worker's parent is the fork server, which exits when its own parent dies.)
- **No orphaned grandchildren.**  Processes that others start for us (a local Ray cluster: GCS,
  raylet, its agents and workers) are beyond ``PR_SET_PDEATHSIG``; Ray's agents outlive a killed
  driver by a minute.  A :class:`Guardian` is a small watcher process in its own session: while
  it is open, every process started from here carries :data:`MARKER_VARIABLE` in its
  environment, and once this process dies (its pipe to the watcher closes) or closes the
  guardian, the watcher SIGKILLs every process whose environment carries the marker, or that
  holds a file open in the guardian's folder (Ray's agents rewrite their process title over
  their environment, but keep their logs open in the cluster's own temporary folder).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
MARKER_VARIABLE = "M2AD_GUARDED_BY"


def pool_context() -> BaseContext:
    """``fork`` on Linux unless this process is a Ray driver, else ``forkserver``."""
    ray = sys.modules.get("ray")
    ray_driver = ray is not None and getattr(ray, "is_initialized", lambda: False)()
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") and not ray_driver else "forkserver")


def die_with_parent(parent: int | None) -> None:
    """Make the kernel SIGKILL this process when its parent dies (Linux); exit now if the parent
    is not ``parent`` any more (it died before the call).  ``None``: no parent to compare with."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _start_worker(parent: int | None, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def process_pool(workers: int, initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes (see the module docstring), each running ``initializer(*initargs)`` first."""
    context = pool_context()
    parent = os.getpid() if context.get_start_method() == "fork" else None
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(parent, initializer, initargs))


def _holds_a_file_in(pid: str, folder: str) -> bool:
    """Whether process ``pid`` has a file open under ``folder``."""
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(f"{fds}/{fd}").startswith(folder):
                return True
        except OSError:
            continue
    return False


def marked_processes(marker: str, folder: str | Path | None = None, spare: Collection[int] = ()) -> list[int]:
    """Pids of the processes (readable by us, Linux ``/proc``) whose environment at start had
    :data:`MARKER_VARIABLE` set to ``marker``, or that hold a file open under ``folder``; never
    this process or those in ``spare``."""
    wanted = f"{MARKER_VARIABLE}={marker}".encode()
    inside = None if folder is None else os.path.join(os.path.abspath(folder), "")
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or int(entry.name) in spare:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                if wanted in handle.read().split(b"\0") or (inside is not None and _holds_a_file_in(entry.name, inside)):
                    found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def kill_marked(marker: str, folder: str | Path | None = None, spare: Collection[int] = (), rounds: int = 3) -> None:
    """SIGKILL every process marked with ``marker`` (or holding a file under ``folder``) but those
    in ``spare``, a few rounds apart (one may have been starting another)."""
    for _ in range(rounds):
        for pid in marked_processes(marker, folder, spare):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        time.sleep(0.05)


def _watch(marker: str, folder: str | None = None) -> None:
    """The watcher: wait for the end of stdin (the guardian's owner closed it, or died), then kill."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the owner, which then closes us
    owner = os.getppid()  # alive when it closes us (and holding files in the folder itself): never killed
    sys.stdin.buffer.read()
    kill_marked(marker, folder, spare=(owner,))


class Guardian:
    """Kills, once this process ends or :meth:`close` is called, every process started from here
    in between (and their descendants, which inherit the marker) and every process with a file
    open in ``folder``; see the module docstring."""

    def __init__(self, marker: str, folder: str | Path | None = None) -> None:
        self.marker = marker
        environment = {key: value for key, value in os.environ.items() if key != MARKER_VARIABLE}
        self._watcher = subprocess.Popen(
            [sys.executable, "-c", "import sys; from m2ad.processes import _watch; _watch(*sys.argv[1:])", marker,
             *([str(folder)] if folder is not None else [])],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment, start_new_session=True,
        )
        self._previous = os.environ.get(MARKER_VARIABLE)
        os.environ[MARKER_VARIABLE] = marker

    def close(self) -> None:
        """Stop marking new processes, kill the marked ones still running, end the watcher."""
        if self._watcher.stdin is None or self._watcher.stdin.closed:
            return
        if self._previous is None:
            os.environ.pop(MARKER_VARIABLE, None)
        else:
            os.environ[MARKER_VARIABLE] = self._previous
        self._watcher.stdin.close()
        self._watcher.wait(timeout=60)
