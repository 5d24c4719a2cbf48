"""Conformance of every registered dataset, from its own fixture writer, end to end.

For each entry of the registry: the fixture tree parses with no problem and is detected as the
dataset; it shards into the spec's manifest schema and ``dataset.json`` facts; each fitting
protocol that exists selects non-empty train and test sets; the ``random`` method runs end to
end through ``m2ad.run.run`` and its metrics lie in [0, 1]; a corrupted fixture gives each
problem kind the dataset can report (a corruption per kind, written here, and a check that
every kind has one); and a download from a loopback mirror of the fixture's release files
gives exactly the shards of sharding the tree.  Expected paths are derived from the tree, never
from the code under test.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import protocols
from m2ad.cli import app
from m2ad.datasets import detect, get
from m2ad.datasets.registry import available
from m2ad.download import download_dataset
from m2ad.predictions import write as write_predictions
from m2ad.run import RunConfig, run
from m2ad.schema import MANIFEST_FILE, DatasetInfo, ReleaseRecord
from m2ad.shard import FolderSource, ShardError, shard_tree
from protocols.evaluate import evaluate
from servers import FileServer, write_sha256sums

OPTIONS = {"m2ad": dict(categories=("Cube",), normal_specimens=2, ng_specimens=1, resolution=16)}
DEFAULT_OPTIONS = dict(normal_specimens=3, ng_specimens=2, resolution=32)
GENERIC_KINDS = ("unreadable-image", "unreadable-mask", "mask-size", "mask-mode", "symlink-outside")
POINT_KINDS = ("pcd-fields", "pcd-format", "gt-format", "points-symlink-outside")
"""The kinds every point-cloud dataset (primary modality ``points``) can report; the last is
``symlink-outside`` provoked on a cloud."""


def fixture_tree(name: str, root: Path) -> Path:
    """The dataset's fixture, as its release would look (no synthetic marker)."""
    spec = get(name)
    options = {"categories": spec.fixture.default_categories, **DEFAULT_OPTIONS, **OPTIONS.get(name, {})}
    root.mkdir(parents=True)
    spec.fixture.write(root, **options, seed=1, workers=1, progress=False)
    return root


def required_kinds(name: str) -> set[str]:
    """Every problem kind dataset ``name`` can report: its layout's, and the pixel and source
    kinds of its modalities."""
    spec = get(name)
    if spec.modalities[0] == "points":
        return {*spec.layout.problem_kinds, *POINT_KINDS}
    return {*spec.layout.problem_kinds, *GENERIC_KINDS, *(("image-size",) if spec.same_size_within_specimen else ())}


@pytest.fixture(scope="module", params=available())
def tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return request.param, fixture_tree(request.param, tmp_path_factory.mktemp("fixture") / request.param)


@pytest.fixture(scope="module")
def shards(tree: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name, root = tree
    out = tmp_path_factory.mktemp("shards") / name
    shard_tree(root, out, resolution=16, workers=1, progress=False)
    return name, out


def test_the_fixture_parses_cleanly_and_is_detected(tree: tuple[str, Path]) -> None:
    name, root = tree
    spec = get(name)
    parsed = spec.layout.parse(FolderSource(root), dataset_name=name)
    assert parsed.problems == [] and parsed.records
    assert detect(FolderSource(root).list_files()) is spec
    assert all(record.sample_id == f"{name}/{record.sample_id.split('/', 1)[1]}" for record in parsed.records)
    assert len({record.sample_id for record in parsed.records}) == len(parsed.records)


def test_the_shards_follow_the_spec(shards: tuple[str, Path]) -> None:
    name, out = shards
    spec = get(name)
    schema = pq.read_schema(out / MANIFEST_FILE).remove_metadata()
    assert schema.equals(spec.manifest_schema())
    info = DatasetInfo.read(out)
    assert info.dataset == name and info.format_version == 2
    for key, value in spec.info_fields(info.categories).items():
        assert getattr(info, key) == value, key
    assert set(info.class_names) == set(info.categories)
    manifest = pl.read_parquet(out / MANIFEST_FILE)
    for axis in ("view", "illumination"):
        assert manifest[axis].is_not_null().all() == (axis in spec.axes)
    assert set(manifest.columns) >= set(spec.extra_columns)
    card = (out / "README.md").read_text()
    assert card.startswith(f"---\nlicense: {spec.license_id}\n") and "config_name: all\n  default: true" in card
    for category in info.categories:
        assert f'config_name: "{category}"' in card
        assert datasets.load_from_disk(str(out / category / "test")).split == "test"


def test_each_fitting_protocol_selects_train_and_test(shards: tuple[str, Path]) -> None:
    name, out = shards
    info = DatasetInfo.read(out)
    fitting = [protocol for protocol in info.protocols if protocol in protocols.available()]
    assert fitting and ("standard" in fitting or "points" in info.modalities)
    manifest = pl.read_parquet(out / MANIFEST_FILE)
    for protocol_name in fitting:
        protocol = protocols.get(protocol_name)
        for category in info.categories:
            assert protocol.train_samples(manifest, category).height > 0, (protocol_name, category)
            test = protocol.test_samples(manifest, category)
            assert test.height > 0 and test["label"].sum() > 0, (protocol_name, category)


@pytest.mark.filterwarnings("ignore")  # single-class breakdown cells: NaN, with a warning
def test_every_protocol_evaluates_the_shards_or_is_refused_in_one_line(shards: tuple[str, Path], tmp_path: Path) -> None:
    """Random predictions (with maps) for every test sample: each protocol the dataset lists
    gives metrics in [0, 1] (or null); every other protocol is refused with one line, also by
    ``m2ad evaluate`` (exit 1, no traceback)."""
    name, out = shards
    info = DatasetInfo.read(out)
    manifest = pl.read_parquet(out / MANIFEST_FILE)
    test = manifest.filter(pl.col("split") == "test")
    rng = np.random.default_rng(0)
    if "points" in info.modalities:  # one score per point of each cloud
        maps = [rng.random(count).astype(np.float32) for count in test["num_points"]]
    else:
        maps = [rng.random((height, width)).astype(np.float32) for height, width in zip(test["height"], test["width"])]
    path = write_predictions(tmp_path / "p.parquet", test["sample_id"].to_list(), rng.random(test.height).tolist(), maps,
                             map_kind="point" if "points" in info.modalities else "pixel")
    for protocol_name in protocols.available():
        if protocol_name in info.protocols:
            result = evaluate(protocol_name, out, path, progress=False)
            assert list(result["mean"]) == list(protocols.get(protocol_name).metric_names)
            assert all(value is None or 0 <= value <= 1 for values in result["categories"].values() for value in values.values())
            continue
        with pytest.raises(ValueError) as caught:
            evaluate(protocol_name, out, path, progress=False)
        assert "\n" not in str(caught.value) and f"protocol {protocol_name!r} does not fit the dataset {info.dataset!r}" in str(caught.value)
        cli = CliRunner().invoke(app, ["evaluate", "--protocol", protocol_name, "--data", str(out), "--predictions", str(path)])
        assert cli.exit_code == 1 and "does not fit the dataset" in cli.output and "Traceback" not in cli.output


def test_the_random_method_runs_end_to_end(shards: tuple[str, Path], tmp_path: Path) -> None:
    name, out = shards
    protocol = DatasetInfo.read(out).protocols[0]
    result = run(RunConfig(protocol=protocol, methods=("random",), data=out, out=tmp_path / "run", executor="local"), progress=False)
    assert result.ok and result.failed == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    means = summary["methods"]["random"]["mean"]
    assert means and all(value is None or 0.0 <= value <= 1.0 for value in means.values())
    assert means[protocols.get(protocol).metric_names[0]] is not None


# ------------------------------------------------------------------------------ corrupted fixtures


def _first_with_mask(root: Path, name: str) -> ReleaseRecord:
    records = get(name).layout.parse(FolderSource(root), dataset_name=name).records
    return next(record for record in records if record.mask_path)


def _rewrite_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _unreadable_image(root: Path, name: str) -> str:
    path = _first_with_mask(root, name).image_path
    (root / path).write_bytes(b"not an image at all")
    return path


def _unreadable_mask(root: Path, name: str) -> str:
    path = _first_with_mask(root, name).mask_path
    (root / path).write_bytes(b"not a mask")
    return path


def _mask_size(root: Path, name: str) -> str:
    path = _first_with_mask(root, name).mask_path
    Image.fromarray(np.full((5, 7), 255, np.uint8), "L").save(root / path, format="PNG")
    return path


def _mask_mode(root: Path, name: str) -> str:
    path = _first_with_mask(root, name).mask_path
    size = Image.open(root / path).size
    Image.new("RGBA", size, (255, 255, 255, 255)).save(root / path, format="PNG")
    return path


def _symlink_outside(root: Path, name: str) -> str:
    path = _first_with_mask(root, name).image_path
    outside = root.parent / f"outside-{name}{Path(path).suffix}"
    shutil.move(root / path, outside)
    (root / path).symlink_to(outside)
    return path


def _image_size(root: Path, name: str) -> str:
    records = get(name).layout.parse(FolderSource(root), dataset_name=name).records
    last = [record for record in records if record.specimen_path == records[0].specimen_path][-1]
    Image.open(root / last.image_path).resize((9, 9)).save(root / last.image_path)
    return last.image_path


def _first_anomalous_cloud(root: Path, name: str) -> ReleaseRecord:
    records = get(name).layout.parse(FolderSource(root), dataset_name=name).records
    return next(record for record in records if record.label)


def _first_normal_test_cloud(root: Path, name: str) -> ReleaseRecord:
    records = get(name).layout.parse(FolderSource(root), dataset_name=name).records
    return next(record for record in records if record.split == "test" and not record.label)


def _pcd_fields(root: Path, name: str) -> str:
    path = _first_normal_test_cloud(root, name).files["points"]
    (root / path).write_bytes(b"VERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\nWIDTH 1\nHEIGHT 1\n"
                              b"POINTS 1\nDATA ascii\n0 0 0 0\n")
    return path


def _pcd_format(root: Path, name: str) -> str:
    path = _first_normal_test_cloud(root, name).files["points"]
    (root / path).write_bytes((root / path).read_bytes()[:-5])  # a truncated binary body
    return path


def _gt_format(root: Path, name: str) -> str:
    path = _first_anomalous_cloud(root, name).files["points"]
    (root / path).write_text("0.1 0.2 0.3 1\n0.1 0.2 0.3 7\n")  # a label that is neither 0 nor 1
    return path


def _points_symlink_outside(root: Path, name: str) -> str:
    path = _first_normal_test_cloud(root, name).files["points"]
    outside = root.parent / f"outside-{name}.pcd"
    shutil.move(root / path, outside)
    (root / path).symlink_to(outside)
    return path


GENERIC = {"pcd-fields": _pcd_fields, "pcd-format": _pcd_format, "gt-format": _gt_format, "points-symlink-outside": _points_symlink_outside,
           "unreadable-image": _unreadable_image, "unreadable-mask": _unreadable_mask, "mask-size": _mask_size,
           "mask-mode": _mask_mode, "symlink-outside": _symlink_outside, "image-size": _image_size}


def _m2ad(kind: str, root: Path) -> str:
    from m2ad.datasets.m2ad.fixture import read_meta, write_meta

    meta = read_meta(root)
    records = meta["test"]["Cube"]
    ng = next(r for r in records if r["mask_path"])
    good = "Cube/Good/001" if (root / "Cube/Good/001").is_dir() else "Cube/Good/000"
    if kind == "missing-meta":
        (root / "jsons/meta_unsupervised.json").unlink()
        return "jsons/meta_unsupervised.json"
    if kind == "bad-meta":
        (root / "jsons/meta_unsupervised.json").write_text("{not json")
        return "jsons/meta_unsupervised.json"
    if kind == "unknown-file":
        shutil.copy(root / "Cube/Good/000/A000_I01.png", root / "Cube/Good/000/A015_I01.png")
        return "Cube/Good/000/A015_I01.png"
    if kind == "unknown-category":
        shutil.copytree(root / "Cube/Good/000", root / "Cubes/Good/000")
        return "Cubes"
    if kind == "empty-category":
        (root / "Ring").mkdir()
        return "Ring"
    if kind == "missing-category":
        meta["test"]["Tube"] = [{**r, "img_path": r["img_path"].replace("Cube/", "Tube/"), "cls_name": "Tube"} for r in records[:1]]
        write_meta(root, meta)
        return "Tube"
    if kind == "mask-for-normal":
        (root / "Cube/GT/000").mkdir()
        shutil.copy(root / ng["mask_path"], root / "Cube/GT/000/A000_mask.png")
        return "Cube/GT/000"
    if kind == "orphan-mask":
        (root / "Cube/GT/hole_1_099").mkdir()
        shutil.copy(root / ng["mask_path"], root / "Cube/GT/hole_1_099/A000_mask.png")
        return "Cube/GT/hole_1_099"
    if kind == "missing-configurations":
        next((root / "Cube/Good/000").glob("A330_I10.png")).unlink()
        return "Cube/Good/000"
    if kind == "meta-mismatch":
        record = next(r for r in records if r["object_anomaly"] and not r["image_anomaly"])
        record["image_anomaly"] = 1
        write_meta(root, meta)
        return record["img_path"]
    if kind == "missing-specimen":
        shutil.rmtree(root / good)
        return good
    if kind == "missing-mask":
        (root / ng["mask_path"]).unlink()
        return ng["mask_path"]
    if kind == "not-in-meta":
        meta["train"]["Cube"] = [r for r in meta["train"]["Cube"] if r["img_path"] != "Cube/Good/000/A060_I02.png"]
        meta["test"]["Cube"] = [r for r in records if r["img_path"] != "Cube/Good/000/A060_I02.png"]
        write_meta(root, meta)
        return "Cube/Good/000"
    raise KeyError(kind)


def _folder(kind: str, root: Path, category: str, mask_suffix: str = "_mask.png") -> str:
    defect = next(path.name for path in (root / category / "ground_truth").iterdir())
    mask = next((root / category / "ground_truth" / defect).iterdir())
    if kind == "unknown-file":
        (root / category / "test/good/notes.txt").write_text("not an image")
        return f"{category}/test/good/notes.txt"
    if kind == "empty-category":
        (root / "cable").mkdir()
        return "cable"
    if kind == "mask-for-normal":
        (root / category / "ground_truth/good").mkdir()
        shutil.copy(mask, root / category / f"ground_truth/good/000{mask_suffix}")
        return f"{category}/ground_truth/good/000{mask_suffix}"
    if kind == "orphan-mask":
        shutil.copy(mask, root / category / f"ground_truth/{defect}/099{mask_suffix}")
        return f"{category}/ground_truth/{defect}"
    if kind == "unknown-category":
        shutil.copytree(root / category, root / f"{category}s")
        return f"{category}s"
    if kind == "category-name":
        shutil.copytree(root / category, root / "my widget")
        return "my widget"
    if kind == "missing-mask":
        mask.unlink()
        return mask.relative_to(root).as_posix()
    raise KeyError(kind)


def _visa(kind: str, root: Path) -> str:
    split = root / "split_csv/1cls.csv"
    lines = split.read_text().splitlines()
    anomaly = next(line.split(",") for line in lines if ",anomaly," in line)
    if kind == "missing-meta":
        split.unlink()
        return "split_csv/1cls.csv"
    if kind == "bad-meta":
        split.write_text("object;split;label;image;mask\n")
        return "split_csv/1cls.csv"
    if kind == "unknown-file":
        (root / "candle/Data/Images/Normal/notes.txt").write_text("x")
        return "candle/Data/Images/Normal/notes.txt"
    if kind == "unknown-category":
        shutil.copytree(root / "candle", root / "candles")
        return "candles"
    if kind == "empty-category":
        (root / "pcb1").mkdir()
        return "pcb1"
    if kind == "missing-category":
        split.write_text("\n".join([*lines, "cashew,test,normal,cashew/Data/Images/Normal/000.JPG,"]) + "\n")
        return "cashew"
    if kind == "orphan-mask":
        shutil.copy(root / anomaly[4], root / "candle/Data/Masks/Anomaly/099.png")
        return "candle/Data/Masks/Anomaly/099.png"
    if kind == "meta-mismatch":
        split.write_text("\n".join(line.replace(",anomaly,", ",normal,", 1) if line.split(",") == anomaly else line for line in lines) + "\n")
        return anomaly[3]
    if kind == "missing-image":
        (root / anomaly[3]).unlink()
        return anomaly[3]
    if kind == "missing-mask":
        (root / anomaly[4]).unlink()
        return anomaly[4]
    if kind == "not-in-meta":
        shutil.copy(root / "candle/Data/Images/Normal/0000.JPG", root / "candle/Data/Images/Normal/0999.JPG")
        return "candle/Data/Images/Normal/0999.JPG"
    raise KeyError(kind)


def _real3d_ad(kind: str, root: Path) -> str:
    if kind == "unknown-file":
        (root / "shell/train/notes.txt").write_text("x")
        return "shell/train/notes.txt"
    if kind == "unknown-category":
        shutil.copytree(root / "shell", root / "shells")
        return "shells"
    if kind == "empty-category":
        (root / "duck").mkdir()
        return "duck"
    if kind == "missing-gt":
        gt = next((root / "shell/gt").iterdir())
        gt.unlink()
        return gt.relative_to(root).as_posix()
    raise KeyError(kind)


def _real_iad(kind: str, root: Path) -> str:
    listing = root / "realiad_jsons/realiad_jsons/audiojack.json"
    data = json.loads(listing.read_text())
    ng = next(record for record in data["test"] if record["mask_path"])
    ng_image = f"realiad_1024/audiojack/{ng['image_path']}"
    sample = ng_image.rsplit("/", 1)[0]
    if kind == "missing-meta":
        shutil.rmtree(root / "realiad_jsons")
        return "realiad_jsons/realiad_jsons/<category>.json"
    if kind == "bad-meta":
        listing.write_text('{"meta": {}, "train": {}, "test": []}')
        return listing.relative_to(root).as_posix()
    if kind == "unknown-file":
        (root / "realiad_1024/audiojack/OK/notes.txt").write_text("x")
        return "realiad_1024/audiojack/OK/notes.txt"
    if kind == "unknown-category":
        shutil.copytree(root / "realiad_1024/audiojack", root / "realiad_1024/audiojacks")
        return "realiad_1024/audiojacks"
    if kind == "empty-category":
        (root / "realiad_1024/mint").mkdir()
        return "realiad_1024/mint"
    if kind == "missing-category":
        toy = {"meta": {"prefix": "toy/", "normal_class": "OK"}, "train": [], "test": [{**ng, "category": "toy"}]}
        (root / "realiad_jsons/realiad_jsons/toy.json").write_text(json.dumps(toy))
        return "toy"
    if kind == "meta-mismatch":
        _rewrite_json(listing, lambda content: next(r for r in content["test"] if r["image_path"] == ng["image_path"]).update(anomaly_class="OK"))
        return ng_image
    if kind == "missing-specimen":
        shutil.rmtree(root / sample)
        return sample
    if kind == "missing-image":
        (root / ng_image).unlink()
        return ng_image
    if kind == "missing-mask":
        (root / f"realiad_1024/audiojack/{ng['mask_path']}").unlink()
        return f"realiad_1024/audiojack/{ng['mask_path']}"
    if kind == "not-in-meta":
        _rewrite_json(listing, lambda content: content["test"].remove(next(r for r in content["test"] if r["image_path"] == ng["image_path"])))
        return sample
    raise KeyError(kind)


def _mvtec_3d(kind: str, root: Path) -> str:
    defect = sorted(path.name for path in (root / "bagel/test").iterdir() if path.name != "good")[0]
    if kind == "unknown-file":
        (root / "bagel/test/good/notes.txt").write_text("not a scan")
        return "bagel/test/good/notes.txt"
    if kind == "unknown-category":
        shutil.copytree(root / "bagel", root / "bagels")
        return "bagels"
    if kind == "empty-category":
        (root / "carrot").mkdir()
        return "carrot"
    removed = {"missing-image": f"bagel/test/{defect}/rgb/000.png", "missing-xyz": "bagel/train/good/xyz/000.tiff",
               "missing-mask": f"bagel/test/{defect}/gt/000.png"}[kind]
    (root / removed).unlink()
    return removed


def _eyecandies(kind: str, root: Path) -> str:
    sample = "CandyCane/test_public/data/1_"
    if kind == "unknown-file":
        (root / "CandyCane/train/data/notes.txt").write_text("x")
        return "CandyCane/train/data/notes.txt"
    if kind == "unknown-category":
        shutil.copytree(root / "CandyCane", root / "CandyCanes")
        return "CandyCanes"
    if kind == "empty-category":
        (root / "Lollipop").mkdir()
        return "Lollipop"
    if kind == "bad-meta":
        (root / f"{sample}metadata.yaml").write_text("anomalous: maybe\n")
        return f"{sample}metadata.yaml"
    removed = {"missing-image": "image_3.png", "missing-depth": "depth.png", "missing-normals": "normals.png",
               "missing-meta": "metadata.yaml", "missing-mask": "mask.png"}[kind]
    (root / f"{sample}{removed}").unlink()
    return f"{sample}{removed}"


SPECIFIC = {
    "m2ad": _m2ad,
    "mvtec-ad": lambda kind, root: _folder(kind, root, "bottle"),
    "folder": lambda kind, root: _folder(kind, root, "cube"),
    "visa": _visa,
    "real-iad": _real_iad,
    "real3d-ad": _real3d_ad,
    "mvtec-3d": _mvtec_3d,
    "eyecandies": _eyecandies,
}
KINDS = sorted((name, kind) for name in available() for kind in required_kinds(name))


def test_every_dataset_has_its_corruptions() -> None:
    """Each kind of ``required_kinds`` is a parametrised case below; a kind without a corruption
    fails there (``KeyError``), so adding a dataset or a kind needs one."""
    assert set(SPECIFIC) == set(available())
    assert all(kind in GENERIC for name in available() for kind in required_kinds(name) - set(get(name).layout.problem_kinds))


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: fixture_tree(name, tmp_path_factory.mktemp("template") / name) for name in available()}


@pytest.mark.parametrize(("name", "kind"), KINDS)
def test_a_corrupted_fixture_gives_the_problem(name: str, kind: str, templates: dict[str, Path], tmp_path: Path) -> None:
    root = Path(shutil.copytree(templates[name], tmp_path / name, symlinks=True))
    path = GENERIC[kind](root, name) if kind in GENERIC else SPECIFIC[name](kind, root)
    with pytest.raises(ShardError) as raised:
        shard_tree(root, tmp_path / "out", dataset=name, workers=1, progress=False)
    found = [(problem.kind, problem.path) for problem in raised.value.problems]
    assert (kind.removeprefix("points-"), path) in found, found


# ------------------------------------------------------------------------------ download


@pytest.mark.parametrize("name", [name for name in available() if get(name).files])
def test_a_download_from_a_loopback_mirror_equals_local_sharding(name: str, tmp_path: Path) -> None:
    root = fixture_tree(name, tmp_path / "tree")
    release = tmp_path / "release"
    packed = get(name).fixture.pack(root, release)
    names = [path.relative_to(release).as_posix() for path in packed]
    assert set(names) <= {spec.name for spec in get(name).files}
    write_sha256sums(release, names)
    local = tmp_path / "local"
    shard_tree(root, local, dataset=name, resolution=16, workers=1, progress=False)
    files = {relative: (release / relative).read_bytes() for relative in [*names, "SHA256SUMS"]}
    with FileServer({f"mirror/{relative}": content for relative, content in files.items()}) as server:
        report = download_dataset(name, tmp_path / "out", resolution=16, source=f"{server.url}/mirror", cache_dir=tmp_path / "cache",
                                  categories=list(DatasetInfo.read(local).categories), workers=1, progress=False)
    assert {item.verified for item in report.files} == {"SHA256SUMS"}
    got = pl.read_parquet(tmp_path / "out" / MANIFEST_FILE).sort("sample_id")
    want = pl.read_parquet(local / MANIFEST_FILE).sort("sample_id")
    assert got.height > 0 and got.equals(want)
    for unit in got["shard_dir"].unique().to_list():
        assert datasets.load_from_disk(str(tmp_path / "out" / unit)).data.table.equals(datasets.load_from_disk(str(local / unit)).data.table)


# ------------------------------------------------------------------------------ the command line


def test_shard_detects_the_layout_and_refuses_an_ambiguous_tree(templates: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    for name in ("visa", "mvtec-ad", "real-iad"):
        result = runner.invoke(app, ["shard", str(templates[name]), str(tmp_path / name), "--workers", "1"])
        assert result.exit_code == 0, result.output
        assert DatasetInfo.read(tmp_path / name).dataset == name
    # a user's images in the MVTec layout, under names MVTec AD does not have: the generic folder layout
    assert DatasetInfo.read(shard_tree(templates["folder"], tmp_path / "own", workers=1, progress=False).out).spec == "folder"
    both = Path(shutil.copytree(templates["visa"], tmp_path / "both"))
    shutil.copytree(templates["m2ad"] / "jsons", both / "jsons")
    result = runner.invoke(app, ["shard", str(both), str(tmp_path / "x"), "--workers", "1"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "fits several layouts: m2ad, visa" in said and "--dataset" in said and "Traceback" not in said
    result = runner.invoke(app, ["shard", str(both), str(tmp_path / "x"), "--workers", "1", "--dataset", "visa", "--skip-bad"])
    assert result.exit_code == 0 and "unknown-category" in result.output, result.output  # M2AD's folder is a stray one for VisA
    assert DatasetInfo.read(tmp_path / "x").dataset == "visa"
    stranger = tmp_path / "stranger"
    (stranger / "a").mkdir(parents=True)
    (stranger / "a/notes.txt").write_text("x")
    result = runner.invoke(app, ["shard", str(stranger), str(tmp_path / "y")])
    assert result.exit_code == 2 and "no known layout" in " ".join(result.output.split())
    result = runner.invoke(app, ["shard", str(templates["visa"]), str(tmp_path / "z"), "--dataset", "nope"])
    assert result.exit_code == 2 and "unknown dataset 'nope'" in result.output


def test_synth_writes_every_dataset_and_info_describes_its_shards(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["synth", str(tmp_path / "tree"), "--dataset", "real-iad", "--normal-specimens", "2", "--ng-specimens", "1",
                                 "--resolution", "16", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert shard_tree(tmp_path / "tree", tmp_path / "shards", workers=1, progress=False).dataset == "real-iad-synth"
    result = runner.invoke(app, ["info", str(tmp_path / "shards")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for needle in ("real-iad-synth", "spec real-iad", "axes view", "protocols standard", "geometry square", "audiojack"):
        assert needle in result.output
    bad = runner.invoke(app, ["synth", str(tmp_path / "bad"), "--dataset", "visa", "-c", "Cube"])
    assert bad.exit_code == 2 and "unknown synthetic categories ['Cube'] for visa" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["synth", str(tmp_path / "bad"), "--dataset", "nope"])
    assert bad.exit_code == 2 and "unknown dataset" in bad.output
