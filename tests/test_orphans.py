"""A ``kill -9`` of a command leaves no process of it running: the worker pools of `m2ad shard`
and `m2ad synth`, and the local Ray cluster of `m2ad run`; and a rerun never races a task of the
killed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import probe_method as probe_module
from m2ad import ownership, processes
from m2ad.run import RunConfig, run
from m2ad.run import executors
from m2ad.run.cell import TASKS_LOCK_FILE
from m2ad.shard import shard_tree
from m2ad.synth import generate

REPO = Path(__file__).resolve().parents[1]
M2AD = Path(sys.executable).parent / "m2ad"


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _session(sid: int) -> list[str]:
    """The live processes of session ``sid`` other than its leader, as 'pid command'."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != sid:
            fields = _stat(int(entry.name))
            if fields and int(fields[3]) == sid and fields[0] != "Z":
                command = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name} {command[:120]}")
    return found


def _children(pid: int) -> list[int]:
    return [int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit() and (_stat(int(entry.name)) or [0, 0])[1] == str(pid)]


def _kill_and_wait_for_the_session(process: subprocess.Popen, seconds: float) -> list[str]:
    """SIGKILL only ``process`` (not its group), then what of its session is left after ``seconds``."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + seconds
    while (left := _session(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _start(arguments: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(M2AD), *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)


def _wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None and condition(), "the command ended before it could be killed"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """480 images of 64 px: a few seconds of resizing on 2 workers."""
    return generate(tmp_path_factory.mktemp("orphans") / "tree", categories=["Cube"], normal_specimens=3, ng_specimens=1, resolution=64,
                    workers=2, progress=False)


def test_a_killed_shard_leaves_no_worker_and_resumes(tree: Path, tmp_path: Path) -> None:
    arguments = ["shard", str(tree), str(tmp_path / "shards"), "--resolution", "32", "--workers", "2"]
    process = _start(arguments)
    _wait_for(lambda: len(_children(process.pid)) >= 2, process)
    time.sleep(0.5)  # the workers are busy
    assert _kill_and_wait_for_the_session(process, 5.0) == []
    rerun = subprocess.run([str(M2AD), *arguments], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "shards" / "dataset.json").is_file()


def test_a_killed_synth_leaves_no_worker(tmp_path: Path) -> None:
    process = _start(["synth", str(tmp_path / "tree"), "-c", "Cube,Ring", "--normal-specimens", "8", "--resolution", "64", "--workers", "2"])
    _wait_for(lambda: len(_children(process.pid)) >= 2, process)
    time.sleep(0.5)
    assert _kill_and_wait_for_the_session(process, 5.0) == []


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 test images of 32 px."""
    root = tmp_path_factory.mktemp("orphans-shards")
    generate(root / "tree", categories=["Cube"], normal_specimens=2, ng_specimens=1, resolution=32, workers=1, progress=False)
    return shard_tree(root / "tree", root / "shards", workers=1, progress=False).out


@pytest.mark.slow
def test_a_killed_ray_run_leaves_no_process(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    arguments = ["-c", probe_module.REGISTER, "run", "--protocol", "invariant", "--method", "probe", "--method-arg", "predict_delay=0.3",
                 "--data", str(shards), "--out", str(out), "--no-progress", "--batch-size", "16"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    process = subprocess.Popen([sys.executable, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env=env)
    _wait_for(lambda: bool(list(out.glob("cells/*/progress.json"))), process, seconds=180)
    assert len(_session(process.pid)) >= 4  # GCS, raylet, agents, the task's worker
    left = _kill_and_wait_for_the_session(process, 10.0)
    assert left == [], left


def test_a_run_waits_for_the_tasks_of_a_killed_run(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    out.mkdir()
    ending = tmp_path / "ending"  # written by the holder just before it lets go of the lock
    holder = subprocess.Popen([sys.executable, "-c", "import pathlib, sys, time; from m2ad import ownership\n"
                               "with ownership.shared_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(2)\n"
                               "    pathlib.Path(sys.argv[2]).touch()", str(out / TASKS_LOCK_FILE), str(ending)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"  # a task of an earlier run, still writing
    started_while_held = []
    real_execute = executors.execute

    def execute(spec, report=None):  # noqa: ANN001, ANN202
        started_while_held.append(not ending.exists())
        return real_execute(spec, report)

    monkeypatch.setattr(executors, "execute", execute)
    result = run(RunConfig(protocol="invariant", methods=("random",), data=shards, out=out, executor="local"), progress=False)
    holder.wait()
    assert result.ok and started_while_held == [False]
    assert ownership.wait_until_unheld(out / TASKS_LOCK_FILE, 0)


def test_a_guardian_kills_what_it_marked_or_what_holds_its_folder_but_never_its_owner(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    folder.mkdir()
    with open(folder / "owner.log", "w"):  # the owner itself holds a file in the folder
        guardian = processes.Guardian("test-marker", folder)
        marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # started with the marker
        holder = subprocess.Popen([sys.executable, "-c", f"import time; handle = open({str(folder / 'x.log')!r}, 'w'); print('open', flush=True); "
                                   "time.sleep(120)"], env={key: value for key, value in os.environ.items()
                                                            if key != processes.MARKER_VARIABLE}, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "open"
        bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                     env={key: value for key, value in os.environ.items() if key != processes.MARKER_VARIABLE})
        guardian.close()
    try:
        assert marked.wait(timeout=10) == -signal.SIGKILL and holder.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None and processes.MARKER_VARIABLE not in os.environ
    finally:
        bystander.kill()
        bystander.wait()
