"""The synthetic M2AD: official layout and record schema, split rule, masks, physics, determinism."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from scipy.ndimage import uniform_filter
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from m2ad import synth
from m2ad.cli.synth import synth as synth_command
from m2ad.datasets.m2ad import ILLUMINATIONS as M2AD_ILLUMINATIONS
from m2ad.datasets.m2ad import VIEWS as M2AD_VIEWS
from m2ad.datasets.m2ad import fixture
from m2ad.render import DEFECT_TOKENS

SMALL = dict(categories=("Cube", "Ring"), normal_specimens=5, ng_specimens=4, resolution=64, seed=3, progress=False)
RECORD_FIELDS = [
    "img_path",
    "view",
    "illumination",
    "object_name",
    "object_anomaly",
    "image_anomaly",
    "cls_name",
    "mask_path",
    "seg_path",
    "detectable",
]
IMAGE_NAME = re.compile(r"^A(\d{3})_I(\d{2})\.png$")
MASK_NAME = re.compile(r"^A(\d{3})_mask\.png$")
NG_DIR = re.compile(r"^(?:([a-z]+)_([1-9]\d*)_)+(\d{3})$")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "out", workers=1, **SMALL)


@pytest.fixture(scope="module")
def meta(tree: Path) -> dict:
    return json.loads((tree / "jsons" / "meta_unsupervised.json").read_text())


def all_records(meta: dict) -> list[dict]:
    return [record for split in ("train", "test") for records in meta[split].values() for record in records]


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_follows_official_naming(tree: Path) -> None:
    files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    assert {"SYNTHETIC.json", "jsons/meta_unsupervised.json"} <= files
    expected_images = {f"A{v}_I{i}.png" for v in M2AD_VIEWS for i in M2AD_ILLUMINATIONS}
    for category in SMALL["categories"]:
        assert sorted(p.name for p in (tree / category).iterdir()) == ["GT", "Good", "NG"]
        good = sorted(p.name for p in (tree / category / "Good").iterdir())
        assert good == [f"{i:03d}" for i in range(SMALL["normal_specimens"])]
        ng = sorted((tree / category / "NG").iterdir())
        assert sorted(int(p.name[-3:]) for p in ng) == list(range(SMALL["ng_specimens"]))
        for specimen in [tree / category / "Good" / name for name in good] + ng:
            assert {p.name for p in specimen.iterdir()} == expected_images  # 120 configurations
        for directory in ng:
            match = NG_DIR.fullmatch(directory.name)
            assert match, directory.name
            tokens = directory.name.split("_")[:-1:2]
            assert set(tokens) <= set(DEFECT_TOKENS) and tokens == sorted(set(tokens))
        gt = sorted(p.name for p in (tree / category / "GT").iterdir())
        assert set(gt) <= {p.name for p in ng}, "GT only for NG specimens"
        for directory in (tree / category / "GT").iterdir():
            assert all(MASK_NAME.fullmatch(p.name) for p in directory.iterdir())
    other = [f for f in files if not f.startswith(tuple(f"{c}/" for c in SMALL["categories"]))]
    assert sorted(other) == ["SYNTHETIC.json", "jsons/meta_unsupervised.json"]
    assert not list(tree.parent.glob("*.partial"))


def test_marker_file_is_flat_json(tree: Path) -> None:
    marker = json.loads((tree / "SYNTHETIC.json").read_text())
    assert marker["dataset"] == "m2ad-synth"
    assert marker["seed"] == SMALL["seed"] and marker["resolution"] == SMALL["resolution"]
    assert marker["generator_version"] == synth.GENERATOR_VERSION
    assert all(not isinstance(value, dict) for value in marker.values())


def test_meta_json_has_official_schema_and_order(tree: Path, meta: dict) -> None:
    text = (tree / "jsons" / "meta_unsupervised.json").read_text()
    assert text == json.dumps(meta, indent=4) + "\n"  # the official writer's formatting
    assert list(meta) == ["train", "test"]
    for split in ("train", "test"):
        assert list(meta[split]) == list(SMALL["categories"])
        for category, records in meta[split].items():
            for record in records:
                assert list(record) == RECORD_FIELDS
                name = record["img_path"].rsplit("/", 1)[1]
                assert record["view"] == name[1:4] and record["illumination"] == name[6:8]
                assert record["img_path"] == f"{category}/{'NG' if record['object_anomaly'] else 'Good'}/{record['object_name']}/{name}"
                assert record["cls_name"] == category
                assert record["object_anomaly"] in (0, 1) and record["image_anomaly"] in (0, 1)
                assert type(record["object_anomaly"]) is int and type(record["image_anomaly"]) is int
                assert record["seg_path"] == ""
                if record["image_anomaly"]:
                    assert record["object_anomaly"] == 1
                    assert record["mask_path"] == f"{category}/GT/{record['object_name']}/{name[:-8]}_mask.png"
                    assert type(record["detectable"]) is bool
                else:
                    assert record["mask_path"] == "" and record["detectable"] == ""
            key = [(r["object_anomaly"], int(r["object_name"][-3:]), int(r["view"]), int(r["illumination"])) for r in records]
            assert key == sorted(key) and len(set(key)) == len(key)
    paths = {r["img_path"] for r in all_records(meta)}
    on_disk = {p.relative_to(tree).as_posix() for p in tree.glob("*/[GN]*/*/*.png") if "/GT/" not in p.as_posix()}
    assert paths == on_disk


def test_split_follows_official_rule(tree: Path, meta: dict) -> None:
    for category in SMALL["categories"]:
        names = sorted(p.name for p in (tree / category / "Good").iterdir())
        random.seed(42)
        random.shuffle(names)
        cut = int(len(names) * 0.6)
        train_records = meta["train"][category]
        test_records = meta["test"][category]
        assert {r["object_name"] for r in train_records} == set(names[:cut])
        assert len(train_records) == cut * 120
        assert all(r["object_anomaly"] == 0 and r["image_anomaly"] == 0 for r in train_records)
        ng = {p.name for p in (tree / category / "NG").iterdir()}
        assert {r["object_name"] for r in test_records} == set(names[cut:]) | ng
        assert len(test_records) == (len(names) - cut + len(ng)) * 120


@pytest.mark.parametrize("count", [1, 2, 5, 7, 49, 50, 100])
def test_split_function_matches_global_random_procedure(count: int) -> None:
    names = [f"{i:03d}" for i in range(count)][::-1]
    expected = sorted(names)
    random.seed(42)
    random.shuffle(expected)
    train, test = fixture.split_normal_specimens(names)
    assert train == expected[: int(count * 0.6)] and test == expected[int(count * 0.6) :]


def test_masks_exist_exactly_for_anomalous_views(tree: Path, meta: dict) -> None:
    records = all_records(meta)
    mask_files = {p.relative_to(tree).as_posix() for p in tree.glob("*/GT/*/*.png")}
    assert mask_files == {r["mask_path"] for r in records if r["image_anomaly"]}
    for mask_path in mask_files:
        mask = Image.open(tree / mask_path)
        assert mask.mode == "L" and mask.size == (SMALL["resolution"],) * 2
        values = np.unique(np.asarray(mask))
        assert set(values) <= {0, 255} and 255 in values
    per_view: dict[tuple[str, str, str], set[tuple[int, str]]] = {}
    for record in records:  # one mask per (specimen, view), shared by the 10 lights
        key = (record["cls_name"], record["object_name"], record["view"])
        per_view.setdefault(key, set()).add((record["image_anomaly"], record["mask_path"]))
    assert all(len(labels) == 1 for labels in per_view.values())


def test_defects_are_seen_from_some_views_only(meta: dict) -> None:
    views: dict[tuple[str, str], set[str]] = {}
    for record in all_records(meta):
        if record["object_anomaly"]:
            views.setdefault((record["cls_name"], record["object_name"]), set())
            if record["image_anomaly"]:
                views[(record["cls_name"], record["object_name"])].add(record["view"])
    assert all(len(seen) >= 1 for seen in views.values()), "every NG specimen shows its defect somewhere"
    assert any(len(seen) < 12 for seen in views.values()), "some NG views must be normal"
    fraction = sum(map(len, views.values())) / (12 * len(views))
    assert 0.2 < fraction < 1.0


def test_detectable_false_is_present_but_rare(meta: dict) -> None:
    anomalous = [r for r in all_records(meta) if r["image_anomaly"]]
    undetectable = sum(r["detectable"] is False for r in anomalous)
    assert 0 < undetectable < 0.3 * len(anomalous)


def test_mask_lies_on_the_object_and_lights_share_geometry(tree: Path, meta: dict) -> None:
    """The 10 images of a view are pixel-aligned: their silhouettes (pixels that change with the
    light far more than camera noise) coincide, and the mask lies inside the silhouette."""
    checked = 0
    for record in all_records(meta):
        if not (record["image_anomaly"] and record["illumination"] == "01"):
            continue
        stack = np.stack(
            [np.asarray(Image.open(tree / record["img_path"].replace("_I01.png", f"_I{i}.png")), dtype=np.float64) for i in M2AD_ILLUMINATIONS]
        ).mean(axis=-1)
        # Background changes with the light by one global factor; the object by its own shading.
        background = np.median(stack[:, :4, :4].reshape(10, -1), axis=1)
        ratio = stack / background[:, None, None]
        changing = ratio.std(axis=0) > 0.15
        mask = np.asarray(Image.open(tree / record["mask_path"])) > 0
        assert changing[mask].mean() > 0.8
        checked += 1
    assert checked > 0


def test_same_seed_same_bytes_for_any_worker_count(tree: Path, tmp_path: Path) -> None:
    again = synth.generate(tmp_path / "again", workers=2, **SMALL)
    assert file_digests(again) == file_digests(tree)
    other = synth.generate(tmp_path / "other", workers=2, **{**SMALL, "seed": SMALL["seed"] + 1})
    assert file_digests(other) != file_digests(tree)


def test_refuses_non_empty_folder_and_only_overwrites_synthetic_trees(tmp_path: Path) -> None:
    small = {**SMALL, "categories": ("Tube",), "normal_specimens": 1, "ng_specimens": 1, "resolution": 32, "workers": 1}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        synth.generate(foreign, **small)
    with pytest.raises(FileExistsError, match="not a synthetic"):
        synth.generate(foreign, overwrite=True, **small)
    assert (foreign / "keep.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    synth.generate(empty, **small)
    assert synth.is_synthetic_tree(empty)
    synth.generate(empty, overwrite=True, **{**small, "seed": 9})
    assert json.loads((empty / "SYNTHETIC.json").read_text())["seed"] == 9


def test_interrupted_run_leaves_no_complete_looking_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def render_then_die(task: fixture.SpecimenTask) -> list[dict]:
        if calls:
            raise KeyboardInterrupt
        calls.append(task)
        return real(task)

    real = fixture.render_specimen
    monkeypatch.setattr(fixture, "render_specimen", render_then_die)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        synth.generate(out, workers=1, **{**SMALL, "categories": ("Cube",), "resolution": 32})
    assert not out.exists()
    assert not synth.is_synthetic_tree(out.with_name("out.partial"))
    monkeypatch.setattr(fixture, "render_specimen", real)
    synth.generate(out, workers=1, **{**SMALL, "categories": ("Cube",), "resolution": 32})
    assert synth.is_synthetic_tree(out) and not out.with_name("out.partial").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"categories": ("Bird",)}, "unknown synthetic categories"),
        ({"categories": "Cube"}, "not one string"),
        ({"categories": ()}, "at least one category"),
        ({"categories": ("Cube", "Cube")}, "repeat"),
        ({"normal_specimens": 0}, "normal_specimens"),
        ({"ng_specimens": -1}, "ng_specimens"),
        ({"resolution": 8}, "resolution"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synth.generate(tmp_path / "out", **{**SMALL, **arguments})
    assert not (tmp_path / "out").exists()


def command_line() -> typer.Typer:
    app = typer.Typer()
    app.command()(synth_command)
    return app


def test_cli_writes_a_tree_and_reports_bad_input_without_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    arguments = [str(out), "--categories", "Ring", "--normal-specimens", "2", "--ng-specimens", "1", "--resolution", "32", "--workers", "1"]
    result = runner.invoke(command_line(), arguments)
    assert result.exit_code == 0, result.output
    assert synth.is_synthetic_tree(out)
    again = runner.invoke(command_line(), arguments)
    assert again.exit_code == 2 and "not empty" in again.output and "Traceback" not in again.output
    assert runner.invoke(command_line(), [*arguments, "--overwrite"]).exit_code == 0
    bad = runner.invoke(command_line(), [str(tmp_path / "bad"), "--categories", "Ring,Bird"])
    assert bad.exit_code == 2 and "Bird" in bad.output and "Traceback" not in bad.output
    assert "--normal-specimens" in runner.invoke(command_line(), ["--help"]).output


def test_a_trivial_detector_is_far_from_perfect_but_not_hopeless(tmp_path: Path) -> None:
    """Per-image mean intensity must not separate anomalous from normal test images; the
    max-pooled difference to the mean normal training image of the same (view, light) must
    do better than chance."""
    root = synth.generate(tmp_path / "hard", categories=("Cube",), normal_specimens=8, ng_specimens=6, resolution=96, seed=1, progress=False)
    meta = json.loads((root / "jsons" / "meta_unsupervised.json").read_text())

    def load(path: str) -> np.ndarray:
        return np.asarray(Image.open(root / path), dtype=np.float64) / 255

    references: dict[tuple[str, str], list[np.ndarray]] = {}
    for record in meta["train"]["Cube"]:
        references.setdefault((record["view"], record["illumination"]), []).append(load(record["img_path"]))
    mean_normal = {key: np.mean(images, axis=0) for key, images in references.items()}
    labels, mean_scores, difference_scores = [], [], []
    for record in meta["test"]["Cube"]:
        image = load(record["img_path"])
        labels.append(record["image_anomaly"])
        mean_scores.append(image.mean())
        difference = np.abs(image - mean_normal[(record["view"], record["illumination"])]).mean(axis=-1)
        difference_scores.append(uniform_filter(difference, 3).max())
    assert 0 < sum(labels) < len(labels)
    assert roc_auc_score(labels, mean_scores) < 0.8
    assert roc_auc_score(labels, difference_scores) > 0.55
