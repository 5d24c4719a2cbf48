"""Streaming and compat modes, merging, pickling, and the handling of bad input."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2ad.metrics import (
    PixelMetricAccumulator,
    UndefinedMetricWarning,
    image_metrics,
    map_value_range,
    pixel_metrics,
    point_metrics,
)

KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")


def synthetic(count: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smooth-ish float32 maps, every other one with rectangular and blob defects scoring higher."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for index in range(count):
        mask = np.zeros((size, size), np.uint8)
        if index % 2 == 0:
            top, left = rng.integers(0, size - 8, 2)
            mask[top : top + rng.integers(1, 8), left : left + rng.integers(1, 8)] = 255
            mask[rng.integers(0, size), rng.integers(0, size)] = 255
        noise = rng.normal(size=(size, size)).astype(np.float32)
        maps.append((noise + 1.5 * (mask > 0) + rng.normal(scale=0.1)).astype(np.float32))
        masks.append(mask)
    return maps, masks


# ---------------------------------------------------------------- streaming


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([4, 16, 256, 4096]), st.sampled_from([0.3, 0.1, 1.0]))
def test_streaming_stays_within_its_certified_bound(seed: int, bins: int, limit: float) -> None:
    maps, masks = synthetic(4, 16, seed)
    exact = pixel_metrics(maps, masks, pro_limit=limit)
    accumulator = PixelMetricAccumulator("streaming", limit, value_range=map_value_range(maps), bins=bins)
    accumulator.update(maps, masks)
    streamed, bounds = accumulator.compute(), accumulator.error_bounds()
    for key in KEYS:
        assert abs(streamed[key] - exact[key]) <= bounds[key] + 1e-12, key


def test_streaming_is_exact_when_every_score_has_its_own_bin() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 50, (10, 10)).astype(np.float32) for _ in range(3)]
    masks = [(m > 40).astype(np.uint8) for m in maps]
    masks[1][:] = 0
    exact = pixel_metrics(maps, masks)
    streamed = pixel_metrics(maps, masks, mode="streaming", value_range=(0, 50), bins=50)
    assert streamed == pytest.approx(exact, abs=1e-12)


def test_streaming_on_realistic_data_is_within_1e5_of_exact() -> None:
    maps, masks = synthetic(6, 128, seed=1)
    exact = pixel_metrics(maps, masks)
    streamed = pixel_metrics(iter(maps), iter(masks), mode="streaming")
    assert streamed == pytest.approx(exact, abs=1e-5)


def test_scores_outside_the_streaming_range_are_clamped_not_lost() -> None:
    maps, masks = synthetic(4, 32, seed=2)
    low, high = map_value_range(maps)
    narrow = PixelMetricAccumulator("streaming", value_range=(low / 2, high / 2), bins=64)
    narrow.update(maps, masks)
    exact = pixel_metrics(maps, masks)
    result, bounds = narrow.compute(), narrow.error_bounds()
    for key in KEYS:
        assert abs(result[key] - exact[key]) <= bounds[key] + 1e-12


@pytest.mark.parametrize("mode", ["exact", "streaming", "compat", "compat-float32"])
def test_merging_pickled_parts_equals_one_pass(mode: str) -> None:
    maps, masks = synthetic(9, 24, seed=3)
    value_range = map_value_range(maps)
    whole = PixelMetricAccumulator(mode, value_range=value_range, bins=1024)
    whole.update(maps, masks)
    parts = []
    for start in range(0, 9, 3):
        part = PixelMetricAccumulator(mode, value_range=value_range, bins=1024)
        part.update(np.stack(maps[start : start + 3]), np.stack(masks[start : start + 3]))
        parts.append(pickle.loads(pickle.dumps(part)))
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.samples == 9
    assert merged.compute() == pytest.approx(whole.compute(), abs=1e-12)


def test_streaming_state_does_not_grow_with_the_number_of_maps() -> None:
    maps, masks = synthetic(40, 32, seed=4)
    accumulator = PixelMetricAccumulator("streaming", value_range=map_value_range(maps), bins=4096)
    accumulator.update(maps[:4], masks[:4])
    size_small = len(pickle.dumps(accumulator))
    accumulator.update(maps[4:], masks[4:])
    assert len(pickle.dumps(accumulator)) <= size_small + 4096 * 8 * 2


# (the compat modes' own tests: hand-computed cases, a brute-force reference and ADEval's
# accumulator, are in test_metrics_compat.py)


# ---------------------------------------------------------------- bad input


def test_nan_and_inf_name_the_map() -> None:
    maps, masks = synthetic(3, 12, seed=8)
    maps[1][2, 3] = np.nan
    with pytest.raises(ValueError, match="map 1 contains NaN or infinite"):
        pixel_metrics(maps, masks)
    maps[1][2, 3] = np.inf
    with pytest.raises(ValueError, match="map 1 contains NaN or infinite"):
        pixel_metrics(maps, masks, mode="streaming", value_range=(0, 1))
    with pytest.raises(ValueError, match="image score 2 is NaN"):
        image_metrics([0.1, 0.2, np.nan], [0, 1, 1])


def test_shape_and_length_mismatches_are_refused() -> None:
    maps, masks = synthetic(2, 12, seed=9)
    with pytest.raises(ValueError, match="map 1 has shape"):
        pixel_metrics(maps, [masks[0], masks[1][:4]])
    with pytest.raises(ValueError, match="different lengths"):
        pixel_metrics(maps, masks[:1])
    with pytest.raises(ValueError, match="must be 2-D"):
        pixel_metrics([np.zeros(4)], [np.zeros(4)])
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        image_metrics([0.1, 0.2, 0.3], [0, 1])


def test_empty_input_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        pixel_metrics([], [])
    with pytest.raises(ValueError, match="empty"):
        pixel_metrics([np.zeros((0, 3))], [np.zeros((0, 3))])
    with pytest.raises(ValueError, match="empty"):
        image_metrics([], [])
    with pytest.raises(ValueError, match="empty"):
        point_metrics([], [], mode="streaming")


@pytest.mark.parametrize("mode", ["exact", "streaming", "compat", "compat-float32"])
def test_a_single_class_gives_nan_with_a_warning(mode: str) -> None:
    maps = [np.random.default_rng(10).random((6, 6)).astype(np.float32)]
    with pytest.warns(UndefinedMetricWarning, match="undefined"):
        normal_only = pixel_metrics(maps, [np.zeros((6, 6))], mode=mode)
    assert all(np.isnan(normal_only[key]) for key in KEYS)
    with pytest.warns(UndefinedMetricWarning, match="undefined"):
        defect_only = pixel_metrics(maps, [np.ones((6, 6))], mode=mode)
    assert all(np.isnan(defect_only[key]) for key in KEYS)
    with pytest.warns(UndefinedMetricWarning, match="undefined"):
        assert np.isnan(image_metrics([0.3, 0.4], [1, 1])["image_auroc"])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown metrics mode"):
        PixelMetricAccumulator("approximate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pro_limit"):
        PixelMetricAccumulator("exact", 0.0)
    with pytest.raises(ValueError, match="needs value_range"):
        PixelMetricAccumulator("streaming")
    with pytest.raises(ValueError, match="low < high"):
        PixelMetricAccumulator("streaming", value_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="0/1"):
        image_metrics([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="real numbers"):
        pixel_metrics([np.array([["a"]])], [np.zeros((1, 1))])
    exact = PixelMetricAccumulator("exact")
    with pytest.raises(ValueError, match="cannot merge"):
        exact.merge(PixelMetricAccumulator("streaming", value_range=(0, 1)))
    streaming = PixelMetricAccumulator("streaming", value_range=(0, 1), bins=16)
    with pytest.raises(ValueError, match="different grids"):
        streaming.merge(PixelMetricAccumulator("streaming", value_range=(0, 2), bins=16))
    with pytest.raises(ValueError, match="no error bound"):
        PixelMetricAccumulator("compat", value_range=(0, 1)).error_bounds()


def test_masks_with_any_nonzero_value_and_integer_maps() -> None:
    maps, masks = synthetic(3, 16, seed=11)
    reference = pixel_metrics(maps, [(m > 0).astype(bool) for m in masks])
    assert pixel_metrics(maps, [m.astype(np.float32) * 0.5 for m in masks]) == pytest.approx(reference, abs=1e-15)
    as_integers = [np.round(m * 1000).astype(np.int32) for m in maps]
    as_floats = [np.round(m * 1000).astype(np.float64) for m in maps]
    assert pixel_metrics(as_integers, masks) == pytest.approx(pixel_metrics(as_floats, masks), abs=1e-15)


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_constant_maps_in_every_mode(mode: str) -> None:
    masks = [np.zeros((5, 5), np.uint8), np.eye(5, dtype=np.uint8)]
    maps = [np.full((5, 5), 3.25, np.float32)] * 2
    result = pixel_metrics(maps, masks, mode=mode)
    assert result["pixel_auroc"] == 0.5
    assert result["pixel_ap"] == pytest.approx(5 / 50)
    assert result["aupro"] == pytest.approx(0.15)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6), st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**32 - 1),
    st.sampled_from(["exact", "streaming", "compat", "compat-float32"]), st.sampled_from([np.float16, np.float32]),
)
def test_a_batch_array_scores_like_its_maps_one_by_one(count: int, height: int, width: int, seed: int, mode: str, dtype: type) -> None:
    """The (B, H, W) fast path (one chunk of pixels per batch) equals feeding the maps one by one:
    tied scores, normal-only and defect-only maps, several batches."""
    rng = np.random.default_rng(seed)
    maps = rng.choice(np.array([-1.0, 0.0, 0.25, 3.0], dtype=dtype), size=(count, height, width))
    masks = rng.random((count, height, width)) < rng.choice([0.0, 0.3, 1.0], size=(count, 1, 1))
    masks[0, 0, 0], maps[-1, -1, -1] = True, dtype(7.0)  # some defect, and a range for the binned modes
    low, high = map_value_range(list(maps))
    value_range = (low, high + 1.0) if mode == "streaming" and low == high else (low, high)
    one_by_one, batched = (PixelMetricAccumulator(mode, value_range=None if mode == "exact" else value_range) for _ in range(2))
    one_by_one.update(list(maps), list(masks))
    split = count // 2
    batched.update(maps[:split], masks[:split])
    batched.update(maps[split:], masks[split:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        expected, result = one_by_one.compute(), batched.compute()
    assert batched.samples == one_by_one.samples == count
    for key in KEYS:
        if np.isnan(expected[key]):
            assert np.isnan(result[key])
        else:
            assert result[key] == pytest.approx(expected[key], abs=1e-12 if mode != "exact" else 0.0)
