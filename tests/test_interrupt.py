"""Ctrl-C (SIGINT) during `m2ad run` and `m2ad evaluate`: one message saying what was kept and
how to resume, exit status 130, and the rerun reuses what was kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import probe_method as probe_module
from m2ad import predictions
from m2ad.data import load_manifest
from m2ad.shard import shard_tree
from m2ad.synth import generate

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "COLUMNS": "400"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interrupt")
    generate(root / "tree", categories=["Cube"], normal_specimens=2, ng_specimens=1, resolution=32, workers=1, progress=False)
    return shard_tree(root / "tree", root / "shards", workers=1, progress=False).out


def _said(text: str) -> str:
    return " ".join(text.split())


def test_ctrl_c_during_a_run_says_what_was_kept_and_the_rerun_resumes(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-c", probe_module.REGISTER, "run", "--protocol", "invariant", "--method", "probe", "--method-arg",
               "predict_delay=0.3", "--seeds", "0,1", "--data", str(shards), "--out", str(out), "--executor", "local", "--no-progress",
               "--batch-size", "16"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline and not (
            list(out.glob("cells/*/cell.json")) and len(list(out.glob("cells/*/log.txt"))) == 2):
        time.sleep(0.05)  # until the first cell is finished and the second one has started
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    said = _said(stderr)
    assert process.returncode == 130, stderr
    assert said.startswith("error: interrupted.") and "Traceback" not in stderr
    assert f"Kept in {out}: 1 of 2 cells and 2 of 2 fits, finished" in said, said
    assert "run the same command again" in said and "m2ad run --protocol invariant --method probe" in said
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "(0 fits trained, 1 reused; 1 cells computed, 1 reused from an earlier run)" in _said(resumed.stdout)


_SLOW_EVALUATION = """
import time
import protocols.evaluate as evaluation

def slow(*args, **kwargs):
    print("evaluating", flush=True)
    time.sleep(120)

evaluation.evaluate_category = slow
from m2ad.cli import app
app()
"""


def test_ctrl_c_during_evaluate_says_nothing_was_written(shards: Path, tmp_path: Path) -> None:
    test = load_manifest(shards).filter(pl.col("split") == "test")
    path = predictions.write(tmp_path / "p.parquet", test["sample_id"].to_list(), test["label"].to_numpy() * 1.0, None)
    process = subprocess.Popen([sys.executable, "-c", _SLOW_EVALUATION, "evaluate", str(path), "--protocol", "invariant", "--data",
                                str(shards), "--out", str(tmp_path / "metrics.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=ENV)
    assert process.stdout.readline().strip() == "evaluating"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    said = _said(stderr)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert said.startswith("error: interrupted:") and f"{tmp_path / 'metrics.json'} was not written" in said
    assert "run the same command again" in said and not (tmp_path / "metrics.json").exists()
