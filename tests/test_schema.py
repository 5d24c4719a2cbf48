"""m2ad.schema: sample ids, field sets, the sharded-dataset description, defect tokens."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from m2ad.schema import (
    FORMAT_VERSION,
    IMAGE_FEATURES,
    M2AD_CATEGORIES,
    M2AD_ILLUMINATIONS,
    M2AD_VIEWS,
    MANIFEST_SCHEMA,
    MASK_RULES,
    PIXEL_COLUMNS,
    POINT_CLOUD_FEATURES,
    SPLITS,
    DatasetInfo,
    Problem,
    TreeSource,
    defect_types_from_dirname,
    make_sample_id,
    shard_dir_name,
)

ISSUE_FIELDS = {
    "sample_id", "dataset", "category", "split", "specimen", "view", "illumination", "label", "object_label",
    "defect_types", "detectable", "image", "mask", "width", "height",
}  # fmt: skip


def test_sample_id_is_dataset_slash_release_path() -> None:
    assert make_sample_id("m2ad", "Bird/NG/scratch_1_000/A060_I01.png") == "m2ad/Bird/NG/scratch_1_000/A060_I01.png"
    assert make_sample_id("mvtec-ad", "\\bottle\\test\\good\\000.png") == "mvtec-ad/bottle/test/good/000.png"
    for bad in ("", "m2ad/x"):
        with pytest.raises(ValueError, match="dataset name"):
            make_sample_id(bad, "a.png")


def test_fields_cover_the_issue_and_leave_room_for_other_datasets() -> None:
    assert ISSUE_FIELDS <= set(IMAGE_FEATURES)
    assert isinstance(IMAGE_FEATURES["image"], datasets.Image) and isinstance(IMAGE_FEATURES["mask"], datasets.Image)
    shared = [name for name in IMAGE_FEATURES if name not in PIXEL_COLUMNS]
    assert [name for name in POINT_CLOUD_FEATURES if name not in PIXEL_COLUMNS] == shared
    assert {"points", "point_labels"} <= set(POINT_CLOUD_FEATURES)
    assert MANIFEST_SCHEMA.names == shared[:-2] + ["has_mask", "width", "height", "shard_dir", "shard_row"]
    # a dataset without views or lights (MVTec-AD) fits: view/illumination/detectable are nullable
    row = {name: None for name in IMAGE_FEATURES}
    row.update(sample_id="mvtec-ad/bottle/test/good/000.png", dataset="mvtec-ad", category="bottle", split="test", specimen="000",
               label=0, object_label=0, defect_types=[], width=4, height=4)  # fmt: skip
    table = datasets.Dataset.from_list([row], features=IMAGE_FEATURES)
    assert table[0]["view"] is None and table[0]["detectable"] is None and table[0]["image"] is None


def test_point_cloud_rows_encode() -> None:
    row = {name: None for name in POINT_CLOUD_FEATURES}
    row.update(sample_id="real3d-ad/airplane/test/1.pcd", dataset="real3d-ad", category="airplane", split="test", specimen="1",
               label=1, object_label=1, defect_types=["bulge"], points=[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], point_labels=[0, 1])  # fmt: skip
    table = datasets.Dataset.from_list([row], features=POINT_CLOUD_FEATURES).with_format("numpy")
    assert table[0]["points"].dtype.name == "float32" and table[0]["points"].shape == (2, 3)


def test_m2ad_constants() -> None:
    assert len(M2AD_CATEGORIES) == 10 and "Bird" in M2AD_CATEGORIES
    assert M2AD_VIEWS[0] == "000" and M2AD_VIEWS[-1] == "330" and len(M2AD_VIEWS) == 12
    assert M2AD_ILLUMINATIONS == tuple(f"{i:02d}" for i in range(1, 11))
    assert SPLITS == ("train", "test") and MASK_RULES == ("exact", "official")


@pytest.mark.parametrize(
    "dirname,expected",
    [
        ("scratch_1_000", ["scratch"]),
        ("damage_1_hole_5_scratch_1_046", ["damage", "hole", "scratch"]),
        ("hole_2_hole_1_007", ["hole"]),
        ("012", []),
    ],
)
def test_defect_types_from_dirname(dirname: str, expected: list[str]) -> None:
    assert defect_types_from_dirname(dirname) == expected


def test_shard_dir_name() -> None:
    assert shard_dir_name("Bird", "test") == "Bird/test"
    with pytest.raises(ValueError, match="split"):
        shard_dir_name("Bird", "validation")


def test_dataset_info_round_trip_and_guards(tmp_path: Path) -> None:
    skipped = [Problem("missing-mask", "Bird/GT/x_1_001/A000_mask.png", "gone", "Bird/NG/x_1_001").to_dict()]
    info = DatasetInfo("m2ad", 256, ["Bird"], source={"url": "hf://x", "verified": True}, license="Apache-2.0", skipped=skipped)
    (tmp_path / "dataset.json").write_text(info.to_json())
    assert DatasetInfo.read(tmp_path) == info
    with pytest.raises(FileNotFoundError, match="m2ad shard"):
        DatasetInfo.read(tmp_path / "missing")
    data = json.loads(info.to_json())
    data["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="upgrade m2ad"):
        DatasetInfo.read(tmp_path)
    data.update(format="other", format_version=FORMAT_VERSION)
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not an m2ad-shards file"):
        DatasetInfo.read(tmp_path)


def test_tree_source_protocol() -> None:
    class Listing:
        def list_files(self) -> list[str]:
            return ["a.png"]

        def read_bytes(self, path: str) -> bytes:
            return b""

    assert isinstance(Listing(), TreeSource)
    assert not isinstance(object(), TreeSource)
    assert str(Problem("unknown-file", "Bird/x.txt", "file name does not parse")) == "Bird/x.txt: file name does not parse [unknown-file]"


def test_manifest_schema_types() -> None:
    assert MANIFEST_SCHEMA.field("shard_row").type == pa.int64()
    assert MANIFEST_SCHEMA.field("defect_types").type == pa.list_(pa.string())
    assert MANIFEST_SCHEMA.field("label").type == pa.int8()
