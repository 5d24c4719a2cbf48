"""Protocols: sample selection, fusion, filtering, labels, merging, against independent references.

The manifests here are built from meta-JSON-style records (the official ``meta_unsupervised.json``
schema), and every expected count or metric is recomputed from those records with plain Python
or scikit-learn, never from the protocol code under test.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import protocols
from compat_reference import fused_view, official_pixel_metrics
from m2ad.datasets.m2ad import ILLUMINATIONS as M2AD_ILLUMINATIONS
from m2ad.datasets.m2ad import SPEC as M2AD_SPEC
from m2ad.datasets.m2ad import VIEWS as M2AD_VIEWS
from m2ad.metrics import COMPAT_MAP_DTYPES, pixel_metrics

MANIFEST_SCHEMA = M2AD_SPEC.manifest_schema()

SIZE = 8


def make_records(seed: int = 0, categories: tuple[str, ...] = ("Bird", "Cube"), normal: int = 5, ng: int = 3,
                 views: tuple[str, ...] = M2AD_VIEWS, lights: tuple[str, ...] = M2AD_ILLUMINATIONS) -> list[dict]:
    """Records shaped like the official meta JSON (img_path, view, illumination, object_name,
    object_anomaly, image_anomaly, cls_name, mask_path, detectable, split), M2AD-like: 60 % of
    normal specimens train, NG defects visible in some views only, some images undetectable."""
    rng = random.Random(seed)
    records = []
    for category in categories:
        normals = [f"{index:03d}" for index in range(normal)]
        train = set(normals[: int(0.6 * normal)])
        specimens = [(name, 0, "Good") for name in normals]
        specimens += [(f"scratch_1_{index:03d}", 1, "NG") for index in range(normal, normal + ng)]
        for name, anomalous, folder in specimens:
            visible = {view for view in views if anomalous and rng.random() < 0.6}
            for view in views:
                for light in lights:
                    image_anomaly = int(view in visible)
                    records.append({
                        "img_path": f"{category}/{folder}/{name}/A{view}_I{light}.png",
                        "view": view, "illumination": light, "object_name": name, "object_anomaly": anomalous,
                        "image_anomaly": image_anomaly, "cls_name": category,
                        "mask_path": f"{category}/GT/{name}/A{view}_mask.png" if image_anomaly else "",
                        "detectable": (rng.random() > 0.2) if image_anomaly else "",
                        "split": "train" if name in train else "test",
                    })
    return records


def manifest_from_records(records: list[dict], dataset: str = "m2ad-synth") -> pl.DataFrame:
    """The manifest (``MANIFEST_SCHEMA``) an m2ad sharder would write for these records."""
    rows = []
    for index, record in enumerate(records):
        rows.append({
            "sample_id": f"{dataset}/{record['img_path']}", "dataset": dataset, "category": record["cls_name"],
            "split": record["split"], "specimen": record["object_name"], "view": record["view"],
            "illumination": record["illumination"], "label": record["image_anomaly"], "object_label": record["object_anomaly"],
            "defect_types": ["scratch"] if record["object_anomaly"] else [],
            "detectable": None if record["detectable"] == "" else bool(record["detectable"]),
            "has_mask": bool(record["mask_path"]), "width": SIZE, "height": SIZE,
            "shard_dir": f"{record['cls_name']}/{record['split']}", "shard_row": index,
        })
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))


def sample_id(record: dict) -> str:
    return f"m2ad-synth/{record['img_path']}"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return make_records()


@pytest.fixture(scope="module")
def manifest(records: list[dict]) -> pl.DataFrame:
    return manifest_from_records(records)


def feed(evaluator: protocols.Evaluator, test: pl.DataFrame, scores: dict[str, float],
         maps: dict[str, np.ndarray] | None = None, masks: dict[str, np.ndarray] | None = None, batch: int = 7) -> None:
    ids = test["sample_id"].to_list()
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        evaluator.update(chunk, [scores[i] for i in chunk],
                         None if maps is None else [maps[i] for i in chunk],
                         None if masks is None else [masks[i] for i in chunk])


def test_registry() -> None:
    assert protocols.available() == ["eyecandies", "invariant", "mvtec-3d", "real3d-ad", "realiad-sample", "standard", "synergy"]
    assert protocols.get("real3d-ad").metric_names == ("object_auroc", "object_ap", "point_auroc", "point_ap")
    assert protocols.get("invariant").metric_names == (
        "image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
    assert protocols.get("standard").metric_names == protocols.get("invariant").metric_names
    assert protocols.get("synergy").metric_names == (
        "object_auroc", "object_ap", "object_f1max", "view_auroc", "view_ap", "view_f1max",
        "view_pixel_auroc", "view_pixel_ap", "view_pixel_f1max", "view_aupro")
    with pytest.raises(ValueError, match="unknown protocol 'nope'.*invariant"):
        protocols.get("nope")


@pytest.mark.parametrize("category", ["Bird", "Cube"])
def test_sample_counts_per_protocol(records: list[dict], manifest: pl.DataFrame, category: str) -> None:
    mine = [record for record in records if record["cls_name"] == category]
    train = [r for r in mine if r["split"] == "train"]
    test = [r for r in mine if r["split"] == "test"]
    invariant_test = [r for r in test if r["detectable"] is not False]
    view_labels: dict[tuple, int] = defaultdict(int)
    object_labels: dict[str, int] = {}
    for r in test:
        key = (r["object_name"], r["view"])
        view_labels[key] = max(view_labels[key], r["image_anomaly"])
        object_labels[r["object_name"]] = r["object_anomaly"]

    for name in protocols.available():
        protocol = protocols.get(name)
        assert set(protocol.train_samples(manifest, category)["sample_id"]) == {sample_id(r) for r in train}
    invariant, synergy, standard = (protocols.get(name) for name in ("invariant", "synergy", "standard"))
    assert set(invariant.test_samples(manifest, category)["sample_id"]) == {sample_id(r) for r in invariant_test}
    assert set(invariant.ignored_samples(manifest, category)["sample_id"]) == {
        sample_id(r) for r in test if r["detectable"] is False}
    assert set(synergy.test_samples(manifest, category)["sample_id"]) == {sample_id(r) for r in test}
    assert set(standard.test_samples(manifest, category)["sample_id"]) == {sample_id(r) for r in test}

    rng = np.random.default_rng(0)
    for protocol, expected in (
        (invariant, {"images": len(invariant_test), "normal_images": sum(r["image_anomaly"] == 0 for r in invariant_test),
                     "anomalous_images": sum(r["image_anomaly"] == 1 for r in invariant_test)}),
        (synergy, {"images": len(test), "views": len(view_labels),
                   "normal_views": sum(v == 0 for v in view_labels.values()),
                   "anomalous_views": sum(v == 1 for v in view_labels.values()),
                   "objects": len(object_labels), "normal_objects": sum(v == 0 for v in object_labels.values()),
                   "anomalous_objects": sum(v == 1 for v in object_labels.values())}),
    ):
        samples = protocol.test_samples(manifest, category)
        evaluator = protocol.new_evaluator(samples)
        feed(evaluator, samples, dict(zip(samples["sample_id"], rng.random(samples.height))))
        assert evaluator.counts() == expected


def test_m2ad_shaped_counts_per_specimen(manifest: pl.DataFrame) -> None:
    """Every M2AD specimen is 12 views x 10 lights: 12 view instances of 10 images each."""
    evaluator = protocols.get("synergy").new_evaluator(protocols.get("synergy").test_samples(manifest, "Bird"))
    assert set(evaluator.units["view"].sizes.tolist()) == {10}
    assert len(evaluator.units["view"].keys) == 12 * len(evaluator.units["object"].keys)


def test_invariant_filtering(records: list[dict], manifest: pl.DataFrame) -> None:
    test = protocols.get("invariant").test_samples(manifest, "Bird")
    assert test["detectable"].to_list().count(False) == 0
    by_id = {sample_id(r): r for r in records}
    # NG specimens' views without a visible defect stay in, as normal images
    ng_normal = [i for i in test["sample_id"] if by_id[i]["object_anomaly"] == 1 and by_id[i]["image_anomaly"] == 0]
    assert ng_normal
    undetectable = [sample_id(r) for r in records if r["cls_name"] == "Bird" and r["detectable"] is False]
    assert undetectable and not set(undetectable) & set(test["sample_id"])
    # image metrics on exactly those images, labels as stored: compare with scikit-learn
    rng = np.random.default_rng(1)
    scores = {i: float(rng.random() + 0.7 * by_id[i]["image_anomaly"]) for i in test["sample_id"]}
    evaluator = protocols.get("invariant").new_evaluator(test)
    feed(evaluator, test.sample(fraction=1.0, shuffle=True, seed=3), scores)
    labels = [by_id[i]["image_anomaly"] for i in test["sample_id"]]
    values = [scores[i] for i in test["sample_id"]]
    result = evaluator.compute()
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, values), abs=1e-12)
    assert result["image_ap"] == pytest.approx(average_precision_score(labels, values), abs=1e-12)
    assert all(math.isnan(result[name]) for name in ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro"))
    assert undetectable[0] not in evaluator.sample_ids
    with pytest.raises(ValueError, match="not test samples"):
        evaluator.update([undetectable[0]], [0.5])


def _one_specimen_manifest() -> tuple[pl.DataFrame, list[dict]]:
    """One NG specimen with a defect visible in view 000 only, plus one normal specimen."""
    records = make_records(categories=("Ring",), normal=1, ng=1)
    for record in records:
        record["split"] = "test"
        if record["object_anomaly"]:
            visible = record["view"] == "000"
            record["image_anomaly"] = int(visible)
            record["mask_path"] = "x" if visible else ""
            record["detectable"] = True if visible else ""
    return manifest_from_records(records), records


def test_synergy_fusion_on_hand_made_scores() -> None:
    manifest, records = _one_specimen_manifest()
    synergy = protocols.get("synergy")
    test = synergy.test_samples(manifest, "Ring")
    ng_specimen = "scratch_1_001"
    scores = {}
    for record in records:
        light = int(record["illumination"]) - 1  # 0..9
        view = int(record["view"]) // 30  # 0..11
        offset = 100.0 if record["object_anomaly"] else 0.0
        scores[sample_id(record)] = offset + light + 10.0 * view
    evaluator = synergy.new_evaluator(test)
    feed(evaluator, test, scores)
    views = evaluator.unit_frame("view")
    fused = views.filter((pl.col("specimen") == ng_specimen) & (pl.col("view") == "000")).row(0, named=True)
    assert fused["score"] == 104.5  # images score 100..109 -> 104.5; with the offset removed: 0..9 -> 4.5
    assert fused["label"] == 1 and fused["samples"] == 10
    other = views.filter((pl.col("specimen") == ng_specimen) & (pl.col("view") == "030")).row(0, named=True)
    assert other["score"] == 114.5 and other["label"] == 0  # an NG view without a visible defect is normal
    objects = {row["specimen"]: row for row in evaluator.unit_frame("object").iter_rows(named=True)}
    ng_scores = [scores[sample_id(r)] for r in records if r["object_name"] == ng_specimen]
    assert len(ng_scores) == 120
    assert objects[ng_specimen]["score"] == pytest.approx(sum(ng_scores) / 120, abs=1e-12)
    assert objects[ng_specimen]["label"] == 1 and objects["000"]["label"] == 0
    counts = evaluator.counts()
    assert counts["anomalous_views"] == 1 and counts["normal_views"] == 23 and counts["objects"] == 2


def test_synergy_fused_maps_are_means_and_masks_are_maxima() -> None:
    manifest, records = _one_specimen_manifest()
    synergy = protocols.get("synergy")
    test = synergy.test_samples(manifest, "Ring")
    rng = np.random.default_rng(5)
    maps, masks, scores = {}, {}, {}
    for record in records:
        key = sample_id(record)
        maps[key] = rng.random((SIZE, SIZE)).astype(np.float32)
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        if record["image_anomaly"]:
            # each light marks a different pixel: the fused mask must be their union
            light = int(record["illumination"]) - 1
            mask[light // 5, light % 5 + 1] = True
            maps[key][mask] += 0.5
        masks[key] = mask
        scores[key] = float(rng.random())
    evaluator = synergy.new_evaluator(test)
    feed(evaluator, test.sample(fraction=1.0, shuffle=True, seed=0), scores, maps, masks, batch=13)
    result = evaluator.compute()
    fused_maps, fused_masks = [], []
    for view in evaluator.unit_frame("view").iter_rows(named=True):
        group = [sample_id(r) for r in records if r["object_name"] == view["specimen"] and r["view"] == view["view"]]
        fused_maps.append(np.mean(np.stack([maps[i] for i in group]).astype(np.float64), axis=0).astype(np.float32))
        fused_masks.append(np.any(np.stack([masks[i] for i in group]), axis=0))
    labels = np.concatenate([m.ravel() for m in fused_masks])
    values = np.concatenate([m.ravel() for m in fused_maps])
    assert labels.sum() == 10  # the union of ten different pixels
    assert result["view_pixel_auroc"] == pytest.approx(roc_auc_score(labels, values), abs=1e-9)
    assert result["view_pixel_ap"] == pytest.approx(average_precision_score(labels, values), abs=1e-9)


def test_official_mask_rule_recomputes_labels(manifest: pl.DataFrame) -> None:
    """An anomalous image whose (eroded) official mask is empty counts as normal."""
    invariant = protocols.get("invariant")
    test = invariant.test_samples(manifest, "Cube")
    anomalous = test.filter(pl.col("label") == 1)["sample_id"].to_list()
    vanished = set(anomalous[:3])
    masks = {}
    for row in test.iter_rows(named=True):
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        if row["label"] and row["sample_id"] not in vanished:
            mask[2:4, 2:4] = 255
        masks[row["sample_id"]] = mask
    scores = {i: float(k) for k, i in enumerate(test["sample_id"])}
    official = invariant.new_evaluator(test, mask_rule="official")
    feed(official, test, scores, masks=masks)
    exact = invariant.new_evaluator(test)
    feed(exact, test, scores)
    assert official.counts()["anomalous_images"] == exact.counts()["anomalous_images"] - 3
    labels = [0 if i in vanished else lab for i, lab in zip(test["sample_id"], test["label"])]
    assert official.compute()["image_auroc"] == pytest.approx(roc_auc_score(labels, [scores[i] for i in test["sample_id"]]))
    with pytest.raises(ValueError, match="official"):
        invariant.new_evaluator(test, mask_rule="official").update(test["sample_id"][:2].to_list(), [0.1, 0.2])


@pytest.mark.parametrize("name", ["invariant", "synergy", "standard"])
def test_merge_of_disjoint_parts_equals_one_evaluator(manifest: pl.DataFrame, name: str) -> None:
    protocol = protocols.get(name)
    test = protocol.test_samples(manifest, "Bird")
    rng = np.random.default_rng(2)
    ids = test["sample_id"].to_list()
    labels = dict(zip(ids, test["label"].to_list()))
    scores = {i: float(rng.random() + labels[i]) for i in ids}
    maps, masks = {}, {}
    for i in ids:
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        if labels[i]:
            mask[1:3, 4:7] = True
        masks[i] = mask
        maps[i] = (rng.random((SIZE, SIZE)) + 0.8 * mask).astype(np.float32)
    whole = protocol.new_evaluator(test)
    feed(whole, test, scores, maps, masks)
    # three parts, split at random (so synergy views are split across parts), merged in another order
    parts = [protocol.new_evaluator(test) for _ in range(3)]
    assignment = rng.integers(0, 3, len(ids))
    for part_index, part in enumerate(parts):
        feed(part, test.filter(pl.Series(assignment == part_index)), scores, maps, masks, batch=5)
    merged = parts[2].merge(parts[0]).merge(parts[1])
    expected, actual = whole.compute(), merged.compute()
    assert set(actual) == set(protocol.metric_names)
    for metric in protocol.metric_names:
        assert actual[metric] == pytest.approx(expected[metric], abs=1e-12), metric
    with pytest.raises(ValueError, match="both evaluators scored"):
        merged.merge(whole)


def test_breakdown_matches_sklearn_per_cell(manifest: pl.DataFrame) -> None:
    protocol = protocols.get("invariant")
    test = protocol.test_samples(manifest, "Bird")
    rng = np.random.default_rng(4)
    scores = dict(zip(test["sample_id"], rng.random(test.height)))
    evaluator = protocol.new_evaluator(test)
    feed(evaluator, test, scores)
    breakdown = evaluator.breakdown()
    assert set(breakdown["view"]) == set(M2AD_VIEWS) and set(breakdown["illumination"]) == set(M2AD_ILLUMINATIONS)
    for view in M2AD_VIEWS:
        rows = test.filter(pl.col("view") == view)
        labels = rows["label"].to_list()
        expected = roc_auc_score(labels, [scores[i] for i in rows["sample_id"]]) if 0 < sum(labels) < len(labels) else None
        if expected is None:
            assert math.isnan(breakdown["view"][view])
        else:
            assert breakdown["view"][view] == pytest.approx(expected)
        for light in M2AD_ILLUMINATIONS:
            cell = rows.filter(pl.col("illumination") == light)
            cell_labels = cell["label"].to_list()
            value = breakdown["view_illumination"][view][light]
            if 0 < sum(cell_labels) < len(cell_labels):
                assert value == pytest.approx(roc_auc_score(cell_labels, [scores[i] for i in cell["sample_id"]]))
            else:
                assert math.isnan(value)
    synergy = protocols.get("synergy")
    synergy_test = synergy.test_samples(manifest, "Bird")
    fused = synergy.new_evaluator(synergy_test)
    feed(fused, synergy_test, dict(zip(synergy_test["sample_id"], rng.random(synergy_test.height))))
    assert set(fused.breakdown()["view"]) == set(M2AD_VIEWS)


def test_evaluator_errors(manifest: pl.DataFrame) -> None:
    synergy = protocols.get("synergy")
    test = synergy.test_samples(manifest, "Bird")
    ids = test["sample_id"].to_list()
    evaluator = synergy.new_evaluator(test)
    with pytest.raises(ValueError, match="not test samples"):
        evaluator.update(["m2ad-synth/Bird/Good/999/A000_I01.png"], [0.1])
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluator.update(ids[:2], [0.1, float("nan")])
    with pytest.raises(ValueError, match="twice"):
        evaluator.update([ids[0], ids[0]], [0.1, 0.2])
    with pytest.raises(ValueError, match="masks"):
        evaluator.update(ids[:1], [0.1], [np.zeros((SIZE, SIZE))], None)
    with pytest.raises(ValueError, match="shape"):
        evaluator.update(ids[:1], [0.1], [np.zeros((SIZE, SIZE))], [np.zeros((SIZE, SIZE + 1))])
    maps = [np.zeros((SIZE, SIZE), np.float32)] * 5
    evaluator.update(ids[:5], [0.1] * 5, maps, [np.zeros((SIZE, SIZE), bool)] * 5)
    with pytest.raises(ValueError, match="twice"):
        evaluator.update(ids[4:6], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"no predictions for \d+ of"):
        evaluator.compute()
    for chunk_start in range(5, len(ids) - 1, 50):
        chunk = ids[chunk_start:min(chunk_start + 50, len(ids) - 1)]
        evaluator.update(chunk, [0.1] * len(chunk), [np.zeros((SIZE, SIZE), np.float32)] * len(chunk),
                         [np.zeros((SIZE, SIZE), bool)] * len(chunk))
    with pytest.raises(ValueError, match="no predictions for 1 of"):
        evaluator.compute()
    half = synergy.new_evaluator(test)
    half.update(ids[:3], [0.1] * 3, [np.zeros((SIZE, SIZE), np.float32)] * 3, [np.zeros((SIZE, SIZE), bool)] * 3)
    rest = synergy.new_evaluator(test)
    rest.update(ids[3:], [0.1] * (len(ids) - 3))
    with pytest.raises(ValueError, match="maps were given for 3 samples but not for"):
        half.merge(rest).compute()
    with pytest.raises(ValueError, match="unknown category 'Teapot'"):
        synergy.test_samples(manifest, "Teapot")
    with pytest.raises(ValueError, match="mode"):
        synergy.new_evaluator(test, mode="fast")
    with pytest.raises(ValueError, match="merge"):
        synergy.new_evaluator(test).merge(protocols.get("invariant").new_evaluator(test))


def test_incomplete_view_is_reported_by_merge_state(manifest: pl.DataFrame) -> None:
    synergy = protocols.get("synergy")
    test = synergy.test_samples(manifest, "Cube")
    evaluator = synergy.new_evaluator(test)
    ids = test["sample_id"].to_list()
    zeros = np.zeros((SIZE, SIZE), np.float32)
    evaluator.update(ids[:4], [0.0] * 4, [zeros] * 4, [zeros > 0] * 4)
    assert len(evaluator._open) == 1 and evaluator.fused_units == 0
    evaluator.update(ids[4:10], [0.0] * 6, [zeros] * 6, [zeros > 0] * 6)
    assert not evaluator._open and evaluator.fused_units == 1
    with pytest.raises(ValueError, match="no predictions"):
        evaluator.unit_frame("view")


def test_synergy_needs_views() -> None:
    records = make_records(categories=("Ring",), normal=2, ng=1, views=("000",), lights=("01",))
    manifest = manifest_from_records(records).with_columns(pl.lit(None, pl.String).alias("view"))
    test = protocols.get("synergy").test_samples(manifest, "Ring")
    with pytest.raises(ValueError, match="standard"):
        protocols.get("synergy").new_evaluator(test)
    standard = protocols.get("standard").new_evaluator(test)
    feed(standard, test, {i: 0.5 for i in test["sample_id"]})
    assert standard.breakdown() is None


@pytest.mark.parametrize("mode", ["streaming", "compat"])
@pytest.mark.parametrize("name", ["invariant", "synergy"])
def test_binned_modes_see_the_evaluated_maps(manifest: pl.DataFrame, name: str, mode: str) -> None:
    """Streaming and compat pixel metrics equal ``m2ad.metrics.pixel_metrics`` on the maps the
    protocol evaluates (image maps, or hand-fused view maps), with or without a given range."""
    protocol = protocols.get(name)
    test = protocol.test_samples(manifest, "Cube")
    rng = np.random.default_rng(6)
    ids = test["sample_id"].to_list()
    maps = {i: rng.random((SIZE, SIZE)).astype(np.float32) for i in ids}
    masks = {}
    for i, label in zip(ids, test["label"]):
        masks[i] = np.zeros((SIZE, SIZE), bool)
        masks[i][3:5, 3:5] = bool(label)
        maps[i][masks[i]] += 0.3
    if name == "synergy":  # compat: m2ad_fuse's float64 mean in illumination order; streaming: rounded to float32
        groups = test.group_by(["specimen", "view"], maintain_order=True).agg("sample_id")["sample_id"].to_list()
        evaluated = [np.mean(np.stack([maps[i] for i in group]).astype(np.float64), axis=0) for group in groups]
        evaluated = [item if mode == "compat" else item.astype(np.float32) for item in evaluated]
        evaluated_masks = [np.any(np.stack([masks[i] for i in group]), axis=0) for group in groups]
        keys = ("view_pixel_auroc", "view_pixel_ap", "view_pixel_f1max", "view_aupro")
    else:
        evaluated, evaluated_masks = [maps[i] for i in ids], [masks[i] for i in ids]
        keys = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
    scores = {i: float(rng.random()) for i in ids}
    ranges = [None] + ([(0.0, 1.5)] if mode == "streaming" else [])
    for value_range in ranges:
        expected = pixel_metrics(evaluated, evaluated_masks, mode=mode, value_range=value_range)
        parts = [protocol.new_evaluator(test, mode=mode, value_range=value_range) for _ in range(2)]
        feed(parts[0], test[::2], scores, maps, masks)
        feed(parts[1], test[1::2], scores, maps, masks)
        result = parts[0].merge(parts[1]).compute()
        for key, expected_value in zip(keys, expected.values()):
            assert result[key] == pytest.approx(expected_value, abs=1e-12), (key, value_range)


# ---------------------------------------------------------------- compat: the official fusion


def test_compat_view_scores_are_np_mean_in_illumination_order() -> None:
    """Two score lists with the same exact mean, 0.1: ``np.mean`` (pairwise, as ``m2ad_fuse``)
    gives 0.1 for the normal views' list and 0.10000000000000002 for the anomalous view's, while
    a running float64 sum gives 0.09999999999999999 for both.  So compat breaks the tie (view
    AUROC 1) that exact mode keeps (view AUROC 1/2)."""
    normal_scores = [0.2, 0.2, 0.0, 0.0, 0.0, 0.1, 0.2, 0.1, 0.1, 0.1]
    anomalous_scores = [0.0, 0.2, 0.1, 0.1, 0.1, 0.0, 0.2, 0.0, 0.2, 0.1]
    assert np.mean(normal_scores) == 0.1 and np.mean(anomalous_scores) == 0.10000000000000002
    manifest, records = _one_specimen_manifest()
    synergy = protocols.get("synergy")
    test = synergy.test_samples(manifest, "Ring")
    scores = {}
    for record in records:
        visible = record["object_anomaly"] and record["view"] == "000"
        scores[sample_id(record)] = (anomalous_scores if visible else normal_scores)[int(record["illumination"]) - 1]
    results = {}
    for mode in ("exact", "compat"):
        evaluator = synergy.new_evaluator(test, mode=mode, mask_rule="exact")
        feed(evaluator, test.sample(fraction=1.0, shuffle=True, seed=1), scores)  # arrival order does not matter
        results[mode] = evaluator.compute()
        views = evaluator.unit_frame("view")
        expected = {0: 0.1, 1: 0.10000000000000002} if mode == "compat" else {0: 0.09999999999999999, 1: 0.09999999999999999}
        assert all(row["score"] == expected[row["label"]] for row in views.iter_rows(named=True)), mode
    assert results["exact"]["view_auroc"] == 0.5
    assert results["compat"]["view_auroc"] == 1.0


@pytest.mark.filterwarnings("ignore:AUPRO is undefined")
def test_compat_fused_maps_are_means_in_the_dtype_the_trainer_hands_over() -> None:
    """float16 maps; the class range is [0, 1] (a normal pixel at 1 in every light).  The defect
    pixel's ten lights are 1, 1, 1, 1, 1, 2**-24, 0, 0, 0, 0.  In float64 the mean is
    (5 + 2**-24) / 10 > 0.5.  In float32, 5 + 2**-24 rounds to 5, so the mean is exactly 0.5.
    With eight normal pixels at 0.47, the best F1 threshold is 0.5 in float64: 1 hit, 2 predicted.
    In float32 nothing is above 0.5 but the pixel at 1, so the best is 0.45: 1 hit, 10 predicted."""
    manifest, records = _one_specimen_manifest()
    synergy = protocols.get("synergy")
    test = synergy.test_samples(manifest, "Ring")
    maps, masks, scores = {}, {}, {}
    defect_lights = [1.0] * 5 + [2.0**-24] + [0.0] * 4
    for record in records:
        key, light = sample_id(record), int(record["illumination"]) - 1
        maps[key] = np.zeros((SIZE, SIZE), dtype=np.float16)
        masks[key] = np.zeros((SIZE, SIZE), dtype=bool)
        if record["view"] == "000" and record["object_anomaly"]:
            maps[key][0, 0], masks[key][0, 0] = defect_lights[light], True
        elif record["view"] == "000":
            maps[key][0, 0], maps[key][1, :] = 1.0, 0.47
        scores[key] = float(light)
    assert np.float16(2.0**-24) == 2.0**-24  # the smallest float16 subnormal

    def f1(hits: int, predicted: int) -> float:
        precision, recall = hits / (predicted + 1e-8), hits / (1 + 1e-8)
        return 2 * precision * recall / (precision + recall + 1e-8)

    for mode, expected in (("compat", f1(1, 2)), ("compat-float32", f1(1, 10))):
        evaluator = synergy.new_evaluator(test, mode=mode)
        feed(evaluator, test, scores, maps, masks)
        assert evaluator.compute()["view_pixel_f1max"] == pytest.approx(expected, abs=1e-15), mode


def _all_test_manifest(seed: int) -> tuple[pl.DataFrame, list[dict]]:
    """Two normal and two NG specimens of one category, every image in the test split."""
    records = make_records(seed=seed, categories=("Ring",), normal=2, ng=2)
    for record in records:
        record["split"] = "test"
    return manifest_from_records(records), records


def _official_image_metrics(labels: list[int], scores: list[float]) -> tuple[float, float, float]:
    """scikit-learn AUROC and AP, and F1-max over the PR curve ignoring non-finite values."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return roc_auc_score(labels, scores), average_precision_score(labels, scores), float(np.max(f1[np.isfinite(f1)]))


@pytest.mark.filterwarnings("ignore:AUPRO is undefined")
@pytest.mark.parametrize("mode", list(COMPAT_MAP_DTYPES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compat_synergy_equals_the_brute_force_official_evaluation(mode: str, seed: int) -> None:
    """Tied scores and maps (a few values), masks that vanish in some lights; fed in random order
    to two evaluators that are merged.  Expected: each view fused in illumination order
    (``compat_reference.fused_view``, scores by ``np.mean`` as ``m2ad_fuse``), view labels from
    the fused masks, object labels from the records, image metrics by scikit-learn, pixel metrics
    by the brute-force reference."""
    dtype = COMPAT_MAP_DTYPES[mode]
    manifest, records = _all_test_manifest(seed)
    synergy = protocols.get("synergy")
    test = synergy.test_samples(manifest, "Ring")
    rng = np.random.default_rng(seed)
    palette = np.array([0.0, 0.1, 0.25, 0.3, 1.0], dtype=np.float16)
    maps, masks, scores = {}, {}, {}
    for record in records:
        key = sample_id(record)
        maps[key] = palette[rng.integers(0, len(palette), (SIZE, SIZE))]
        masks[key] = np.zeros((SIZE, SIZE), dtype=bool)
        if record["image_anomaly"] and rng.random() < 0.8:
            masks[key][2:4, 1 : 2 + int(rng.integers(0, 3))] = True
            maps[key][masks[key]] = 1.0
        scores[key] = float(rng.choice([0.0, 0.1, 0.2, 0.3])) + 0.1 * record["object_anomaly"]
    shuffled = test.sample(fraction=1.0, shuffle=True, seed=seed)
    parts = [synergy.new_evaluator(test, mode=mode) for _ in range(2)]
    feed(parts[0], shuffled[::2], scores, maps, masks, batch=11)
    feed(parts[1], shuffled[1::2], scores, maps, masks, batch=11)
    result = parts[0].merge(parts[1]).compute()

    view_rows: dict[tuple, list[dict]] = defaultdict(list)
    object_rows: dict[str, list[dict]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r["object_name"], int(r["view"]), int(r["illumination"]))):
        view_rows[record["object_name"], record["view"]].append(record)
        object_rows[record["object_name"]].append(record)
    fused_maps = [fused_view([maps[sample_id(r)] for r in rows], dtype) for rows in view_rows.values()]
    fused_masks = [np.any([masks[sample_id(r)] for r in rows], axis=0) for rows in view_rows.values()]
    view_scores = [np.mean(np.array([scores[sample_id(r)] for r in rows], dtype=dtype)) for rows in view_rows.values()]
    object_scores = [np.mean(np.array([scores[sample_id(r)] for r in rows], dtype=dtype)) for rows in object_rows.values()]
    expected = dict(zip(("view_auroc", "view_ap", "view_f1max"),
                        _official_image_metrics([int(m.any()) for m in fused_masks], view_scores)))
    expected.update(zip(("object_auroc", "object_ap", "object_f1max"),
                        _official_image_metrics([rows[0]["object_anomaly"] for rows in object_rows.values()], object_scores)))
    pixels = official_pixel_metrics(fused_maps, fused_masks, dtype)
    expected.update({f"view_{key}": value for key, value in pixels.items()})
    assert set(expected) == set(result)
    for key, value in expected.items():
        assert (math.isnan(value) and math.isnan(result[key])) or result[key] == pytest.approx(value, abs=1e-12), key


def test_a_range_only_pass_records_the_fused_maps_range() -> None:
    """``measure_range_only`` (the first pass of compat on fused maps) records the range of the
    fused maps, keeps none of them, and refuses an evaluator that was already fed."""
    manifest, records = _one_specimen_manifest()
    synergy = protocols.get("synergy")
    test = synergy.test_samples(manifest, "Ring")
    maps = {sample_id(r): np.full((SIZE, SIZE), float(r["illumination"]) + 10.0 * (r["view"] == "090"), np.float16) for r in records}
    masks = {key: np.zeros((SIZE, SIZE), bool) for key in maps}
    probe = synergy.new_evaluator(test, mode="compat", mask_rule="exact")
    with pytest.raises(ValueError, match="measure_range_only first"):
        probe.evaluated_range()
    probe.measure_range_only()
    feed(probe, test, dict.fromkeys(maps, 0.0), maps, masks)
    assert probe.evaluated_range() == (5.5, 15.5)  # the mean of lights 1..10, and of 11..20 for view 090
    with pytest.raises(ValueError, match="not been fed"):
        probe.measure_range_only()
