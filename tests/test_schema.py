"""m2ad.schema: sample ids, field sets, the sharded-dataset description; M2AD's constants and
defect tokens (m2ad.datasets.m2ad); format-1 dataset.json files."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from m2ad import modalities
from m2ad.datasets import get
from m2ad.datasets.m2ad import CATEGORIES as M2AD_CATEGORIES
from m2ad.datasets.m2ad import ILLUMINATIONS as M2AD_ILLUMINATIONS
from m2ad.datasets.m2ad import VIEWS as M2AD_VIEWS
from m2ad.datasets.m2ad import defect_types_from_dirname
from m2ad.schema import (
    CORE_FEATURES,
    FORMAT_VERSION,
    MASK_RULES,
    SPLITS,
    DatasetInfo,
    Problem,
    TreeSource,
    make_sample_id,
    shard_dir_name,
)

IMAGE_FEATURES = get("m2ad").features()
MANIFEST_SCHEMA = get("m2ad").manifest_schema()
PIXEL_COLUMNS = modalities.stored_columns(("image", "mask"))

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
    assert MANIFEST_SCHEMA.names == shared[:-2] + ["has_mask", "width", "height", "shard_dir", "shard_row"]
    # the core schema is M2AD's without its extra column; a dataset without it (MVTec-AD) has no such column
    assert list(CORE_FEATURES) == shared[: len(CORE_FEATURES)] and "detectable" not in CORE_FEATURES
    mvtec = get("mvtec-ad").features()
    assert "detectable" not in mvtec and [name for name in mvtec if name != "detectable"] == [name for name in IMAGE_FEATURES if name != "detectable"]
    row = {name: None for name in mvtec}
    row.update(sample_id="mvtec-ad/bottle/test/good/000.png", dataset="mvtec-ad", category="bottle", split="test", specimen="test/good/000",
               label=0, object_label=0, defect_types=[], width=4, height=4)  # fmt: skip
    table = datasets.Dataset.from_list([row], features=mvtec)
    assert table[0]["view"] is None and table[0]["image"] is None


def test_every_registered_modality_is_complete() -> None:
    for name in modalities.available():
        modality = modalities.get(name)
        assert modality.name == name and modality.features
        assert set(modality.manifest_columns) <= set(modality.manifest_values(datasets.Dataset.from_list(
            [{column: None for column in modality.features}], features=datasets.Features(modality.features)).data.table))


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


def test_format_1_dataset_json_gets_the_m2ad_spec_facts(tmp_path: Path) -> None:
    """A dataset.json written before datasets were specs (format 1, as m2ad 0.1 wrote it: no
    spec facts, or their empty defaults) reads with the facts of the M2AD spec."""
    old = {
        "dataset": "m2ad-synth", "resolution": 128, "categories": ["Cube", "Ring"], "source": {"path": "x"}, "version": "",
        "license": "Apache-2.0", "mask_rules": ["exact", "official"], "format": "m2ad-shards", "format_version": 1,
        "code_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00", "image_resize": "PIL bilinear", "skipped": [],
    }  # fmt: skip
    for extra in ({}, {"axes": [], "extra_columns": [], "shot_unit": "image", "protocols": [], "class_names": {}}):
        (tmp_path / "dataset.json").write_text(json.dumps({**old, **extra}))
        info = DatasetInfo.read(tmp_path)
        assert info.axes == ("view", "illumination") and info.extra_columns == ("detectable",)
        assert info.shot_unit == "specimen" and info.protocols == ("invariant", "synergy", "standard")
        assert info.class_names == {"Cube": "Cube", "Ring": "Ring"} and info.spec == "m2ad" and info.geometry == "longer-side"
        assert info.format_version == 1 and info.resolution == 128


def test_a_protocol_that_does_not_fit_is_refused() -> None:
    info = DatasetInfo("mvtec-ad", 256, ["bottle"], protocols=("standard",), axes=())
    info.check_protocol("standard")
    with pytest.raises(ValueError, match="'invariant' does not fit the dataset 'mvtec-ad'.*it fits: standard"):
        info.check_protocol("invariant")


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
