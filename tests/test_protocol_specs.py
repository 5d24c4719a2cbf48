"""Protocols as specs: every registered protocol, checked the same way, and realiad-sample
against a brute-force restatement of the official Real-IAD (ADEval) sample-level evaluation.

Manifests are built here from plain records; expected values come from plain Python grouping
and scikit-learn, never from the protocol code under test.
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
from m2ad.datasets import registry as dataset_registry
from m2ad.datasets.real_iad import SPEC as REAL_IAD_SPEC
from m2ad.metrics import pixel_metrics, point_metrics
from m2ad.metrics import registry as metric_registry
from m2ad.schema import DatasetInfo
from protocols.spec import Level, ProtocolSpec, Requirements
from test_protocols import make_records, manifest_from_records

SIZE = 6
VIEWS = ("C1", "C2", "C3", "C4", "C5")
MODES = ("exact", "streaming", "compat", "compat-float32")


def real_iad_manifest(samples: list[dict], category: str = "toy") -> pl.DataFrame:
    """A Real-IAD-shaped manifest: one row per (sample, view); ``samples`` give ``specimen``,
    ``object_label`` and per view whether a mask file exists (``label`` is 1 exactly then)."""
    rows = []
    for sample in samples:
        for view in VIEWS:
            has_mask = view in sample["masked"]
            rows.append({
                "sample_id": f"real-iad/{category}/{sample['specimen']}/{view}.jpg", "dataset": "real-iad", "category": category,
                "split": sample.get("split", "test"), "specimen": sample["specimen"], "view": view, "illumination": None,
                "label": int(has_mask), "object_label": sample["object_label"], "defect_types": ["scratch"] if sample["object_label"] else [],
                "has_mask": has_mask, "width": SIZE, "height": SIZE, "shard_dir": f"{category}/test", "shard_row": len(rows),
            })
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=REAL_IAD_SPEC.manifest_schema()))


def mvtec_manifest(seed: int = 0) -> pl.DataFrame:
    """A manifest without views or illuminations (MVTec-AD style)."""
    records = make_records(seed=seed, categories=("Cube",), normal=6, ng=6, views=("000",), lights=("01",))
    return manifest_from_records(records).with_columns(pl.lit(None, pl.String).alias("view"), pl.lit(None, pl.String).alias("illumination"))


def _random_real_iad_samples(rng: random.Random, normal: int = 4, anomalous: int = 6) -> list[dict]:
    samples = [{"specimen": f"OK/S{index:04d}", "object_label": 0, "masked": set()} for index in range(normal)]
    for index in range(normal, normal + anomalous):
        samples.append({"specimen": f"NG/HS/S{index:04d}", "object_label": 1, "masked": set(rng.sample(VIEWS, rng.randint(0, 5)))})
    return samples


MANIFESTS = {
    "m2ad-like": manifest_from_records(make_records(seed=3, categories=("Cube",), normal=3, ng=3)),
    "real-iad-like": real_iad_manifest(_random_real_iad_samples(random.Random(0), normal=5, anomalous=7)),
    "mvtec-like": mvtec_manifest(),
}


def fitting_cases() -> list[tuple[str, str]]:
    """Every (protocol, manifest) pair where the manifest has what the protocol requires."""
    cases = []
    for name in protocols.available():
        requires = protocols.get(name).requires
        for manifest_name, manifest in MANIFESTS.items():
            if (all(column in manifest.columns for column in requires.columns) and all(manifest[axis].is_not_null().all() for axis in requires.axes)
                    and ("points" not in requires.modalities or "num_points" in manifest.columns)):
                cases.append((name, manifest_name))
    return cases


def predictions(test: pl.DataFrame, seed: int) -> tuple[dict, dict, dict]:
    """Tied scores (4 values) and maps (5 float16-exact values), masks on anomalous samples
    (sometimes empty, so that mask-derived labels differ from the stored ones)."""
    rng = np.random.default_rng(seed)
    palette = np.array([0.0, 0.125, 0.25, 0.5, 1.0], dtype=np.float32)
    scores, maps, masks = {}, {}, {}
    for sample_id, label in zip(test["sample_id"], test["label"]):
        scores[sample_id] = float(rng.choice([0.1, 0.2, 0.3, 0.4])) + 0.1 * label
        maps[sample_id] = palette[rng.integers(0, len(palette), (SIZE, SIZE))]
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        if label and rng.random() < 0.85:
            mask[1:3, 1 : 2 + int(rng.integers(0, 3))] = True
            maps[sample_id][mask] += 0.5
        masks[sample_id] = mask
    return scores, maps, masks


def feed(evaluator: protocols.FusionEvaluator, ids: list[str], scores: dict, maps: dict | None, masks: dict, batch: int) -> None:
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        evaluator.update(chunk, [scores[i] for i in chunk], None if maps is None else [maps[i] for i in chunk], [masks[i] for i in chunk])


def results(evaluator: protocols.FusionEvaluator) -> tuple:
    return evaluator.compute(), evaluator.counts(), evaluator.breakdown()


# ---------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", protocols.available())
def test_every_protocol_spec_is_complete(name: str) -> None:
    spec = protocols.get(name)
    assert spec.name == name and spec.version and spec.description
    assert spec.metric_names and len(set(spec.metric_names)) == len(spec.metric_names)
    for metric in spec.metric_names:
        info = metric_registry.get(metric)
        assert info.label and info.version and info.level
    assert spec.breakdown_metric is None or spec.breakdown_metric in spec.metric_names
    # every dataset that lists the protocol has what it requires
    for dataset in dataset_registry.available():
        dataset_spec = dataset_registry.get(dataset)
        if name in dataset_spec.protocols:
            spec.check_dataset(DatasetInfo(dataset=dataset, resolution=16, categories=[], **dataset_spec.info_fields([])))


@pytest.mark.parametrize("dataset", dataset_registry.available())
@pytest.mark.parametrize("name", protocols.available())
def test_a_protocol_that_does_not_fit_is_refused_in_one_line(name: str, dataset: str) -> None:
    dataset_spec = dataset_registry.get(dataset)
    info = DatasetInfo(dataset=dataset, resolution=16, categories=[], **dataset_spec.info_fields([]))
    if name in dataset_spec.protocols:
        protocols.get(name).check_dataset(info)
        return
    with pytest.raises(ValueError) as caught:
        protocols.get(name).check_dataset(info)
    message = str(caught.value)
    assert "\n" not in message and f"protocol {name!r} does not fit the dataset {dataset!r}" in message
    assert "it fits: " + ", ".join(dataset_spec.protocols) in message


def test_invariant_on_mvtec_names_the_missing_column() -> None:
    info = DatasetInfo(dataset="mvtec-ad", resolution=16, categories=[], **dataset_registry.get("mvtec-ad").info_fields([]))
    with pytest.raises(ValueError, match=r"^protocol 'invariant' does not fit the dataset 'mvtec-ad': it needs the column 'detectable'"):
        protocols.get("invariant").check_dataset(info)
    with pytest.raises(ValueError, match="needs the axis 'view' and the axis 'illumination'|needs the axis 'view', the axis 'illumination'"):
        protocols.get("synergy").check_dataset(info)
    with pytest.raises(ValueError, match="lacks the columns \\['detectable'\\]"):
        protocols.get("invariant").test_samples(mvtec_manifest().drop("detectable"), "Cube")


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="more than one level has pixel metrics"):
        ProtocolSpec("x", "1", "", levels=(Level("image", maps="mean"), Level("view", keys=("view",), maps="max")))
    with pytest.raises(ValueError, match="not in m2ad.metrics.registry: part_auroc"):
        ProtocolSpec("x", "1", "", levels=(Level("part", keys=("view",)),))
    with pytest.raises(ValueError, match="reduces by something other than mean or max"):
        ProtocolSpec("x", "1", "", levels=(Level("view", keys=("view",), score="median"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not among its keys"):
        ProtocolSpec("x", "1", "", levels=(Level("view", keys=("specimen",), breakdown=("view",)),))


# ---------------------------------------------------------------------------- order independence


@pytest.mark.filterwarnings("ignore")  # single-class units (e.g. all-normal views): NaN with a warning
@pytest.mark.parametrize(("name", "manifest_name", "mode"),
                         [(name, manifest, mode) for name, manifest in fitting_cases() for mode in MODES if mode in protocols.get(name).modes])
def test_shuffled_updates_and_merges_give_identical_metrics(name: str, manifest_name: str, mode: str) -> None:
    """The same predictions fed in test order, in a shuffled order in odd batches, and split at
    random over three evaluators merged in another order: identical metrics, counts and
    breakdown, bit for bit (scores are stored per row; fused maps are order-free), except the
    streaming AUPRO, whose per-bin float sums of region weights follow the arrival order (equal
    to 1e-15)."""
    spec = protocols.get(name)
    manifest = MANIFESTS[manifest_name]
    category = manifest["category"][0]
    test = spec.test_samples(manifest, category)
    scores, maps, masks = predictions(test, seed=len(name))
    ids = test["sample_id"].to_list()
    value_range = (0.0, 1.5) if mode == "streaming" else None
    rule = "official" if mode == "compat" and "official" in spec.mask_rules else "exact"

    def evaluator() -> protocols.FusionEvaluator:
        return spec.new_evaluator(test, mode=mode, mask_rule=rule, value_range=value_range)

    in_order = evaluator()
    feed(in_order, ids, scores, maps, masks, batch=len(ids))
    expected = results(in_order)
    rng = random.Random(1)
    shuffled = ids[:]
    rng.shuffle(shuffled)
    one = evaluator()
    feed(one, shuffled, scores, maps, masks, batch=7)
    parts = [evaluator() for _ in range(3)]
    for index, part in enumerate(parts):
        feed(part, [i for k, i in enumerate(shuffled) if k % 3 == index], scores, maps, masks, batch=5)
    merged = parts[1].merge(parts[2]).merge(parts[0])
    for found in (results(one), results(merged)):
        if mode == "streaming":
            aupro = [name for name in expected[0] if name.endswith("aupro")]
            np.testing.assert_allclose([found[0][name] for name in aupro], [expected[0][name] for name in aupro], rtol=1e-15, atol=0)
            found = ({name: value for name, value in found[0].items() if name not in aupro}, *found[1:])
            np.testing.assert_equal(found, ({name: value for name, value in expected[0].items() if name not in aupro}, *expected[1:]))
        else:
            np.testing.assert_equal(found, expected)
    assert list(expected[0]) == list(spec.metric_names)


# ---------------------------------------------------------------------------- realiad-sample


def _unit_metrics(labels: list[int], scores: list[float]) -> list[float]:
    if len(set(labels)) < 2:
        return [math.nan] * 3
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return [roc_auc_score(labels, scores), average_precision_score(labels, scores), float(np.max(f1[np.isfinite(f1)]))]


def brute_force_realiad_sample(test: pl.DataFrame, scores: dict, maps: dict, masks: dict, rule: str) -> dict:
    """ADEval's sample level restated: a view is anomalous when its mask has a set pixel
    (official rule) or when it has a mask file (exact rule: the stored label); a sample's score
    is the max of its views' scores, its label the max of theirs; views and pixels unfused."""
    label = {row["sample_id"]: int(masks[row["sample_id"]].any()) if rule == "official" else row["label"] for row in test.iter_rows(named=True)}
    groups: dict[str, list[str]] = defaultdict(list)
    for row in test.iter_rows(named=True):
        groups[row["specimen"]].append(row["sample_id"])
    sample_scores = [max(scores[i] for i in group) for group in groups.values()]
    sample_labels = [max(label[i] for i in group) for group in groups.values()]
    ids = test["sample_id"].to_list()
    expected = dict(zip(("sample_auroc", "sample_ap", "sample_f1max"), _unit_metrics(sample_labels, sample_scores)))
    expected.update(zip(("image_auroc", "image_ap", "image_f1max"), _unit_metrics([label[i] for i in ids], [scores[i] for i in ids])))
    if maps is not None:
        expected.update(pixel_metrics([maps[i] for i in ids], [masks[i] for i in ids]))
        truth = np.concatenate([masks[i].ravel() for i in ids]).astype(int).tolist()
        values = np.concatenate([maps[i].ravel() for i in ids]).astype(np.float64).tolist()
        expected["pixel_auroc_sklearn"] = roc_auc_score(truth, values) if 0 < sum(truth) < len(truth) else math.nan
    per_view = {view: _unit_metrics([label[i] for i in ids if i.split("/")[-1] == f"{view}.jpg"],
                                    [scores[i] for i in ids if i.split("/")[-1] == f"{view}.jpg"])[0] for view in VIEWS}
    counts = {"images": len(ids), "samples": len(groups), "normal_samples": sample_labels.count(0),
              "anomalous_samples": sample_labels.count(1)}
    return {"metrics": expected, "view": per_view, "counts": counts, "samples": dict(zip(groups, zip(sample_scores, sample_labels)))}


def _check_against_brute_force(test: pl.DataFrame, scores: dict, maps: dict | None, masks: dict, rule: str) -> protocols.FusionEvaluator:
    spec = protocols.get("realiad-sample")
    ids = test["sample_id"].to_list()
    random.Random(4).shuffle(ids)
    parts = [spec.new_evaluator(test, mask_rule=rule) for _ in range(2)]
    feed(parts[0], ids[::2], scores, maps, masks, batch=3)
    feed(parts[1], ids[1::2], scores, maps, masks, batch=4)
    evaluator = parts[1].merge(parts[0])
    actual = evaluator.compute()
    expected = brute_force_realiad_sample(test, scores, maps, masks, rule)
    for name, value in expected["metrics"].items():
        found = actual["pixel_auroc"] if name == "pixel_auroc_sklearn" else actual[name]
        assert (math.isnan(value) and math.isnan(found)) or found == pytest.approx(value, abs=1e-12), name
    assert set(actual) == set(spec.metric_names)
    breakdown = evaluator.breakdown()
    assert list(breakdown) == ["view"]
    for view, value in expected["view"].items():
        assert (math.isnan(value) and math.isnan(breakdown["view"][view])) or breakdown["view"][view] == pytest.approx(value, abs=1e-12)
    counts = evaluator.counts()
    assert {key: counts[key] for key in expected["counts"]} == expected["counts"]
    units = evaluator.unit_frame("sample")
    assert {row["specimen"]: (row["score"], row["label"]) for row in units.iter_rows(named=True)} == expected["samples"]
    return evaluator


@pytest.mark.filterwarnings("ignore")  # all-normal breakdown cells: NaN
@pytest.mark.parametrize("rule", ["exact", "official"])
def test_realiad_sample_on_hand_made_adversarial_samples(rule: str) -> None:
    """Ties between a normal sample's max and an anomalous one's; a sample with one anomalous
    view; an NG sample without any mask (a normal sample, as ADEval counts it); an NG view with
    an empty mask file (anomalous under the stored label, normal under the mask's pixels)."""
    samples = [
        {"specimen": "OK/S0001", "object_label": 0, "masked": set()},
        {"specimen": "OK/S0002", "object_label": 0, "masked": set()},
        {"specimen": "OK/S0003", "object_label": 0, "masked": set()},
        {"specimen": "NG/HS/S0004", "object_label": 1, "masked": {"C3"}},  # one anomalous view
        {"specimen": "NG/HS/S0005", "object_label": 1, "masked": set(VIEWS)},
        {"specimen": "NG/AK/S0006", "object_label": 1, "masked": set()},  # no mask at all: a normal sample
        {"specimen": "NG/PS/S0007", "object_label": 1, "masked": {"C5"}},  # its mask file is empty
    ]
    test = protocols.get("realiad-sample").test_samples(real_iad_manifest(samples), "toy")
    view_scores = {"OK/S0001": [0.1, 0.2, 0.3, 0.1, 0.1], "OK/S0002": [0.1, 0.1, 0.1, 0.1, 0.1], "OK/S0003": [0.2, 0.6, 0.1, 0.1, 0.2],
                   "NG/HS/S0004": [0.1, 0.1, 0.6, 0.1, 0.1], "NG/HS/S0005": [0.3, 0.3, 0.3, 0.3, 0.3], "NG/AK/S0006": [0.9, 0.1, 0.1, 0.1, 0.1],
                   "NG/PS/S0007": [0.1, 0.1, 0.1, 0.1, 0.3]}
    scores, maps, masks = {}, {}, {}
    for row in test.iter_rows(named=True):
        scores[row["sample_id"]] = view_scores[row["specimen"]][VIEWS.index(row["view"])]
        masks[row["sample_id"]] = np.zeros((SIZE, SIZE), dtype=bool)
        if row["label"] and row["specimen"] != "NG/PS/S0007":
            masks[row["sample_id"]][2, 2:4] = True
        maps[row["sample_id"]] = np.full((SIZE, SIZE), scores[row["sample_id"]], dtype=np.float32) + masks[row["sample_id"]]
    evaluator = _check_against_brute_force(test, scores, maps, masks, rule)
    units = {row["specimen"]: row for row in evaluator.unit_frame("sample").iter_rows(named=True)}
    assert units["NG/HS/S0004"]["label"] == 1 and units["NG/HS/S0004"]["score"] == 0.6
    assert units["NG/AK/S0006"]["label"] == 0 and units["NG/AK/S0006"]["score"] == 0.9
    assert units["NG/PS/S0007"]["label"] == (1 if rule == "exact" else 0)
    # S-AUROC by hand (ties count 1/2).  Exact rule: anomalous maxima 0.6, 0.3, 0.3 against normal
    # 0.3, 0.1, 0.6, 0.9: (2.5 + 1.5 + 1.5) / 12.  Official: S0007 is normal, 0.6 and 0.3 against
    # 0.3, 0.1, 0.6, 0.9, 0.3: (3.5 + 2) / 10.
    assert evaluator.compute()["sample_auroc"] == pytest.approx(5.5 / 12 if rule == "exact" else 0.55, abs=1e-12)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("seed", range(6))
def test_realiad_sample_equals_the_brute_force_on_random_tied_data(seed: int) -> None:
    rng = random.Random(seed)
    test = protocols.get("realiad-sample").test_samples(real_iad_manifest(_random_real_iad_samples(rng, 4 + seed % 3, 5 + seed)), "toy")
    scores, maps, masks = predictions(test, seed)
    _check_against_brute_force(test, scores, maps if seed % 2 else None, masks, "official" if seed % 3 == 0 else "exact")


def test_realiad_sample_on_an_all_normal_category_is_undefined() -> None:
    """A category with no anomalous view: every sample, image and pixel metric is NaN (JSON
    null), with a warning, and the counts say why."""
    test = protocols.get("realiad-sample").test_samples(real_iad_manifest(_random_real_iad_samples(random.Random(0), 4, 0)), "toy")
    scores, maps, masks = predictions(test, 0)
    evaluator = protocols.get("realiad-sample").new_evaluator(test)
    with pytest.warns(Warning):
        feed(evaluator, test["sample_id"].to_list(), scores, maps, masks, batch=6)
        values = evaluator.compute()
    assert all(math.isnan(value) for value in values.values())
    assert evaluator.counts() == {"images": 20, "samples": 4, "normal_samples": 4, "anomalous_samples": 0,
                                  "normal_images": 20, "anomalous_images": 0}


# ---------------------------------------------------------------------------- a new protocol is a spec


def test_a_protocol_of_point_clouds_is_one_spec() -> None:
    """What a 3-D protocol looks like: each test sample an object, its per-point scores the
    'maps', scored with the point metrics (no AUPRO), AUROC and AP only, exact and streaming
    modes and stored labels only; no evaluator code is added."""
    spec = ProtocolSpec("points-demo", "1", "objects and their points", levels=(Level("object", maps="mean"),), map_kind="point",
                        sample_unit="cloud", requires=Requirements(modalities=("points",)),
                        metrics=("object_auroc", "object_ap", "point_auroc", "point_ap"), modes=("exact", "streaming"), mask_rules=("exact",))
    assert spec.metric_names == ("object_auroc", "object_ap", "point_auroc", "point_ap")
    test = mvtec_manifest(seed=2).filter(pl.col("split") == "test")
    rng = np.random.default_rng(0)
    scores, points, labels = {}, {}, {}
    for sample_id, label in zip(test["sample_id"], test["label"]):
        count = int(rng.integers(20, 40))
        labels[sample_id] = np.zeros(count, dtype=bool)
        labels[sample_id][: 3 * label] = True
        points[sample_id] = rng.random(count).astype(np.float32) + labels[sample_id]
        scores[sample_id] = float(points[sample_id].max())
    evaluator = spec.new_evaluator(test)
    feed(evaluator, test["sample_id"].to_list()[::-1], scores, points, labels, batch=4)
    values = evaluator.compute()
    assert list(values) == list(spec.metric_names)
    ids = test["sample_id"].to_list()
    expected = point_metrics([points[i] for i in ids], [labels[i] for i in ids])
    assert values["point_auroc"] == pytest.approx(expected["point_auroc"], abs=1e-12)
    assert values["point_ap"] == pytest.approx(expected["point_ap"], abs=1e-12)
    assert values["object_auroc"] == pytest.approx(roc_auc_score(test["label"].to_list(), [scores[i] for i in ids]))
    assert evaluator.counts()["clouds"] == len(ids) and evaluator.counts()["objects"] == len(ids)
    info = DatasetInfo(dataset="mvtec-ad", resolution=16, categories=[], **dataset_registry.get("mvtec-ad").info_fields([]))
    with pytest.raises(ValueError, match="needs the modality 'points'"):
        spec.check_dataset(info)
    with pytest.raises(ValueError, match=r"^protocol 'points-demo' evaluates in the exact, streaming mode\(s\), not 'compat'$"):
        spec.new_evaluator(test, mode="compat")
    with pytest.raises(ValueError, match="takes the exact mask rule"):
        spec.new_evaluator(test, mask_rule="official")
    with pytest.raises(ValueError, match="not among its levels' metrics"):
        ProtocolSpec("x", "1", "", levels=(Level("object"),), metrics=("point_auroc",))
