"""The method registry and the two reference methods, ``random`` and ``gaussian``, checked
against brute-force NumPy/SciPy references and scikit-learn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

import baselines
from baselines import Batch
from baselines.base import Method, image_score_from_map
from baselines.gaussian import GaussianConfig


def _batch(images: np.ndarray, categories: list[str], views: list[str | None], lights: list[str | None], prefix: str = "s") -> Batch:
    return Batch(
        sample_ids=[f"{prefix}{index}" for index in range(len(images))],
        images=torch.from_numpy(images),
        categories=categories,
        views=views,
        illuminations=lights,
    )


def _reference_distance(images: np.ndarray, train: np.ndarray, min_std: float) -> np.ndarray:
    """sum_c ((x - mean) / sqrt(var + min_std^2))^2 per pixel, statistics from ``train``."""
    pixels = train.astype(np.float64) / 255.0
    mean = pixels.mean(axis=0)
    variance = pixels.var(axis=0)
    z = (images.astype(np.float64) / 255.0 - mean) / np.sqrt(variance + min_std**2)
    return (z**2).sum(axis=1)


# --------------------------------------------------------------------------- registry


def test_registry_lists_and_builds_the_reference_methods() -> None:
    assert {"random", "gaussian"} <= set(baselines.available())
    for name in ("random", "gaussian"):
        method = baselines.create(name)
        assert isinstance(method, Method)
        assert method.name == name
        assert dataclasses.is_dataclass(baselines.config_class(name))


def test_create_rejects_unknown_methods_and_options() -> None:
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        baselines.create("nope")
    with pytest.raises(ValueError, match="no option 'colour'"):
        baselines.create("gaussian", colour=1)
    with pytest.raises(ValueError, match="min_std must be positive"):
        baselines.create("gaussian", min_std=0.0)


def test_parse_method_args_types_values_and_reports_mistakes() -> None:
    assert baselines.parse_method_args("gaussian", ["blur-sigma=1.5", "stats_size=64", "top_fraction=0"]) == {
        "blur_sigma": 1.5,
        "stats_size": 64,
        "top_fraction": 0.0,
    }
    assert baselines.parse_method_args("random", ["seed=none"]) == {"seed": None}
    assert baselines.parse_method_args("random", ["seed=7"]) == {"seed": 7}
    with pytest.raises(ValueError, match="key=value"):
        baselines.parse_method_args("gaussian", ["blur_sigma"])
    with pytest.raises(ValueError, match="no option 'sigma'"):
        baselines.parse_method_args("gaussian", ["sigma=2"])
    with pytest.raises(ValueError, match="cannot read 'big'"):
        baselines.parse_method_args("gaussian", ["stats_size=big"])


def test_batch_rejects_inconsistent_fields() -> None:
    images = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match="batch size"):
        Batch(["a", "b"], images, ["X"], [None, None], [None, None])
    with pytest.raises(ValueError, match="uint8"):
        Batch(["a", "b"], images.float(), ["X", "X"], [None, None], [None, None])


def test_image_score_from_map_matches_a_sort() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 20, 30)).astype(np.float32)
    for fraction in (0.0, 0.01, 0.1, 1.0):
        got = image_score_from_map(torch.from_numpy(maps), fraction).numpy()
        flat = np.sort(maps.reshape(5, -1), axis=1)[:, ::-1]
        count = max(1, int(600 * fraction))
        expected = flat[:, 0] if fraction == 0 else flat[:, :count].mean(axis=1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        image_score_from_map(torch.from_numpy(maps), 1.5)


# --------------------------------------------------------------------------- random


def test_random_is_reproducible_per_sample_and_independent_of_batching() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 3, 8, 10), dtype=np.uint8)
    batch = _batch(images, ["X"] * 6, [None] * 6, [None] * 6)
    method = baselines.create("random", seed=3)
    method.fit([batch])
    scores, maps = method.predict(batch)
    assert scores.shape == (6,) and maps.shape == (6, 8, 10) and maps.dtype == np.float32
    assert ((scores >= 0) & (scores < 1)).all() and ((maps >= 0) & (maps < 1)).all()
    # the same sample alone, in another batch, gets the same draw
    alone = Batch(["s4"], torch.from_numpy(images[4:5]), ["X"], [None], [None])
    alone_scores, alone_maps = baselines.create("random", seed=3).predict(alone)
    assert alone_scores[0] == scores[4]
    np.testing.assert_array_equal(alone_maps[0], maps[4])
    other_scores, _ = baselines.create("random", seed=4).predict(batch)
    assert not np.array_equal(other_scores, scores)
    # without a seed it follows torch's global generator (seeded per cell by the runner)
    torch.manual_seed(11)
    first = baselines.create("random").predict(batch)[0]
    torch.manual_seed(11)
    np.testing.assert_array_equal(baselines.create("random").predict(batch)[0], first)


def test_random_auroc_is_at_chance() -> None:
    count = 4000
    images = np.zeros((count, 3, 2, 2), dtype=np.uint8)
    batch = _batch(images, ["X"] * count, [None] * count, [None] * count)
    scores, _ = baselines.create("random", seed=0).predict(batch)
    labels = np.random.default_rng(5).integers(0, 2, size=count)
    assert abs(roc_auc_score(labels, scores) - 0.5) < 0.04


def test_random_state_dict_round_trip() -> None:
    method = baselines.create("random")
    state = method.state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    restored = baselines.create("random", seed=999)
    restored.load_state_dict(state)
    batch = _batch(np.zeros((2, 3, 4, 4), dtype=np.uint8), ["X", "X"], [None, None], [None, None])
    np.testing.assert_array_equal(restored.predict(batch)[1], method.predict(batch)[1])


# --------------------------------------------------------------------------- gaussian


def test_gaussian_maps_match_a_brute_force_reference_per_group() -> None:
    rng = np.random.default_rng(2)
    groups = [("A", "000", "01"), ("A", "000", "02"), ("A", "030", "01"), ("B", "000", "01")]
    train_images, keys = [], []
    for group_index, key in enumerate(groups):
        base = rng.integers(0, 200, size=(3, 12, 16))
        for _ in range(5):
            train_images.append(np.clip(base + rng.integers(0, 40 + 10 * group_index, size=base.shape), 0, 255).astype(np.uint8))
            keys.append(key)
    train_images = np.stack(train_images)
    order = rng.permutation(len(keys))  # interleave groups across batches
    batches = [
        _batch(train_images[chunk], [keys[i][0] for i in chunk], [keys[i][1] for i in chunk], [keys[i][2] for i in chunk], prefix=f"t{start}-")
        for start in range(0, len(order), 7)
        for chunk in [order[start : start + 7]]
    ]
    method = baselines.create("gaussian", blur_sigma=0.0, top_fraction=0.0, min_std=0.03)
    method.fit(batches)

    test = rng.integers(0, 256, size=(4, 3, 12, 16), dtype=np.uint8)
    batch = _batch(test, [g[0] for g in groups], [g[1] for g in groups], [g[2] for g in groups])
    scores, maps = method.predict(batch)
    for index, key in enumerate(groups):
        members = np.array([k == key for k in keys])
        expected = _reference_distance(test[index : index + 1], train_images[members], 0.03)[0]
        np.testing.assert_allclose(maps[index], expected, rtol=1e-4, atol=1e-4)
        assert scores[index] == pytest.approx(expected.max(), rel=1e-4)


def test_gaussian_falls_back_to_category_statistics() -> None:
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, size=(8, 3, 6, 6), dtype=np.uint8)
    views = ["000"] * 4 + ["030"] * 4
    method = baselines.create("gaussian", blur_sigma=0.0, min_std=0.05)
    method.fit([_batch(train, ["A"] * 8, views, ["01"] * 8)])
    test = rng.integers(0, 256, size=(1, 3, 6, 6), dtype=np.uint8)
    _, maps = method.predict(_batch(test, ["A"], ["090"], ["01"]))  # a view never seen in training
    np.testing.assert_allclose(maps[0], _reference_distance(test, train, 0.05)[0], rtol=1e-4, atol=1e-4)

    # no views or lights at all (MVTec-like): one group per category
    plain = baselines.create("gaussian", blur_sigma=0.0, min_std=0.05)
    plain.fit([_batch(train, ["A"] * 8, [None] * 8, [None] * 8)])
    _, plain_maps = plain.predict(_batch(test, ["A"], [None], [None]))
    np.testing.assert_allclose(plain_maps[0], maps[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="category 'B' was not in the training data"):
        plain.predict(_batch(test, ["B"], [None], [None]))


def test_gaussian_blur_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    train = rng.integers(0, 256, size=(6, 3, 20, 24), dtype=np.uint8)
    test = rng.integers(0, 256, size=(2, 3, 20, 24), dtype=np.uint8)
    raw = baselines.create("gaussian", blur_sigma=0.0)
    blurred = baselines.create("gaussian", blur_sigma=2.0)
    for method in (raw, blurred):
        method.fit([_batch(train, ["A"] * 6, [None] * 6, [None] * 6)])
    batch = _batch(test, ["A", "A"], [None, None], [None, None])
    _, raw_maps = raw.predict(batch)
    _, blurred_maps = blurred.predict(batch)
    for index in range(2):
        expected = gaussian_filter(raw_maps[index].astype(np.float64), sigma=2.0, mode="mirror", truncate=3.0)
        np.testing.assert_allclose(blurred_maps[index], expected, rtol=1e-4, atol=1e-4)


def test_gaussian_finds_an_injected_defect() -> None:
    rng = np.random.default_rng(5)
    base = rng.integers(60, 180, size=(3, 32, 32))
    train = np.stack([np.clip(base + rng.normal(0, 4, size=base.shape), 0, 255) for _ in range(10)]).astype(np.uint8)
    normal = np.stack([np.clip(base + rng.normal(0, 4, size=base.shape), 0, 255) for _ in range(5)]).astype(np.uint8)
    defective = normal.copy()
    defective[:, :, 10:13, 20:23] = 255
    method = baselines.create("gaussian")
    method.fit([_batch(train, ["A"] * 10, ["000"] * 10, ["01"] * 10)])
    test = np.concatenate([normal, defective])
    scores, maps = method.predict(_batch(test, ["A"] * 10, ["000"] * 10, ["01"] * 10))
    assert scores[5:].min() > scores[:5].max()
    for anomaly_map in maps[5:]:
        row, column = np.unravel_index(np.argmax(anomaly_map), anomaly_map.shape)
        assert 9 <= row <= 13 and 19 <= column <= 23


def test_gaussian_keeps_statistics_at_stats_size_and_returns_full_size_maps() -> None:
    rng = np.random.default_rng(6)
    train = rng.integers(0, 256, size=(4, 3, 64, 48), dtype=np.uint8)
    method = baselines.create("gaussian", stats_size=32, blur_sigma=0.0)
    method.fit([_batch(train, ["A"] * 4, [None] * 4, [None] * 4)])
    assert {tuple(value.shape) for value in method.state_dict().values()} == {(3, 32, 24)}
    scores, maps = method.predict(_batch(train[:2], ["A"] * 2, [None] * 2, [None] * 2))
    assert maps.shape == (2, 64, 48) and scores.shape == (2,)
    # area downsampling = mean over 2x2 blocks
    pooled = train.astype(np.float64).reshape(4, 3, 32, 2, 24, 2).mean(axis=(3, 5))
    state = method.state_dict()
    mean = next(value for name, value in state.items() if name.startswith("mean/"))
    np.testing.assert_allclose(mean.numpy(), pooled.mean(axis=0) / 255.0, rtol=1e-5, atol=1e-6)


def test_gaussian_state_dict_round_trip_and_errors() -> None:
    rng = np.random.default_rng(7)
    train = rng.integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8)
    batch = _batch(train, ["A", "A", "B", "B"], ["000", "030", "000", None], ["01", "01", "02", None])
    method = baselines.create("gaussian")
    with pytest.raises(RuntimeError, match="before fit"):
        method.predict(batch)
    method.fit([batch])
    state = method.state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    restored = baselines.create("gaussian")
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.predict(batch)[1], method.predict(batch)[1])
    with pytest.raises(ValueError, match="unexpected state entry"):
        restored.load_state_dict({"variance/x": torch.zeros(1)})
    with pytest.raises(ValueError, match="no training images"):
        baselines.create("gaussian").fit([])
    with pytest.raises(ValueError, match="differs from the training images"):
        method.predict(_batch(np.zeros((1, 3, 6, 6), dtype=np.uint8), ["A"], ["000"], ["01"]))


def test_gaussian_config_validation() -> None:
    for bad in ({"stats_size": 4}, {"min_std": -1.0}, {"blur_sigma": -0.5}, {"top_fraction": 2.0}):
        with pytest.raises(ValueError):
            GaussianConfig(**bad)


@pytest.mark.parametrize("name", [name for name in baselines.available()
                                  if "device" in {field.name for field in dataclasses.fields(baselines.config_class(name))}])
def test_every_method_with_a_device_refuses_cuda_without_it_and_picks_cpu_for_auto(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=rf"^{name}: device=cuda but CUDA is not available here$"):
        baselines.create(name, device="cuda")
    assert baselines.create(name, device="auto").device == torch.device("cpu")
