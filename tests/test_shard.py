"""m2ad.shard, the M2AD layout (m2ad.datasets.m2ad) and the `m2ad shard` / `m2ad info` commands.

Trees come from the M2AD fixture writer (``m2ad.datasets.m2ad.fixture.write``: 16-px renders,
all 120 configurations per specimen, the official meta JSON, no synthetic marker, as a real
release has none) and, for the end-to-end case, from ``m2ad.synth.generate``.  Expectations
are read from the tree's own meta JSON; references are independent: the source files' bytes,
PIL applied directly, and a brute-force box rule written here.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from fractions import Fraction
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from m2ad.cli import app
from m2ad.datasets.m2ad import SPEC
from m2ad.datasets.m2ad.fixture import read_meta, write, write_meta
from m2ad.schema import DatasetInfo
from m2ad.shard import (
    UNIT_MARKER,
    FolderSource,
    ShardError,
    parse_resolution,
    resize_mask_exact,
    resize_mask_official,
    shard_tree,
    target_size,
)

REPO = Path(__file__).resolve().parents[1]
PARSE = SPEC.layout.parse
MANIFEST_COLUMNS = pa.schema([
    ("sample_id", pa.string()), ("dataset", pa.string()), ("category", pa.string()), ("split", pa.string()), ("specimen", pa.string()),
    ("view", pa.string()), ("illumination", pa.string()), ("label", pa.int8()), ("object_label", pa.int8()),
    ("defect_types", pa.list_(pa.string())), ("detectable", pa.bool_()), ("has_mask", pa.bool_()), ("width", pa.int32()),
    ("height", pa.int32()), ("shard_dir", pa.string()), ("shard_row", pa.int64()),
])  # fmt: skip
"""The manifest of an M2AD dataset, as format 1 wrote it."""


def write_tree(root: Path, categories: tuple[str, ...] = ("Cube",), normal: int = 2, ng: int = 1, size: int = 16) -> Path:
    """An M2AD release tree from the dataset's fixture writer."""
    root.mkdir(parents=True)
    write(root, categories=categories, normal_specimens=normal, ng_specimens=ng, resolution=size, seed=0, workers=1, progress=False)
    return root


def records_of(root: Path) -> list[dict]:
    meta = read_meta(root)
    return [{**record, "split": split} for split in ("train", "test") for records in meta[split].values() for record in records]


def official_split(names: list[str]) -> set[str]:
    """Normal specimens that go to train: sort, shuffle with seed 42, first int(0.6 N)."""
    ordered = sorted(names)
    random.Random(42).shuffle(ordered)
    return set(ordered[: int(0.6 * len(ordered))])


def defect_tokens(name: str) -> list[str]:
    """The tokens of an NG folder name ``<token>_<n>[_<token>_<n>...]_<NNN>``."""
    return name.split("_")[:-1:2]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two categories, Cube and Ring, each 3 normal and 2 NG specimens, 16 px."""
    return write_tree(tmp_path_factory.mktemp("tree") / "m2ad", ("Cube", "Ring"), normal=3, ng=2)


@pytest.fixture(scope="module")
def original(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tree`` sharded at original resolution with two workers."""
    out = tmp_path_factory.mktemp("shards") / "original"
    shard_tree(tree, out, workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def small_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("small") / "m2ad")


@pytest.fixture()
def small_tree(small_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of a one-category tree (Cube: 2 normal, 1 NG) that a test may corrupt."""
    return Path(shutil.copytree(small_template, tmp_path / "small"))


def _arrow(root: Path, unit: str) -> datasets.Dataset:
    return datasets.load_from_disk(str(root / unit))


def _raw_bytes(dataset: datasets.Dataset, column: str) -> list[bytes | None]:
    """Encoded bytes of an Image column, without decoding."""
    return [None if value is None else value["bytes"] for value in dataset.data.table.column(column).to_pylist()]


# ------------------------------------------------------------------------------ round trip


def test_original_resolution_round_trips_byte_identical(tree: Path, original: Path) -> None:
    manifest = pl.read_parquet(original / "manifest.parquet")
    meta = read_meta(tree)
    records = {r["img_path"]: (split, r) for split in meta for cls in meta[split] for r in meta[split][cls]}
    assert manifest.height == len(records) == 10 * 120
    assert manifest["sample_id"].n_unique() == manifest.height
    for (shard_dir,), rows in manifest.group_by("shard_dir"):
        dataset = _arrow(original, shard_dir)
        images, masks, officials = _raw_bytes(dataset, "image"), _raw_bytes(dataset, "mask"), _raw_bytes(dataset, "mask_official")
        for row in rows.iter_rows(named=True):
            release_path = row["sample_id"].removeprefix("m2ad/")
            split, record = records[release_path]
            assert row["split"] == split and row["category"] == record["cls_name"]
            assert row["specimen"] == record["object_name"]
            assert (row["view"], row["illumination"]) == (record["view"], record["illumination"])
            assert row["label"] == record["image_anomaly"] and row["object_label"] == record["object_anomaly"]
            assert row["detectable"] == (None if record["detectable"] == "" else record["detectable"])
            index = row["shard_row"]
            assert images[index] == (tree / release_path).read_bytes()
            if record["mask_path"]:
                assert row["has_mask"]
                assert masks[index] == officials[index] == (tree / record["mask_path"]).read_bytes()
            else:
                assert not row["has_mask"] and masks[index] is None and officials[index] is None


def test_load_from_disk_decodes_images_and_masks(tree: Path, original: Path) -> None:
    dataset = datasets.load_from_disk(str(original / "Cube/test"))
    assert set(dataset.features) >= {"sample_id", "image", "mask", "mask_official", "defect_types", "detectable"}
    ng_rows = [row for row in dataset if row["object_label"] == 1]
    assert ng_rows, "the test split holds the NG specimens"
    for row in ng_rows[:: len(ng_rows) // 5]:
        release_path = row["sample_id"].removeprefix("m2ad/")
        assert np.array_equal(np.asarray(row["image"]), np.asarray(Image.open(tree / release_path)))
        assert row["defect_types"] == defect_tokens(row["specimen"])
        if row["mask"] is not None:
            mask_path = tree / "Cube/GT" / row["specimen"] / f"A{row['view']}_mask.png"
            assert np.array_equal(np.asarray(row["mask"]), np.asarray(Image.open(mask_path)))


def test_manifest_schema_and_split_rule(tree: Path, original: Path) -> None:
    manifest = pl.read_parquet(original / "manifest.parquet")
    schema = pq.read_schema(original / "manifest.parquet").remove_metadata()
    assert schema.equals(MANIFEST_COLUMNS)
    records = records_of(tree)
    for category in ("Cube", "Ring"):
        own = [r for r in records if r["cls_name"] == category]
        normal_names = sorted({r["object_name"] for r in own if not r["object_anomaly"]})
        ng_names = sorted({r["object_name"] for r in own if r["object_anomaly"]})
        assert (len(normal_names), len(ng_names)) == (3, 2)
        rows = manifest.filter(pl.col("category") == category)
        train = set(rows.filter(pl.col("split") == "train")["specimen"].unique())
        assert train == official_split(normal_names)
        assert set(rows.filter(pl.col("split") == "test")["specimen"].unique()) == (set(normal_names) - train) | set(ng_names)
        per_specimen = rows.group_by("specimen").agg(pl.struct("view", "illumination").n_unique().alias("configs"))
        assert per_specimen["configs"].to_list() == [120] * 5
        anomalous = rows.filter(pl.col("label") == 1)
        masked = [r for r in own if r["mask_path"]]
        assert anomalous.height == len(masked) > 0
        assert set(anomalous["view"]) == {r["view"] for r in masked}
    info = DatasetInfo.read(original)
    assert info.dataset == "m2ad" and info.resolution == "original" and info.categories == ["Cube", "Ring"]
    card = (original / "README.md").read_text()
    for needle in ("license", "Apache-2.0", "original", "exact", "official", "| Cube | test |"):
        assert needle in card


def test_workers_do_not_change_the_result(tree: Path, original: Path, tmp_path: Path) -> None:
    serial = tmp_path / "serial"
    shard_tree(tree, serial, workers=1, progress=False, categories=["Ring"])
    for unit in ("Ring/train", "Ring/test"):
        assert _arrow(serial, unit).data.table.equals(_arrow(original, unit).data.table)


class DictSource:
    """A release tree held in memory: checks that sharding reads only through TreeSource."""

    def __init__(self, root: Path) -> None:
        self.files = {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}

    def list_files(self) -> list[str]:
        return sorted(self.files)

    def read_bytes(self, path: str) -> bytes:
        return self.files[path]


def test_any_tree_source_works(small_tree: Path, tmp_path: Path) -> None:
    source = DictSource(small_tree)
    shutil.rmtree(small_tree)
    report = shard_tree(source, tmp_path / "out", workers=2, progress=False, source_info={"url": "memory://", "checksums": {"a.zip": "sha256:00"}, "verified": True})
    assert report.samples == 3 * 120 and report.dataset == "m2ad"
    info = DatasetInfo.read(tmp_path / "out")
    assert info.source["url"] == "memory://"
    assert "sha256:00" in (tmp_path / "out/README.md").read_text()


def test_zip_source_contract(small_tree: Path, tmp_path: Path) -> None:
    from m2ad.archive import ZipSource

    zips = []
    for top in ("jsons", "Cube"):
        archive = tmp_path / f"{top}.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in sorted((small_tree / top).rglob("*")):
                if path.is_file():
                    zipped.write(path, path.relative_to(small_tree).as_posix())
        zips.append(archive)
    from_zips, from_folder = tmp_path / "zips", tmp_path / "folder"
    shard_tree(ZipSource(zips), from_zips, workers=2, progress=False)
    shard_tree(small_tree, from_folder, workers=1, progress=False)
    for unit in ("Cube/train", "Cube/test"):
        assert _arrow(from_zips, unit).data.table.equals(_arrow(from_folder, unit).data.table)


# ------------------------------------------------------------------------------ resizing and mask rules


def _brute_exact(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A target pixel is set if any source pixel overlapping its box (exact fractions) is."""
    source_height, source_width = mask.shape
    out = np.zeros((height, width), dtype=bool)

    def covered(index: int, count: int, source: int) -> list[int]:
        low, high = Fraction(index * source, count), Fraction((index + 1) * source, count)
        return [pixel for pixel in range(source) if pixel < high and pixel + 1 > low]

    for i in range(height):
        for j in range(width):
            out[i, j] = mask[np.ix_(covered(i, height, source_height), covered(j, width, source_width))].any()
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(1, 12),
    st.floats(0.0, 1.0),
    st.integers(0, 2**32 - 1),
)
def test_exact_rule_matches_brute_force(height: int, width: int, target_h: int, target_w: int, density: float, seed: int) -> None:
    mask = np.random.default_rng(seed).random((height, width)) < density
    assert np.array_equal(resize_mask_exact(mask, (target_w, target_h)), _brute_exact(mask, target_w, target_h))


def test_mask_rules_hand_checked() -> None:
    one_pixel = np.zeros((16, 16), bool)
    one_pixel[5, 6] = True
    exact = resize_mask_exact(one_pixel, (4, 4))
    assert exact.sum() == 1 and exact[1, 1]  # source pixel (5, 6) lies in target box (1, 1)
    assert not resize_mask_official(one_pixel, (4, 4)).any()  # erased by bilinear + floor

    block = np.zeros((16, 16), bool)
    block[:12, :12] = True
    exact, official = resize_mask_exact(block, (4, 4)), resize_mask_official(block, (4, 4))
    expected_exact = np.zeros((4, 4), bool)
    expected_exact[:3, :3] = True
    assert np.array_equal(exact, expected_exact)
    assert official.any() and not (official & ~exact).any() and official.sum() < exact.sum()

    # the official rule is PIL bilinear on 0/255, keep == 255
    reference = np.asarray(Image.fromarray(block.astype(np.uint8) * 255, "L").resize((4, 4), Image.Resampling.BILINEAR)) == 255
    assert np.array_equal(official, reference)


def test_resized_shards_follow_both_rules(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "tree", normal=1, ng=1, size=32)
    masked = [r for r in records_of(root) if r["mask_path"]]
    tiny_view = masked[0]["view"]
    tiny = np.zeros((32, 32), np.uint8)
    tiny[9, 2] = 255  # one pixel: survives only the exact rule at 32 -> 8
    Image.fromarray(tiny, "L").save(root / masked[0]["mask_path"])
    out = tmp_path / "out"
    shard_tree(root, out, resolution=8, workers=1, progress=False)
    dataset = _arrow(out, "Cube/test")
    table = dataset.data.table.to_pylist()
    checked = 0
    for row in table:
        release_path = row["sample_id"].removeprefix("m2ad/")
        source = Image.open(root / release_path)
        stored = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
        assert row["width"] == row["height"] == 8 and stored.shape == (8, 8, 3)
        assert np.array_equal(stored, np.asarray(source.resize((8, 8), Image.Resampling.BILINEAR)))
        if row["mask"] is None:
            continue
        source_mask = np.asarray(Image.open(root / f"Cube/GT/{row['specimen']}/A{row['view']}_mask.png")) > 0
        exact = np.asarray(Image.open(io.BytesIO(row["mask"]["bytes"]))) > 0
        official = np.asarray(Image.open(io.BytesIO(row["mask_official"]["bytes"]))) > 0
        assert np.array_equal(exact, _brute_exact(source_mask, 8, 8))
        reference = np.asarray(Image.fromarray(source_mask.astype(np.uint8) * 255, "L").resize((8, 8), Image.Resampling.BILINEAR)) == 255
        assert np.array_equal(official, reference)
        if row["view"] == tiny_view:
            assert exact.sum() == 1 and not official.any()
        checked += 1
    assert checked == len(masked)


def test_resolution_arguments() -> None:
    assert parse_resolution("original") == "original" and parse_resolution("256") == 256 and parse_resolution(512) == 512
    for bad in ("huge", "4", 0, -256, "25.6"):
        with pytest.raises(ValueError, match="resolution"):
            parse_resolution(bad)
    assert target_size(1024, 1024, 256) == (256, 256)
    assert target_size(900, 700, 256) == (256, 199)
    assert target_size(700, 900, "original") == (700, 900)


# ------------------------------------------------------------------------------ resume


_KILLER = """
import os, signal, sys
import m2ad.shard as shard
original, calls = shard._process_specimen, []
def killing(records, resolution, source=None):
    calls.append(1)
    if len(calls) == 3:  # Cube/train (1 specimen) is done; Cube/test is half-way
        os.kill(os.getpid(), signal.SIGKILL)
    return original(records, resolution, source)
shard._process_specimen = killing
shard.shard_tree(sys.argv[1], sys.argv[2], workers=1, progress=False, resolution=8)
"""


def test_resume_after_kill(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", _KILLER, str(tree), str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert (out / "Cube/train" / UNIT_MARKER).is_file()
    assert not (out / "Cube/test").exists() and not (out / "Ring").exists()
    assert not (out / "manifest.parquet").exists() and not (out / "dataset.json").exists()
    finished = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in (out / "Cube/train").iterdir()}

    report = shard_tree(tree, out, workers=1, progress=False, resolution=8)
    assert report.reused_units == ["Cube/train"]
    assert report.written_units == ["Cube/test", "Ring/train", "Ring/test"]
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in (out / "Cube/train").iterdir()} == finished
    assert not (out / ".partial").exists()

    fresh = tmp_path / "fresh"
    shard_tree(tree, fresh, workers=2, progress=False, resolution=8)
    assert pl.read_parquet(out / "manifest.parquet").equals(pl.read_parquet(fresh / "manifest.parquet"))
    for unit in ("Cube/train", "Cube/test", "Ring/train", "Ring/test"):
        assert _arrow(out, unit).data.table.equals(_arrow(fresh, unit).data.table)

    again = shard_tree(tree, out, workers=1, progress=False, resolution=8)
    assert again.written_units == [] and len(again.reused_units) == 4


def test_category_by_category_accumulates(tree: Path, original: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = shard_tree(tree, out, categories=["Ring"], workers=1, progress=False)
    assert first.categories == ["Ring"] and first.samples == 5 * 120
    second = shard_tree(tree, out, categories=["Cube"], workers=1, progress=False)
    assert second.categories == ["Cube", "Ring"] and second.written_units == ["Cube/train", "Cube/test"]
    assert pl.read_parquet(out / "manifest.parquet").equals(pl.read_parquet(original / "manifest.parquet"))
    assert DatasetInfo.read(out).categories == ["Cube", "Ring"]


def test_out_folder_guards(tree: Path, original: Path, tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="resolution"):
        shard_tree(tree, original, resolution=8, progress=False)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        shard_tree(tree, stranger, progress=False)
    with pytest.raises(ValueError, match="not in this release"):
        shard_tree(tree, tmp_path / "x", categories=["Teapot"], progress=False)
    with pytest.raises(ValueError, match="inside the source tree"):
        shard_tree(tree, tree / "shards", progress=False)


# ------------------------------------------------------------------------------ bad input


def _ng(root: Path) -> str:
    """The NG specimen folder of the small tree."""
    return next(f"Cube/NG/{r['object_name']}" for r in records_of(root) if r["object_anomaly"])


def _masked_view(root: Path) -> str:
    """A view of the NG specimen that has a mask."""
    return next(r["view"] for r in records_of(root) if r["mask_path"])


def _truncate(root: Path) -> tuple[str, str]:
    path = f"{_ng(root)}/A030_I04.png"
    data = (root / path).read_bytes()
    (root / path).write_bytes(data[: len(data) // 2])
    return "unreadable-image", path


def _garbage(root: Path) -> tuple[str, str]:
    path = "Cube/Good/000/A120_I07.png"
    (root / path).write_bytes(b"this is not a png")
    return "unreadable-image", path


def _missing_mask(root: Path) -> tuple[str, str]:
    path = f"{_ng(root).replace('/NG/', '/GT/')}/A{_masked_view(root)}_mask.png"
    (root / path).unlink()
    return "missing-mask", path


def _mask_wrong_size(root: Path) -> tuple[str, str]:
    path = f"{_ng(root).replace('/NG/', '/GT/')}/A{_masked_view(root)}_mask.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8), "L").save(root / path)
    return "mask-size", path


def _missing_configuration(root: Path) -> tuple[str, str]:
    (root / "Cube/Good/001/A330_I10.png").unlink()
    return "missing-configurations", "Cube/Good/001"


def _unknown_name(root: Path) -> tuple[str, str]:
    path = "Cube/Good/000/A015_I01.png"  # 15 degrees is not one of the 12 views
    shutil.copy(root / "Cube/Good/000/A000_I01.png", root / path)
    return "unknown-file", path


def _mask_for_normal(root: Path) -> tuple[str, str]:
    (root / "Cube/GT/000").mkdir(parents=True)
    shutil.copy(root / f"{_ng(root).replace('/NG/', '/GT/')}/A{_masked_view(root)}_mask.png", root / "Cube/GT/000/A000_mask.png")
    return "mask-for-normal", "Cube/GT/000"


def _meta_disagrees(root: Path) -> tuple[str, str]:
    meta = read_meta(root)
    record = next(r for r in meta["test"]["Cube"] if r["object_anomaly"] == 1 and r["image_anomaly"] == 0)
    record["image_anomaly"] = 1
    write_meta(root, meta)
    return "meta-mismatch", record["img_path"]


def _not_in_meta(root: Path) -> tuple[str, str]:
    meta = read_meta(root)
    dropped = "Cube/Good/000/A060_I02.png"
    meta["train"]["Cube"] = [r for r in meta["train"]["Cube"] if r["img_path"] != dropped]
    meta["test"]["Cube"] = [r for r in meta["test"]["Cube"] if r["img_path"] != dropped]
    write_meta(root, meta)
    return "not-in-meta", "Cube/Good/000"


def _stray_category(root: Path) -> tuple[str, str]:
    shutil.copytree(root / "Cube/Good/000", root / "Cubes/Good/000")
    return "unknown-category", "Cubes"


CORRUPTIONS = {
    "folder of no class": _stray_category,
    "truncated png": _truncate,
    "unreadable png": _garbage,
    "missing mask": _missing_mask,
    "mask of the wrong size": _mask_wrong_size,
    "missing configuration": _missing_configuration,
    "unknown file name": _unknown_name,
    "mask for a normal specimen": _mask_for_normal,
    "meta JSON disagrees": _meta_disagrees,
    "image not in meta JSON": _not_in_meta,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_bad_input_is_reported_then_quarantined(corruption: str, small_tree: Path, tmp_path: Path) -> None:
    kind, path = CORRUPTIONS[corruption](small_tree)
    strict_out = tmp_path / "strict"
    with pytest.raises(ShardError) as raised:
        shard_tree(small_tree, strict_out, workers=1, progress=False)
    assert [(p.kind, p.path) for p in raised.value.problems if p.kind == kind] == [(kind, path)]
    assert not (strict_out / "manifest.parquet").exists()

    report = shard_tree(small_tree, tmp_path / "skip", strict=False, workers=1, progress=False)
    problem = next(p for p in report.skipped if p.kind == kind)
    assert problem.path == path
    manifest = pl.read_parquet(tmp_path / "skip/manifest.parquet")
    specimens = set(manifest["category"] + "/" + manifest["specimen"])
    quarantined = problem.specimen.replace("/Good/", "/").replace("/NG/", "/")
    if kind in ("unknown-file", "unknown-category"):  # stray files are ignored; specimens stay
        assert manifest.height == 3 * 120
    else:
        assert quarantined not in specimens and manifest.height == 2 * 120
    info = DatasetInfo.read(tmp_path / "skip")
    assert any(item["path"] == path and item["kind"] == kind for item in info.skipped)
    assert path in (tmp_path / "skip/README.md").read_text()


def test_pixel_problems_leave_other_units_for_a_rerun(small_tree: Path, tmp_path: Path) -> None:
    _, path = _truncate(small_tree)
    out = tmp_path / "out"
    with pytest.raises(ShardError, match="unreadable-image"):
        shard_tree(small_tree, out, workers=1, progress=False)
    assert (out / "Cube/train" / UNIT_MARKER).is_file() and not (out / "Cube/test").exists()
    report = shard_tree(small_tree, out, strict=False, workers=1, progress=False)
    assert report.reused_units == ["Cube/train"] and report.written_units == ["Cube/test"]
    assert [p.path for p in report.skipped] == [path]
    # a strict rerun over the quarantined unit refuses again, rather than hiding the problem
    with pytest.raises(ShardError, match="unreadable-image"):
        shard_tree(small_tree, out, workers=1, progress=False)


def test_missing_meta_json(small_tree: Path, tmp_path: Path) -> None:
    (small_tree / "jsons/meta_unsupervised.json").unlink()
    for strict in (True, False):
        with pytest.raises(ShardError) as raised:
            shard_tree(small_tree, tmp_path / f"out{strict}", strict=strict, progress=False)
        assert raised.value.problems[0].kind == "missing-meta"


def test_class_without_files_is_one_problem(tree: Path) -> None:
    class OnlyCube(FolderSource):
        def list_files(self) -> list[str]:
            return [path for path in super().list_files() if not path.startswith("Ring/")]

    parsed = PARSE(OnlyCube(tree), dataset_name="m2ad")
    assert [(p.kind, p.path) for p in parsed.problems] == [("missing-category", "Ring")]
    assert PARSE(OnlyCube(tree), dataset_name="m2ad", categories=["Cube"]).problems == []


def test_parser_accepts_official_extras(small_tree: Path) -> None:
    ng = _ng(small_tree).replace("/NG/", "/GT/")
    view = _masked_view(small_tree)
    shutil.copy(small_tree / f"{ng}/A{view}_mask.png", small_tree / f"{ng}/A{view}_seg.png")
    (small_tree / "README.md").write_text("hub card")
    (small_tree / "jsons/meta.json").write_text("{}")
    (small_tree / "Cube/Good/000/.DS_Store").write_bytes(b"\0")
    parsed = PARSE(FolderSource(small_tree), dataset_name="m2ad")
    assert parsed.problems == [] and len(parsed.records) == 360


# ------------------------------------------------------------------------------ synthetic M2AD, end to end


def test_synthetic_tree_shards_cleanly(tmp_path: Path) -> None:
    from m2ad.synth import generate

    root = generate(tmp_path / "synth", categories=["Cube"], normal_specimens=3, ng_specimens=1, resolution=16, workers=2, progress=False)
    parsed = PARSE(FolderSource(root), dataset_name="m2ad-synth")
    assert parsed.problems == []
    report = shard_tree(root, tmp_path / "out", resolution=8, workers=2, progress=False)
    assert report.dataset == "m2ad-synth" and report.samples == 4 * 120
    manifest = pl.read_parquet(tmp_path / "out/manifest.parquet")
    assert manifest["sample_id"].str.starts_with("m2ad-synth/Cube/").all()
    assert manifest.filter(pl.col("split") == "train")["specimen"].n_unique() == int(0.6 * 3)
    assert (manifest.filter(pl.col("label") == 1)["has_mask"]).all()
    assert DatasetInfo.read(tmp_path / "out").version.startswith("m2ad-synth")


# ------------------------------------------------------------------------------ CLI


def test_cli_shard_and_info(small_tree: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["shard", str(small_tree), str(out), "--resolution", "8", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "360 samples" in result.output
    result = runner.invoke(app, ["info", str(out)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for needle in ("Cube", "train", "test", "completeness", "on disk", "330"):
        assert needle in result.output


def test_cli_reports_bad_input_without_traceback(small_tree: Path, tmp_path: Path) -> None:
    _missing_configuration(small_tree)
    runner = CliRunner()
    result = runner.invoke(app, ["shard", str(small_tree), str(tmp_path / "out"), "--workers", "1"])
    assert result.exit_code == 1
    assert "missing-configurations" in result.output and "Cube/Good/001" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["shard", str(small_tree), str(tmp_path / "out2"), "--skip-bad", "--workers", "1"])
    assert result.exit_code == 0 and "skipped" in result.output
    for arguments in (["shard", str(tmp_path / "nowhere"), str(tmp_path / "o")], ["shard", str(small_tree), str(tmp_path / "o"), "--resolution", "big"], ["info", str(tmp_path)]):
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2 and "error" in result.output and "Traceback" not in result.output


def test_dataset_json_is_valid_json(original: Path) -> None:
    data = json.loads((original / "dataset.json").read_text())
    assert data["format"] == "m2ad-shards" and data["mask_rules"] == ["exact", "official"] and data["skipped"] == []
    assert os.path.getsize(original / "manifest.parquet") > 0
