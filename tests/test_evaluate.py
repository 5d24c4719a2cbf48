"""`protocols.evaluate` and `m2ad evaluate` end to end on a small synthetic M2AD.

The dataset is generated with ``m2ad.synth`` and sharded with ``m2ad.shard`` (at half the source
resolution, so the official mask rule erodes some defects).  Expected counts come from the raw
``meta_unsupervised.json``; expected metrics from scikit-learn on masks read straight from the
Arrow shards with ``datasets``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from typer.testing import CliRunner

from compat_reference import fused_view, official_pixel_metrics
from m2ad.cli import app
from m2ad.metrics import COMPAT_MAP_DTYPES, pixel_metrics
from m2ad.predictions import PredictionsError, write
from m2ad.schema import MANIFEST_FILE
from m2ad.shard import shard_tree
from m2ad.synth import generate
from protocols.evaluate import evaluate, worst

CATEGORIES = ["Cube", "Ring"]
SOURCE_SIZE, SIZE = 32, 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("evaluate")
    tree = generate(base / "tree", categories=CATEGORIES, normal_specimens=3, ng_specimens=3, resolution=SOURCE_SIZE,
                    seed=1, workers=1, progress=False)
    root = base / "shards"
    shard_tree(tree, root, resolution=SIZE, progress=False, workers=1)
    meta = json.loads((Path(tree) / "jsons" / "meta_unsupervised.json").read_text())
    manifest = pl.read_parquet(root / MANIFEST_FILE)
    dataset_name = manifest["dataset"][0]
    records = {f"{dataset_name}/{record['img_path']}": {**record, "split": split}
               for split, per_class in meta.items() for items in per_class.values() for record in items}
    masks: dict[str, dict[str, np.ndarray]] = {"exact": {}, "official": {}}
    for shard_dir in sorted(set(manifest.filter(pl.col("split") == "test")["shard_dir"])):
        shard = datasets.load_from_disk(str(root / shard_dir))
        for row in shard.select_columns(["sample_id", "mask", "mask_official"]):
            for rule, column in (("exact", "mask"), ("official", "mask_official")):
                image = row[column]
                masks[rule][row["sample_id"]] = np.zeros((SIZE, SIZE), bool) if image is None else np.asarray(image) > 0
    return {"root": root, "records": records, "masks": masks, "base": base}


def test_records_match_the_manifest(dataset: dict) -> None:
    manifest = pl.read_parquet(dataset["root"] / MANIFEST_FILE)
    assert set(manifest["sample_id"]) == set(dataset["records"])


def perfect_predictions(dataset: dict, path: Path, rule: str = "exact", keep=lambda record: True) -> Path:
    """Scores: image label + 0.5 x object label; maps: the GT masks themselves."""
    ids = [sample_id for sample_id, record in dataset["records"].items() if record["split"] == "test" and keep(record)]
    records = dataset["records"]
    scores = [records[i]["image_anomaly"] + 0.5 * records[i]["object_anomaly"] for i in ids]
    maps = [dataset["masks"][rule][i].astype(np.float32) for i in ids]
    return write(path, ids, scores, maps)


def random_predictions(dataset: dict, path: Path, seed: int = 0) -> tuple[Path, dict[str, float], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    ids = [sample_id for sample_id, record in dataset["records"].items() if record["split"] == "test"]
    rng.shuffle(ids)  # any order works
    scores = {i: float(rng.random()) for i in ids}
    maps = {i: rng.random((SIZE, SIZE)).astype(np.float16).astype(np.float32) for i in ids}
    write(path, ids, [scores[i] for i in ids], [maps[i] for i in ids])
    return path, scores, maps


@pytest.mark.parametrize("protocol", ["invariant", "synergy", "standard"])
def test_perfect_detector_scores_one(dataset: dict, protocol: str, tmp_path: Path) -> None:
    path = perfect_predictions(dataset, tmp_path / "perfect.parquet")
    result = evaluate(protocol, dataset["root"], path, progress=False)
    assert list(result["categories"]) == CATEGORIES
    for category in CATEGORIES:
        assert result["categories"][category] == pytest.approx({name: 1.0 for name in result["mean"]}, abs=1e-9)
    assert result["mean"] == pytest.approx(dict.fromkeys(result["mean"], 1.0), abs=1e-9)
    json.dumps(result, allow_nan=False)


def test_counts_follow_the_meta_json(dataset: dict, tmp_path: Path) -> None:
    path = perfect_predictions(dataset, tmp_path / "p.parquet")
    invariant = evaluate("invariant", dataset["root"], path, progress=False)
    synergy = evaluate("synergy", dataset["root"], path, progress=False)
    for category in CATEGORIES:
        test = [r for r in dataset["records"].values() if r["split"] == "test" and r["cls_name"] == category]
        kept = [r for r in test if r["detectable"] is not False]
        assert invariant["counts"][category] == {
            "images": len(kept), "normal_images": sum(r["image_anomaly"] == 0 for r in kept),
            "anomalous_images": sum(r["image_anomaly"] == 1 for r in kept),
            "ignored_images": sum(r["detectable"] is False for r in test)}
        views: dict[tuple, int] = defaultdict(int)
        objects = {}
        for r in test:
            views[r["object_name"], r["view"]] = max(views[r["object_name"], r["view"]], r["image_anomaly"])
            objects[r["object_name"]] = r["object_anomaly"]
        assert synergy["counts"][category] == {
            "images": len(test), "views": len(views), "normal_views": sum(v == 0 for v in views.values()),
            "anomalous_views": sum(v == 1 for v in views.values()), "objects": len(objects),
            "normal_objects": sum(v == 0 for v in objects.values()), "anomalous_objects": sum(v == 1 for v in objects.values()),
            "ignored_images": 0}
        assert len(views) == 12 * len(objects)


def test_random_predictions_match_sklearn(dataset: dict, tmp_path: Path) -> None:
    path, scores, maps = random_predictions(dataset, tmp_path / "random.parquet")
    result = evaluate("invariant", dataset["root"], path, progress=False)
    records, masks = dataset["records"], dataset["masks"]["exact"]
    for category in CATEGORIES:
        ids = [i for i, r in records.items() if r["split"] == "test" and r["cls_name"] == category and r["detectable"] is not False]
        labels = [records[i]["image_anomaly"] for i in ids]
        values = result["categories"][category]
        assert values["image_auroc"] == pytest.approx(roc_auc_score(labels, [scores[i] for i in ids]), abs=1e-12)
        assert values["image_ap"] == pytest.approx(average_precision_score(labels, [scores[i] for i in ids]), abs=1e-12)
        pixel_labels = np.concatenate([masks[i].ravel() for i in ids])
        pixel_scores = np.concatenate([maps[i].ravel() for i in ids])
        assert values["pixel_auroc"] == pytest.approx(roc_auc_score(pixel_labels, pixel_scores), abs=1e-9)
        assert 0.3 < values["image_auroc"] < 0.7
    for name, value in result["mean"].items():
        assert value == pytest.approx(np.mean([result["categories"][c][name] for c in CATEGORIES]), abs=1e-15)
    views = result["breakdown"][CATEGORIES[0]]["view"]
    assert len(views) == 12 and len(result["breakdown"][CATEGORIES[0]]["view_illumination"]["000"]) == 10
    assert all(value is None or 0 <= value <= 1 for value in views.values())


@pytest.mark.filterwarnings("ignore")  # a category whose defects all vanish has a single class: NaN, with a warning
def test_official_mask_rule_relabels_eroded_defects(dataset: dict, tmp_path: Path) -> None:
    path, _, _ = random_predictions(dataset, tmp_path / "random.parquet", seed=3)
    exact = evaluate("invariant", dataset["root"], path, mask_rule="exact", progress=False)
    official = evaluate("invariant", dataset["root"], path, mask_rule="official", progress=False)
    eroded_total = 0
    for category in CATEGORIES:
        ids = [i for i, r in dataset["records"].items()
               if r["split"] == "test" and r["cls_name"] == category and r["detectable"] is not False]
        assert official["counts"][category]["anomalous_images"] == sum(dataset["masks"]["official"][i].any() for i in ids)
        assert exact["counts"][category]["anomalous_images"] == sum(dataset["records"][i]["image_anomaly"] for i in ids)
        eroded_total += exact["counts"][category]["anomalous_images"] - official["counts"][category]["anomalous_images"]
    assert eroded_total > 0  # the 2x downscale made some tiny defects vanish under the official rule


@pytest.mark.filterwarnings("ignore")  # a category whose defects all vanish has a single class: NaN, with a warning
@pytest.mark.parametrize("protocol", ["invariant", "synergy"])
def test_compat_modes_use_the_official_masks_unless_told_otherwise(dataset: dict, protocol: str, tmp_path: Path) -> None:
    """The official evaluator erodes the masks and recomputes image and view labels from them; the
    compat modes do the same by default, and take the exact masks when asked."""
    path, _, _ = random_predictions(dataset, tmp_path / "random.parquet", seed=4)
    by_default = evaluate(protocol, dataset["root"], path, mode="compat-float32", progress=False)
    official = evaluate(protocol, dataset["root"], path, mode="compat-float32", mask_rule="official", progress=False)
    exact = evaluate(protocol, dataset["root"], path, mode="compat-float32", mask_rule="exact", progress=False)
    assert by_default["mask_rule"] == "official" and exact["mask_rule"] == "exact"
    assert by_default["categories"] == official["categories"] and by_default["counts"] == official["counts"]
    unit = "images" if protocol == "invariant" else "views"
    eroded = sum(exact["counts"][c][f"anomalous_{unit}"] - official["counts"][c][f"anomalous_{unit}"] for c in CATEGORIES)
    assert eroded > 0  # labels recomputed from the eroded masks: some anomalous units became normal
    if protocol == "synergy":  # a view is anomalous iff its fused (any-light) official mask has a pixel
        for category in CATEGORIES:
            views: dict[tuple, bool] = defaultdict(bool)
            for i, r in dataset["records"].items():
                if r["split"] == "test" and r["cls_name"] == category:
                    views[r["object_name"], r["view"]] |= bool(dataset["masks"]["official"][i].any())
            assert official["counts"][category]["anomalous_views"] == sum(views.values())
    assert evaluate(protocol, dataset["root"], path, progress=False)["mask_rule"] == "exact"  # exact mode: unchanged
    cli = CliRunner().invoke(app, ["evaluate", "--protocol", protocol, "--data", str(dataset["root"]), "--predictions", str(path),
                                   "--mode", "compat", "--out", str(tmp_path / "compat.json")])
    assert cli.exit_code == 0, cli.output
    assert json.loads((tmp_path / "compat.json").read_text())["mask_rule"] == "official"


def test_which_predictions_are_accepted(dataset: dict, tmp_path: Path) -> None:
    records = dataset["records"]
    # detectable == False images may be omitted under invariant (and are ignored when present)
    path = perfect_predictions(dataset, tmp_path / "a.parquet", keep=lambda r: r["detectable"] is not False)
    assert evaluate("invariant", dataset["root"], path, progress=False)["mean"]["image_auroc"] == 1.0
    with pytest.raises(PredictionsError, match="missing ids"):
        evaluate("synergy", dataset["root"], path, progress=False)
    # other categories' rows are ignored when evaluating a subset
    full = perfect_predictions(dataset, tmp_path / "b.parquet")
    subset = evaluate("synergy", dataset["root"], full, categories=["Ring"], progress=False)
    assert list(subset["categories"]) == ["Ring"]
    # training images are unknown ids
    train_id = next(i for i, r in records.items() if r["split"] == "train")
    test_ids = [i for i, r in records.items() if r["split"] == "test"]
    write(tmp_path / "c.parquet", [*test_ids, train_id], [0.0] * (len(test_ids) + 1))
    with pytest.raises(PredictionsError) as caught:
        evaluate("standard", dataset["root"], tmp_path / "c.parquet", progress=False)
    assert caught.value.problems == {"unknown ids": [train_id]}
    # scores only: image metrics, pixel metrics null
    write(tmp_path / "d.parquet", test_ids, [records[i]["image_anomaly"] for i in test_ids])
    result = evaluate("standard", dataset["root"], tmp_path / "d.parquet", progress=False)
    assert result["mean"]["image_auroc"] == 1.0 and result["mean"]["aupro"] is None
    with pytest.raises(ValueError, match="unknown categories"):
        evaluate("standard", dataset["root"], full, categories=["Teapot"], progress=False)
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate("nope", dataset["root"], full, progress=False)
    with pytest.raises(FileNotFoundError):
        evaluate("standard", dataset["base"] / "nothing", full, progress=False)


def test_cli_writes_json_and_fails_cleanly(dataset: dict, tmp_path: Path) -> None:
    path, _, _ = random_predictions(dataset, tmp_path / "random.parquet")
    out = tmp_path / "out" / "metrics.json"
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--protocol", "synergy", "--data", str(dataset["root"]),
                                 "--predictions", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "object_auroc" in result.output and "mean" in result.output
    written = json.loads(out.read_text())
    assert written["protocol"] == "synergy" and written["mode"] == "exact"
    assert set(written["mean"]) == {"object_auroc", "object_ap", "object_f1max", "view_auroc", "view_ap", "view_f1max",
                                    "view_pixel_auroc", "view_pixel_ap", "view_pixel_f1max", "view_aupro"}
    assert set(written["categories"]) == set(CATEGORIES)
    for arguments, message in [
        (["--protocol", "nope"], "unknown protocol"),
        (["--protocol", "invariant", "--mode", "fast"], "unknown evaluation mode"),
        (["--protocol", "invariant", "--mask-rule", "eroded"], "unknown mask rule"),
        (["--protocol", "invariant", "--categories", "Teapot"], "unknown categories"),
    ]:
        failed = runner.invoke(app, ["evaluate", "--data", str(dataset["root"]), "--predictions", str(path), *arguments])
        assert failed.exit_code == 1 and message in failed.output, failed.output
        assert "Traceback" not in failed.output
    bad = write(tmp_path / "bad.parquet", ["m2ad-synth/none.png"], [0.0])
    failed = runner.invoke(app, ["evaluate", "--protocol", "invariant", "--data", str(dataset["root"]), "--predictions", str(bad)])
    assert failed.exit_code == 1 and "unknown ids [1]" in failed.output and "missing ids" in failed.output
    missing = runner.invoke(app, ["evaluate", "--protocol", "invariant", "--data", str(dataset["root"]),
                                  "--predictions", str(tmp_path / "absent.parquet")])
    assert missing.exit_code == 2 and "no such predictions file" in missing.output


@pytest.mark.parametrize(("protocol", "mode"), [("invariant", "streaming"), ("invariant", "compat"),
                                                ("synergy", "streaming"), ("synergy", "compat")])
def test_binned_modes_end_to_end(dataset: dict, protocol: str, mode: str, tmp_path: Path) -> None:
    """The value range given to streaming / compat: the category's image-map range, or for
    compat on fused maps the fused maps' own range; checked against ``m2ad.metrics``."""
    path, _, maps = random_predictions(dataset, tmp_path / "random.parquet", seed=5)
    result = evaluate(protocol, dataset["root"], path, mode=mode, mask_rule="exact", categories=["Ring"], progress=False)
    records, masks = dataset["records"], dataset["masks"]["exact"]
    ids = sorted(i for i, r in records.items() if r["split"] == "test" and r["cls_name"] == "Ring"
                 and (protocol == "synergy" or r["detectable"] is not False))
    image_range = (min(float(maps[i].min()) for i in ids), max(float(maps[i].max()) for i in ids))
    if protocol == "synergy":
        groups: dict[tuple, list[str]] = defaultdict(list)
        for i in ids:
            groups[records[i]["object_name"], records[i]["view"]].append(i)
        # compat: m2ad_fuse's float64 mean in illumination order (the sorted ids); streaming: rounded to float32
        evaluated = [np.mean(np.stack([maps[i] for i in group]).astype(np.float64), axis=0) for group in groups.values()]
        evaluated = [item if mode == "compat" else item.astype(np.float32) for item in evaluated]
        evaluated_masks = [np.any(np.stack([masks[i] for i in group]), axis=0) for group in groups.values()]
        expected = pixel_metrics(evaluated, evaluated_masks, mode=mode, value_range=image_range if mode == "streaming" else None)
        actual = [result["categories"]["Ring"][key] for key in ("view_pixel_auroc", "view_pixel_ap", "view_pixel_f1max", "view_aupro")]
    else:
        expected = pixel_metrics([maps[i] for i in ids], [masks[i] for i in ids], mode=mode, value_range=image_range)
        actual = [result["categories"]["Ring"][key] for key in ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")]
    assert actual == pytest.approx(list(expected.values()), abs=1e-12)
    assert result["mode"] == mode


def _sklearn_unit_metrics(labels: list[int], scores: list[float]) -> list[float]:
    """AUROC, AP and F1-max (over the PR curve, non-finite points ignored) by scikit-learn; NaN
    for a single class."""
    if len(set(labels)) < 2:
        return [math.nan] * 3
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return [roc_auc_score(labels, scores), average_precision_score(labels, scores), float(np.max(f1[np.isfinite(f1)]))]


def _brute_force_pixels(maps: list[np.ndarray], masks: list[np.ndarray], mode: str) -> list[float]:
    """Pixel metrics of the evaluated maps: the brute-force official evaluation in the compat
    modes; else scikit-learn on the pooled pixels (and the MVTec AUPRO of ``m2ad.metrics``).
    Undefined (NaN) without a defect pixel."""
    if not any(mask.any() for mask in masks):
        return [math.nan] * 4
    if mode in COMPAT_MAP_DTYPES:
        return list(official_pixel_metrics(maps, masks, COMPAT_MAP_DTYPES[mode]).values())
    truth = np.concatenate([mask.ravel() for mask in masks])
    values = np.concatenate([item.ravel() for item in maps]).astype(np.float64)
    return [*_sklearn_unit_metrics(truth.astype(int).tolist(), values.tolist()), pixel_metrics(maps, masks)["aupro"]]


def _old_definition(protocol: str, dataset: dict, category: str, scores: dict, maps: dict, mode: str, rule: str) -> dict:
    """The metrics, counts and breakdown of ``protocol`` as the code before protocol specs
    defined them, recomputed from the raw records with plain Python, NumPy and scikit-learn."""
    records, masks = dataset["records"], dataset["masks"][rule]
    dtype = COMPAT_MAP_DTYPES.get(mode)
    ids = sorted((i for i, r in records.items() if r["split"] == "test" and r["cls_name"] == category
                  and (protocol != "invariant" or r["detectable"] is not False)),
                 key=lambda i: (records[i]["object_name"], records[i]["view"], records[i]["illumination"], i))
    label = {i: int(masks[i].any()) if rule == "official" else records[i]["image_anomaly"] for i in ids}
    score = {i: float(np.array(scores[i], dtype=dtype)) if dtype else scores[i] for i in ids}

    def mean(values: list[float]) -> float:  # exact mode: a float64 running sum in test order; compat: np.mean
        return float(np.mean(np.array(values, dtype=dtype))) if dtype else sum(values) / len(values)

    if protocol != "synergy":
        labels, values = [label[i] for i in ids], [score[i] for i in ids]
        names = ["image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro"]
        metrics = dict(zip(names, _sklearn_unit_metrics(labels, values) + _brute_force_pixels([maps[i] for i in ids], [masks[i] for i in ids], mode)))
        counts = {"images": len(ids), "normal_images": labels.count(0), "anomalous_images": labels.count(1)}
        per_view = {view: _sklearn_unit_metrics([label[i] for i in ids if records[i]["view"] == view],
                                                [score[i] for i in ids if records[i]["view"] == view])[0]
                    for view in sorted({records[i]["view"] for i in ids})}
        return {"metrics": metrics, "counts": counts, "view_breakdown": per_view}
    views: dict[tuple, list[str]] = defaultdict(list)
    objects: dict[str, list[str]] = defaultdict(list)
    for i in ids:
        views[records[i]["object_name"], records[i]["view"]].append(i)
        objects[records[i]["object_name"]].append(i)
    view_labels = [max(label[i] for i in group) for group in views.values()]
    view_scores = [mean([score[i] for i in group]) for group in views.values()]
    object_labels = [records[group[0]]["object_anomaly"] for group in objects.values()]
    object_scores = [mean([score[i] for i in group]) for group in objects.values()]
    if dtype:
        fused = [fused_view([maps[i] for i in group], dtype) for group in views.values()]
    else:
        fused = [np.mean(np.stack([maps[i] for i in group]).astype(np.float64), axis=0).astype(np.float32) for group in views.values()]
    fused_masks = [np.any(np.stack([masks[i] for i in group]), axis=0) for group in views.values()]
    names = ["object_auroc", "object_ap", "object_f1max", "view_auroc", "view_ap", "view_f1max",
             "view_pixel_auroc", "view_pixel_ap", "view_pixel_f1max", "view_aupro"]
    metrics = dict(zip(names, _sklearn_unit_metrics(object_labels, object_scores) + _sklearn_unit_metrics(view_labels, view_scores)
                       + _brute_force_pixels(fused, fused_masks, mode)))
    counts = {"images": len(ids), "views": len(views), "normal_views": view_labels.count(0), "anomalous_views": view_labels.count(1),
              "objects": len(objects), "normal_objects": object_labels.count(0), "anomalous_objects": object_labels.count(1)}
    keys = list(views)
    per_view = {view: _sklearn_unit_metrics([view_labels[k] for k, key in enumerate(keys) if key[1] == view],
                                            [view_scores[k] for k, key in enumerate(keys) if key[1] == view])[0]
                for view in sorted({key[1] for key in keys})}
    return {"metrics": metrics, "counts": counts, "view_breakdown": per_view}


@pytest.mark.filterwarnings("ignore")  # single-class breakdown cells and eroded categories: NaN, with a warning
@pytest.mark.parametrize(("mode", "rule"), [("exact", "exact"), ("exact", "official"), ("compat", "exact"), ("compat", "official"),
                                           ("compat-float32", "exact")])
@pytest.mark.parametrize("protocol", ["invariant", "synergy", "standard"])
def test_old_protocols_give_the_numbers_of_their_definition(dataset: dict, protocol: str, mode: str, rule: str, tmp_path: Path) -> None:
    """``m2ad evaluate`` on a predictions file with tied scores and tied map values, written in
    shuffled order, equals a brute-force restatement of what invariant, synergy and standard
    computed before they became specs (this test passes unchanged on that code): every metric,
    count and per-view breakdown value."""
    rng = np.random.default_rng(11)
    records = dataset["records"]
    ids = [i for i, r in records.items() if r["split"] == "test"]
    rng.shuffle(ids)
    scores = {i: float(rng.choice([0.0, 0.1, 0.2, 0.3])) + 0.1 * records[i]["image_anomaly"] for i in ids}
    palette = np.array([0.0, 0.125, 0.25, 0.5, 1.0], dtype=np.float32)
    maps = {i: palette[rng.integers(0, len(palette), (SIZE, SIZE))] + np.float32(0.5) * dataset["masks"]["exact"][i] for i in ids}
    path = write(tmp_path / "p.parquet", ids, [scores[i] for i in ids], [maps[i] for i in ids])
    result = evaluate(protocol, dataset["root"], path, mode=mode, mask_rule=rule, categories=["Ring"], progress=False)
    expected = _old_definition(protocol, dataset, "Ring", scores, maps, mode, rule)
    actual = result["categories"]["Ring"]
    assert list(actual) == list(expected["metrics"])
    for name, value in expected["metrics"].items():
        if math.isnan(value):
            assert actual[name] is None, name
        else:
            assert actual[name] == pytest.approx(value, abs=1e-12 if "pixel" not in name and "aupro" not in name else 1e-9), name
    assert {key: value for key, value in result["counts"]["Ring"].items() if key != "ignored_images"} == expected["counts"]
    for view, value in expected["view_breakdown"].items():
        found = result["breakdown"]["Ring"]["view"][view]
        assert (found is None) if math.isnan(value) else found == pytest.approx(value, abs=1e-12), view


def test_per_image_output_and_the_worst_images(dataset: dict, tmp_path: Path) -> None:
    """``--per-image`` (CSV or Parquet by extension) has one row per scored image with its score,
    label, rank in its category, and the fused view and object scores of Synergy, all checked
    against a brute-force recomputation; ``--worst K`` prints each category's K highest-scored
    normal and K lowest-scored anomalous images."""
    path, scores, _ = random_predictions(dataset, tmp_path / "random.parquet", seed=8)
    records = dataset["records"]
    runner = CliRunner()
    frames = {}
    for suffix in ("csv", "parquet"):
        target = tmp_path / f"per_image.{suffix}"
        result = runner.invoke(app, ["evaluate", "--protocol", "synergy", "--data", str(dataset["root"]), "--predictions", str(path),
                                     "--per-image", str(target), "--worst", "2"])
        assert result.exit_code == 0, result.output
        text_columns = {"specimen": pl.String, "view": pl.String, "illumination": pl.String}
        frames[suffix] = pl.read_csv(target, schema_overrides=text_columns) if suffix == "csv" else pl.read_parquet(target)
    per_image = frames["parquet"]
    assert frames["csv"].select("sample_id", "score", "rank", "view_score", "object_score").equals(
        per_image.select("sample_id", "score", "rank", "view_score", "object_score"))
    test_ids = [i for i, r in records.items() if r["split"] == "test"]
    assert sorted(per_image["sample_id"]) == sorted(test_ids)
    view_scores: dict[tuple, list[float]] = defaultdict(list)
    object_scores: dict[tuple, list[float]] = defaultdict(list)
    for i in test_ids:
        view_scores[records[i]["cls_name"], records[i]["object_name"], records[i]["view"]].append(scores[i])
        object_scores[records[i]["cls_name"], records[i]["object_name"]].append(scores[i])
    for row in per_image.iter_rows(named=True):
        record = records[row["sample_id"]]
        assert row["category"] == record["cls_name"] and row["label"] == record["image_anomaly"]
        assert row["score"] == scores[row["sample_id"]]
        same_category = [scores[i] for i in test_ids if records[i]["cls_name"] == record["cls_name"]]
        assert row["rank"] == 1 + sum(value > row["score"] for value in same_category)
        assert row["view_score"] == pytest.approx(np.mean(view_scores[record["cls_name"], record["object_name"], record["view"]]), abs=1e-12)
        assert row["object_score"] == pytest.approx(np.mean(object_scores[record["cls_name"], record["object_name"]]), abs=1e-12)
        assert row["object_label"] == record["object_anomaly"]
    output = " ".join(result.output.split())
    assert "worst 2 per category" in output
    chosen = worst(per_image, 2)
    for category in CATEGORIES:
        mine = [i for i in test_ids if records[i]["cls_name"] == category]
        normals = sorted((i for i in mine if records[i]["image_anomaly"] == 0), key=lambda i: (-scores[i], i))[:2]
        anomalies = sorted((i for i in mine if records[i]["image_anomaly"] == 1), key=lambda i: (scores[i], i))[:2]
        for kind, expected in (("normal", normals), ("anomalous", anomalies)):
            picked = chosen.filter((pl.col("category") == category) & (pl.col("kind") == kind))
            assert picked["sample_id"].to_list() == expected, (category, kind)
        for sample_id in normals + anomalies:
            assert f"{scores[sample_id]:.6g}" in output, sample_id
    for arguments, message in ((["--per-image", str(tmp_path / "x.txt")], "must end in .csv or .parquet"),
                               (["--per-image", str(tmp_path)], "is a folder"), (["--worst", "0"], "greater than or equal to 1")):
        failed = runner.invoke(app, ["evaluate", "--protocol", "synergy", "--data", str(dataset["root"]), "--predictions", str(path), *arguments])
        assert failed.exit_code == 2 and message in failed.output and "Traceback" not in failed.output, failed.output


def test_the_result_records_when_what_and_how(dataset: dict, tmp_path: Path) -> None:
    """The evaluate JSON carries the protocol version, the metric definitions, the date, the
    data's identity (hashes of dataset.json and the manifest), the command and the environment."""
    import hashlib
    import sys
    from datetime import datetime, timedelta, timezone
    from importlib import metadata

    path = perfect_predictions(dataset, tmp_path / "perfect.parquet")
    out = tmp_path / "result.json"
    cli = CliRunner().invoke(app, ["evaluate", "--protocol", "invariant", "--data", str(dataset["root"]), "--predictions", str(path),
                                   "--out", str(out), "-c", "Ring"])
    assert cli.exit_code == 0, cli.output
    result = json.loads(out.read_text())
    assert result["protocol_version"] == "1"
    assert result["metric_definitions"]["image_auroc"] == {"level": "image", "higher_is_better": True, "version": "1", "label": "I-AUROC"}
    assert set(result["metric_definitions"]) == set(result["mean"])
    assert abs(datetime.fromisoformat(result["date"]) - datetime.now(timezone.utc)) < timedelta(minutes=5)
    root = Path(dataset["root"])
    assert result["data"] == {"path": str(root.resolve()),
                              "dataset_json_sha256": hashlib.sha256((root / "dataset.json").read_bytes()).hexdigest(),
                              "manifest_sha256": hashlib.sha256((root / MANIFEST_FILE).read_bytes()).hexdigest()}
    assert result["command"].startswith(f"m2ad evaluate --protocol invariant --data {root}") and "--categories Ring" in result["command"]
    environment = result["environment"]
    assert environment["torch"] == metadata.version("torch") and environment["python"] == sys.version.split()[0]
    assert environment["m2ad"] == result["m2ad_version"]
    assert evaluate("invariant", root, path, categories=["Ring"], progress=False)["command"] is None  # the Python API
