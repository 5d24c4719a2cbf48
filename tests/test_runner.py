"""The runner: Ray tasks that really request (fake) GPUs, resuming after a kill, failures that
stay in their cell, the run folder's contents, the CLI, and the embedded default dataset."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import baselines
import m2ad.embedded as embedded
import probe_method as probe_module
import protocols
from m2ad import data as m2ad_data
from m2ad import files, predictions
from m2ad.cli import app
from m2ad.run import RunConfig, RunError, run
from m2ad.shard import shard_tree
from m2ad.synth import generate

CATEGORIES = ("Cube", "Ring")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic M2AD: 2 categories x (3 normal + 2 NG specimens) x 120 images of 32 px."""
    root = tmp_path_factory.mktemp("data")
    tree = generate(root / "tree", categories=CATEGORIES, normal_specimens=3, ng_specimens=2, resolution=32, workers=1, progress=False)
    shard_tree(tree, root / "shards", progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One loopback Ray cluster for the module, with 2 declared (fake) GPUs on this CPU machine."""
    import ray
    import ray.cloudpickle

    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        log_to_driver=False,
    )
    ray.cloudpickle.register_pickle_by_value(probe_module)  # the workers cannot import the tests' folder
    yield
    ray.cloudpickle.unregister_pickle_by_value(probe_module)
    ray.shutdown()


@pytest.fixture
def probe_method(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(baselines._REGISTRY, "probe", "probe_method:ProbeMethod")
    return "probe"


def _metrics(run_dir: Path) -> dict[tuple[str, str, int, str], float | None]:
    frame = pl.read_parquet(run_dir / "metrics.parquet")
    return {(row["method"], row["category"], row["seed"], row["metric"]): row["value"] for row in frame.iter_rows(named=True)}


def _cell_mtimes(run_dir: Path) -> dict[str, int]:
    return {path.parent.name: path.stat().st_mtime_ns for path in (run_dir / "cells").glob("*/cell.json")}


# --------------------------------------------------------------------------- local executor


def test_local_run_writes_a_complete_run_folder(shards: Path, tmp_path: Path) -> None:
    config = RunConfig(protocol="invariant", methods=("random", "gaussian"), data=shards, seeds=(0,), out=tmp_path / "run", executor="local")
    result = run(config, progress=False)
    assert result.ok and result.failed == [] and result.skipped == []
    assert sorted(result.computed) == sorted(f"{m}__{c}__seed0" for m in ("random", "gaussian") for c in CATEGORIES)
    run_dir = tmp_path / "run"
    for name in ("config.json", "environment.json", "summary.json", "metrics.parquet", "logs/run.log"):
        assert (run_dir / name).is_file(), name
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["torch"] and environment["python"] and environment["cpu_count"] >= 1

    protocol = protocols.get("invariant")
    manifest = m2ad_data.load_manifest(shards)
    metrics = _metrics(run_dir)
    assert len(metrics) == 4 * len(protocol.metric_names)
    for method in ("random", "gaussian"):
        for category in CATEGORIES:
            cell_dir = run_dir / "cells" / f"{method}__{category}__seed0"
            record = json.loads((cell_dir / "cell.json").read_text())
            assert record["status"] == "ok" and record["n_test"] > 0
            # the predictions cover exactly the protocol's test samples, in (specimen, view, illumination) order
            test = protocol.test_samples(manifest, category)
            ids, scores = predictions.read(cell_dir / "predictions.parquet").ids_and_scores()
            expected_order = test.sort(["specimen", "view", "illumination"])["sample_id"].to_list()
            assert ids == expected_order
            # image AUROC recomputed independently from the file and the manifest labels
            labels = dict(zip(test["sample_id"].to_list(), test["label"].to_list()))
            reference = roc_auc_score([labels[i] for i in ids], scores)
            assert metrics[(method, category, 0, "image_auroc")] == pytest.approx(reference, abs=1e-12)
            assert record["metrics"]["image_auroc"] == pytest.approx(reference, abs=1e-12)

    summary = json.loads((run_dir / "summary.json").read_text())
    for method in ("random", "gaussian"):
        means = summary["methods"][method]["mean"]
        per_category = [metrics[(method, c, 0, "image_auroc")] for c in CATEGORIES]
        assert means["image_auroc"] == pytest.approx(np.mean(per_category))
    random_means, gaussian_means = summary["methods"]["random"]["mean"], summary["methods"]["gaussian"]["mean"]
    assert abs(random_means["image_auroc"] - 0.5) < 0.1 and abs(random_means["pixel_auroc"] - 0.5) < 0.05
    # with 2 NG specimens per category, image scores mostly rank specimens' poses; pixels tell
    assert gaussian_means["pixel_auroc"] > random_means["pixel_auroc"] + 0.1
    assert gaussian_means["aupro"] > random_means["aupro"]

    # the same command again reuses every cell, and a changed method option recomputes only that method
    before = _cell_mtimes(run_dir)
    again = run(config, progress=False)
    assert again.computed == [] and sorted(again.skipped) == sorted(before)
    assert _cell_mtimes(run_dir) == before
    changed = run(dataclasses.replace(config, method_args={"gaussian": {"blur_sigma": 1.0}}), progress=False)
    assert sorted(changed.computed) == [f"gaussian__{c}__seed0" for c in CATEGORIES]


def test_run_output_evaluates_to_the_same_metrics(shards: Path, tmp_path: Path) -> None:
    """The run's joined predictions file, scored by `m2ad evaluate`'s engine, gives the cell's metrics."""
    from protocols.evaluate import evaluate

    config = RunConfig(protocol="synergy", methods=("gaussian",), data=shards, categories=("Ring",), out=tmp_path / "run", executor="local")
    result = run(config, progress=False)
    cell = result.cells[0]
    joined = result.run_dir / "predictions" / "gaussian__seed0.parquet"
    scored = evaluate("synergy", shards, joined, categories=["Ring"], progress=False)
    for name, value in cell["metrics"].items():
        assert scored["categories"]["Ring"][name] == pytest.approx(value, abs=1e-9), name


@pytest.mark.parametrize(("protocol", "mode"), [("synergy", "streaming"), ("invariant", "compat")])
def test_binned_mode_run_equals_evaluating_its_predictions(shards: Path, tmp_path: Path, protocol: str, mode: str) -> None:
    """A streaming or compat cell scores its own predictions file after writing it: its metrics
    are exactly those of `m2ad evaluate --mode MODE` on that file (and on the joined file)."""
    from protocols.evaluate import evaluate

    config = RunConfig(protocol=protocol, methods=("gaussian",), data=shards, categories=("Cube",), out=tmp_path / "run",
                       executor="local", mode=mode)
    result = run(config, progress=False)
    cell = result.cells[0]
    assert cell["status"] == "ok" and set(cell["metrics"]) == set(protocols.get(protocol).metric_names)
    assert all(value is not None for value in cell["metrics"].values())
    for path in (result.run_dir / "cells" / cell["cell_id"] / "predictions.parquet", result.run_dir / "predictions" / "gaussian__seed0.parquet"):
        scored = evaluate(protocol, shards, path, mode=mode, categories=["Cube"], progress=False)
        assert scored["categories"]["Cube"] == cell["metrics"], path.name
    if mode == "streaming":  # binned finely: close to exact (compat reproduces the coarse official binning)
        exact = evaluate(protocol, shards, result.run_dir / "predictions" / "gaussian__seed0.parquet", categories=["Cube"], progress=False)
        for name, value in cell["metrics"].items():
            assert value == pytest.approx(exact["categories"]["Cube"][name], abs=0.01), name


def test_failing_cell_loses_no_other_cell_and_the_cli_exits_nonzero(shards: Path, tmp_path: Path, probe_method: str) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["run", "--protocol", "invariant", "--method", probe_method, "--method-arg", "fail_category=Ring", "--data", str(shards),
         "--seeds", "0,1", "--out", str(out), "--executor", "local", "--retries", "1", "--no-progress"],
    )
    assert result.exit_code == 1, result.output
    assert "2 cell(s) failed" in result.output
    for seed in (0, 1):
        good = json.loads((out / "cells" / f"probe__Cube__seed{seed}" / "cell.json").read_text())
        assert good["status"] == "ok" and good["metrics"]["image_auroc"] is not None
        # the fit failed twice (the cell is never tried without it) and the cell fails with its error
        fit_dir = out / "fits" / f"probe__Ring__seed{seed}"
        fit = json.loads((fit_dir / "fit.json").read_text())
        assert fit["status"] == "failed" and fit["attempts"] == 2 and "boom in Ring" in fit["error"]
        errors = (fit_dir / "error.txt").read_text()
        assert errors.count("Traceback") == 2 and "attempt 2 of 2 failed" in errors
        assert not (fit_dir / "state.safetensors").exists()
        bad = json.loads((out / "cells" / f"probe__Ring__seed{seed}" / "cell.json").read_text())
        assert bad["status"] == "failed" and f"its fit probe__Ring__seed{seed} failed: RuntimeError: boom in Ring" in bad["error"]
        assert bad["error_file"] == str(fit_dir / "error.txt") and str(fit_dir / "error.txt") in result.output.replace("\n", "")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_cells"] == ["probe__Ring__seed0", "probe__Ring__seed1"]
    assert summary["methods"]["probe"]["complete"] is False
    assert set(summary["methods"]["probe"]["categories"]) == {"Cube"}
    assert {key[1] for key in _metrics(out)} == {"Cube"}


def test_bad_input_is_a_clear_error(shards: Path, tmp_path: Path) -> None:
    cases = [
        (["--protocol", "nope"], "nope"),
        (["--protocol", "invariant", "--method", "nope"], "unknown method 'nope'"),
        (["--protocol", "invariant", "--categories", "Bird"], "categories not in"),
        (["--protocol", "invariant", "--seeds", "a,b"], "--seeds expects"),
        (["--protocol", "invariant", "--method-arg", "sigma=1"], "no option 'sigma'"),
        (["--protocol", "invariant", "--executor", "slurm"], "executor must be one of"),
        (["--protocol", "invariant", "--retries", "-1"], "retries must be"),
    ]
    for arguments, message in cases:
        result = CliRunner().invoke(app, ["run", *arguments, "--data", str(shards), "--out", str(tmp_path / "x"), "--no-progress"])
        assert result.exit_code == 2, (arguments, result.output)
        assert message in result.output and "Traceback" not in result.output, (arguments, result.output)
    with pytest.raises(RunError, match="not a sharded m2ad dataset"):
        run(RunConfig(protocol="invariant", data=tmp_path, out=tmp_path / "y", executor="local"), progress=False)


# --------------------------------------------------------------------------- kill and resume


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing_and_matches_an_uninterrupted_run(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    command = [
        sys.executable, "-c", "from m2ad.cli import app; app()", "run", "--protocol", "invariant", "--method", "gaussian",
        "--data", str(shards), "--categories", "Cube", "--seeds", "0,1,2", "--out", str(out), "--executor", "local", "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not _cell_mtimes(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = _cell_mtimes(out)
    assert 1 <= len(finished) < 3, "the kill should land after the first cell and before the last"
    contents = {cell: (out / "cells" / cell / "cell.json").read_text() for cell in finished}

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = _cell_mtimes(out)
    assert len(after) == 3
    for cell, mtime in finished.items():  # finished cells were not recomputed
        assert after[cell] == mtime
        assert (out / "cells" / cell / "cell.json").read_text() == contents[cell]
    assert not [path for path in out.rglob("*") if path.name.endswith((".tmp", ".partial"))]

    reference = run(
        RunConfig(protocol="invariant", methods=("gaussian",), data=shards, categories=("Cube",), seeds=(0, 1, 2), out=tmp_path / "whole", executor="local"),
        progress=False,
    )
    assert reference.ok
    assert _metrics(out) == _metrics(tmp_path / "whole")


# --------------------------------------------------------------------------- Ray


def test_ray_tasks_request_fake_gpus_and_survive_failures(shards: Path, tmp_path: Path, ray_cluster: None, probe_method: str) -> None:
    fit_marker, predict_marker, fit_log = tmp_path / "fit-crashed-once", tmp_path / "predict-crashed-once", tmp_path / "fits.log"
    config = RunConfig(
        protocol="invariant",
        methods=("probe",),
        method_args={"probe": {"fail_category": "Ring", "crash_marker": str(fit_marker), "predict_crash_marker": str(predict_marker),
                               "require_gpu": True, "fit_log": str(fit_log)}},
        data=shards,
        seeds=(0,),
        out=tmp_path / "run",
        executor="ray",
        gpus_per_task=0.5,
        retries=1,
    )
    result = run(config, progress=False)
    assert result.failed == ["probe__Ring__seed0"]
    run_dir = tmp_path / "run"
    errors = (run_dir / "fits" / "probe__Ring__seed0" / "error.txt").read_text()
    assert errors.count("boom in Ring") >= 2 and "attempt 2 of 2 failed" in errors
    # the Cube fit's first attempt killed its worker and the retry succeeded; then the Cube cell's
    # first attempt killed its worker while predicting, and the retry predicted from the saved fit
    assert fit_marker.exists() and predict_marker.exists()
    fit = json.loads((run_dir / "fits" / "probe__Cube__seed0" / "fit.json").read_text())
    assert fit["status"] == "ok" and fit["attempts"] == 2 and fit["gpu_ids"]
    cube = json.loads((run_dir / "cells" / "probe__Cube__seed0" / "cell.json").read_text())
    assert cube["attempts"] == 2 and cube["status"] == "ok" and cube["gpu_ids"], "the task ran with a GPU assigned"
    assert "attempt 1 of 2 failed" in (run_dir / "cells" / "probe__Cube__seed0" / "error.txt").read_text()
    n_train = protocols.get("invariant").train_samples(m2ad_data.load_manifest(shards), "Cube").height
    assert fit_log.read_text().splitlines() == [f"Cube {n_train} single-class None"], "the retried cell did not refit"
    assert json.loads((run_dir / "config.json").read_text())["gpus_per_task"] == 0.5

    with pytest.raises(RunError, match="asks for 3 GPUs but the Ray cluster has 2"):
        run(dataclasses.replace(config, gpus_per_task=3.0, out=tmp_path / "too-many"), progress=False)


def test_a_real_ray_cluster_passes_the_address_check(ray_cluster: None) -> None:
    import ray

    from m2ad.run import check_ray_address

    check_ray_address(ray.get_runtime_context().gcs_address, timeout=5.0)  # Ray's GCS answers as a gRPC server


# --------------------------------------------------------------------------- embedded dataset


def test_embedded_dataset_is_built_once_under_concurrency_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "DEFAULT_SYNTH_OPTIONS", {"categories": ("Cube",), "normal_specimens": 2, "ng_specimens": 1, "resolution": 16, "seed": 0})
    calls = {"generate": 0, "shard": 0}
    real_generate, real_shard = embedded.synth.generate, embedded.shard.shard_tree

    def counting_generate(*args: Any, **kwargs: Any) -> Path:
        calls["generate"] += 1
        return real_generate(*args, **{**kwargs, "workers": 1})

    def shard_failing_once(*args: Any, **kwargs: Any) -> Any:
        calls["shard"] += 1
        if calls["shard"] == 1:
            raise KeyboardInterrupt("killed while sharding")
        return real_shard(*args, **kwargs)

    monkeypatch.setattr(embedded.synth, "generate", counting_generate)
    monkeypatch.setattr(embedded.shard, "shard_tree", shard_failing_once)
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_default_dataset(tmp_path, progress=False)
    assert not (tmp_path / "datasets" / embedded.DEFAULT_NAME).exists()

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(embedded.ensure_default_dataset(tmp_path, progress=False))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = tmp_path / "datasets" / embedded.DEFAULT_NAME
    assert results == [final] * 3
    assert calls == {"generate": 1, "shard": 2}  # the release tree survived the interruption
    assert set(m2ad_data.load_manifest(final)["category"].unique().to_list()) == {"Cube"}
    assert [path.name for path in (tmp_path / "datasets").iterdir() if path.name.startswith(".")] == []
    assert not list((tmp_path / "datasets").glob("*.lock")), "the build lock goes with the build"


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("M2AD_CACHE", str(tmp_path / "a"))
    assert files.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("M2AD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert files.cache_dir() == tmp_path / "b" / "m2ad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert files.cache_dir() == tmp_path / "home" / ".cache" / "m2ad"


def test_several_seeds_report_mean_and_standard_deviation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """summary.json gives, with three seeds, the per-category mean and sample standard deviation
    over seeds and the spread of the per-seed means over categories; the run's table prints
    mean ± std.  Values recomputed here with the statistics module."""
    import statistics

    from m2ad.cli.run import _print_tables
    from m2ad.run.results import write_results

    names = protocols.get("invariant").metric_names
    rng = np.random.default_rng(0)
    values = {(category, seed): {name: float(rng.random()) for name in names} for category in CATEGORIES for seed in (0, 1, 2)}
    records = [{"method": "gaussian", "category": category, "seed": seed, "status": "ok", "metrics": metrics,
                "cell_id": f"gaussian__{category}__seed{seed}", "config_hash": "h", "fit_id": None}
               for (category, seed), metrics in values.items()]
    config = RunConfig(protocol="invariant", methods=("gaussian",), seeds=(0, 1, 2), executor="local")
    summary = write_results(tmp_path, config, records, [])
    method = json.loads((tmp_path / "summary.json").read_text())["methods"]["gaussian"]
    assert method == json.loads(json.dumps(summary["methods"]["gaussian"]))
    for category in CATEGORIES:
        series = [values[category, seed]["aupro"] for seed in (0, 1, 2)]
        assert method["categories"][category]["aupro"] == pytest.approx(statistics.mean(series), abs=1e-15)
        assert method["categories_std"][category]["aupro"] == pytest.approx(statistics.stdev(series), abs=1e-15)
    seed_means = [statistics.mean(values[category, seed]["image_auroc"] for category in CATEGORIES) for seed in (0, 1, 2)]
    assert [method["seed_means"][str(seed)]["image_auroc"] for seed in (0, 1, 2)] == pytest.approx(seed_means, abs=1e-15)
    assert method["mean_std"]["image_auroc"] == pytest.approx(statistics.stdev(seed_means), abs=1e-15)
    assert method["mean"]["image_auroc"] == pytest.approx(statistics.mean(seed_means), abs=1e-15)
    _print_tables(summary)
    printed = " ".join(capsys.readouterr().out.split())
    assert "mean ± std over 3 seeds" in printed and f"{statistics.mean(seed_means):.3f} ± {statistics.stdev(seed_means):.3f}" in printed
    one_seed = write_results(tmp_path, dataclasses.replace(config, seeds=(0,)), [r for r in records if r["seed"] == 0], [])
    assert one_seed["methods"]["gaussian"]["mean_std"]["image_auroc"] is None
