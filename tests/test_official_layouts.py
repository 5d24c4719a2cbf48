"""Acceptance: trees in the official MVTec AD and VisA layouts that m2ad did not write.

Each tree is written here with plain PIL and numpy, file by file in the release's naming (not
by the fixture writers): MVTec AD with a greyscale category and ``_mask.png`` masks; VisA with
``split_csv/1cls.csv``, ``.JPG`` images, 4- and 3-digit names whose stems collide, and
class-id masks (one category's as a palette image).  Sharding them at original resolution
gives the right counts and labels and the release's bytes unchanged; ``m2ad evaluate
--protocol standard`` on random predictions equals scikit-learn and a brute-force AUPRO;
``--protocol invariant`` is refused in one line.  Then: an M2AD dataset written in format 1
(before datasets were specs) evaluates to the same numbers as its format-2 twin.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from datasets.table import InMemoryTable
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from m2ad import data, predictions
from m2ad.cli import app
from m2ad.shard import shard_tree
from m2ad.synth import generate
from test_metrics import brute_force_aupro, sklearn_f1max

runner = CliRunner()


def _noise(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _block_mask(rng: np.random.Generator, height: int, width: int, value: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    mask[top : top + 1 + rng.integers(1, height // 2), left : left + 1 + rng.integers(1, width // 2)] = value
    return mask


# ------------------------------------------------------------------------------ the trees


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """bottle (RGB, 24 px) and screw (greyscale, 20 px): what each file is."""
    root = tmp_path_factory.mktemp("mvtec") / "mvtec_anomaly_detection"
    rng = np.random.default_rng(0)
    expected: dict[str, dict] = {}
    plan = {"bottle": (24, 3, 5, 2, {"broken_large": 2, "contamination": 1}), "screw": (20, 1, 4, 2, {"scratch_head": 2})}
    for category, (size, channels, train, good, defects) in plan.items():
        folders = [("train", "good", train), ("test", "good", good)] + [("test", defect, count) for defect, count in defects.items()]
        for split, folder, count in folders:
            for index in range(count):
                path = f"{category}/{split}/{folder}/{index:03d}.png"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_noise(rng, size, size, channels)).save(root / path)
                mask = None
                if folder != "good":
                    mask = f"{category}/ground_truth/{folder}/{index:03d}_mask.png"
                    (root / mask).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_block_mask(rng, size, size, 255), "L").save(root / mask)
                expected[path] = {"category": category, "split": split, "label": int(folder != "good"), "mask": mask, "defect": folder}
        (root / category / "license.txt").write_text("CC BY-NC-SA 4.0")
    (root / "license.txt").write_text("CC BY-NC-SA 4.0")
    (root / "readme.txt").write_text("MVTec AD")
    return root, expected


@pytest.fixture(scope="module")
def visa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """candle (4-digit normals) and capsules (3-digit normals: the anomalies' stems), 30 x 20 JPEGs."""
    root = tmp_path_factory.mktemp("visa") / "VisA_20220922"
    rng = np.random.default_rng(1)
    expected: dict[str, dict] = {}
    rows = []
    for category, digits, normal, anomalous, palette in (("candle", 4, 5, 3, False), ("capsules", 3, 5, 3, True)):
        for index in range(normal):
            path = f"{category}/Data/Images/Normal/{index:0{digits}d}.JPG"
            rows.append([category, "train" if index < 4 else "test", "normal", path, ""])
        for index in range(anomalous):
            path, mask = f"{category}/Data/Images/Anomaly/{index:03d}.JPG", f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            rows.append([category, "test", "anomaly", path, mask])
        for _, split, label, path, mask in rows[-(normal + anomalous):]:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_noise(rng, 20, 30, 3)).save(root / path, format="JPEG", quality=90)
            if mask:
                (root / mask).parent.mkdir(parents=True, exist_ok=True)
                ids = _block_mask(rng, 20, 30, int(rng.integers(1, 4)))
                image = Image.fromarray(ids, "P" if palette else "L")
                if palette:  # ids drawn in near-black: a colour conversion would lose them
                    image.putpalette([channel for value in range(256) for channel in (value, 0, 0)])
                image.save(root / mask)
            expected[path] = {"category": category, "split": split, "label": int(label == "anomaly"), "mask": mask or None}
        (root / category / "image_anno.csv").write_text("image,label,mask\n")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["object", "split", "label", "image", "mask"], *rows])
    (root / "split_csv").mkdir()
    (root / "split_csv/1cls.csv").write_text(buffer.getvalue())
    return root, expected


# ------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize(("layout", "name"), [("mvtec", "mvtec-ad"), ("visa", "visa")])
def test_an_official_tree_shards_byte_identical_with_the_right_labels(layout: str, name: str, request: pytest.FixtureRequest,
                                                                        tmp_path: Path) -> None:
    root, expected = request.getfixturevalue(layout)
    out = tmp_path / "shards"
    report = shard_tree(root, out, workers=1, progress=False)  # the layout is detected
    assert report.dataset == name and report.samples == len(expected)
    manifest = data.load_manifest(out)
    assert sorted(manifest["sample_id"]) == sorted(f"{name}/{path}" for path in expected)
    for (shard_dir,), rows in manifest.group_by("shard_dir"):
        table = datasets.load_from_disk(str(out / shard_dir)).data.table
        images, masks = table.column("image").to_pylist(), table.column("mask").to_pylist()
        officials = table.column("mask_official").to_pylist()
        for row in rows.iter_rows(named=True):
            path = row["sample_id"].removeprefix(f"{name}/")
            truth = expected[path]
            assert (row["category"], row["split"], row["label"], row["object_label"]) == (truth["category"], truth["split"], truth["label"], truth["label"])
            assert row["view"] is None and row["illumination"] is None and "detectable" not in row
            with Image.open(root / path) as source:
                assert (row["width"], row["height"]) == source.size
            assert images[row["shard_row"]]["bytes"] == (root / path).read_bytes()
            if truth["mask"] is None:
                assert not row["has_mask"] and masks[row["shard_row"]] is None
            else:
                assert row["has_mask"]
                assert masks[row["shard_row"]]["bytes"] == officials[row["shard_row"]]["bytes"] == (root / truth["mask"]).read_bytes()
            if layout == "mvtec":
                assert row["defect_types"] == ([] if truth["defect"] == "good" else [truth["defect"]])
    # the reader gives RGB images and masks binarised from the stored values (VisA's ids, palette indices)
    frame = manifest.filter(pl.col("category") == manifest["category"][-1])
    images, masks = data.read_images(out, frame), data.read_masks(out, frame)
    for index, row in enumerate(frame.iter_rows(named=True)):
        path = row["sample_id"].removeprefix(f"{name}/")
        assert np.array_equal(images[index].numpy().transpose(1, 2, 0), np.asarray(Image.open(root / path).convert("RGB")))
        truth = expected[path]["mask"]
        assert np.array_equal(masks[index], np.asarray(Image.open(root / truth)) != 0 if truth else np.zeros(masks[index].shape, bool))


def test_mvtec_greyscale_images_stay_single_channel_in_the_shards(mvtec: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = mvtec
    shard_tree(root, tmp_path / "original", workers=1, progress=False, categories=["screw"])
    row = datasets.load_from_disk(str(tmp_path / "original/screw/test"))[0]
    assert row["image"].mode == "L"  # the release's bytes; m2ad.data converts them
    shard_tree(root, tmp_path / "small", resolution=16, workers=1, progress=False, categories=["screw"])
    row = datasets.load_from_disk(str(tmp_path / "small/screw/test"))[0]
    assert row["image"].mode == "RGB" and row["image"].size == (16, 16)


def test_visa_stems_that_collide_stay_apart(visa: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = visa
    shard_tree(root, tmp_path / "out", workers=1, progress=False, categories=["capsules"])
    ids = set(data.load_manifest(tmp_path / "out")["sample_id"])
    assert {"visa/capsules/Data/Images/Normal/000.JPG", "visa/capsules/Data/Images/Anomaly/000.JPG"} <= ids


# ------------------------------------------------------------------------------ evaluation


def _predict(out: Path, tmp_path: Path) -> tuple[Path, pl.DataFrame, list[np.ndarray], list[float]]:
    """Random scores and maps, at each test image's size, for every test image."""
    test = data.load_manifest(out).filter(pl.col("split") == "test")
    rng = np.random.default_rng(5)
    maps = [rng.random((row["height"], row["width"])).astype(np.float32) for row in test.iter_rows(named=True)]
    scores = [float(rng.random()) for _ in range(test.height)]
    path = tmp_path / "predictions.parquet"
    predictions.write(path, test["sample_id"].to_list(), np.array(scores), maps, map_dtype="float32")
    return path, test, maps, scores


@pytest.mark.parametrize("layout", ["mvtec", "visa"])
def test_standard_equals_scikit_learn_and_a_brute_force_aupro(layout: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    root, expected = request.getfixturevalue(layout)
    out = tmp_path / "shards"
    shard_tree(root, out, workers=1, progress=False)
    path, test, maps, scores = _predict(out, tmp_path)
    result = runner.invoke(app, ["evaluate", "--protocol", "standard", "--data", str(out), "--predictions", str(path),
                                 "--out", str(tmp_path / "metrics.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())["categories"]
    for category in sorted(set(test["category"])):
        rows = [index for index, row in enumerate(test.iter_rows(named=True)) if row["category"] == category]
        labels = np.array([expected[test["sample_id"][i].split("/", 1)[1]]["label"] for i in rows])
        own_scores = np.array([scores[i] for i in rows])
        masks = []
        for i in rows:
            mask = expected[test["sample_id"][i].split("/", 1)[1]]["mask"]
            masks.append(np.asarray(Image.open(root / mask)) != 0 if mask else np.zeros(maps[i].shape, bool))
        own_maps = [maps[i] for i in rows]
        pixels = np.concatenate([m.ravel() for m in own_maps])
        truth = np.concatenate([m.ravel() for m in masks])
        got = metrics[category]
        assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, own_scores), abs=1e-12)
        assert got["image_ap"] == pytest.approx(average_precision_score(labels, own_scores), abs=1e-12)
        assert got["image_f1max"] == pytest.approx(sklearn_f1max(labels, own_scores), abs=1e-12)
        assert got["pixel_auroc"] == pytest.approx(roc_auc_score(truth, pixels), abs=1e-9)
        assert got["pixel_ap"] == pytest.approx(average_precision_score(truth, pixels), abs=1e-9)
        assert got["aupro"] == pytest.approx(brute_force_aupro(own_maps, masks, 0.3), abs=1e-9)


@pytest.mark.parametrize("layout", ["mvtec", "visa"])
def test_invariant_is_refused_in_one_line(layout: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    root, _ = request.getfixturevalue(layout)
    out = tmp_path / "shards"
    shard_tree(root, out, workers=1, progress=False)
    path, *_ = _predict(out, tmp_path)
    result = runner.invoke(app, ["evaluate", "--protocol", "invariant", "--data", str(out), "--predictions", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    said = " ".join(result.output.split())
    assert "error: protocol 'invariant' does not fit the dataset" in said and "it fits: standard" in said


# ------------------------------------------------------------------------------ format 1


def test_a_format_1_dataset_evaluates_to_the_same_numbers(tmp_path: Path) -> None:
    """Shards as m2ad wrote them before datasets were specs: dataset.json without the spec facts
    (format 1) and resized masks as 8-bit 0/255 PNGs.  Every protocol scores them as their
    format-2 twin."""
    tree = generate(tmp_path / "tree", categories=["Cube"], normal_specimens=2, ng_specimens=2, resolution=48, workers=1, progress=False)
    new, old = tmp_path / "new", tmp_path / "old"
    shard_tree(tree, new, resolution=24, workers=1, progress=False)
    shard_tree(tree, old, resolution=24, workers=1, progress=False)
    described = json.loads((old / "dataset.json").read_text())
    for key in ("axes", "modalities", "extra_columns", "shot_unit", "class_names", "protocols", "spec", "geometry", "class_name_presets", "variant"):
        described.pop(key)
    described["format_version"] = 1
    (old / "dataset.json").write_text(json.dumps(described))

    for unit in ("Cube/test", "Cube/train"):
        _masks_as_8_bit(old / unit, tmp_path / "scratch")
    stored = datasets.load_from_disk(str(old / "Cube/test")).data.table.column("mask").drop_null()[0]["bytes"].as_py()
    assert Image.open(io.BytesIO(stored)).mode == "L"
    path, *_ = _predict(new, tmp_path)
    for protocol in ("invariant", "synergy", "standard"):
        for mask_rule in ("exact", "official"):
            results = []
            for shards in (new, old):
                result = runner.invoke(app, ["evaluate", "--protocol", protocol, "--data", str(shards), "--predictions", str(path),
                                             "--mask-rule", mask_rule, "--out", str(tmp_path / "result.json")])
                assert result.exit_code == 0, result.output
                results.append(json.loads((tmp_path / "result.json").read_text()))
            assert results[0]["categories"] == results[1]["categories"] and results[0]["counts"] == results[1]["counts"]
            assert all(value is not None for value in results[0]["mean"].values()), (protocol, mask_rule)


def _masks_as_8_bit(unit: Path, scratch: Path) -> None:
    """Rewrite a unit's masks as 8-bit 0/255 PNGs, as format 1 stored resized masks."""
    dataset = datasets.load_from_disk(str(unit))
    table = dataset.data.table
    for column in ("mask", "mask_official"):
        cells = []
        for cell in table.column(column).to_pylist():
            if cell is not None:
                buffer = io.BytesIO()
                Image.fromarray(np.where(np.asarray(Image.open(io.BytesIO(cell["bytes"]))), 255, 0).astype(np.uint8), "L").save(buffer, format="PNG")
                cell = {"bytes": buffer.getvalue(), "path": None}
            cells.append(cell)
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(cells, type=table.schema.field(column).type))
    datasets.Dataset(InMemoryTable(table), info=dataset.info).save_to_disk(str(scratch))
    marker = (unit / "m2ad-unit.json").read_bytes()
    shutil.rmtree(unit)
    shutil.move(scratch, unit)
    (unit / "m2ad-unit.json").write_bytes(marker)
