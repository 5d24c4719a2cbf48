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
  guardian, the watcher SIGKILLs every process whose environment carries the marker.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
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


def marked_processes(marker: str) -> list[int]:
    """Pids of the processes (readable by us, Linux ``/proc``) whose environment at start had
    :data:`MARKER_VARIABLE` set to ``marker``."""
    wanted = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                if wanted in handle.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def kill_marked(marker: str, rounds: int = 3) -> None:
    """SIGKILL every process marked with ``marker``, a few rounds apart (one may have been
    starting another)."""
    for _ in range(rounds):
        for pid in marked_processes(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        time.sleep(0.05)


def _watch(marker: str) -> None:
    """The watcher: wait for the end of stdin (the guardian's owner closed it, or died), then kill."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the owner, which then closes us
    sys.stdin.buffer.read()
    kill_marked(marker)


class Guardian:
    """Kills, once this process ends or :meth:`close` is called, every process started from here
    in between (and their descendants, which inherit the marker); see the module docstring."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        environment = {key: value for key, value in os.environ.items() if key != MARKER_VARIABLE}
        self._watcher = subprocess.Popen(
            [sys.executable, "-c", "import sys; from m2ad.processes import _watch; _watch(sys.argv[1])", marker],
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
