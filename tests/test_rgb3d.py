"""The RGB + 3-D datasets: the ``xyz``, ``depth`` and ``normals`` modalities, MVTec 3D-AD and
Eyecandies trees written by hand in their official layouts, their protocols against
independent references (scikit-learn, a brute-force AUPRO, a literal 3D-ADS loop), the md5
check of the MVTec 3D-AD archive, the leaderboard tables, and the command line end to end."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage
from servers import FileServer
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

import baselines
import protocols
from baselines.base import Batch, MethodCard, Setting
from leaderboard.aggregate import split_tables, summarize
from leaderboard.store import Store
from leaderboard.submit import submit
from m2ad.cli import app
from m2ad.data import read_images, read_masks, read_modality
from m2ad.datasets import get
from m2ad.download import DownloadError, download_dataset
from m2ad.metrics import pixel_metrics, sampled_aupro
from m2ad.modalities import get as modality
from m2ad.modalities.base import Encoded, Refused, ResizeLimits
from m2ad.modalities.dense import resize_nearest
from m2ad.predictions import read as read_predictions
from m2ad.predictions import write as write_predictions
from m2ad.run import RunConfig, run
from m2ad.schema import MANIFEST_FILE, DatasetInfo
from m2ad.shard import ShardError, shard_tree
from protocols.evaluate import evaluate

RNG = np.random.default_rng(7)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _xyz(height: int, width: int, seed: int) -> np.ndarray:
    """An organised cloud with a no-data border and a no-data hole."""
    rng = np.random.default_rng(seed)
    points = rng.normal(0, 30, (height, width, 3)).astype(np.float32)
    points[:2] = 0
    points[:, -3:] = 0
    points[height // 2, width // 2] = 0
    return points


# ------------------------------------------------------------------------------ modalities


def _pil_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An independent reference of the documented rule: target pixel (i, j) takes the source
    pixel under its centre, ``floor((i + 1/2) * H / h)``, in exact rational arithmetic (PIL's
    NEAREST filter computes the same centre in floating point and can land one pixel off on an
    exact boundary, e.g. 16 -> 10 rows at row 7)."""
    from fractions import Fraction

    width, height = size
    rows = [int((Fraction(2 * i + 1, 2) * array.shape[0]) // height) for i in range(height)]
    columns = [int((Fraction(2 * j + 1, 2) * array.shape[1]) // width) for j in range(width)]
    return array[np.ix_(rows, columns)]


@pytest.mark.parametrize(("source", "target"), [((40, 30), (16, 12)), ((30, 40), (9, 7)), ((7, 5), (21, 15)), ((13, 13), (13, 13)), ((64, 48), (1, 1))])
def test_nearest_resize_takes_the_pixel_under_each_centre_and_never_blends_no_data(source: tuple[int, int], target: tuple[int, int]) -> None:
    width, height = source
    array = _xyz(height, width, seed=width * height)
    resized = resize_nearest(array, target)
    assert resized.shape == (target[1], target[0], 3)
    np.testing.assert_array_equal(resized, _pil_nearest(array, target))
    pil = Image.fromarray(array[..., 0], mode="F").resize(target, Image.Resampling.NEAREST)
    assert np.mean(np.asarray(pil) == resized[..., 0]) > 0.7  # PIL's float centres agree away from exact boundaries
    source_points = {tuple(point) for point in array.reshape(-1, 3)}
    assert all(tuple(point) in source_points for point in resized.reshape(-1, 3))  # no invented point


def _primary(width: int, height: int, stored: tuple[int, int] | None = None) -> Encoded:
    return Encoded({"image": None}, (width, height), stored or (width, height))


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="rgb" if array.shape[-1] == 3 else "minisblack")
    return buffer.getvalue()


def test_xyz_keeps_the_release_bytes_resizes_by_nearest_and_refuses_bad_maps() -> None:
    xyz = modality("xyz")
    array = _xyz(24, 32, seed=1)
    data = _tiff(array)
    original = xyz.encode(io.BytesIO(data), "a.tiff", ResizeLimits("original"), _primary(32, 24))
    assert original.columns == {"xyz": None} and original.stored == (32, 24)  # the writer stores the file unchanged
    out = np.empty(xyz.slot(24, 32)[0], np.float32)
    xyz.decode_into(data, out)
    np.testing.assert_array_equal(out, array.transpose(2, 0, 1))
    resized = xyz.encode(io.BytesIO(data), "a.tiff", ResizeLimits(16), _primary(32, 24, (16, 12)))
    out = np.empty(xyz.slot(12, 16)[0], np.float32)
    xyz.decode_into(resized.columns["xyz"], out)
    np.testing.assert_array_equal(out, _pil_nearest(array, (16, 12)).transpose(2, 0, 1))
    bad = {"xyz-size": _tiff(array[:, :31]), "xyz-format": _tiff(array[..., :2]),
           "xyz-format ": _tiff(np.where(array == 0, np.nan, array).astype(np.float32)),
           " xyz-format": _tiff((array * 0).astype(np.int16))}
    for kind, content in bad.items():
        with pytest.raises(Refused) as refused:
            xyz.encode(io.BytesIO(content), "a.tiff", ResizeLimits("original"), _primary(32, 24))
        assert refused.value.kind == kind.strip() and "\n" not in str(refused.value)


def test_depth_and_normals_decode_as_documented_and_refuse_bad_maps() -> None:
    depth, normals = modality("depth"), modality("normals")
    values = RNG.integers(0, 65536, (12, 10)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    out = np.empty(depth.slot(12, 10)[0], np.float32)
    depth.decode_into(buffer.getvalue(), out)
    np.testing.assert_allclose(out, values / 65535.0, rtol=1e-6)
    resized = depth.encode(io.BytesIO(buffer.getvalue()), "d.png", ResizeLimits(5), _primary(10, 12, (4, 5)))
    out = np.empty(depth.slot(5, 4)[0], np.float32)
    depth.decode_into(resized.columns["depth"], out)
    np.testing.assert_allclose(out, _pil_nearest(values.astype(np.float32), (4, 5)) / 65535.0, rtol=1e-6)
    rgb = RNG.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG")
    out = np.empty(normals.slot(12, 10)[0], np.float32)
    normals.decode_into(buffer.getvalue(), out)
    np.testing.assert_allclose(out, rgb.transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    assert out.min() >= -1 and out.max() <= 1
    grey = io.BytesIO()
    Image.fromarray(rgb[..., 0]).save(grey, format="PNG")
    for name, content, kind in (("depth", grey.getvalue(), "depth-format"), ("normals", grey.getvalue(), "normals-format"),
                                ("depth", buffer.getvalue(), "depth-format")):
        with pytest.raises(Refused) as refused:
            modality(name).encode(io.BytesIO(content), "x.png", ResizeLimits("original"), _primary(10, 12))
        assert refused.value.kind == kind
    with pytest.raises(Refused) as refused:
        normals.encode(io.BytesIO(buffer.getvalue()), "x.png", ResizeLimits("original"), _primary(11, 12))
    assert refused.value.kind == "normals-size"


# ------------------------------------------------------------------------------ MVTec 3D-AD by hand

SCANS = {  # (split, defect, stem) -> has a defect region
    ("train", "good", "000"): False, ("train", "good", "001"): False, ("train", "good", "002"): False,
    ("validation", "good", "000"): False,
    ("test", "good", "000"): False, ("test", "good", "001"): False,
    ("test", "crack", "000"): True, ("test", "crack", "001"): True, ("test", "hole", "000"): True,
}  # fmt: skip


def _mvtec_3d_tree(root: Path, size: tuple[int, int] = (20, 16)) -> dict[str, np.ndarray]:
    """A tree in the official layout, under a wrapper folder, written without m2ad's fixture;
    returns the xyz map of each RGB path."""
    width, height = size
    clouds = {}
    for category in ("bagel", "tire"):
        for number, ((split, defect, stem), anomalous) in enumerate(SCANS.items()):
            folder = root / "mvtec_3d_anomaly_detection" / category / split / defect
            rgb = f"mvtec_3d_anomaly_detection/{category}/{split}/{defect}/rgb/{stem}.png"
            _png(root / rgb, RNG.integers(0, 256, (height, width, 3)).astype(np.uint8), "RGB")
            (folder / "xyz").mkdir(parents=True, exist_ok=True)
            clouds[rgb] = _xyz(height, width, seed=number)
            tifffile.imwrite(folder / f"xyz/{stem}.tiff", clouds[rgb], photometric="rgb")
            if split == "test":
                mask = np.zeros((height, width), np.uint8)
                if anomalous:
                    mask[3 + number % 4 : 7 + number % 4, 5:9] = 255
                    mask[height - 2, width - 2] = 255  # a second, one-pixel region
                _png(folder / f"gt/{stem}.png", mask, "L")
        (root / "mvtec_3d_anomaly_detection" / category / "calibration").mkdir(parents=True)
        (root / "mvtec_3d_anomaly_detection" / category / "calibration/camera_parameters.json").write_text("{}")
        (root / "mvtec_3d_anomaly_detection" / category / "class_ids.json").write_text("{}")
    (root / "mvtec_3d_anomaly_detection/readme.txt").write_text("MVTec 3D-AD")
    return clouds


@pytest.fixture(scope="module")
def mvtec_3d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray], Path, Path]:
    root = tmp_path_factory.mktemp("mvtec3d") / "release"
    clouds = _mvtec_3d_tree(root)
    original = tmp_path_factory.mktemp("mvtec3d-original")
    shard_tree(root, original, workers=1, progress=False)
    resized = tmp_path_factory.mktemp("mvtec3d-10")
    shard_tree(root, resized, resolution=10, workers=1, progress=False)
    return root, clouds, original, resized


def test_an_mvtec_3d_tree_written_by_hand_shards_as_released(mvtec_3d: tuple[Path, dict[str, np.ndarray], Path, Path]) -> None:
    _, clouds, original, resized = mvtec_3d
    info = DatasetInfo.read(original)
    assert info.dataset == "mvtec-3d" and info.modalities == ("image", "mask", "xyz") and "mvtec-3d" in info.protocols
    manifest = pl.read_parquet(original / MANIFEST_FILE)
    per_category = len([key for key in SCANS if key[0] != "validation"])
    assert manifest.height == 2 * per_category
    assert manifest.filter(pl.col("split") == "train").height == 2 * 3  # validation is not sharded
    test = manifest.filter(pl.col("split") == "test")
    assert test["has_mask"].all() and test["label"].to_list() == [int(d != "good") for d in test["defect_types"].list.first().fill_null("good")]
    assert sorted(test["specimen"].unique().to_list()) == ["test/crack/000", "test/crack/001", "test/good/000", "test/good/001", "test/hole/000"]
    assert "validation" in (original / "README.md").read_text()
    xyz = read_modality(original, manifest, "xyz")
    for row, cloud in zip(manifest["sample_id"].to_list(), xyz):
        np.testing.assert_array_equal(cloud, clouds["mvtec_3d_anomaly_detection/" + row.split("/", 1)[1]].transpose(2, 0, 1))
    small = pl.read_parquet(resized / MANIFEST_FILE)
    assert set(zip(small["width"], small["height"])) == {(10, 10)}  # the spec's geometry is square
    xyz = read_modality(resized, small, "xyz")
    for row, cloud in zip(small["sample_id"].to_list(), xyz):
        source = clouds["mvtec_3d_anomaly_detection/" + row.split("/", 1)[1]]
        np.testing.assert_array_equal(cloud, _pil_nearest(source, (10, 10)).transpose(2, 0, 1))
    masks = read_masks(original, test)
    assert [bool(mask.any()) for mask in masks] == [bool(label) for label in test["label"]]


def test_a_broken_mvtec_3d_tree_gives_one_problem_per_fault(tmp_path: Path) -> None:
    root = tmp_path / "release"
    _mvtec_3d_tree(root)
    base = root / "mvtec_3d_anomaly_detection"
    (base / "bagel/test/crack/xyz/001.tiff").unlink()
    (base / "tire/test/hole/gt/000.png").unlink()
    (base / "tire/test/hole/xyz/000.tiff").write_bytes(_tiff(np.zeros((16, 19, 3), np.float32)))
    (base / "bagel/test/good/rgb/000.png").unlink()
    with pytest.raises(ShardError) as raised:
        shard_tree(root, tmp_path / "out", workers=1, progress=False)
    found = {(problem.kind, problem.path) for problem in raised.value.problems}
    assert found == {
        ("missing-xyz", "mvtec_3d_anomaly_detection/bagel/test/crack/xyz/001.tiff"),
        ("missing-mask", "mvtec_3d_anomaly_detection/tire/test/hole/gt/000.png"),
        ("missing-image", "mvtec_3d_anomaly_detection/bagel/test/good/rgb/000.png"),
    }
    (base / "tire/test/hole/gt").mkdir(exist_ok=True)
    _png(base / "tire/test/hole/gt/000.png", np.zeros((16, 20), np.uint8), "L")
    report = shard_tree(root, tmp_path / "skipped", workers=1, progress=False, strict=False)
    assert ("xyz-size", "mvtec_3d_anomaly_detection/tire/test/hole/xyz/000.tiff") in {(p.kind, p.path) for p in report.skipped}


# ------------------------------------------------------------------------------ Eyecandies by hand


def _eyecandies_tree(root: Path, size: int = 12) -> dict[str, tuple[np.ndarray, float, float]]:
    """Two categories: train (11 samples: two-digit indices), val, test_public (4 samples,
    2 anomalous), test_private, as the release names them; returns each depth PNG's values and range."""
    depths = {}
    splits = {"train": [None] * 11, "val": [None] * 2, "test_public": [0, 1, 0, 1], "test_private": [None] * 2}
    for category in ("CandyCane", "Lollipop"):
        for split, labels in splits.items():
            digits = len(str(len(labels) - 1))
            for index, label in enumerate(labels):
                prefix = f"{category}/{split}/data/{index:0{digits}d}_"
                for light in range(6):
                    _png(root / f"{prefix}image_{light}.png", RNG.integers(0, 256, (size, size, 3)).astype(np.uint8), "RGB")
                values = RNG.integers(0, 65536, (size, size)).astype(np.uint16)
                _png(root / f"{prefix}depth.png", values)
                low, high = 0.25 + index / 100, 0.75
                (root / f"{prefix}info_depth.yaml").write_text(f"normalization:\n  max: {high}\n  min: {low}\n")
                depths[prefix] = (values, low, high)
                _png(root / f"{prefix}normals.png", RNG.integers(0, 256, (size, size, 3)).astype(np.uint8), "RGB")
                (root / f"{prefix}pose.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
                (root / f"{prefix}obj_params.yaml").write_text("colour: red\n")
                if label is not None:
                    (root / f"{prefix}metadata.yaml").write_text(f"anomalous: {label}\n")
                    mask = np.zeros((size, size), np.uint8)
                    if label:
                        mask[2:5, 3:7] = 255
                    for item in ("mask", "bumps_mask", "dents_mask"):
                        _png(root / f"{prefix}{item}.png", mask, "L")
    return depths


@pytest.fixture(scope="module")
def eyecandies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[np.ndarray, float, float]], Path]:
    root = tmp_path_factory.mktemp("eyecandies") / "release"
    depths = _eyecandies_tree(root)
    out = tmp_path_factory.mktemp("eyecandies-shards")
    shard_tree(root, out, workers=1, progress=False)
    return root, depths, out


def test_an_eyecandies_tree_written_by_hand_shards_six_lights_per_sample(eyecandies: tuple[Path, dict, Path]) -> None:
    _, depths, out = eyecandies
    info = DatasetInfo.read(out)
    assert info.dataset == "eyecandies" and info.axes == ("illumination",) and info.extra_columns == ("depth_min", "depth_max")
    manifest = pl.read_parquet(out / MANIFEST_FILE)
    assert manifest.height == 2 * 6 * (11 + 4)  # val and test_private are not sharded
    assert set(manifest["illumination"]) == {f"image_{light}" for light in range(6)}
    test = manifest.filter(pl.col("split") == "test")
    assert test.group_by("specimen").agg(pl.col("label").n_unique()).get_column("label").to_list() == [1] * 4
    assert sorted(test.unique("specimen")["label"].to_list()) == [0, 0, 1, 1] * 1 and test["has_mask"].all()
    assert set(manifest.filter(pl.col("split") == "train")["specimen"].str.slice(6).to_list()) == {f"{index:02d}" for index in range(11)}
    card = (out / "README.md").read_text()
    assert "test_private" in card and "labels withheld" in card
    depth = read_modality(out, manifest, "depth")
    for row, values, low, high in zip(manifest.iter_rows(named=True), depth, manifest["depth_min"], manifest["depth_max"]):
        prefix = row["sample_id"].split("/", 1)[1].rsplit("image_", 1)[0]
        expected, want_low, want_high = depths[prefix]
        np.testing.assert_allclose(values, expected / 65535.0, rtol=1e-6)
        assert (low, high) == pytest.approx((want_low, want_high))
        metric = values * (high - low) + low  # the documented recipe for metres
        np.testing.assert_allclose(metric, expected / 65535.0 * (want_high - want_low) + want_low, rtol=1e-5)
    assert read_modality(out, manifest.head(6), "normals").shape == (6, 3, 12, 12)
    first = manifest.filter((pl.col("specimen") == manifest["specimen"][0]) & (pl.col("category") == manifest["category"][0]))
    images = read_images(out, first).numpy()
    assert images.shape == (6, 3, 12, 12) and len({image.tobytes() for image in images}) == 6


def test_a_broken_eyecandies_tree_gives_one_problem_per_fault(tmp_path: Path) -> None:
    root = tmp_path / "release"
    _eyecandies_tree(root)
    (root / "CandyCane/test_public/data/1_image_4.png").unlink()
    (root / "CandyCane/test_public/data/2_metadata.yaml").write_text("anomalous: perhaps\n")
    (root / "Lollipop/train/data/03_info_depth.yaml").write_text("normalization: {min: low}\n")
    (root / "Lollipop/test_public/data/3_mask.png").unlink()
    (root / "Lollipop/test_public/data/0_depth.jpg").write_bytes(b"x")
    with pytest.raises(ShardError) as raised:
        shard_tree(root, tmp_path / "out", workers=1, progress=False)
    found = {(problem.kind, problem.path) for problem in raised.value.problems}
    assert found == {
        ("missing-image", "CandyCane/test_public/data/1_image_4.png"),
        ("bad-meta", "CandyCane/test_public/data/2_metadata.yaml"),
        ("bad-meta", "Lollipop/train/data/03_info_depth.yaml"),
        ("missing-mask", "Lollipop/test_public/data/3_mask.png"),
        ("unknown-file", "Lollipop/test_public/data/0_depth.jpg"),
    }


# ------------------------------------------------------------------------------ protocols


def _brute_aupro(maps: list[np.ndarray], masks: list[np.ndarray], limit: float = 0.3) -> float:
    """The official definition, literally: at every distinct score t, FPR = share of GT-0 pixels
    >= t, PRO = mean over 8-connected regions of the share >= t; (0,0) and (1,1) added;
    trapezoids up to ``limit``, PRO interpolated there, divided by ``limit``."""
    regions, negatives = [], []
    for anomaly_map, mask in zip(maps, masks):
        labels, count = ndimage.label(mask != 0, structure=np.ones((3, 3)))
        regions += [anomaly_map[labels == index] for index in range(1, count + 1)]
        negatives.append(anomaly_map[labels == 0])
    negative = np.concatenate(negatives)
    points = [(0.0, 0.0)]
    for threshold in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        points.append((float(np.mean(negative >= threshold)), float(np.mean([np.mean(r >= threshold) for r in regions]))))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def _adversarial_maps(frame: pl.DataFrame, masks: np.ndarray) -> list[np.ndarray]:
    """Quantised maps (ties), a constant map, a map that is high exactly on a one-pixel region."""
    maps = [np.floor(RNG.random(mask.shape) * 5).astype(np.float32) / 5 for mask in masks]
    maps[0][:] = 0.4
    maps[-1] = np.where(masks[-1], 0.9, maps[-1]).astype(np.float32)
    return maps


def test_the_mvtec_3d_protocol_matches_scikit_learn_and_a_brute_force_aupro(mvtec_3d: tuple, tmp_path: Path) -> None:
    _, _, original, _ = mvtec_3d
    manifest = pl.read_parquet(original / MANIFEST_FILE)
    test = manifest.filter(pl.col("split") == "test")
    masks = read_masks(original, test)
    maps = _adversarial_maps(test, masks)
    scores = np.round(RNG.random(test.height), 1)  # ties between images
    path = write_predictions(tmp_path / "p.parquet", test["sample_id"].to_list(), scores.tolist(), maps, map_dtype="float32")
    result = evaluate("mvtec-3d", original, path, progress=False)
    assert list(result["mean"]) == list(protocols.get("mvtec-3d").metric_names)
    for category, metrics in result["categories"].items():
        rows = np.flatnonzero((test["category"] == category).to_numpy())
        labels = test["label"].to_numpy()[rows]
        assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores[rows]), abs=1e-12)
        assert metrics["image_ap"] == pytest.approx(average_precision_score(labels, scores[rows]), abs=1e-12)
        pixels, truth = np.concatenate([maps[i].ravel() for i in rows]), np.concatenate([masks[i].ravel() for i in rows])
        assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(truth, pixels), abs=1e-12)
        assert metrics["aupro"] == pytest.approx(_brute_aupro([maps[i] for i in rows], [masks[i] for i in rows]), abs=1e-9)
    for bad in ({"mode": "compat"}, {"mask_rule": "official"}):
        with pytest.raises(ValueError) as refused:
            evaluate("mvtec-3d", original, path, progress=False, **bad)
        assert "\n" not in str(refused.value) and "protocol 'mvtec-3d'" in str(refused.value)


def test_the_eyecandies_protocol_fuses_the_six_lights(eyecandies: tuple, tmp_path: Path) -> None:
    _, _, out = eyecandies
    manifest = pl.read_parquet(out / MANIFEST_FILE)
    test = protocols.get("eyecandies").test_samples(manifest, "CandyCane")
    masks = read_masks(out, test)
    maps = _adversarial_maps(test, masks)
    scores = np.round(RNG.random(test.height), 1)
    path = write_predictions(tmp_path / "p.parquet", test["sample_id"].to_list(), scores.tolist(), maps, map_dtype="float32")
    result = evaluate("eyecandies", out, path, categories=["CandyCane"], progress=False)["categories"]["CandyCane"]
    specimens = test["specimen"].to_list()
    units = sorted(set(specimens))
    members = [[i for i, s in enumerate(specimens) if s == unit] for unit in units]
    assert all(len(rows) == 6 for rows in members)
    unit_labels = [int(test["label"][rows].max()) for rows in members]
    assert result["view_auroc"] == pytest.approx(roc_auc_score(unit_labels, [scores[rows].mean() for rows in members]), abs=1e-12)
    fused = [np.mean([maps[i].astype(np.float64) for i in rows], axis=0).astype(np.float32) for rows in members]
    fused_masks = [np.any([masks[i] for i in rows], axis=0) for rows in members]
    pixels, truth = np.concatenate([m.ravel() for m in fused]), np.concatenate([m.ravel() for m in fused_masks])
    assert result["view_pixel_auroc"] == pytest.approx(roc_auc_score(truth, pixels), abs=1e-12)
    assert result["view_aupro"] == pytest.approx(_brute_aupro(fused, fused_masks), abs=1e-9)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(test["label"].to_numpy(), scores), abs=1e-12)


def test_protocols_that_do_not_fit_are_refused_in_one_line(mvtec_3d: tuple, eyecandies: tuple, tmp_path: Path) -> None:
    _, _, shards_3d, _ = mvtec_3d
    _, _, shards_ec = eyecandies
    for data, protocol, needle in ((shards_3d, "eyecandies", "the axis 'illumination'"), (shards_3d, "synergy", "the axis 'view'"),
                                   (shards_ec, "mvtec-3d", "the modality 'xyz'")):
        manifest = pl.read_parquet(data / MANIFEST_FILE).filter(pl.col("split") == "test")
        path = write_predictions(tmp_path / f"{protocol}.parquet", manifest["sample_id"].to_list(), [0.5] * manifest.height)
        with pytest.raises(ValueError) as refused:
            evaluate(protocol, data, path, progress=False)
        assert "\n" not in str(refused.value) and needle in str(refused.value) and "does not fit the dataset" in str(refused.value)


def _literal_3d_ads_aupro(maps: list[np.ndarray], masks: list[np.ndarray], limit: float = 0.3, thresholds: int = 100) -> float:
    """3D-ADS's au_pro_util, step by step (component pointers, the (1, 1) start, MVTec's trapezoid)."""
    components, ok = [], []
    for anomaly_map, mask in zip(maps, masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), int))
        ok.extend(anomaly_map[labels == 0].astype(np.float64).tolist())
        components += [sorted(anomaly_map[labels == k + 1].astype(np.float64).tolist()) for k in range(count)]
    ok.sort()
    fprs, pros = [1.0], [1.0]
    for position in np.linspace(0, len(ok) - 1, num=thresholds, dtype=int):
        threshold = ok[position]
        fprs.append(1.0 - (position + 1) / len(ok))
        pros.append(sum(1.0 - sum(score <= threshold for score in c) / len(c) for c in components) / len(components))
    x, y = fprs[::-1], pros[::-1]
    area = sum(0.5 * (y[i] + y[i + 1]) * (x[i + 1] - x[i]) for i in range(len(x) - 1) if x[i + 1] <= limit)
    if limit not in x:
        i = next(index for index, value in enumerate(x) if value > limit)
        y_limit = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        area += 0.5 * (y_limit + y[i - 1]) * (limit - x[i - 1])
    return area / limit


@pytest.mark.parametrize("case", ["ties", "constant", "one-pixel", "few-normals"])
def test_sampled_aupro_is_the_3d_ads_computation(case: str) -> None:
    rng = np.random.default_rng(len(case))
    shape = (4, 3, 3) if case == "few-normals" else (5, 14, 11)
    maps = rng.random(shape).astype(np.float32)
    masks = np.zeros(shape, bool)
    masks[1, 2:5, 3:6] = masks[3, 0, 0] = True
    if case == "few-normals":
        masks[:, :, :2] = True  # 12 normal pixels: fewer than the 100 thresholds, positions repeat
    if case == "ties":
        maps = np.floor(maps * 4) / 4
    if case == "constant":
        maps[:] = 0.25
    if case == "one-pixel":
        masks[:] = False
        masks[2, 7, 7] = True
        maps[2, 7, 7] = 2.0
    got = sampled_aupro(list(maps), list(masks))
    assert got == pytest.approx(_literal_3d_ads_aupro(list(maps), list(masks)), abs=1e-12)
    if case == "one-pixel":  # a perfect detector: 1 under both definitions
        assert pixel_metrics(list(maps), list(masks))["aupro"] == pytest.approx(1.0) and got == pytest.approx(1.0)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(sampled_aupro(list(maps), list(np.zeros(shape, bool))))


# ------------------------------------------------------------------------------ download (md5)


def test_the_archive_is_checked_against_its_published_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror without SHA256SUMS: the spec's md5 (here the fixture archive's) verifies it and the
    card says so; a different archive is refused, naming the md5."""
    import hashlib
    from dataclasses import replace

    from m2ad import download

    tree = tmp_path / "tree"
    tree.mkdir()
    get("mvtec-3d").fixture.write(tree, categories=("bagel",), normal_specimens=3, ng_specimens=1, resolution=16, seed=0,
                                  workers=1, progress=False)
    [archive] = get("mvtec-3d").fixture.pack(tree, tmp_path / "release")
    spec = get("mvtec-3d")
    md5 = hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()
    assert spec.file(archive.name).md5 == "d8bb2800fbf3ac88e798da6ae10dc819" and spec.file(archive.name).sha256 is None
    patched = replace(spec, files=(replace(spec.files[0], md5=md5),))
    monkeypatch.setattr(download, "get", lambda name: patched)
    with FileServer({f"mirror/{archive.name}": archive.read_bytes()}) as server:
        report = download_dataset("mvtec-3d", tmp_path / "out", resolution=16, source=f"{server.url}/mirror", cache_dir=tmp_path / "cache",
                                  categories=["bagel"], workers=1, progress=False)
    assert [item.verified for item in report.files] == ["md5"]
    assert "| md5 |" in (tmp_path / "out/README.md").read_text()
    with tarfile.open(tmp_path / "other.tar.xz", "w:xz"):
        pass  # an empty archive: another file than the one the md5 names
    with FileServer({f"mirror/{archive.name}": (tmp_path / "other.tar.xz").read_bytes()}) as server, pytest.raises(DownloadError) as refused:
        download_dataset("mvtec-3d", tmp_path / "out2", resolution=16, source=f"{server.url}/mirror", cache_dir=tmp_path / "cache2",
                         categories=["bagel"], workers=1, progress=False, insecure_skip_verify=True)
    assert f"md5 {md5}" in str(refused.value)


# ------------------------------------------------------------------------------ leaderboard and command line


@pytest.mark.parametrize("dataset", ["mvtec-3d", "eyecandies"])
def test_synth_shard_run_evaluate_and_submit_end_to_end(dataset: str, tmp_path: Path) -> None:
    runner = CliRunner()
    protocol = dataset
    synth = runner.invoke(app, ["synth", str(tmp_path / "tree"), "--dataset", dataset, "--normal-specimens", "4", "--ng-specimens", "2",
                                "--resolution", "32", "--workers", "1", "-c", get(dataset).fixture.default_categories[0]])
    assert synth.exit_code == 0, synth.output
    shard = runner.invoke(app, ["shard", str(tmp_path / "tree"), str(tmp_path / "shards"), "--resolution", "32", "--workers", "1"])
    assert shard.exit_code == 0, shard.output
    methods = ("random", "gaussian") if dataset == "mvtec-3d" else ("random",)
    args = ["run", "--protocol", protocol, "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--executor", "local",
            "--no-progress"]
    for method in methods:
        args += ["--method", method]
    ran = runner.invoke(app, args)
    assert ran.exit_code == 0, ran.output
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    for method in methods:
        predictions = tmp_path / f"run/predictions/{method}__seed0.parquet"
        evaluated = runner.invoke(app, ["evaluate", "--protocol", protocol, "--data", str(tmp_path / "shards"), "--predictions", str(predictions),
                                        "--out", str(tmp_path / f"{method}.json")])
        assert evaluated.exit_code == 0, evaluated.output
        result = json.loads((tmp_path / f"{method}.json").read_text())
        assert result["mean"] == pytest.approx(summary["methods"][method]["mean"], nan_ok=True)
    store = Store(tmp_path / "board")
    submit(tmp_path / "run/predictions/random__seed0.parquet", protocol=protocol, data=tmp_path / "shards", method="random", store=store,
           progress=False)
    tables = [key for key, _ in split_tables(summarize(store.read().filter(pl.col("source") == "submission")))]
    assert [key["protocol"] for key in tables] == [protocol] and tables[0]["dataset"] == f"{dataset}-synth"


# ------------------------------------------------------------------------------ xyz reaches the method


class XyzProbe:
    """A method that reads ``Batch.modalities["xyz"]``: its fit keeps the mean |z| of the training
    maps; its map is |z| minus that mean, its score the map's maximum."""

    name = "xyz-probe"
    card = MethodCard(inputs=("image+xyz",), outputs=("pixel_map",))
    Config = dataclasses.make_dataclass("XyzProbeConfig", [])

    def __init__(self, config: object = None) -> None:
        self.level = torch.zeros(())

    def fit(self, train: object, setting: Setting | None = None) -> None:
        values = [batch.modalities["xyz"][:, 2].abs().mean() for batch in train]
        self.level = torch.stack(values).mean()

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        xyz = batch.modalities["xyz"]
        assert xyz.dtype == torch.float32 and xyz.shape == (len(batch), 3, *batch.images.shape[-2:])
        maps = (xyz[:, 2].abs() - self.level).numpy()
        return maps.reshape(len(batch), -1).max(axis=1), maps

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"level": self.level}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.level = state["level"]


def test_the_runner_hands_xyz_to_a_method_that_reads_it(mvtec_3d: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, clouds, original, _ = mvtec_3d
    monkeypatch.setitem(baselines._REGISTRY, "xyz-probe", "test_rgb3d:XyzProbe")
    result = run(RunConfig(protocol="mvtec-3d", methods=("xyz-probe",), data=original, out=tmp_path / "run", executor="local",
                           map_dtype="float32", batch_size=4), progress=False)
    assert result.ok
    manifest = pl.read_parquet(original / MANIFEST_FILE)
    for category in ("bagel", "tire"):
        train = manifest.filter((pl.col("category") == category) & (pl.col("split") == "train"))
        level = np.mean([np.abs(clouds["mvtec_3d_anomaly_detection/" + sid.split("/", 1)[1]][..., 2]).mean() for sid in train["sample_id"]])
        written = read_predictions(tmp_path / "run/predictions/xyz-probe__seed0.parquet").lookup(manifest.filter(pl.col("split") == "test")["sample_id"])
        assert written.maps is not None
        for sample_id, anomaly_map in zip(written.sample_ids, written.maps):
            if f"/{category}/" in sample_id:
                expected = np.abs(clouds["mvtec_3d_anomaly_detection/" + sample_id.split("/", 1)[1]][..., 2]) - level
                np.testing.assert_allclose(anomaly_map, expected, rtol=1e-5, atol=1e-4)


def test_the_fixture_surface_has_a_measured_table_no_data_beyond_range_and_consistent_depth() -> None:
    from m2ad.datasets.surface import MAX_RANGE, MILLIMETRES_PER_UNIT, TABLE_HEIGHT, render_surface
    from m2ad.render import _camera_frame

    surface = render_surface("Tube", True, 1, 5, 48, 40, [0, 3])
    measured = (surface.xyz != 0).any(axis=-1)
    assert len(surface.images) == 2 and surface.mask is not None and surface.mask.any()
    assert measured[-1].all() and measured[:, 0].any() and not measured[0].all()  # the near table is measured, the far end is not
    table = measured & ~(surface.mask | (np.abs(surface.xyz[..., 2] - TABLE_HEIGHT * MILLIMETRES_PER_UNIT) > 1e-3))
    assert table[-1].all()  # the bottom row sees the table plane
    camera = _camera_frame(30.0)[0]
    along = np.linalg.norm(surface.xyz[table] / MILLIMETRES_PER_UNIT - camera, axis=-1)
    np.testing.assert_allclose(surface.depth[table], along, rtol=1e-5)
    assert surface.depth[~measured].min() > MAX_RANGE
    np.testing.assert_allclose(np.linalg.norm(surface.normals, axis=-1), 1.0, rtol=1e-5)
