"""Guards against losing data or a machine (issue 18), one section per defect found by the
fault-injection campaign: unbounded resolutions, deleted folders, concurrent runs, hangs, bad
arguments, control characters, zip members held whole, tracebacks, orphan files, bad names.

Every test here failed before the fix.  New modules (``m2ad.ownership``) are imported inside
the tests, so that against the old code each test fails on its own."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from leaderboard.store import Store
from m2ad import predictions
from m2ad.archive import UnsafeArchiveError, ZipSource
from m2ad.cli import app
from m2ad.data import load_manifest
from m2ad.schema import DatasetInfo
from m2ad.shard import shard_tree
from m2ad.synth import generate

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from m2ad.cli import app; app()"]
runner = CliRunner()


def said(result) -> str:  # noqa: ANN001 - a click Result
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def one_clear_line(result, code: int = 2) -> None:  # noqa: ANN001 - a click Result
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "error:" in result.output, result.output


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic release tree: one category, 2 normal + 1 NG specimens, 32 px."""
    return generate(tmp_path_factory.mktemp("tree") / "tree", categories=["Cube"], normal_specimens=2, ng_specimens=1,
                    resolution=32, workers=1, progress=False)


@pytest.fixture(scope="module")
def shards(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "shards"
    shard_tree(tree, out, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def prediction_file(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    test = load_manifest(shards).filter(pl.col("split") == "test")
    rng = np.random.default_rng(0)
    maps = [rng.random((32, 32)).astype(np.float32) for _ in range(test.height)]
    path = tmp_path_factory.mktemp("pred") / "predictions.parquet"
    predictions.write(path, test["sample_id"].to_list(), test["label"].to_numpy() + rng.normal(0, 1, test.height), maps)
    return path


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_marker(folder: Path, pid: int, target: Path) -> None:
    """An owner marker as ``m2ad.ownership`` writes it, by hand (independent of the code)."""
    folder.mkdir(parents=True)
    owner = {"pid": pid, "host": socket.gethostname(), "start": None, "command": "m2ad synth", "since": "2025-01-01T00:00:00+00:00"}
    (folder / ".m2ad-owner.json").write_text(json.dumps({"owner": owner, "target": str(target)}))


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A live process other than this one."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


# --------------------------------------------------------------------------- 1. unbounded resolutions


def test_a_resolution_above_the_source_is_refused_before_any_work(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"resolution 64 px is larger than the image \(32x32\).*--allow-upsample"):
        shard_tree(tree, tmp_path / "out", resolution=64, workers=1, progress=False)
    assert not (tmp_path / "out").exists(), "nothing is written before the refusal"
    result = runner.invoke(app, ["shard", str(tree), str(tmp_path / "cli"), "--resolution", "64", "--workers", "1"])
    one_clear_line(result)
    assert "--allow-upsample" in said(result)


def test_upsampling_needs_the_flag_and_stays_bounded_by_memory(tree: Path, tmp_path: Path) -> None:
    report = shard_tree(tree, tmp_path / "up", resolution=48, allow_upsample=True, workers=1, progress=False)
    assert report.samples == 3 * 120 and set(load_manifest(tmp_path / "up")["width"]) == {48}
    # 100000 px would need ~640 GB per image: refused before anything is written, flag or not
    with pytest.raises(ValueError, match=r"resizing 32x32 to 100000x100000 needs about .* of memory"):
        shard_tree(tree, tmp_path / "huge", resolution=100_000, allow_upsample=True, workers=1, progress=False)
    assert not (tmp_path / "huge").exists()
    result = runner.invoke(app, ["shard", str(tree), str(tmp_path / "cli"), "--resolution", "100000", "--allow-upsample", "--workers", "1"])
    one_clear_line(result)
    assert "of memory" in said(result)


def test_every_resize_is_bounded_by_the_available_memory(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import m2ad.shard

    from m2ad.shard import resize_peak_bytes

    needed = resize_peak_bytes((32, 32), (16, 16))
    assert needed == 40 * 32 * 32 + 64 * 16 * 16
    monkeypatch.setattr(m2ad.shard, "available_memory", lambda: needed)  # half of it is less than one image needs
    with pytest.raises(ValueError, match="more than the .* each worker may use; choose a smaller resolution or fewer workers"):
        shard_tree(tree, tmp_path / "out", resolution=16, workers=1, progress=False)
    monkeypatch.setattr(m2ad.shard, "available_memory", lambda: 2 * needed)
    assert shard_tree(tree, tmp_path / "fits", resolution=16, workers=1, progress=False).samples == 360


def test_each_image_is_checked_not_only_the_first(tree: Path, tmp_path: Path) -> None:
    import shutil

    from m2ad.datasets.m2ad import SPEC
    from m2ad.shard import FolderSource

    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    first = SPEC.layout.parse(FolderSource(copy), dataset_name="m2ad-synth").records[0].image_path
    Image.new("RGB", (64, 64), (90, 90, 90)).save(copy / first)  # the first image is 64 px, the others 32 px
    report = shard_tree(copy, tmp_path / "out", resolution=48, strict=False, workers=1, progress=False)
    refused = {problem.path: problem.kind for problem in report.skipped}
    assert set(refused.values()) == {"upsample"}
    assert first not in refused and len(refused) == 3 * 120 - 1  # every other image


def test_download_refuses_a_resolution_above_the_dataset_before_fetching(tmp_path: Path) -> None:
    from m2ad.download import DownloadError, download_dataset

    with pytest.raises(DownloadError, match=r"resolution 2048 px is larger than m2ad's images \(1024 px"):
        download_dataset("m2ad", tmp_path / "out", categories=["Bird"], resolution=2048, source=str(tmp_path), progress=False)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 2. deleted folders


def test_synth_never_deletes_an_unrelated_partial_folder(tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    unrelated = tmp_path / "OUT.partial"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("three years of work")
    with pytest.raises(FileExistsError, match=r"OUT\.partial exists and was not made by m2ad"):
        generate(out, categories=["Cube"], normal_specimens=1, ng_specimens=0, resolution=16, workers=1, progress=False)
    assert (unrelated / "thesis.tex").read_text() == "three years of work" and not out.exists()
    result = runner.invoke(app, ["synth", str(out), "-c", "Cube", "--normal-specimens", "1", "--ng-specimens", "0", "--resolution", "16", "--workers", "1"])
    one_clear_line(result)
    assert "OUT.partial" in said(result) and (unrelated / "thesis.tex").exists()


def test_a_live_commands_partial_folder_is_refused_and_a_dead_ones_taken_over(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    out = tmp_path / "OUT"
    options = {"categories": ["Cube"], "normal_specimens": 1, "ng_specimens": 0, "resolution": 16, "workers": 1, "progress": False}
    _write_marker(tmp_path / "OUT.partial", sleeper.pid, out)
    (tmp_path / "OUT.partial" / "half.png").write_bytes(b"in progress")
    with pytest.raises(FileExistsError, match=f"is in use by pid {sleeper.pid}"):
        generate(out, **options)
    assert (tmp_path / "OUT.partial" / "half.png").exists()
    other = tmp_path / "OTHER.partial"
    _write_marker(other, _dead_pid(), tmp_path / "ELSEWHERE")  # a dead owner, but built for another target
    with pytest.raises(FileExistsError, match="belongs to an m2ad command building"):
        generate(tmp_path / "OTHER", **options)
    (tmp_path / "OUT.partial" / ".m2ad-owner.json").unlink()
    (tmp_path / "OUT.partial" / "half.png").unlink()
    (tmp_path / "OUT.partial").rmdir()
    _write_marker(tmp_path / "OUT.partial", _dead_pid(), out)  # a killed synth's leftovers
    assert generate(out, **options) == out
    assert not (tmp_path / "OUT.partial").exists() and not (out / ".m2ad-owner.json").exists()


# --------------------------------------------------------------------------- 3. concurrent runs


@pytest.mark.slow
def test_a_second_run_on_a_busy_folder_names_the_holder_and_exits_2(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["run", "--protocol", "invariant", "--method", "gaussian", "--data", str(shards), "--out", str(out), "--executor", "local",
              "--no-progress"]
    arguments = [*common, "--seeds", ",".join(str(seed) for seed in range(40))]
    first = subprocess.Popen([*CLI, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "cells").glob("*/log.txt")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run should still be running"
        second = runner.invoke(app, arguments)
        one_clear_line(second)
        assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in said(second) and "run --protocol invariant" in said(second)
        assert first.poll() is None, "the refused run must not disturb the first"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the killed run's lock is taken over; the finished run leaves no lock file behind
    resumed = runner.invoke(app, [*common, "--seeds", "0"])
    assert resumed.exit_code == 0, resumed.output
    assert not (out / ".m2ad-run.lock").exists()


# --------------------------------------------------------------------------- 4. hangs: Ray addresses


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_ray_address_fails_within_seconds(shards: Path, tmp_path: Path) -> None:
    command = [*CLI, "run", "--protocol", "invariant", "--method", "random", "--data", str(shards), "--out", str(tmp_path / "run"),
               "--ray-address", f"127.0.0.1:{_free_port()}", "--ray-timeout", "5", "--no-progress"]
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("m2ad run --ray-address with nothing listening still ran after 150 s")
    elapsed = time.monotonic() - started
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:" in message and "Traceback" not in message
    assert elapsed < 60, elapsed  # the interpreter's start-up and imports are most of it


def test_a_ray_address_that_does_not_answer_as_ray_times_out_clearly() -> None:
    from m2ad.run import RunError, check_ray_address

    for reply in (None, b"HTTP/1.1 400 Bad Request\r\n\r\n"):
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            port = server.getsockname()[1]
            connections = []

            def accept(reply: bytes | None = reply, server: socket.socket = server) -> None:
                connection, _ = server.accept()
                connections.append(connection)
                if reply is not None:
                    connection.sendall(reply)

            thread = threading.Thread(target=accept, daemon=True)
            thread.start()
            started = time.monotonic()
            expected = "did not answer within 1 s" if reply is None else "answers, but not as a Ray cluster"
            with pytest.raises(RunError, match=expected):
                check_ray_address(f"127.0.0.1:{port}", timeout=1.0)
            assert time.monotonic() - started < 5
            thread.join(5)
            for connection in connections:
                connection.close()
    with pytest.raises(RunError, match="must be HOST:PORT"):
        check_ray_address("no-port-here", timeout=1.0)


# --------------------------------------------------------------------------- 5. bad method arguments and seeds


@pytest.mark.parametrize("arguments", [
    ["--method-arg", "min_std=nan"],
    ["--method-arg", "blur_sigma=inf"],
    ["--method-arg", "min_std=+Infinity"],
    ["--seeds", "-1"],
    ["--seeds", "0,4294967296"],
])
def test_bad_method_arguments_and_seeds_are_rejected_before_any_cell(shards: Path, tmp_path: Path, arguments: list[str]) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--protocol", "invariant", "--method", "gaussian", *arguments, "--data", str(shards),
                                 "--out", str(out), "--executor", "local", "--no-progress"])
    one_clear_line(result)
    assert ("must be finite numbers" in said(result)) or ("seeds must be integers in 0..4294967295" in said(result))
    assert not out.exists(), "rejected before any task starts"


# --------------------------------------------------------------------------- 6. control characters


HOSTILE_METHOD = "\x1b[2J\x1b[31mEvil\x1b]0;pwned\x07 \u202eTSAL"
HOSTILE_CITATION = "https://example.org/\x1b[5m\u2066paper\x00"


def _hostile_store(root: Path) -> Store:
    store = Store(root)
    store.append([
        {"entry_id": f"e{index}", "source": "submission", "method": method, "citation": HOSTILE_CITATION, "note": "a\x1b[8mhidden",
         "protocol": "synergy", "mode": "exact", "dataset": "m2ad", "resolution": "256", "category": category,
         "metric": "view_auroc", "value": value}
        for index, (method, value) in enumerate([(HOSTILE_METHOD, 0.9), ("plain", 0.5)])
        for category in ("Bird", "Car")
    ])
    return store


def _raw_controls(text: str) -> list[str]:
    return sorted({char for char in text if (ord(char) < 32 and char not in "\n\t") or 0x7F <= ord(char) < 0xA0 or char in "\u202e\u2066"})


@pytest.mark.parametrize("output", ["table", "markdown", "csv", "json"])
def test_control_characters_never_reach_the_terminal(tmp_path: Path, output: str) -> None:
    _hostile_store(tmp_path / "board")
    result = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path / "board"), "--format", output], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert _raw_controls(result.output) == [], repr(result.output[:400])
    assert "Evil" in result.output and ("\\x1b" in result.output or "\\u001b" in result.output)


def test_control_characters_never_reach_the_rendered_site_or_the_card(tmp_path: Path) -> None:
    from leaderboard.publish import build_folder
    from leaderboard.render import render_site

    rows = _hostile_store(tmp_path / "board").read()
    render_site(rows, tmp_path / "site")
    build_folder(rows, tmp_path / "upload")
    for page in (tmp_path / "site/index.html", tmp_path / "site/leaderboard.md", tmp_path / "upload/README.md"):
        text = page.read_text(encoding="utf-8")
        assert _raw_controls(text) == [], page
        assert "Evil" in text and "\\x1b" in text


def test_printable_escapes_exactly_the_invisible() -> None:
    from m2ad.text import printable

    assert printable("Übung – 日本 ok") == "Übung – 日本 ok"
    assert printable("a\x1b[31mb\x7f\x9b\u202e\u2028\tc\nd") == "a\\x1b[31mb\\x7f\\x9b\\u202e\\u2028\\x09c\\x0ad"
    assert printable(os.fsdecode(b"name\xff.png")) == "name\\xff.png"


# --------------------------------------------------------------------------- 7. zip members held whole


def _bomb_zip(path: Path, member_bytes: int, name: str = "big.bin") -> Path:
    """A zip whose one member is ``member_bytes`` of compressible data at ~100:1 (under the 200x cap)."""
    rng = np.random.default_rng(0)
    block = bytearray(64 * 1024)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(name, "w", force_zip64=True) as sink:
        for _ in range(member_bytes // len(block)):
            block[:400] = rng.bytes(400)
            sink.write(block)
    return path


def test_a_zip_member_is_streamed_with_a_running_cap(tmp_path: Path) -> None:
    archive = _bomb_zip(tmp_path / "bomb.zip", 16 * 2**20)
    assert 16 * 2**20 / archive.stat().st_size < 200, "the member passes the ratio check"
    source = ZipSource([archive], max_member_bytes=4 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchiveError, match="more than the 4,194,304 B a member may have"):
            source.read_bytes("big.bin")
        roomy = ZipSource([archive])  # the default cap (1 GiB) lets it through, as a stream
        total = 0
        with roomy.open("big.bin") as stream:
            while chunk := stream.read(64 * 1024):
                total += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 16 * 2**20
    assert peak < 4 * 2**20, f"peak {peak:,} B: the member was held whole"


def test_the_running_cap_stops_a_member_that_yields_more_than_the_cap(tmp_path: Path) -> None:
    from m2ad.archive import MemberStream

    stream = MemberStream(io.BytesIO(b"x" * 1000), limit=600, name="m")
    assert stream.read(500) == b"x" * 500
    with pytest.raises(UnsafeArchiveError, match="holds more than 600 B"):
        stream.read(500)


def test_sharding_never_holds_a_bad_zip_member_whole(tree: Path, tmp_path: Path) -> None:
    """A member named like an image but holding 16 MB of junk is reported, not loaded."""
    archive = tmp_path / "release.zip"
    junk_name = "Cube/Good/000/A000_I01.png"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(tree.rglob("*")):
            relative = path.relative_to(tree).as_posix()
            if path.is_file() and relative != junk_name:
                bundle.write(path, relative)
        with bundle.open(junk_name, "w", force_zip64=True) as sink:
            for _ in range(256):
                sink.write(b"\x89PNG junk " + bytes(64 * 1024 - 10))
    with ZipSource([archive]) as source:
        tracemalloc.start()
        try:
            report = shard_tree(source, tmp_path / "out", strict=False, workers=1, progress=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert [problem.kind for problem in report.skipped] == ["unreadable-image"]
    assert peak < 12 * 2**20, f"peak {peak:,} B: the 16 MB member was held whole"


# --------------------------------------------------------------------------- 8. tracebacks where one line is promised


def test_run_out_that_cannot_be_a_folder_is_one_clear_line(shards: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for out, message in ((a_file, "exists and is not a folder"), (a_file / "below", "cannot use")):
        result = runner.invoke(app, ["run", "--protocol", "invariant", "--method", "random", "--data", str(shards),
                                     "--out", str(out), "--executor", "local", "--no-progress"])
        one_clear_line(result)
        assert message in said(result)
    assert a_file.read_text() == "not a folder"


def test_evaluate_out_at_a_folder_fails_before_evaluating_and_leaves_nothing(shards: Path, prediction_file: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import protocols.evaluate

    folder = tmp_path / "results"
    folder.mkdir()
    calls = []
    real = protocols.evaluate.evaluate
    monkeypatch.setattr(protocols.evaluate, "evaluate", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    for out in (folder, tmp_path / "file.txt" / "metrics.json"):
        (tmp_path / "file.txt").write_text("x")
        result = runner.invoke(app, ["evaluate", "--protocol", "invariant", "--data", str(shards), "--predictions", str(prediction_file),
                                     "--out", str(out)])
        one_clear_line(result)
    assert calls == [], "a bad --out is refused before the evaluation"
    assert list(folder.iterdir()) == [], "no stray temporary file"


def test_submit_store_at_a_file_is_one_clear_line(shards: Path, prediction_file: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "store"
    a_file.write_text("not a store")
    result = runner.invoke(app, ["submit", str(prediction_file), "--protocol", "invariant", "--method", "m", "--data", str(shards),
                                 "--store", str(a_file)])
    one_clear_line(result)
    assert "is not a folder" in said(result) and a_file.read_text() == "not a store"


def test_shard_skip_bad_with_a_non_utf8_file_name_finishes_and_reruns(tree: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    os.rename(os.fsencode(copy / "Cube/Good/000/A000_I01.png"), os.fsencode(copy / "Cube/Good/000") + b"/A000_I01\xff.png")
    for attempt in (1, 2):
        result = runner.invoke(app, ["shard", str(copy), str(tmp_path / "out"), "--skip-bad", "--workers", "1"])
        assert result.exit_code == 0, (attempt, result.output)
        assert DatasetInfo.read(tmp_path / "out").skipped, "the bad name is listed"
        card = (tmp_path / "out/README.md").read_text(encoding="utf-8")
        assert "A000_I01\\xff.png" in card
    assert not [path for path in (tmp_path / "out").iterdir() if path.name.endswith(".tmp")]


def test_a_predictions_file_at_a_non_utf8_path_evaluates(shards: Path, prediction_file: Path, tmp_path: Path) -> None:
    from protocols.evaluate import evaluate

    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9sultats"))
    folder.mkdir()
    moved = folder / "p.parquet"
    moved.write_bytes(prediction_file.read_bytes())
    assert evaluate("invariant", shards, moved, progress=False)["mean"] == evaluate("invariant", shards, prediction_file, progress=False)["mean"]
    result = runner.invoke(app, ["evaluate", "--protocol", "invariant", "--data", str(shards), "--predictions", str(moved)])
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- 9. files that nothing removed


_KILLED_SUBMIT = """
import os, signal, sys
import leaderboard.store as store
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
store.os.replace = killed
store.Store(sys.argv[1]).append([{"entry_id": "e", "source": "run", "method": "m", "protocol": "synergy", "dataset": "m2ad",
                                  "resolution": "256", "category": "Bird", "metric": "view_auroc", "value": 0.5}])
"""


def test_a_killed_submits_temporary_part_is_removed_later_and_a_live_ones_kept(tmp_path: Path) -> None:
    from m2ad.ownership import temp_file_name

    board = tmp_path / "board"
    killed = subprocess.run([sys.executable, "-c", _KILLED_SUBMIT, str(board)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = list((board / "data").glob(".*tmp"))
    assert len(leftovers) == 1
    live = temp_file_name(board / "data" / "part-00000000000000000000-live.parquet")  # this (live) process's
    live.write_bytes(b"being written")
    store = Store(board)
    store.compact()
    assert not leftovers[0].exists(), "compaction removes a dead writer's temporary part"
    assert live.exists(), "but never a live writer's"
    _write_then = subprocess.run([sys.executable, "-c", _KILLED_SUBMIT, str(board)], cwd=REPO, capture_output=True, timeout=120)
    assert _write_then.returncode == -signal.SIGKILL
    store.append([{"entry_id": "f", "source": "run", "method": "m", "protocol": "synergy", "dataset": "m2ad", "resolution": "256",
                   "category": "Bird", "metric": "view_auroc", "value": 0.5}])
    assert sorted(path.name for path in (board / "data").glob(".*tmp")) == [live.name], "a later submit removes it too"


@pytest.mark.slow
def test_the_ray_temporary_folders_of_a_run_are_removed(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from m2ad.run import RunConfig, run

    system_temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    try:
        killed = system_temp / "m2ad-ray-0123456789ab"
        _write_marker(killed, _dead_pid(), tmp_path / "an-old-run")  # a killed run's
        (killed / "session_latest").mkdir()
        unrelated = system_temp / "m2ad-ray-not-ours"
        unrelated.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
        config = RunConfig(protocol="invariant", methods=("random",), data=shards, out=tmp_path / "run", executor="ray",
                           local_num_cpus=1, gpus_per_task=0)
        assert run(config, progress=False).ok
        assert sorted(path.name for path in system_temp.iterdir()) == ["m2ad-ray-not-ours"]
    finally:
        import shutil

        shutil.rmtree(system_temp, ignore_errors=True)


# --------------------------------------------------------------------------- 10. names that match nothing


def test_leaderboard_show_refuses_unknown_metric_and_protocol_names(tmp_path: Path) -> None:
    _hostile_store(tmp_path / "board")
    for option, value, message in (("--metric", "bogus", "unknown metric 'bogus'"), ("--metric", "view_auroc,aurocc", "unknown metric 'aurocc'"),
                                   ("--protocol", "synergie", "unknown protocol 'synergie'")):
        result = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path / "board"), option, value])
        one_clear_line(result)
        assert message in said(result) and "known:" in said(result)
    # a metric that a protocol defines but no row holds is a valid filter: it matches no row
    empty = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path / "board"), "--metric", "object_auroc"])
    assert empty.exit_code == 0 and "No leaderboard rows match" in said(empty)
