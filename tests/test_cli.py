"""The command line as a newcomer meets it: `--version`, `m2ad list`, absolute paths in `info`
and `run`, one-line usage errors, `submit` and `evaluate` taking the predictions file alike, and
a project with its own top-level `baselines`, `protocols` and `leaderboard` packages."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import baselines
import m2ad
import protocols
from baselines import weights
from m2ad import predictions
from m2ad.cli import app
from m2ad.data import load_manifest
from m2ad.datasets import registry
from m2ad.shard import shard_tree
from m2ad.synth import generate

REPO = Path(__file__).resolve().parents[1]
M2AD = Path(sys.executable).parent / "m2ad"
runner = CliRunner()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One category, 2 normal + 1 defective specimens, 32 px."""
    base = tmp_path_factory.mktemp("data")
    generate(base / "tree", categories=["Cube"], normal_specimens=2, ng_specimens=1, resolution=32, workers=1, progress=False)
    shard_tree(base / "tree", base / "shards", workers=1, progress=False)
    return base / "shards"


@pytest.fixture(scope="module")
def prediction_file(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    test = load_manifest(shards).filter(pl.col("split") == "test")
    path = tmp_path_factory.mktemp("pred") / "predictions.parquet"
    predictions.write(path, test["sample_id"].to_list(), test["label"].to_numpy() * 0.5 + 0.1, None)
    return path


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"m2ad {m2ad.__version__} (")


@pytest.mark.parametrize(("kind", "names"), [
    ("datasets", registry.available), ("methods", baselines.available), ("protocols", protocols.available),
    ("weights", lambda: list(weights.REGISTRY)),
])
def test_list_iterates_each_registry(kind: str, names, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    listed = runner.invoke(app, ["list", kind, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [record["name"] for record in json.loads(listed.stdout)] == names()
    table = runner.invoke(app, ["list", kind], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and all(name in table.stdout for name in names())


def test_a_new_registry_entry_is_listed_with_no_other_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(baselines._REGISTRY, "probe", "probe_method:ProbeMethod")
    protocol_module = types.ModuleType("copied_protocol")
    protocol_module.SPEC = dataclasses.replace(protocols.get("invariant"), name="invariant-copy")
    monkeypatch.setitem(sys.modules, "copied_protocol", protocol_module)
    monkeypatch.setitem(protocols.PROTOCOL_MODULES, "invariant-copy", "copied_protocol")
    monkeypatch.setitem(registry.DATASET_PACKAGES, "visa-copy", registry.DATASET_PACKAGES["visa"])
    monkeypatch.setitem(weights.REGISTRY, "probe-weights", weights.REGISTRY["efficientnet_lite0"])
    for kind, name in (("methods", "probe"), ("protocols", "invariant-copy"), ("datasets", "visa-copy"), ("weights", "probe-weights")):
        listed = runner.invoke(app, ["list", kind, "--json"])
        assert listed.exit_code == 0, listed.output
        assert name in [record["name"] for record in json.loads(listed.stdout)]
    wrong = runner.invoke(app, ["list", "metrics"])
    assert wrong.exit_code == 2 and "datasets, methods, protocols, weights" in wrong.output


def test_info_and_run_print_absolute_paths(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shards.parent)
    info = runner.invoke(app, ["info", "shards"], env={"COLUMNS": "400"})
    assert info.exit_code == 0, info.output
    assert f" at {shards.resolve()}" in info.stdout.splitlines()[0]
    done = runner.invoke(app, ["run", "--protocol", "invariant", "--method", "random", "--data", "shards", "--out", "the-run",
                               "--executor", "local", "--no-progress"], env={"COLUMNS": "400"})
    assert done.exit_code == 0, done.output
    assert f"data: {shards.resolve()}" in done.stdout
    assert f"run folder: {(shards.parent / 'the-run').resolve()}" in done.stdout


def test_info_without_a_path_describes_the_embedded_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2AD_CACHE", str(tmp_path / "cache"))
    missing = runner.invoke(app, ["info"])
    assert missing.exit_code == 2
    assert str(tmp_path / "cache" / "datasets" / "m2ad-synth-default") in " ".join(missing.output.split()).replace(" ", "")


TYPOS = [
    ["evaluate", "--protocl", "synergy"],
    ["submit", "p.parquet", "--methd", "x"],
    ["run", "--protocol", "invariant", "--setings", "few-shot"],
    ["run", "--protocol", "invariant", "--batch-size", "many"],
    ["leaderboard", "show", "--formt", "json"],
    ["weights", "fetch"],
    ["shard"],
    ["nosuchcommand"],
]


@pytest.mark.parametrize("arguments", TYPOS, ids=lambda arguments: " ".join(arguments))
def test_usage_errors_are_one_line_with_exit_status_2(arguments: list[str]) -> None:
    result = subprocess.run([str(M2AD), *arguments], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "60"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: m2ad"), result.stderr
    assert "--help" in lines[0] and "Traceback" not in result.stderr and result.stdout == ""


def test_submit_and_evaluate_take_the_predictions_file_the_same_way(shards: Path, prediction_file: Path, tmp_path: Path) -> None:
    common = {"evaluate": ["--protocol", "invariant", "--data", str(shards)],
              "submit": ["--protocol", "invariant", "--data", str(shards), "--method", "m", "--store", str(tmp_path / "board")]}
    for command, options in common.items():
        positional = runner.invoke(app, [command, str(prediction_file), *options])
        assert positional.exit_code == 0, positional.output
        as_option = runner.invoke(app, [command, "--predictions", str(prediction_file), *options, *(["--replace"] if command == "submit" else [])])
        assert as_option.exit_code == 0, as_option.output
        missing = runner.invoke(app, [command, *options])
        assert missing.exit_code == 2 and f"m2ad {command} PREDICTIONS" in " ".join(missing.output.split())
        absent = runner.invoke(app, [command, str(tmp_path / "absent.parquet"), *options])
        assert absent.exit_code == 2 and "no such predictions file" in " ".join(absent.output.split())
        twice = runner.invoke(app, [command, str(prediction_file), "--predictions", str(tmp_path / "other.parquet"), *options])
        assert twice.exit_code == 2 and "give one" in twice.output


_USER_PROJECT_SCRIPT = """
import sys
from m2ad.run import RunConfig, run
import baselines, leaderboard.store, protocols.evaluate
result = run(RunConfig(protocol="invariant", methods=("random",), data=sys.argv[1], out="script-run", executor="local"), progress=False)
assert result.ok and baselines.__file__.startswith(sys.argv[2]), baselines.__file__
print("script ok", protocols.evaluate.__file__)
"""


@pytest.mark.slow
def test_a_project_with_its_own_baselines_protocols_and_leaderboard_runs_m2ad(shards: Path, tmp_path: Path) -> None:
    project = tmp_path / "my-project"
    for name in m2ad.SIBLING_PACKAGES:
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"raise ImportError('the project\\'s own {name} was imported')\n")
    (project / "script.py").write_text(textwrap.dedent(_USER_PROJECT_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(project)}  # even first on the path
    script = subprocess.run([sys.executable, "script.py", str(shards), str(m2ad.INSTALL_ROOT)], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert script.returncode == 0 and "script ok" in script.stdout, script.stderr[-3000:]
    module = subprocess.run([sys.executable, "-m", "m2ad", "list", "methods", "--json"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert module.returncode == 0, module.stderr[-3000:]
    assert [record["name"] for record in json.loads(module.stdout)] == baselines.available()
    # Ray's workers put the driver's current folder first on their sys.path
    on_ray = subprocess.run([str(M2AD), "run", "--protocol", "invariant", "--method", "random", "--data", str(shards), "--out", "ray-run",
                             "--no-progress"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert on_ray.returncode == 0, (on_ray.stdout + on_ray.stderr)[-3000:]
    assert json.loads((project / "ray-run" / "cells" / "random__Cube__seed0" / "cell.json").read_text())["status"] == "ok"
