"""m2ad.ownership: owners that are alive or dead, owned temporary folders and files, and the
exclusive lock that names its holder, is taken over from a dead one and leaves no file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from m2ad import ownership
from m2ad.ownership import ExclusiveLock, LockedError, NotOursError, Owner

HOLD = """
import sys, time
from m2ad.ownership import ExclusiveLock
ExclusiveLock(sys.argv[1], "the test folder").acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(path: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_owners_alive_and_dead() -> None:
    me = ownership.current_owner()
    assert me.alive() and me.pid == os.getpid() and me.host == socket.gethostname() and me.start is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not Owner(child.pid, me.host, None, "x", "t").alive(), "exited and reaped"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while not ownership._is_zombie(zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Owner(zombie.pid, me.host, None, "x", "t").alive(), "exited, not yet reaped"
    zombie.wait()
    assert not Owner(me.pid, me.host, (me.start or 0) + 1, "x", "t").alive(), "the pid now belongs to another process"
    assert Owner(1, "another-host.example", None, "x", "t").alive(), "another host: cannot tell, so never dead"
    assert Owner.from_tag(me.tag()) == Owner(me.pid, me.host, me.start, "?", "?")


def test_lock_names_its_live_holder_and_is_taken_over_from_a_dead_one(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = _holder(path)
    try:
        with pytest.raises(LockedError, match=f"the test folder is in use by pid {holder.pid} on host {socket.gethostname()}") as raised:
            ExclusiveLock(path, "the test folder").acquire()
        assert raised.value.holder is not None and raised.value.holder.pid == holder.pid
        started = time.monotonic()
        with pytest.raises(LockedError):
            ExclusiveLock(path, "the test folder", timeout=0.5).acquire()
        assert 0.4 < time.monotonic() - started < 5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.exists(), "a killed holder leaves its file"
    with ExclusiveLock(path, "the test folder") as lock:
        assert f"pid {os.getpid()}" in ownership._read_owner(path)[0].describe()
        with pytest.raises(RuntimeError, match="already locked"):
            lock.acquire()
    assert not path.exists(), "released: the file is gone"


def test_lock_waits_for_its_holder_and_never_admits_two(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    inside, overlaps = [], []

    def work() -> None:
        for _ in range(20):
            with ExclusiveLock(path, "the counter", timeout=None):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(len(inside))
                time.sleep(0.001)
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert overlaps == [] and not path.exists()


def test_temp_dir_claims_refuse_what_is_not_ours(tmp_path: Path) -> None:
    target = tmp_path / "out"
    claimed = ownership.claim_temp_dir(tmp_path / "out.partial", target)
    assert ownership.is_ours(claimed)
    (claimed / "half").write_text("x")
    again = ownership.claim_temp_dir(tmp_path / "out.partial", target)  # ours: emptied and claimed anew
    assert again == claimed and not (claimed / "half").exists()
    with pytest.raises(NotOursError, match="belongs to an m2ad command building"):
        ownership.claim_temp_dir(claimed, tmp_path / "elsewhere")
    ownership.unmark(claimed)
    with pytest.raises(NotOursError, match="was not made by m2ad"):
        ownership.claim_temp_dir(claimed, target)
    with pytest.raises(NotOursError, match="not a temporary folder of this process"):
        ownership.unmark(claimed)
    ownership.remove_temp_dir(claimed)
    assert claimed.is_dir(), "an unmarked folder is never removed"
    a_file = tmp_path / "file.partial"
    a_file.write_text("x")
    with pytest.raises(NotOursError, match="is not a folder"):
        ownership.claim_temp_dir(a_file, target)


def test_dead_owners_temp_files_and_folders_are_swept(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = Owner(child.pid, socket.gethostname(), None, "x", "t")
    dead_file = tmp_path / f".part-1.parquet.{dead.tag()}.tmp"
    dead_file.write_text("x")
    live_file = ownership.temp_file_name(tmp_path / "part-2.parquet")
    live_file.write_text("x")
    foreign = tmp_path / ".part-3.parquet.tmp"  # no owner in its name: left alone
    foreign.write_text("x")
    assert ownership.remove_dead_temp_files(tmp_path, "part-*.parquet.*") == [dead_file]
    assert live_file.exists() and foreign.exists()
    live_dir = ownership.claim_temp_dir(tmp_path / "ray-live", tmp_path / "run")
    unmarked = tmp_path / "ray-unmarked"
    unmarked.mkdir()
    dead_dir = tmp_path / "ray-dead"
    dead_dir.mkdir()
    (dead_dir / ownership.OWNER_FILE).write_text(ownership._owner_record(dead, tmp_path / "run"))
    assert ownership.remove_dead_temp_dirs(tmp_path, "ray-*") == [dead_dir]
    assert live_dir.is_dir() and unmarked.is_dir()
