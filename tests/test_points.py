"""Point clouds end to end: the PCD and ground-truth readers, a Real3D-AD tree written here by
hand (plain strings and NumPy, not by m2ad) sharded with the right point counts and labels,
the reader's point batches, predictions format v2 (point maps, version-1 files still read),
the real3d-ad protocol against scikit-learn on adversarial inputs, refusals in one line, the
runner (``random`` on points) and a leaderboard board."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

import baselines
import protocols
from baselines.base import Batch
from leaderboard.store import Store
from leaderboard.submit import submit
from m2ad import predictions
from m2ad.cli import app
from m2ad.data import iter_batches, load_manifest, read_images, read_masks, read_points
from m2ad.datasets import get
from m2ad.pointcloud import PointCloudError, read_labelled_text, read_pcd
from m2ad.run import RunConfig, run
from m2ad.run.config import RunError
from m2ad.schema import DatasetInfo
from m2ad.shard import ShardError, shard_tree
from protocols.evaluate import evaluate

runner = CliRunner()


# ------------------------------------------------------------------------------ files written by hand


def pcd_header(count: int, data: str, fields: str = "x y z", size: str = "4 4 4", kind: str = "F F F") -> bytes:
    columns = len(fields.split())
    return (f"# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS {fields}\nSIZE {size}\nTYPE {kind}\n"
            f"COUNT {' '.join(['1'] * columns)}\nWIDTH {count}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {count}\nDATA {data}\n").encode()


def ascii_pcd(points: np.ndarray) -> bytes:
    return pcd_header(len(points), "ascii") + "".join(f"{x!r} {y!r} {z!r}\n" for x, y, z in points.tolist()).encode()


def binary_pcd(points: np.ndarray, dtype: str = "<f4") -> bytes:
    size = "4 4 4" if dtype == "<f4" else "8 8 8"
    return pcd_header(len(points), "binary", size=size) + np.asarray(points, dtype=dtype).tobytes()


def gt_text(points: np.ndarray, labels: np.ndarray) -> str:
    return "".join(f"{x!r} {y!r} {z!r} {float(label)}\n" for (x, y, z), label in zip(points.tolist(), labels.tolist()))


def test_pcd_reader_reads_ascii_and_binary_and_refuses_the_rest() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(17, 3)).astype(np.float32)
    assert np.array_equal(read_pcd(ascii_pcd(points.astype(np.float64))), points)
    assert np.array_equal(read_pcd(binary_pcd(points)), points)
    assert np.array_equal(read_pcd(binary_pcd(points, "<f8")), points)
    assert read_pcd(binary_pcd(points) + b"trailing bytes").shape == (17, 3)
    refusals = [
        (pcd_header(1, "ascii", fields="x y z rgb", size="4 4 4 4", kind="F F F F") + b"0 0 0 0\n", "pcd-fields"),
        (pcd_header(1, "ascii", fields="x y z normal_x normal_y normal_z", size="4 4 4 4 4 4", kind="F F F F F F") + b"0 0 0 0 0 0\n",
         "pcd-fields"),
        (pcd_header(1, "ascii", kind="I I I") + b"0 0 0\n", "pcd-fields"),
        (pcd_header(2, "binary_compressed") + b"\0" * 24, "pcd-format"),
        (binary_pcd(points)[:-1], "pcd-format"),
        (pcd_header(2, "ascii") + b"0 0 0\n1 1\n", "pcd-format"),
        (pcd_header(1, "ascii") + b"nan 0 0\n", "pcd-format"),
        (b"VERSION 0.7\nFIELDS x y z\n", "pcd-format"),
        (b"hello world\nDATA ascii\n", "pcd-format"),
    ]
    for data, kind in refusals:
        with pytest.raises(PointCloudError) as caught:
            read_pcd(data)
        assert caught.value.kind == kind and "\n" not in str(caught.value), (kind, str(caught.value))


def test_ground_truth_text_gives_points_and_labels() -> None:
    points, labels = read_labelled_text(b"0.5 1 2 0.0\n\n3 4 5 1\n")
    assert np.array_equal(points, np.array([[0.5, 1, 2], [3, 4, 5]], np.float32))
    assert labels.tolist() == [0, 1] and labels.dtype == np.uint8
    for data in (b"1 2 3\n", b"1 2 3 2\n", b"1 2 3 x\n", b"", b"1 2 3 1 5\n"):
        with pytest.raises(PointCloudError) as caught:
            read_labelled_text(data)
        assert caught.value.kind == "gt-format"


# ------------------------------------------------------------------------------ a Real3D-AD tree by hand


CLOUDS = {
    # category -> release path under the category -> (points, labels or None); sizes differ
    "airplane": {"train/1_prototype.pcd": 40, "train/2_template.pcd": 33, "test/3_good.pcd": 25, "test/4_bulge.pcd": 31,
                 "test/5_sink.pcd": 28},
    "duck": {"train/1_template.pcd": 19, "test/2_good.pcd": 22, "test/7_bulge.pcd": 15, "test/8_sink.pcd": 12},
}
EMPTY_GT = "duck/test/8_sink.pcd"
"""A defective cloud whose GT file marks no point: object label 1 (the name), point labels all 0,
as the official loader gives it."""


@pytest.fixture(scope="module")
def hand_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Real3D-AD's layout inside a wrapper folder, as the zip may extract: binary and ASCII PCDs,
    GT text files whose points differ from their test PCDs (the official loader reads an
    anomalous cloud from its GT file), a 'temp' test file the loader skips, a GT file for a good
    cloud (ignored) and a licence file; returns the tree and, per sample id, the expected
    float32 points and labels."""
    root = tmp_path_factory.mktemp("real3d") / "tree"
    rng = np.random.default_rng(42)
    expected = {}
    for category, clouds in CLOUDS.items():
        for index, (relative, count) in enumerate(clouds.items()):
            path = root / "Real3D-AD-PCD" / category / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            points = np.round(rng.normal(size=(count, 3)) * 10, 3)
            path.write_bytes(binary_pcd(points) if index % 2 else ascii_pcd(points))
            labels = np.zeros(count, np.uint8)
            stem = Path(relative).stem
            if "good" not in stem and relative.startswith("test/"):
                gt_points = np.round(rng.normal(size=(count + 3, 3)), 4)  # not the PCD's points: the GT file's
                labels = np.zeros(count + 3, np.uint8)
                if f"{category}/{relative}" != EMPTY_GT:
                    labels[rng.choice(count + 3, size=1 if category == "duck" else 5, replace=False)] = 1  # duck: a one-point defect
                (root / "Real3D-AD-PCD" / category / "gt").mkdir(exist_ok=True)
                (root / "Real3D-AD-PCD" / category / "gt" / f"{stem}.txt").write_text(gt_text(gt_points, labels))
                points = gt_points
            expected[f"real3d-ad/{category}/{relative}"] = (points.astype(np.float32), labels.astype(bool))
    (root / "Real3D-AD-PCD/airplane/test/9_temp.pcd").write_bytes(ascii_pcd(np.zeros((2, 3))))
    (root / "Real3D-AD-PCD/airplane/gt/3_good.txt").write_text("0 0 0 1\n")
    (root / "Real3D-AD-PCD/README.txt").write_text("Real3D-AD\n")
    return root, expected


@pytest.fixture(scope="module")
def hand_shards(hand_tree: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real3d-shards") / "shards"
    shard_tree(hand_tree[0], out, workers=1, progress=False)  # detected, not named
    return out


def test_a_hand_written_tree_shards_with_the_right_point_counts_and_labels(hand_tree: tuple[Path, dict], hand_shards: Path) -> None:
    _, expected = hand_tree
    info = DatasetInfo.read(hand_shards)
    assert (info.dataset, info.modalities, info.protocols) == ("real3d-ad", ("points",), ("real3d-ad",))
    manifest = load_manifest(hand_shards)
    assert sorted(manifest["sample_id"]) == sorted(expected)
    for row in manifest.iter_rows(named=True):
        points, labels = expected[row["sample_id"]]
        assert row["num_points"] == len(points) and (row["width"], row["height"]) == (0, 0)
        assert row["label"] == row["object_label"] == int(row["split"] == "test" and "good" not in row["sample_id"])
        assert labels.any() == (row["label"] == 1 and not row["sample_id"].endswith(EMPTY_GT))
        assert row["split"] == row["sample_id"].split("/")[2]
        assert row["defect_types"] == ([Path(row["sample_id"]).stem.split("_")[1]] if row["label"] else [])
    clouds, labels = read_points(hand_shards, manifest, with_labels=True)
    for sample_id, cloud, label in zip(manifest["sample_id"], clouds, labels):
        assert cloud.dtype == np.float32 and np.array_equal(cloud, expected[sample_id][0]), sample_id
        assert label.dtype == bool and np.array_equal(label, expected[sample_id][1]), sample_id
    card = (hand_shards / "README.md").read_text()
    assert "9_temp.pcd" in card and "## Point clouds" in card and "num_points" in card and "one cloud per specimen" in card
    assert "| airplane | test | 3 | 2 | 3 |" in card  # clouds, anomalous, specimens (9_temp skipped)


def test_units_are_cut_by_bytes_not_rows(hand_tree: tuple[Path, dict], tmp_path: Path) -> None:
    out = tmp_path / "small"
    shard_tree(hand_tree[0], out, workers=1, progress=False, max_shard_size=600)
    files = sorted((out / "airplane" / "train").glob("data-*.arrow"))
    assert len(files) == 2  # two clouds of 40 and 33 points (480 and 396 bytes of coordinates)
    manifest = load_manifest(out)
    clouds, labels = read_points(out, manifest, with_labels=True)
    for sample_id, cloud, label in zip(manifest["sample_id"], clouds, labels):
        assert np.array_equal(cloud, hand_tree[1][sample_id][0]) and np.array_equal(label, hand_tree[1][sample_id][1])


def test_the_cards_recipe_reads_a_cloud(hand_tree: tuple[Path, dict], hand_shards: Path) -> None:
    from m2ad.card import POINTS_RECIPE

    scope: dict = {}
    exec(POINTS_RECIPE.format(root=str(hand_shards), category="duck"), scope)  # noqa: S102 - our own documented snippet
    first = load_manifest(hand_shards).filter((pl.col("category") == "duck") & (pl.col("split") == "test"))["sample_id"][0]
    assert np.array_equal(scope["points"], hand_tree[1][first][0]) and np.array_equal(scope["labels"] != 0, hand_tree[1][first][1])


def test_batches_hand_methods_lists_of_clouds(hand_tree: tuple[Path, dict], hand_shards: Path) -> None:
    manifest = load_manifest(hand_shards)
    batches = list(iter_batches(hand_shards, manifest, batch_size=3, with_masks=True))
    assert [len(batch) for batch in batches] == [3, 3, 3]
    for batch in batches:
        assert batch.images is None and batch.masks is None and batch.ground_truth is batch.point_labels
        for sample_id, cloud, labels in zip(batch.sample_ids, batch.points, batch.point_labels):
            assert np.array_equal(cloud, hand_tree[1][sample_id][0]) and np.array_equal(labels, hand_tree[1][sample_id][1])
    assert next(iter(iter_batches(hand_shards, manifest, batch_size=2))).point_labels is None
    with pytest.raises(ValueError, match=r"point-cloud samples: they have no images; read points\(frame\) instead"):
        read_images(hand_shards, manifest)
    with pytest.raises(ValueError, match="they have no masks"):
        read_masks(hand_shards, manifest)
    with pytest.raises(ValueError, match="needs images or points"):
        Batch(["a"], None, ["c"], [None], [None])
    with pytest.raises(ValueError, match=r"must be \(N, 3\) arrays"):
        Batch(["a"], None, ["c"], [None], [None], points=[np.zeros((4, 2))])


def test_a_broken_release_is_refused_with_named_problems(hand_tree: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    root = Path(shutil.copytree(hand_tree[0], tmp_path / "tree"))
    (root / "Real3D-AD-PCD/duck/gt/7_bulge.txt").rename(root / "7_bulge.txt")
    with pytest.raises(ShardError) as caught:  # a tree problem, found before any file is decoded
        shard_tree(root, tmp_path / "out", workers=1, progress=False)
    assert [(problem.kind, problem.path) for problem in caught.value.problems] == [("missing-gt", "Real3D-AD-PCD/duck/gt/7_bulge.txt")]
    (root / "7_bulge.txt").rename(root / "Real3D-AD-PCD/duck/gt/7_bulge.txt")
    (root / "Real3D-AD-PCD/airplane/test/3_good.pcd").write_bytes(pcd_header(1, "ascii", fields="x y z rgb", size="4 4 4 4", kind="F F F F"))
    (root / "Real3D-AD-PCD/duck/gt/7_bulge.txt").write_text("1 2 3 1\n4 5 6\n")
    with pytest.raises(ShardError) as caught:  # decoding problems, each named
        shard_tree(root, tmp_path / "out", workers=1, progress=False)
    assert {(problem.kind, problem.path) for problem in caught.value.problems} == {
        ("pcd-fields", "Real3D-AD-PCD/airplane/test/3_good.pcd"), ("gt-format", "Real3D-AD-PCD/duck/gt/7_bulge.txt")}
    report = shard_tree(root, tmp_path / "skip", workers=1, progress=False, strict=False)  # --skip-bad: the rest is sharded
    assert report.samples == sum(len(clouds) for clouds in CLOUDS.values()) - 2


# ------------------------------------------------------------------------------ predictions v2


def adversarial_point_predictions(manifest: pl.DataFrame, seed: int) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """Object and point scores for every test cloud: tied values from a small palette, a cloud
    of constant scores, defects scored higher on average (not always)."""
    test = manifest.filter(pl.col("split") == "test")
    rng = np.random.default_rng(seed)
    palette = np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32)
    ids = test["sample_id"].to_list()
    object_scores = rng.choice([0.1, 0.2, 0.3], size=len(ids)) + 0.2 * test["label"].to_numpy()
    maps = [palette[rng.integers(0, len(palette), count)] for count in test["num_points"]]
    maps[0][:] = 0.5  # constant within one cloud
    return ids, object_scores, maps


def sklearn_reference(manifest: pl.DataFrame, truth: dict[str, tuple[np.ndarray, np.ndarray]], ids: list[str], object_scores: np.ndarray,
                      maps: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """The official evaluation (pc_features.py:127-134): per category, sklearn on the object
    scores and on the concatenated per-point scores and labels."""
    category_of = dict(zip(manifest["sample_id"], manifest["category"]))
    label_of = dict(zip(manifest["sample_id"], manifest["label"]))
    out = {}
    for category in sorted({category_of[sample_id] for sample_id in ids}):
        rows = [index for index, sample_id in enumerate(ids) if category_of[sample_id] == category]
        labels = [label_of[ids[index]] for index in rows]
        scores = [object_scores[index] for index in rows]
        point_labels = np.concatenate([truth[ids[index]][1] for index in rows])
        point_scores = np.concatenate([maps[index] for index in rows])
        out[category] = {"object_auroc": roc_auc_score(labels, scores), "object_ap": average_precision_score(labels, scores),
                         "point_auroc": roc_auc_score(point_labels, point_scores), "point_ap": average_precision_score(point_labels, point_scores)}
    return out


def write_point_file_with_pyarrow(path: Path, ids: list[str], scores: np.ndarray, maps: list[np.ndarray]) -> Path:
    """A version-2 point predictions file from plain pyarrow, as docs/predictions.md specifies."""
    table = pa.table({
        "sample_id": pa.array(ids, pa.string()),
        "score": pa.array(np.asarray(scores, np.float64)),
        "map": pa.array([np.asarray(values, "<f4").tobytes() for values in maps], pa.binary()),
        "map_height": pa.array([1] * len(ids), pa.int32()),
        "map_width": pa.array([len(values) for values in maps], pa.int32()),
    }).replace_schema_metadata({"m2ad.predictions": json.dumps({"format_version": 2, "map_dtype": "float32", "map_kind": "point"})})
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("writer", ["pyarrow", "m2ad"])
def test_point_predictions_evaluate_to_sklearn(hand_tree: tuple[Path, dict], hand_shards: Path, tmp_path: Path, writer: str) -> None:
    manifest = load_manifest(hand_shards)
    ids, object_scores, maps = adversarial_point_predictions(manifest, seed=3)
    path = tmp_path / "p.parquet"
    if writer == "pyarrow":
        write_point_file_with_pyarrow(path, ids, object_scores, maps)
    else:
        predictions.write(path, ids, object_scores, maps, map_dtype="float32", map_kind="point")
    info = predictions.read(path).info()
    assert (info.format_version, info.map_kind, info.has_maps) == (2, "point", True)
    reference = sklearn_reference(manifest, hand_tree[1], ids, object_scores, maps)
    result = evaluate("real3d-ad", hand_shards, path, progress=False)
    assert list(result["mean"]) == ["object_auroc", "object_ap", "point_auroc", "point_ap"]
    for category, values in reference.items():
        for metric, value in values.items():
            assert result["categories"][category][metric] == pytest.approx(value, abs=1e-12), (category, metric)
    streaming = evaluate("real3d-ad", hand_shards, path, progress=False, mode="streaming")
    for category, values in reference.items():
        for metric, value in values.items():
            assert streaming["categories"][category][metric] == pytest.approx(value, abs=1e-6), (category, metric)
    assert result["counts"]["duck"] == {"clouds": 3, "objects": 3, "normal_objects": 1, "anomalous_objects": 2, "ignored_images": 0}


def test_constant_scores_and_a_category_without_point_defects(hand_tree: tuple[Path, dict], hand_shards: Path, tmp_path: Path) -> None:
    """Constant scores everywhere: AUROC 0.5 and AP the prevalence, as scikit-learn says."""
    manifest = load_manifest(hand_shards)
    test = manifest.filter(pl.col("split") == "test")
    ids = test["sample_id"].to_list()
    maps = [np.full(count, 0.25, np.float32) for count in test["num_points"]]
    path = predictions.write(tmp_path / "c.parquet", ids, np.zeros(len(ids)), maps, map_kind="point")
    result = evaluate("real3d-ad", hand_shards, path, progress=False)
    reference = sklearn_reference(manifest, hand_tree[1], ids, np.zeros(len(ids)), maps)
    for category, values in reference.items():
        assert values["point_auroc"] == 0.5 and result["categories"][category]["point_auroc"] == pytest.approx(0.5)
        assert result["categories"][category]["point_ap"] == pytest.approx(values["point_ap"])
        assert result["categories"][category]["object_ap"] == pytest.approx(values["object_ap"])
    # a file with the normal clouds only is refused: every test cloud needs its scores
    normal_only = test.filter(pl.col("label") == 0)
    path = predictions.write(tmp_path / "n.parquet", normal_only["sample_id"].to_list(), np.zeros(normal_only.height),
                             [np.zeros(count, np.float32) for count in normal_only["num_points"]], map_kind="point")
    with pytest.raises(predictions.PredictionsError, match="missing ids"):
        evaluate("real3d-ad", hand_shards, path, progress=False)


def test_wrong_point_counts_and_map_kinds_are_one_line(hand_shards: Path, tmp_path: Path) -> None:
    manifest = load_manifest(hand_shards)
    ids, scores, maps = adversarial_point_predictions(manifest, seed=1)
    maps[2] = maps[2][:-1]
    path = predictions.write(tmp_path / "short.parquet", ids, scores, maps, map_kind="point")
    with pytest.raises(predictions.PredictionsError) as caught:
        evaluate("real3d-ad", hand_shards, path, progress=False)
    message = str(caught.value)
    assert "\n" not in message and f"wrong point counts [1]: {ids[2]}: {len(maps[2])} scores for a cloud of {len(maps[2]) + 1} points" in message
    cli = runner.invoke(app, ["evaluate", "--protocol", "real3d-ad", "--data", str(hand_shards), "--predictions", str(path)])
    assert cli.exit_code == 1 and "wrong point counts" in cli.output and "Traceback" not in cli.output
    # 2-D maps for point clouds: refused by kind, in one line
    pixel = predictions.write(tmp_path / "pixel.parquet", ids, scores, [np.zeros((4, 4), np.float32)] * len(ids))
    with pytest.raises(predictions.PredictionsError, match=r"wrong map kind \[1\]: the file holds pixel maps, this evaluation scores point maps"):
        evaluate("real3d-ad", hand_shards, pixel, progress=False)
    # per-point scores must be 1-D
    with pytest.raises(predictions.PredictionsError, match="wrong point score shapes"):
        predictions.write(tmp_path / "bad.parquet", ids[:1], scores[:1], [np.zeros((2, 2))], map_kind="point")
    with pytest.raises(ValueError, match="map_kind must be one of"):
        predictions.PredictionsWriter(tmp_path / "x.parquet", map_kind="voxel")


def test_a_version_1_file_is_still_read(tmp_path: Path) -> None:
    """A file as m2ad 0.1 wrote it (format_version 1, no map_kind): read as pixel maps."""
    maps = np.random.default_rng(0).random((2, 3, 4)).astype(np.float16)
    table = pa.table({"sample_id": ["a", "b"], "score": [0.5, 0.25], "map": [m.tobytes() for m in maps],
                      "map_height": pa.array([3, 3], pa.int32()), "map_width": pa.array([4, 4], pa.int32())})
    pq.write_table(table.replace_schema_metadata({"m2ad.predictions": json.dumps({"format_version": 1, "map_dtype": "float16"})}),
                   tmp_path / "v1.parquet")
    info = predictions.validate(tmp_path / "v1.parquet", {"a": (3, 4), "b": (3, 4)}, map_kind="pixel")
    assert (info.format_version, info.map_kind) == (1, "pixel")
    [batch] = list(predictions.read(tmp_path / "v1.parquet").iter_batches())
    assert np.array_equal(np.stack(batch.maps), maps.astype(np.float32))
    with pytest.raises(predictions.PredictionsError, match="wrong map kind"):
        predictions.validate(tmp_path / "v1.parquet", {"a": (1, 12), "b": (1, 12)}, map_kind="point")


def test_damaged_point_files_are_read_exactly_or_refused(hand_shards: Path, tmp_path: Path) -> None:
    """Seeded single-byte flips of a point file (page checksums, header sha256): each copy reads
    as the original or is refused with one line, never as other numbers."""
    import random

    manifest = load_manifest(hand_shards)
    ids, scores, maps = adversarial_point_predictions(manifest, seed=2)
    expected = {sample_id: (1, count) for sample_id, count in zip(manifest["sample_id"], manifest["num_points"]) if sample_id in ids}
    path = predictions.write(tmp_path / "p.parquet", ids, scores, [values * 3.7 + 0.1 for values in maps], map_dtype="float32",
                             map_kind="point")

    def contents(file: Path) -> tuple:
        predictions.validate(file, expected, map_kind="point")
        batches = list(predictions.read(file).iter_batches())
        return ([i for b in batches for i in b.sample_ids], np.concatenate([b.scores for b in batches]).tolist(),
                [values.tolist() for b in batches for values in b.maps])

    original, data = contents(path), path.read_bytes()
    chooser, refused = random.Random(0), 0
    for trial in range(120):
        damaged = bytearray(data)
        damaged[chooser.randrange(len(damaged))] ^= 1 << chooser.randrange(8)
        copy = tmp_path / f"d{trial}.parquet"
        copy.write_bytes(bytes(damaged))
        try:
            assert contents(copy) == original, trial
        except predictions.PredictionsError as error:
            assert "\n" not in str(error)
            refused += 1
    assert refused > 0


# ------------------------------------------------------------------------------ protocols, runner, board


def test_protocols_refuse_the_other_kind_of_data_in_one_line(hand_shards: Path, tmp_path: Path) -> None:
    manifest = load_manifest(hand_shards)
    ids, scores, maps = adversarial_point_predictions(manifest, seed=0)
    path = predictions.write(tmp_path / "p.parquet", ids, scores, maps, map_kind="point")
    for name in ("standard", "invariant", "synergy"):
        with pytest.raises(ValueError) as caught:
            evaluate(name, hand_shards, path, progress=False)
        assert str(caught.value).startswith(f"protocol {name!r} does not fit the dataset 'real3d-ad'") and "\n" not in str(caught.value)
    assert "needs the modality 'image'" in str(pytest.raises(ValueError, evaluate, "standard", hand_shards, path, progress=False).value)
    image_info = DatasetInfo(dataset="mvtec-ad", resolution=16, categories=[], **get("mvtec-ad").info_fields([]))
    with pytest.raises(ValueError, match=r"^protocol 'real3d-ad' does not fit the dataset 'mvtec-ad': it needs the modality 'points'"):
        protocols.get("real3d-ad").check_dataset(image_info)
    with pytest.raises(ValueError, match=r"evaluates in the exact, streaming mode\(s\), not 'compat'"):
        evaluate("real3d-ad", hand_shards, path, progress=False, mode="compat")


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_random_runs_on_points_and_evaluate_agrees(hand_shards: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "run"
    result = run(RunConfig(protocol="real3d-ad", methods=("random",), data=hand_shards, out=out, executor="local", mode=mode),
                 progress=False)
    assert result.ok and result.failed == []
    summary = json.loads((out / "summary.json").read_text())["methods"]["random"]
    [joined] = (out / "predictions").glob("random__seed*.parquet")
    handle = predictions.read(joined)
    assert handle.map_kind == "point"
    counts = dict(zip(load_manifest(hand_shards)["sample_id"], load_manifest(hand_shards)["num_points"]))
    for batch in handle.iter_batches():
        assert all(values.shape == (counts[sample_id],) for sample_id, values in zip(batch.sample_ids, batch.maps))
    again = evaluate("real3d-ad", hand_shards, joined, progress=False, mode=mode)
    for metric, value in summary["mean"].items():
        assert again["mean"][metric] == pytest.approx(value, abs=1e-12), metric
    cli = runner.invoke(app, ["evaluate", "--protocol", "real3d-ad", "--data", str(hand_shards), "--predictions", str(joined)])
    assert cli.exit_code == 0, cli.output


def test_a_method_without_point_maps_is_refused_before_anything_starts(hand_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError) as caught:
        run(RunConfig(protocol="real3d-ad", methods=("gaussian",), data=hand_shards, out=tmp_path / "run", executor="local"), progress=False)
    message = str(caught.value)
    assert "method 'gaussian' returns pixel_map, but protocol 'real3d-ad' scores point_map predictions" in message
    assert "method 'gaussian' reads image, but --data (real3d-ad) has points" in message and "\n" not in message
    assert not (tmp_path / "run").exists()
    assert "points" in baselines.method_class("random").card.inputs and "point_map" in baselines.method_class("random").card.outputs


def test_a_real3d_board_ranks_submissions(hand_shards: Path, tmp_path: Path) -> None:
    manifest = load_manifest(hand_shards)
    ids, scores, maps = adversarial_point_predictions(manifest, seed=5)
    good = predictions.write(tmp_path / "good.parquet", ids, scores, maps, map_kind="point")
    worse = predictions.write(tmp_path / "worse.parquet", ids, -scores, [1 - values for values in maps], map_kind="point")
    store = Store(tmp_path / "board")
    submit(good, protocol="real3d-ad", data=hand_shards, method="Good", store=store, progress=False)
    submit(worse, protocol="real3d-ad", data=hand_shards, method="Worse", store=store, progress=False)
    shown = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path / "board"), "--protocol", "real3d-ad", "--format", "json"])
    assert shown.exit_code == 0, shown.output
    entries = {record["method"]: record for record in json.loads(shown.stdout)}
    assert set(entries) == {"Good", "Worse"}
    reference = evaluate("real3d-ad", hand_shards, good, progress=False)
    for metric in ("object_auroc", "object_ap", "point_auroc", "point_ap"):
        assert entries["Good"][metric] == pytest.approx(reference["mean"][metric]), metric
    assert entries["Good"]["rank_object_auroc"] == 1 and entries["Worse"]["rank_object_auroc"] == 2
    markdown = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path / "board"), "--protocol", "real3d-ad", "--format", "markdown"])
    assert markdown.exit_code == 0 and "real3d-ad · real3d-ad · original" in markdown.output, markdown.output
    site = tmp_path / "site"
    rendered = runner.invoke(app, ["leaderboard", "render", str(site), "--store", str(tmp_path / "board")])
    assert rendered.exit_code == 0, rendered.output
    page = (site / "index.html").read_text()
    assert '<th scope="col">point_auroc</th>' in page and '<th scope="col">object_ap</th>' in page and "Worse" in page


def test_synth_writes_a_real3d_tree_that_runs_end_to_end(tmp_path: Path) -> None:
    made = runner.invoke(app, ["synth", str(tmp_path / "tree"), "--dataset", "real3d-ad", "--normal-specimens", "4", "--ng-specimens", "2",
                               "--resolution", "16", "--workers", "1"])
    assert made.exit_code == 0, made.output
    sharded = runner.invoke(app, ["shard", str(tmp_path / "tree"), str(tmp_path / "shards"), "--workers", "1"])
    assert sharded.exit_code == 0, sharded.output
    info = DatasetInfo.read(tmp_path / "shards")
    assert info.dataset == "real3d-ad-synth" and info.spec == "real3d-ad"
    manifest = load_manifest(tmp_path / "shards")
    assert manifest["num_points"].n_unique() > 1  # ragged clouds
    shown = runner.invoke(app, ["info", str(tmp_path / "shards")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "clouds" in shown.output, shown.output
    per_unit = manifest.group_by(["category", "split"]).agg(pl.col("num_points").sum())
    assert all(f"{total:,}" in shown.output for total in per_unit["num_points"])
    ran = runner.invoke(app, ["run", "--protocol", "real3d-ad", "--method", "random", "--data", str(tmp_path / "shards"),
                              "--out", str(tmp_path / "run"), "--executor", "local", "--no-progress"])
    assert ran.exit_code == 0, ran.output
    [joined] = (tmp_path / "run" / "predictions").glob("*.parquet")
    scored = runner.invoke(app, ["evaluate", "--protocol", "real3d-ad", "--data", str(tmp_path / "shards"), "--predictions", str(joined)])
    assert scored.exit_code == 0 and "point_auroc" in scored.output, scored.output


def test_the_manual_download_takes_the_zip_by_hand(tmp_path: Path) -> None:
    """What the card says: `m2ad download real3d-ad --out OUT --source PATH/real3d-ad-pcd.zip
    --insecure-skip-verify` (no checksum is published); without a source, one line says where
    to get it.  A point-cloud dataset is stored at `original`, whatever --resolution."""
    spec = get("real3d-ad")
    tree = tmp_path / "tree"
    tree.mkdir()
    spec.fixture.write(tree, categories=("shell",), normal_specimens=2, ng_specimens=1, resolution=16, seed=0, workers=1, progress=False)
    [archive] = spec.fixture.pack(tree, tmp_path / "release")
    common = ["download", "real3d-ad", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "-c", "shell"]
    refused = runner.invoke(app, common)
    assert refused.exit_code != 0 and "cannot be downloaded automatically" in " ".join(refused.output.split())
    refused = runner.invoke(app, [*common, "--source", str(archive)])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    fetched = runner.invoke(app, [*common, "--source", str(archive), "--insecure-skip-verify", "--workers", "1"])
    assert fetched.exit_code == 0, fetched.output
    info = DatasetInfo.read(tmp_path / "out")
    assert info.resolution == "original" and load_manifest(tmp_path / "out").height == 3
    assert "unverified" in (tmp_path / "out" / "README.md").read_text()


class NearestTrainingPoint:
    """A toy fitted point method: per-point distance to the nearest training point (the
    centred clouds, as the official loader centres them); checks what fit and predict get."""

    name = "nearest-training-point"
    card = baselines.base.MethodCard(inputs=("points",), outputs=("point_map",))

    @dataclass
    class Config:
        pass

    def __init__(self, config: object = None) -> None:
        self.config = config
        self.memory = np.zeros((0, 3), np.float32)
        self.seen: list[str] = []

    def fit(self, train: Iterable[Batch], setting: object = None) -> None:
        for batch in train:
            assert batch.images is None and all(cloud.shape[1] == 3 for cloud in batch.points)
            self.seen += batch.sample_ids
            self.memory = np.concatenate([self.memory, *(cloud - cloud.mean(axis=0) for cloud in batch.points)])

    def predict(self, batch: Batch) -> tuple[np.ndarray, list[np.ndarray]]:
        maps = [np.sqrt((((cloud - cloud.mean(axis=0))[:, None] - self.memory[None]) ** 2).sum(-1).min(1)) for cloud in batch.points]
        return np.array([values.max() for values in maps]), maps

    def state_dict(self) -> dict:
        import torch

        return {"memory": torch.from_numpy(self.memory)}

    def load_state_dict(self, state: dict) -> None:
        self.memory = state["memory"].numpy()


def test_a_fitted_point_method_trains_on_clouds_and_is_reloaded(hand_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys.modules[__name__], "NearestTrainingPoint", NearestTrainingPoint)
    monkeypatch.setitem(baselines._REGISTRY, "nearest-training-point", f"{__name__}:NearestTrainingPoint")
    out = tmp_path / "run"
    result = run(RunConfig(protocol="real3d-ad", methods=("nearest-training-point",), data=hand_shards, out=out, executor="local"),
                 progress=False)
    assert result.ok and result.failed == [], result
    manifest = load_manifest(hand_shards)
    [joined] = (out / "predictions").glob("*.parquet")
    rows = {sample_id: values for batch in predictions.read(joined).iter_batches() for sample_id, values in zip(batch.sample_ids, batch.maps)}
    clouds = dict(zip(manifest["sample_id"], read_points(hand_shards, manifest)[0]))
    for category in CLOUDS:  # the reloaded fit predicts what a fresh one fitted on the category's training clouds does
        reference = NearestTrainingPoint()
        train = manifest.filter((pl.col("category") == category) & (pl.col("split") == "train"))
        reference.fit([Batch(train["sample_id"].to_list(), None, train["category"].to_list(), [None] * train.height, [None] * train.height,
                             points=[clouds[i] for i in train["sample_id"]])])
        test_ids = manifest.filter((pl.col("category") == category) & (pl.col("split") == "test"))["sample_id"].to_list()
        _, expected = reference.predict(Batch(test_ids, None, [category] * len(test_ids), [None] * len(test_ids), [None] * len(test_ids),
                                              points=[clouds[i] for i in test_ids]))
        for sample_id, values in zip(test_ids, expected):
            assert np.allclose(rows[sample_id], values.astype(np.float16), rtol=1e-3), sample_id
    # a saved fit scores data again (`m2ad predict`): a point file, the same per-point scores
    from m2ad.run.cell import predict_with_fit

    fit_dir = next((out / "fits").glob("nearest-training-point__duck__seed*"))
    predict_with_fit(fit_dir, hand_shards, tmp_path / "again.parquet")
    again = predictions.read(tmp_path / "again.parquet")
    assert again.map_kind == "point"
    for batch in again.iter_batches():
        for sample_id, values in zip(batch.sample_ids, batch.maps):
            assert np.array_equal(values, rows[sample_id]), sample_id


def test_surface_clouds_have_labelled_bulges_and_sinks() -> None:
    """The fixture's clouds: points on the solid's surface, a defect displacing a labelled patch
    along the normals (outwards for a bulge, inwards for a sink), reproducible per seed."""
    from m2ad.render import _variants, surface_cloud

    normal = surface_cloud("Cube", "", 0, 7, 500)
    assert normal.points.shape == (500, 3) and normal.points.dtype == np.float32 and not normal.labels.any()
    again = surface_cloud("Cube", "", 0, 7, 500)
    assert np.array_equal(normal.points, again.points) and not np.array_equal(normal.points, surface_cloud("Cube", "", 1, 7, 500).points)
    for defect, sign in (("bulge", 1), ("sink", -1)):
        cloud = surface_cloud("Ring", defect, 3, 7, 2000)
        assert cloud.defect == defect and 0 < cloud.labels.sum() < 2000 * 0.2
        # undo the pose: the labelled points leave the solid's surface on the defect's side
        # (the SDF's sign), the others stay on it (up to the 2e-3 noise)
        sdf = next(variant.sdf for variant in _variants("Ring") if variant.name == cloud.variant)
        depth = sdf(((cloud.points / cloud.scale) @ cloud.rotation).astype(np.float64))
        inside = cloud.labels == 1
        assert np.abs(depth[~inside]).max() < 0.02
        assert np.median(sign * depth[inside]) > 0.02 and (sign * depth[inside] > -0.01).all()
    with pytest.raises(ValueError, match="unknown point-cloud defect"):
        surface_cloud("Cube", "scratch", 0, 0, 10)
