"""Exact mode against independent references: scikit-learn and a brute-force MVTec AD AUPRO."""

from __future__ import annotations

import pickle
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from m2ad.metrics import PixelMetricAccumulator, grouped_auroc, image_metrics, pixel_metrics, point_metrics
from m2ad.metrics.binning import bin_codes, bin_scale
from m2ad.metrics.exact import Float16Histogram, count_negatives

# ---------------------------------------------------------------- independent references


def sklearn_f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    """F1-max over scikit-learn's PR curve without its final (P=1, R=0) point."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]
    total = precision + recall
    return float(np.max(np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)))


def flood_fill_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components by breadth-first search (no scipy), as lists of pixel coordinates."""
    seen = np.zeros(mask.shape, dtype=bool)
    regions = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, region = deque([start]), []
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        regions.append(region)
    return regions


def brute_force_aupro(maps: list[np.ndarray], masks: list[np.ndarray], limit: float) -> float:
    """MVTec AD AUPRO recomputed from scratch at every distinct threshold (overlap per region)."""
    regions = [(index, region) for index, mask in enumerate(masks) for region in flood_fill_regions(mask != 0)]
    negatives = np.concatenate([m[k == 0] for m, k in zip(maps, masks, strict=True)]).astype(np.float64)
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]).astype(np.float64))[::-1]
    xs, ys = [0.0], [0.0]
    for threshold in thresholds:
        overlaps = [np.mean([maps[i][p] >= threshold for p in region]) for i, region in regions]
        xs.append(float(np.mean(negatives >= threshold)))
        ys.append(min(float(np.mean(overlaps)), 1.0))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for i in range(len(xs) - 1):
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        if x1 <= limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        elif x0 < limit:  # the segment that crosses the limit: interpolate exactly at it
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_limit) * (limit - x0)
    return area / limit


def pooled(maps: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All pixels' scores and labels, concatenated."""
    return np.concatenate([m.ravel() for m in maps]), np.concatenate([(k != 0).ravel() for k in masks])


def assert_matches_references(maps: list[np.ndarray], masks: list[np.ndarray], limit: float = 0.3) -> None:
    """Exact mode equals scikit-learn and the brute-force AUPRO on these maps."""
    scores, labels = pooled(maps, masks)
    result = pixel_metrics(maps, masks, pro_limit=limit)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["pixel_f1max"] == pytest.approx(sklearn_f1max(labels, scores), abs=1e-12)
    assert result["aupro"] == pytest.approx(brute_force_aupro(maps, masks, limit), abs=1e-12)


# ---------------------------------------------------------------- hypothesis data


@st.composite
def map_sets(draw: st.DrawFn, max_images: int = 4, max_side: int = 7) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Small float32 maps with heavy ties (few distinct levels) and masks with any structure.

    At least one defect pixel and one normal pixel overall, so every metric is defined.
    """
    count = draw(st.integers(1, max_images))
    levels = draw(st.lists(st.floats(-1e3, 1e3, width=32, allow_subnormal=False), min_size=1, max_size=6))
    maps, masks = [], []
    for _ in range(count):
        height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
        values = draw(st.lists(st.sampled_from(levels), min_size=height * width, max_size=height * width))
        defect = draw(st.lists(st.booleans(), min_size=height * width, max_size=height * width))
        maps.append(np.array(values, dtype=np.float32).reshape(height, width))
        masks.append(np.array(defect, dtype=np.uint8).reshape(height, width) * draw(st.sampled_from([1, 255])))
    labels = np.concatenate([k.ravel() != 0 for k in masks])
    if labels.all() or not labels.any():  # add a one-pixel image of the missing class
        maps.append(np.array([[draw(st.sampled_from(levels))]], dtype=np.float32))
        masks.append(np.array([[0 if labels.all() else 1]], dtype=np.uint8))
    return maps, masks


@settings(max_examples=150, deadline=None)
@given(map_sets(), st.sampled_from([0.3, 0.05, 0.5, 1.0]))
def test_exact_pixel_metrics_match_references_on_adversarial_maps(
    data: tuple[list[np.ndarray], list[np.ndarray]], limit: float
) -> None:
    maps, masks = data
    assert_matches_references(maps, masks, limit)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=2, max_size=60),
    st.lists(st.booleans(), min_size=2, max_size=60),
)
def test_image_metrics_match_sklearn(scores: list[float], labels: list[bool]) -> None:
    size = min(len(scores), len(labels))
    score_array, label_array = np.array(scores[:size], dtype=np.float32), np.array(labels[:size])
    if label_array.all() or not label_array.any():
        label_array[0] = not label_array[0]
    result = image_metrics(score_array, label_array.astype(int))
    assert result["image_auroc"] == pytest.approx(roc_auc_score(label_array, score_array), abs=1e-12)
    assert result["image_ap"] == pytest.approx(average_precision_score(label_array, score_array), abs=1e-12)
    assert result["image_f1max"] == pytest.approx(sklearn_f1max(label_array, score_array), abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=40),
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=0, max_size=200),
    st.sampled_from([np.float32, np.float64]),
)
def test_count_negatives_equals_brute_force(values: list[float], negatives: list[float], dtype: type) -> None:
    distinct = np.unique(np.array(values, dtype=dtype))
    chunks = [np.array(negatives[:50], dtype=dtype), np.array(negatives[50:], dtype=dtype)]
    everything = np.concatenate([distinct, *chunks])
    below, equal = count_negatives(chunks, distinct, float(everything.min()), float(everything.max()))
    pooled_negatives = np.concatenate(chunks)
    assert below.tolist() == [int(np.sum(pooled_negatives < v)) for v in distinct]
    assert equal.tolist() == [int(np.sum(pooled_negatives == v)) for v in distinct]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=2, max_size=100),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(2, 1 << 20),
)
def test_bin_codes_never_reverse_the_order(values: list[float], low: float, high: float, bins: int) -> None:
    array = np.sort(np.array(values, dtype=np.float32))
    low, high = min(low, high), max(low, high)
    codes = bin_codes(array, np.float32(low), bin_scale(low, high, bins, np.dtype(np.float32)), bins)
    assert np.all(np.diff(codes) >= 0)
    assert codes.min() >= 0 and codes.max() < bins


# ---------------------------------------------------------------- hand-made adversarial cases


def test_constant_maps_give_the_chance_values() -> None:
    masks = [np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)]
    masks[1][2:4, 2:5] = 255
    maps = [np.full((8, 8), 0.7, np.float32), np.full((8, 8), 0.7, np.float32)]
    result = pixel_metrics(maps, masks)
    prevalence = 6 / 128
    assert result["pixel_auroc"] == 0.5
    assert result["pixel_ap"] == pytest.approx(prevalence)
    assert result["pixel_f1max"] == pytest.approx(2 * prevalence / (1 + prevalence))
    assert result["aupro"] == pytest.approx(0.15)  # the diagonal from (0,0) to (1,1), up to 0.3, over 0.3
    assert_matches_references(maps, masks)


def test_single_pixel_and_diagonal_regions() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((9, 9), np.uint8)
    mask[0, 0] = 1  # a single pixel
    mask[4, 4] = mask[5, 5] = mask[6, 6] = 1  # one region under 8-connectivity, three under 4
    mask[8, 0] = 1
    maps = [rng.random((9, 9)).astype(np.float32), rng.random((9, 9)).astype(np.float32)]
    assert_matches_references(maps, [mask, np.zeros((9, 9), np.uint8)])


def test_many_regions_and_normal_images_in_the_pool() -> None:
    rng = np.random.default_rng(4)
    checker = np.zeros((12, 12), np.uint8)
    checker[::3, ::3] = 1  # 16 isolated single-pixel regions
    masks = [checker, np.zeros((12, 12), np.uint8), np.zeros((12, 12), np.uint8), checker.T.copy()]
    maps = [np.round(rng.random((12, 12)) * 10).astype(np.float32) for _ in masks]  # heavy ties
    assert_matches_references(maps, masks)


def test_large_pool_with_ties_between_defect_and_normal_scores() -> None:
    """Enough pixels for a fine refinement grid (the mixed-bin path), ties across classes."""
    rng = np.random.default_rng(5)
    maps, masks = [], []
    for index in range(6):
        mask = np.zeros((120, 120), bool)
        if index % 2 == 0:
            mask[20 + index : 50, 30:70] = True
            mask[90:95, 10 + index : 14 + index] = True
        scores = rng.normal(size=(120, 120)) + 2.0 * mask
        maps.append(np.round(scores * 64).astype(np.float32) / 64)  # quantised: many exact ties
        masks.append(mask)
    scores, labels = pooled(maps, masks)
    result = pixel_metrics(maps, masks)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["pixel_f1max"] == pytest.approx(sklearn_f1max(labels, scores), abs=1e-12)


def test_float64_maps_are_not_rounded_to_float32() -> None:
    base = np.float64(1.0)
    above = np.nextafter(base, 2.0)  # equal to 1.0 once rounded to float32
    maps = [np.array([[base, above]])]
    masks = [np.array([[0, 1]])]
    assert pixel_metrics(maps, masks)["pixel_auroc"] == 1.0
    assert pixel_metrics([m.astype(np.float32) for m in maps], masks)["pixel_auroc"] == 0.5


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(width=16, allow_nan=False, allow_infinity=False), min_size=1, max_size=40),
    st.lists(st.floats(width=16, allow_nan=False, allow_infinity=False), min_size=0, max_size=200),
)
def test_count_negatives_of_float16_equals_brute_force(values: list[float], negatives: list[float]) -> None:
    """float16 scores are counted per value: -0.0 equals 0.0, subnormals and extremes included."""
    distinct = np.unique(np.array(values, dtype=np.float16))
    chunks = [np.array(negatives[:50], dtype=np.float16), np.array(negatives[50:], dtype=np.float16)]
    below, equal = count_negatives(chunks, distinct, 0.0, 0.0)
    pooled_negatives = np.concatenate(chunks).astype(np.float64)
    assert below.tolist() == [int(np.sum(pooled_negatives < v)) for v in distinct.astype(np.float64)]
    assert equal.tolist() == [int(np.sum(pooled_negatives == v)) for v in distinct.astype(np.float64)]


@settings(max_examples=80, deadline=None)
@given(map_sets(), st.sampled_from([0.3, 0.05, 1.0]), st.sampled_from([1.0, 1e-6, -1e-3]))
def test_float16_maps_are_scored_exactly(data: tuple[list[np.ndarray], list[np.ndarray]], limit: float, scale: float) -> None:
    """float16 maps (as stored in predictions files) give exactly the references' values, and the
    values of the same maps converted to float32, also when merged with float32 maps."""
    maps, masks = data
    half = [(m * scale).astype(np.float16) for m in maps]  # scale: subnormals, signed zeros, ties
    assert_matches_references([m.astype(np.float32) for m in half], masks, limit)
    as_float32 = pixel_metrics([m.astype(np.float32) for m in half], masks, pro_limit=limit)
    assert pixel_metrics(half, masks, pro_limit=limit) == as_float32
    mixed = [m if index % 2 else m.astype(np.float32) for index, m in enumerate(half)]
    assert pixel_metrics(mixed, masks, pro_limit=limit) == as_float32


def test_non_finite_float16_maps_are_refused() -> None:
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(ValueError, match="NaN or infinite"):
            pixel_metrics([np.array([[0.0, bad]], dtype=np.float16)], [np.array([[0, 1]])])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(width=16, allow_nan=False, allow_infinity=False), min_size=0, max_size=120), st.integers(1, 40))
def test_float16_histogram_folds_and_merges_exactly(scores: list[float], fold: int) -> None:
    """Counting in folds or blocks of any size, and merging two parts, gives the counts of a
    brute-force pass; ``values()`` gives the scores back in order (-0.0 as 0.0)."""
    values = np.array(scores, dtype=np.float16)
    first, second, whole = Float16Histogram(), Float16Histogram(), Float16Histogram()
    first.FOLD_VALUES = second.FOLD_VALUES = fold
    whole.COUNT_BLOCK = fold  # one chunk counted in blocks of any size
    for index, value in enumerate(values):
        (first if index % 3 else second).add(values[index : index + 1].copy())
    first.merge(second)
    whole._count(values)
    assert whole.values().tobytes() == first.values().tobytes()
    assert first.total == values.size
    assert first.values().astype(np.float64).tolist() == sorted(values.astype(np.float64).tolist())
    probes = np.unique(np.concatenate([values, np.array([-1.0, 0.0, 1.0], dtype=np.float16)]))
    below, equal = first.below_and_equal(probes)
    pooled = values.astype(np.float64)
    assert below.tolist() == [int(np.sum(pooled < v)) for v in probes.astype(np.float64)]
    assert equal.tolist() == [int(np.sum(pooled == v)) for v in probes.astype(np.float64)]


def test_exact_mode_on_float16_maps_keeps_bounded_state() -> None:
    """Normal pixels of float16 maps are counted, not kept: after 100 maps of 256 x 256 (12.5 MiB
    of scores) the pickled accumulator stays near its 512 KiB histogram plus one fold, and the
    metrics equal those of the same maps in float32 (which are kept whole)."""
    rng = np.random.default_rng(8)
    maps = [rng.random((256, 256)).astype(np.float16) for _ in range(100)]
    masks = [np.zeros((256, 256), dtype=bool) for _ in range(100)]
    masks[3][10:20, 30:35] = True
    half, single = PixelMetricAccumulator("exact"), PixelMetricAccumulator("exact")
    half.update(maps, masks)
    single.update([m.astype(np.float32) for m in maps], masks)
    assert len(pickle.dumps(half)) < 3 * 2**20 < len(pickle.dumps(single))
    assert half.compute() == single.compute()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5), st.booleans()), min_size=1, max_size=80))
def test_grouped_auroc_equals_sklearn_per_group(rows: list[tuple[int, int, bool]]) -> None:
    """Per-group AUROC from one sort equals scikit-learn on each group's images: heavy ties
    (6 distinct scores), single-class groups (NaN) and tuple keys included."""
    groups = [("view", group) for group, _, _ in rows]
    scores = np.array([score / 5 for _, score, _ in rows])
    labels = np.array([label for _, _, label in rows])
    result = grouped_auroc(scores, labels, groups)
    assert list(result) == sorted(set(groups))
    for key, value in result.items():
        chosen = np.array([group == key for group in groups])
        if labels[chosen].all() or not labels[chosen].any():
            assert np.isnan(value)
        else:
            assert value == pytest.approx(roc_auc_score(labels[chosen], scores[chosen]), abs=1e-12)


def test_grouped_auroc_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="2 group keys"):
        grouped_auroc([0.1, 0.2, 0.3], [0, 1, 0], ["a", "b"])
    with pytest.raises(ValueError, match="NaN or infinite"):
        grouped_auroc([0.1, np.nan], [0, 1], ["a", "a"])


def test_point_metrics_pool_ragged_clouds() -> None:
    rng = np.random.default_rng(6)
    scores = [rng.random(size).astype(np.float32) for size in (50, 7, 300)]
    labels = [rng.random(s.size) < 0.2 for s in scores]
    result = point_metrics(scores, labels)
    all_scores, all_labels = np.concatenate(scores), np.concatenate(labels)
    assert set(result) == {"point_auroc", "point_ap", "point_f1max"}
    assert result["point_auroc"] == pytest.approx(roc_auc_score(all_labels, all_scores), abs=1e-12)
    assert result["point_ap"] == pytest.approx(average_precision_score(all_labels, all_scores), abs=1e-12)
    assert result["point_f1max"] == pytest.approx(sklearn_f1max(all_labels, all_scores), abs=1e-12)


def test_point_metrics_streaming_and_compat_modes_accept_ragged_clouds() -> None:
    rng = np.random.default_rng(7)
    scores = [rng.random(size).astype(np.float32) + 0.5 * (np.arange(size) % 5 == 0) for size in (400, 33, 1000)]
    labels = [np.arange(s.size) % 5 == 0 for s in scores]
    exact = point_metrics(scores, labels)
    assert point_metrics(iter(scores), iter(labels), mode="streaming") == pytest.approx(exact, abs=1e-5)
    assert set(point_metrics(scores, labels, mode="compat")) == set(exact)
