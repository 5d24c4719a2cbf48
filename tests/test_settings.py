"""Settings owned by the harness: multi-class fits once, few-shot draws shared by every method,
zero-shot without a fit, impossible combinations refused before anything starts, saved fits that
reload and predict identically (``m2ad predict`` too), a fit reused after a kill, the method
cards, the batches methods see, and the progress view."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

import baselines
import protocols
from baselines import weights
from baselines.base import SETTINGS, Batch, MethodCard, Setting
from m2ad import data as m2ad_data
from m2ad import predictions
from m2ad.cli import app
from m2ad.run import RunConfig, RunError, run
from m2ad.run.cell import method_batches, save_state
from m2ad.run.executors import RunProgress
from m2ad.run.plan import check_cards
from m2ad.run.settings import draw_shots, shot_unit
from m2ad.schema import DatasetInfo
from m2ad.shard import shard_tree
from m2ad.synth import generate
from clouds import table_xyz
from probe_method import REGISTER
from textures import method_batch, textures

TESTS = Path(__file__).resolve().parent
CATEGORIES = ("Cube", "Ring")
runner = CliRunner()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 categories x (5 normal specimens, 3 of them for training, + 1 NG) x 120 images of 32 px."""
    root = tmp_path_factory.mktemp("settings")
    tree = generate(root / "tree", categories=CATEGORIES, normal_specimens=5, ng_specimens=1, resolution=32, workers=1, progress=False)
    shard_tree(tree, root / "shards", progress=False)
    return root / "shards"


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(baselines._REGISTRY, "probe", "probe_method:ProbeMethod")
    return "probe"


def _config(shards: Path, out: Path, **changes: Any) -> RunConfig:
    return RunConfig(protocol="invariant", data=shards, out=out, executor="local", **changes)


def _metrics(run_dir: Path) -> dict[tuple[str, str, int, str], float | None]:
    frame = pl.read_parquet(run_dir / "metrics.parquet")
    return {(row["method"], row["category"], row["seed"], row["metric"]): row["value"] for row in frame.iter_rows(named=True)}


def _fit_dirs(run_dir: Path) -> list[str]:
    return sorted(path.parent.name for path in (run_dir / "fits").glob("*/state.safetensors"))


def _train_ids(shards: Path, categories: tuple[str, ...] = CATEGORIES) -> list[str]:
    manifest = m2ad_data.load_manifest(shards)
    return [i for category in categories for i in protocols.get("invariant").train_samples(manifest, category)["sample_id"].to_list()]


# --------------------------------------------------------------------------- multi-class


def test_multi_class_fits_once_and_predicts_every_category(shards: Path, tmp_path: Path, probe: str) -> None:
    fit_log = tmp_path / "fits.log"
    result = run(_config(shards, tmp_path / "multi", methods=("gaussian", "random", probe), setting="multi-class",
                         method_args={probe: {"fit_log": str(fit_log)}}), progress=False)
    assert result.ok and sorted(result.fits_computed) == ["gaussian__all-categories__seed0", "probe__all-categories__seed0"]
    # one fit per trained method on disk (the training-free method has none), trained once, on every category
    assert _fit_dirs(result.run_dir) == ["gaussian__all-categories__seed0", "probe__all-categories__seed0"]
    assert fit_log.read_text().splitlines() == [f"Cube,Ring {len(_train_ids(shards))} multi-class None"]
    training = json.loads((result.run_dir / "fits" / "gaussian__all-categories__seed0" / "training.json").read_text())
    assert training["categories"] == list(CATEGORIES) and training["sample_ids"] == _train_ids(shards)
    # and every category is predicted from that one fit
    for method in ("gaussian", probe):
        cells = [record for record in result.cells if record["method"] == method]
        assert sorted(record["category"] for record in cells) == list(CATEGORIES)
        assert {record["fit_id"] for record in cells} == {f"{method}__all-categories__seed0"}
        assert all(record["status"] == "ok" and record["setting"] == "multi-class" for record in cells)
    assert all(record["fit_id"] is None for record in result.cells if record["method"] == "random")
    # gaussian keeps its statistics per category, so one fit on both equals one fit per category
    single = run(_config(shards, tmp_path / "single", methods=("gaussian",)), progress=False)
    assert _fit_dirs(single.run_dir) == ["gaussian__Cube__seed0", "gaussian__Ring__seed0"]
    multi_metrics = {key: value for key, value in _metrics(result.run_dir).items() if key[0] == "gaussian"}
    assert multi_metrics == _metrics(single.run_dir)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["setting"] == "multi-class" and summary["methods"]["gaussian"]["fits"] == ["gaussian__all-categories__seed0"]


# --------------------------------------------------------------------------- few-shot


def test_few_shot_draws_are_the_same_for_every_method_and_differ_between_seeds(shards: Path, tmp_path: Path, probe: str) -> None:
    fit_log = tmp_path / "fits.log"
    config = _config(shards, tmp_path / "few", methods=("gaussian", probe), setting="few-shot", shots=2, seeds=(0, 1),
                     method_args={probe: {"fit_log": str(fit_log)}})
    result = run(config, progress=False)
    assert result.ok and len(_fit_dirs(result.run_dir)) == 2 * 2 * 2  # method x category x seed

    def recorded(method: str, category: str, seed: int) -> dict[str, Any]:
        return json.loads((result.run_dir / "fits" / f"{method}__{category}__seed{seed}" / "training.json").read_text())

    manifest = m2ad_data.load_manifest(shards)
    for category in CATEGORIES:
        train = protocols.get("invariant").train_samples(manifest, category)
        for seed in (0, 1):
            gaussian, other = recorded("gaussian", category, seed), recorded(probe, category, seed)
            assert gaussian["sample_ids"] == other["sample_ids"] and gaussian["drawn_shots"] == other["drawn_shots"]
            drawn = gaussian["drawn_shots"][category]
            # a shot of M2AD is a specimen with all its images (the synthetic set has views: specimen unit)
            assert gaussian["shot_unit"] == "specimen" and len(drawn) == 2 and len(set(drawn)) == 2
            assert gaussian["sample_ids"] == train.filter(pl.col("specimen").is_in(drawn))["sample_id"].to_list()
            assert len(gaussian["sample_ids"]) == 2 * 120
        assert recorded("gaussian", category, 0)["drawn_shots"] != recorded("gaussian", category, 1)["drawn_shots"]
    # the draw is part of the cells' identity
    plan = json.loads((result.run_dir / "plan.json").read_text())
    assert plan["fits"]["gaussian__Cube__seed0"]["fit_hash"] != plan["fits"]["gaussian__Cube__seed1"]["fit_hash"]
    cells = {record["cell_id"]: record for record in result.cells}
    assert cells["gaussian__Cube__seed0"]["shots"] == 2 and cells["gaussian__Cube__seed0"]["n_train"] == 240
    # the method saw exactly the drawn images, and was told the setting
    assert sorted(fit_log.read_text().splitlines()) == [f"{category} 240 few-shot 2" for category in CATEGORIES for _ in (0, 1)]


def test_shots_are_seeded_nested_and_independent_of_row_order() -> None:
    units = [f"{index:03d}" for index in range(20)]
    two = draw_shots(units, 2, seed=7, category="Cube")
    assert draw_shots(list(reversed(units)), 2, seed=7, category="Cube") == two
    assert draw_shots(units, 1, seed=7, category="Cube") == two[:1] and draw_shots(units, 5, seed=7, category="Cube")[:2] == two
    assert len({tuple(draw_shots(units, 2, seed=seed, category="Cube")) for seed in range(10)}) > 5
    with pytest.raises(RunError, match="has only 20 training units"):
        draw_shots(units, 21, seed=0, category="Cube")


def test_the_shot_unit_comes_from_the_spec(shards: Path) -> None:
    info = DatasetInfo.read(shards)
    assert shot_unit(info) == "specimen"  # M2AD: a specimen with all its images
    assert shot_unit(dataclasses.replace(info, shot_unit="image")) == "image"
    with pytest.raises(RunError, match="shot_unit must be one of"):
        shot_unit(dataclasses.replace(info, shot_unit="view"))


# --------------------------------------------------------------------------- zero-shot


def test_zero_shot_runs_a_training_free_method_with_no_fit(shards: Path, tmp_path: Path) -> None:
    result = run(_config(shards, tmp_path / "zero", methods=("random",), setting="zero-shot"), progress=False)
    assert result.ok and result.fits == [] and result.fits_computed == []
    assert not (result.run_dir / "fits").exists()
    plan = json.loads((result.run_dir / "plan.json").read_text())
    assert plan["fits"] == {} and {cell["fit_id"] for cell in plan["cells"].values()} == {None}
    assert all(record["setting"] == "zero-shot" and record["n_train"] == 0 for record in result.cells)
    # random ignores training, so zero-shot equals its single-class numbers
    assert _metrics(result.run_dir) == _metrics(run(_config(shards, tmp_path / "single", methods=("random",)), progress=False).run_dir)


@pytest.mark.slow
def test_zero_shot_with_train_data_fits_once_on_the_other_dataset(shards: Path, tmp_path: Path) -> None:
    tree = generate(tmp_path / "tree", categories=("Tube",), normal_specimens=3, ng_specimens=0, resolution=32, workers=1, progress=False)
    other = tmp_path / "other"
    shard_tree(tree, other, progress=False)
    tiny = {"encoder": "tiny", "encoder_weights": "random", "input_size": 28, "crop_size": 28, "epochs": 1, "batch_size": 16,
            "warmup_iters": 0, "map_size": 28, "device": "cpu"}
    result = run(_config(shards, tmp_path / "run", methods=("inpformer",), setting="zero-shot", train_data=other,
                         method_args={"inpformer": tiny}), progress=False)
    assert result.ok and _fit_dirs(result.run_dir) == ["inpformer__from-m2ad-synth__seed0"]
    training = json.loads((result.run_dir / "fits" / "inpformer__from-m2ad-synth__seed0" / "training.json").read_text())
    assert training["categories"] == ["Tube"] and training["serves"] == list(CATEGORIES)
    assert training["sample_ids"] == _train_ids(other, ("Tube",))
    assert {record["category"] for record in result.cells} == set(CATEGORIES)
    assert {record["train_dataset"] for record in result.cells} == {"m2ad-synth"}


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("arguments", "message"), [
    (["--method", "gaussian", "--setting", "zero-shot"], "method 'gaussian' does not support the zero-shot setting"),
    (["--method", "inpformer", "--setting", "zero-shot"], "needs a fit, and a zero-shot run trains on nothing; give --train-data"),
    (["--method", "gaussian", "--setting", "few-shot"], "--setting few-shot needs --shots K"),
    (["--method", "gaussian", "--setting", "few-shot", "--shots", "4"], "few-shot with 4 shots: category 'Cube' has only 3 training units"),
    (["--method", "gaussian", "--shots", "2"], "--shots is for the few-shot and multi-class settings"),
    (["--method", "random", "--train-data", "."], "--train-data is for zero-shot runs"),
    (["--method", "gaussian", "--setting", "semi-supervised"], "setting must be one of single-class, multi-class, few-shot, zero-shot"),
    (["--method", "points-only"], "method 'points-only' reads points, but --data (m2ad-synth) has image, mask"),
])
def test_impossible_combinations_are_refused_before_anything_starts(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: list[str], message: str
) -> None:
    class PointsOnly:
        card = MethodCard(inputs=("points",), outputs=("point_map",))
        Config = dataclasses.make_dataclass("PointsOnlyConfig", [])

    monkeypatch.setattr(sys.modules[__name__], "PointsOnly", PointsOnly, raising=False)
    monkeypatch.setitem(baselines._REGISTRY, "points-only", f"{__name__}:PointsOnly")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--protocol", "invariant", *arguments, "--data", str(shards), "--out", str(out),
                                 "--executor", "local", "--no-progress"], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    said = result.output.strip()
    assert len(said.splitlines()) == 1 and message in said and "Traceback" not in said, said
    assert not out.exists(), "refused before any folder or task"


# --------------------------------------------------------------------------- saved fits


SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "btf": {"image_size": 56, "feature_grid": 14, "voxel_size": 0.02, "plane_iterations": 20},
    "btf-rgb": {"image_size": 56, "feature_grid": 14, "voxel_size": 0.02, "plane_iterations": 20, "backbone": "efficientnet_lite0"},
    "cdo": {"backbone": "hrnet_tiny", "expert_weights": "random", "input_size": 56, "epochs": 1, "batch_size": 4, "device": "cpu"},
    "dinomaly": {"encoder": "tiny", "encoder_weights": "random", "input_size": 56, "crop_size": 56, "iterations": 2, "batch_size": 4,
                 "warmup_iters": 0, "map_size": 56, "device": "cpu"},
    "gaussian": {},
    "grnr": {"backbone": "efficientnet_lite0", "image_size": 64},
    "inpformer": {"encoder": "tiny", "encoder_weights": "random", "input_size": 56, "crop_size": 56, "epochs": 2, "batch_size": 4,
                  "warmup_iters": 0, "map_size": 56, "device": "cpu"},
    "inpformer-pp": {"encoder": "tiny", "encoder_weights": "random", "input_size": 56, "crop_size": 56, "epochs": 1, "batch_size": 4,
                     "warmup_iters": 0, "map_size": 56, "device": "cpu", "seg_channels": (8, 4)},
    "msflow": {"backbone": "efficientnet_lite0", "backbone_weights": "random", "input_size": 56, "depths": (1, 1, 1), "cond_channels": 8,
               "epochs": 1, "batch_size": 4, "device": "cpu"},
    "patchcore": {"backbone": "efficientnet_lite0"},
    "pnpt": {"backbone": "dinov2_tiny", "backbone_weights": "random", "image_size": 56, "dim": 16, "heads": 2, "encoder_depth": 1,
             "decoder_depth": 1, "prompts_per_class": 3, "epochs": 1, "batch_size": 4, "device": "cpu"},
    "random": {},
    "rdpp": {"backbone": "wide_resnet50_2_tiny", "encoder_weights": "random", "input_size": 64, "epochs": 1, "batch_size": 4, "device": "cpu"},
    "varad": {"encoder": "tiny", "encoder_weights": "random", "input_size": 56, "epochs": 1, "batch_size": 4, "warmup_iters": 0, "depth": 1,
              "d_state": 4, "device": "cpu"},
}


def _input_batch(card: MethodCard, images: torch.Tensor, prefix: str = "s", seed: int = 0) -> Batch:
    """A batch of ``images`` with what the card reads: the images alone, or with xyz maps."""
    batch = method_batch(images, prefix=prefix)
    if "image" not in card.inputs and "image+xyz" in card.inputs:
        size = images.shape[-1]
        batch.modalities["xyz"] = torch.from_numpy(np.stack([table_xyz(size, seed + k)[0] for k in range(len(images))]))
    return batch


@pytest.mark.parametrize("name", baselines.available())
def test_a_saved_fit_reloads_and_predicts_identically(name: str, tmp_path: Path) -> None:
    assert name in SMALL_CONFIGS, f"add a small config of {name!r} to SMALL_CONFIGS"
    torch.manual_seed(0)
    train, _ = textures(8, 0, size=56, square=14)
    test, _ = textures(4, 1, defect=True, size=56, square=14)
    method = baselines.create(name, **SMALL_CONFIGS[name])
    card = type(method).card
    if card.needs_fit:
        method.fit([_input_batch(card, train[:4]), _input_batch(card, train[4:], seed=4)], Setting())
    scores, maps = method.predict(_input_batch(card, test, prefix="t", seed=8))
    save_state(method.state_dict(), tmp_path / "state.safetensors", {"method": name})
    torch.manual_seed(12345)  # a different global state: the restored method must not depend on it
    restored = baselines.create(name, **SMALL_CONFIGS[name])
    restored.load_state_dict(load_file(tmp_path / "state.safetensors"))
    again_scores, again_maps = restored.predict(_input_batch(card, test, prefix="t", seed=8))
    np.testing.assert_array_equal(again_scores, scores)
    np.testing.assert_array_equal(again_maps, maps)


def test_m2ad_predict_scores_new_data_with_a_saved_fit(shards: Path, tmp_path: Path) -> None:
    result = run(_config(shards, tmp_path / "run", methods=("gaussian",), categories=("Cube",)), progress=False)
    fit_dir = result.run_dir / "fits" / "gaussian__Cube__seed0"
    out = tmp_path / "new.parquet"
    said = runner.invoke(app, ["predict", "--fit", str(fit_dir), "--data", str(shards), "--out", str(out), "--no-progress"])
    assert said.exit_code == 0, said.output
    every_test_image = m2ad_data.load_manifest(shards).filter((pl.col("split") == "test") & (pl.col("category") == "Cube"))
    new = predictions.read(out)
    new_ids, new_scores = new.ids_and_scores()
    assert sorted(new_ids) == sorted(every_test_image["sample_id"].to_list())  # the whole test split, not only Invariant's
    cell = predictions.read(result.run_dir / "cells" / "gaussian__Cube__seed0" / "predictions.parquet")
    cell_ids, cell_scores = cell.ids_and_scores()
    lookup = dict(zip(new_ids, new_scores))
    assert [lookup[sample_id] for sample_id in cell_ids] == list(cell_scores)
    np.testing.assert_array_equal(np.stack(new.lookup(cell_ids[:5]).maps), np.stack(cell.lookup(cell_ids[:5]).maps))
    assert new.info().metadata["fit_id"] == "gaussian__Cube__seed0"
    for arguments, message in (([str(tmp_path)], "holds no finished fit"), ([str(fit_dir), "--split", "val"], "--split must be one of")):
        bad = runner.invoke(app, ["predict", "--fit", arguments[0], *arguments[1:], "--data", str(shards), "--out", str(tmp_path / "x.parquet")],
                            env={"COLUMNS": "400"})
        assert bad.exit_code == 2 and message in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output


@pytest.mark.slow
def test_a_run_killed_while_predicting_reuses_its_fit_and_matches_an_uninterrupted_run(shards: Path, tmp_path: Path, probe: str) -> None:
    fit_log, out = tmp_path / "fits.log", tmp_path / "killed"
    arguments = ["run", "--protocol", "invariant", "--method", probe, "--setting", "multi-class", "--data", str(shards),
                 "--method-arg", f"fit_log={fit_log}", "--method-arg", "predict_delay=0.05", "--batch-size", "8",
                 "--out", str(out), "--executor", "local", "--no-progress"]
    command = [sys.executable, "-c", REGISTER, *arguments]
    environment = {**os.environ, "PYTHONPATH": str(TESTS)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=environment)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:  # until the first cell has loaded the fit
        if any("loaded fit" in path.read_text() for path in (out / "cells").glob("*/log.txt")):
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    fit_dir = out / "fits" / "probe__all-categories__seed0"
    assert (fit_dir / "fit.json").is_file() and not list((out / "cells").glob("*/cell.json")), "killed while predicting"
    stamps = {name: (fit_dir / name).stat().st_mtime_ns for name in ("fit.json", "state.safetensors", "training.json")}

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert resumed.returncode == 0, resumed.stderr
    assert {name: (fit_dir / name).stat().st_mtime_ns for name in stamps} == stamps, "the fit was reused, not recomputed"
    assert len(fit_log.read_text().splitlines()) == 1
    assert len(list((out / "cells").glob("*/cell.json"))) == len(CATEGORIES)
    assert not [path for path in out.rglob("*") if path.name.endswith((".tmp", ".partial"))]

    whole = run(_config(shards, tmp_path / "whole", methods=(probe,), setting="multi-class", batch_size=8,
                        method_args={probe: {"fit_log": str(fit_log), "predict_delay": 0.05}}), progress=False)
    assert whole.ok and _metrics(out) == _metrics(whole.run_dir)


# --------------------------------------------------------------------------- cards and batches


@pytest.mark.parametrize("name", baselines.available())
def test_every_method_card_is_complete_and_the_runner_follows_it(name: str, shards: Path) -> None:
    cls = baselines.method_class(name)
    card = cls.card
    assert isinstance(card, MethodCard) and set(card.settings) <= set(SETTINGS) and card.settings
    assert set(card.weights) <= set(weights.REGISTRY), "weights must be registry names"
    assert "setting" in inspect.signature(cls.fit).parameters, "fit takes the harness's Setting"
    info, manifest = DatasetInfo.read(shards), m2ad_data.load_manifest(shards)
    for setting in SETTINGS:
        for train_info in (None, info):
            if train_info is not None and setting != "zero-shot":
                continue
            config = RunConfig(protocol="invariant", methods=(name,), setting=setting, shots=1 if setting == "few-shot" else None)
            readable = any(all(part in info.modalities for part in wanted.split("+")) for wanted in card.inputs)
            possible = setting in card.settings and not (setting == "zero-shot" and card.needs_fit and train_info is None) and readable
            if possible:
                check_cards(config, info, manifest, train_info)
            else:
                with pytest.raises(RunError, match=name):
                    check_cards(config, info, manifest, train_info)
    with pytest.raises(ValueError, match="settings"):
        MethodCard(settings=("semi-supervised",))


def test_batches_carry_prompt_names_and_specimens_never_ground_truth(shards: Path) -> None:
    fields = {field.name for field in dataclasses.fields(Batch)}
    assert not fields & {"label", "labels", "mask", "masks", "object_label", "defect_types", "detectable"}
    assert {"class_names", "specimens", "modalities"} <= fields
    manifest = m2ad_data.load_manifest(shards)
    test = protocols.get("synergy").test_samples(manifest, "Cube").sort(["specimen", "view", "illumination"])
    loaded = m2ad_data.iter_batches(shards, test, batch_size=7, with_masks=True)
    batches = list(method_batches(loaded, {"Cube": "a cube"}, "view"))
    seen = []
    for batch, masks in batches:
        assert batch.class_names == ["a cube"] * len(batch) and batch.modalities == {}
        rows = test.filter(pl.col("sample_id").is_in(batch.sample_ids))
        assert batch.specimens == rows["specimen"].to_list() and batch.views == rows["view"].to_list()
        np.testing.assert_array_equal(masks, m2ad_data.read_masks(shards, rows))
        seen.extend(batch.sample_ids)
    assert seen == test["sample_id"].to_list()
    groups = [{(specimen, view) for specimen, view in zip(batch.specimens, batch.views)} for batch, _ in batches]
    for index, first in enumerate(groups):  # a (specimen, view) group is never split over two batches
        for second in groups[index + 1 :]:
            assert not first & second
    assert max(len(batch) for batch, _ in batches) <= 7 + 9  # at most a group (10 lights) beyond the batch size
    plain = list(method_batches(m2ad_data.iter_batches(shards, test, batch_size=7), {}, "image"))
    assert [len(batch) for batch, _ in plain[:-1]] == [7] * (len(plain) - 1) and plain[0][0].class_names == ["Cube"] * 7


def test_the_progress_view_shows_each_running_task_stage_images_and_eta() -> None:
    from m2ad.run.plan import CellSpec

    console = Console(file=io.StringIO(), width=200, record=True)
    view = RunProgress(cells=2, cells_done=0, fits=1, fits_done=0, enabled=True, console=console)
    cell = CellSpec(cell_id="gaussian__Cube__seed0", method="gaussian", method_class=object, method_config={}, category="Cube", seed=0,
                    config_hash="", data=Path("."), protocol="invariant", mode="exact", mask_rule="exact", map_dtype="float16",
                    batch_size=32, cell_dir=Path("."))
    view.update(cell, "predict", 10, 100)
    view.update(cell, "predict", 25, 100)
    time.sleep(0.2)
    view.update(cell, "predict", 40, 100)
    console.print(view.progress.make_tasks_table(view.progress.tasks))
    shown = console.export_text()
    line = next(line for line in shown.splitlines() if "gaussian__Cube__seed0" in line)
    assert "predict" in line and "40/100" in line and "images" in line
    assert re.search(r"\d+:\d\d:\d\d", line.split("images")[1]), line  # an ETA, then the elapsed time
    assert "fits 0/1" in shown and "0/2" in shown and "cells" in shown
    view.finished(cell, ok=True)
    assert len(view.progress.tasks) == 1 and view.progress.tasks[0].completed == 1
