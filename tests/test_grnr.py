"""GRNR: the supports and the closed-form regression against brute-force references, the demo's
support-selection bug, determinism, what the global regularisation changes, a zero-shot run
without a fit, and detection on the striped textures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import roc_auc_score

import baselines
from baselines.grnr import GRNR, GRNRConfig, global_support, neighbour_supports, regression_residual
from m2ad import predictions
from m2ad.run import RunConfig, run
from m2ad.shard import shard_tree
from m2ad.synth import generate
from textures import method_batch, textures

SMALL = {"backbone": "efficientnet_lite0", "image_size": 64}


def test_neighbour_supports_are_the_reflected_3x3_window_without_its_centre() -> None:
    features = torch.randn(5, 4, 6)
    supports = neighbour_supports(features)
    assert supports.shape == (24, 8, 5)

    def reflect(index: int, size: int) -> int:
        return -index if index < 0 else 2 * (size - 1) - index if index >= size else index

    for y in range(4):
        for x in range(6):
            expected = [features[:, reflect(y + dy, 4), reflect(x + dx, 6)] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
            torch.testing.assert_close(supports[y * 6 + x], torch.stack(expected), rtol=0, atol=0)


def test_global_support_typical_picks_the_smallest_mean_distances_and_first_is_raster_order() -> None:
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(30, 3, generator=generator)
    queries[:5] += 10.0  # five atypical features at the top of the image
    count = 6
    distances = np.linalg.norm(queries.numpy()[:, None] - queries.numpy()[None], axis=-1)
    mean_to_others = distances.sum(1) / 29
    expected = queries.numpy()[np.argsort(mean_to_others, kind="stable")[:count]]
    np.testing.assert_allclose(global_support(queries, count, "typical").numpy(), expected, rtol=1e-6)
    assert not (np.argsort(mean_to_others)[:count] < 5).any()
    torch.testing.assert_close(global_support(queries, count, "first"), queries[:count])  # the demo's result: the atypical ones too
    assert global_support(queries, 100, "typical").shape == (30, 3)


def test_the_demo_ranking_is_degenerate() -> None:
    """demo.py:113-116: inf on the diagonal makes every mean inf, so argsort returns 0..K-1."""
    queries = np.random.default_rng(1).normal(size=(50, 4))
    queries[:10] += 8.0
    distances = np.linalg.norm(queries[:, None] - queries[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    demo_mean = np.mean(distances, axis=1)
    assert np.isinf(demo_mean).all()
    np.testing.assert_array_equal(np.argsort(demo_mean)[:40], np.arange(40))


@pytest.mark.parametrize("lam", [0.0, 0.5, 5.0])
def test_regression_residual_matches_a_stacked_least_squares_reference(lam: float) -> None:
    """min_w ||q - w S||^2 + lam sum_k ||g_k - w S||^2 is the least squares of the stacked system
    [q; sqrt(lam) g_1; ...] ~ w [S; sqrt(lam) S; ...], solved here by numpy's lstsq."""
    generator = torch.Generator().manual_seed(2)
    queries, supports, global_features = torch.randn(7, 12, generator=generator), torch.randn(7, 8, 12, generator=generator), torch.randn(4, 12, generator=generator)
    residual = regression_residual(queries, supports, global_features, lam, ridge=0.0)
    for index in range(7):
        support = supports[index].double().numpy()
        targets = [queries[index].double().numpy()] + [np.sqrt(lam) * g for g in global_features.double().numpy()]
        designs = [support] + [np.sqrt(lam) * support] * len(global_features)
        weights, *_ = np.linalg.lstsq(np.concatenate(designs, axis=1).T, np.concatenate(targets), rcond=None)
        expected = np.linalg.norm(queries[index].double().numpy() - weights @ support)
        assert residual[index].item() == pytest.approx(expected, rel=1e-5)


def test_a_flat_region_has_a_finite_residual_thanks_to_the_ridge() -> None:
    features = torch.ones(4, 6, 6)
    features[:, 3, 3] = 5.0
    residual = regression_residual(features.reshape(4, -1).T, neighbour_supports(features), torch.ones(2, 4), 5.0, ridge=1e-6)
    assert torch.isfinite(residual).all()
    assert residual.argmax().item() == 3 * 6 + 3


def test_predict_shapes_determinism_and_batch_independence() -> None:
    images, _ = textures(4, 0, defect=True, size=56, square=14)
    method = baselines.create("grnr", **SMALL)
    scores, maps = method.predict(method_batch(images))
    assert scores.shape == (4,) and maps.shape == (4, 56, 56) and scores.dtype == maps.dtype == np.float32
    again_scores, again_maps = baselines.create("grnr", **SMALL).predict(method_batch(images))
    np.testing.assert_array_equal(again_scores, scores)
    np.testing.assert_array_equal(again_maps, maps)
    one_scores, one_maps = method.predict(method_batch(images[2:3], prefix="x"))
    np.testing.assert_allclose(one_maps[0], maps[2], rtol=1e-5, atol=1e-7)  # each image is scored from itself only
    assert GRNR.card.needs_fit is False and GRNR.card.settings == ("zero-shot",) and GRNR.card.reimplemented_from


def test_the_global_regularisation_and_the_demo_preset_change_the_output() -> None:
    images, _ = textures(2, 3, defect=True, size=56, square=14)
    batch = method_batch(images)
    _, paper = baselines.create("grnr", **SMALL).predict(batch)
    _, plain = baselines.create("grnr", **SMALL, lam=0.0).predict(batch)
    _, demo = baselines.create("grnr", **SMALL, preset="official-demo").predict(batch)
    assert np.abs(paper - plain).max() > 1e-3 * np.abs(paper).max()
    assert np.abs(paper - demo).max() > 1e-3 * np.abs(paper).max()
    assert GRNRConfig(preset="official-demo").global_selection == "first" and GRNRConfig().global_selection == "typical"


def test_bad_options_are_refused_in_one_line() -> None:
    for kwargs, message in (({"preset": "x"}, "unknown preset"), ({"fusion": "max"}, "fusion"), ({"pool_size": 2}, "odd"),
                            ({"lam": -1.0}, ">= 0"), ({"global_selection": "all"}, "global_selection")):
        with pytest.raises(ValueError, match=message):
            GRNRConfig(**kwargs)


def test_grnr_finds_the_texture_defects() -> None:
    good, _ = textures(4, 10, size=64, square=12)
    bad, masks = textures(4, 11, defect=True, size=64, square=12)
    scores, maps = baselines.create("grnr", backbone="efficientnet_lite0", image_size=96).predict(method_batch(torch.cat([good, bad])))
    labels = np.r_[np.zeros(4), np.ones(4)]
    assert roc_auc_score(labels, scores) >= 0.95
    pixel_labels = np.concatenate([np.zeros((4, 64, 64), bool), masks]).ravel()
    assert roc_auc_score(pixel_labels, maps.ravel()) >= 0.9


@pytest.mark.slow
def test_a_zero_shot_run_needs_no_fit_and_beats_chance(tmp_path: Path) -> None:
    tree = generate(tmp_path / "tree", categories=("Cube",), normal_specimens=2, ng_specimens=1, resolution=32, workers=1, progress=False)
    shard_tree(tree, tmp_path / "shards", progress=False)
    config = RunConfig(protocol="invariant", data=tmp_path / "shards", out=tmp_path / "run", executor="local", methods=("grnr", "random"),
                       setting="zero-shot", method_args={"grnr": {"backbone": "efficientnet_lite0", "image_size": 64}})
    result = run(config, progress=False)
    assert not list((result.run_dir / "fits").glob("*/state.safetensors"))
    values = {(row["method"], row["metric"]): row["value"] for row in pl.read_parquet(result.run_dir / "metrics.parquet").iter_rows(named=True)}
    assert values[("grnr", "pixel_auroc")] > values[("random", "pixel_auroc")] + 0.1
    header = predictions.read(result.run_dir / "cells" / "grnr__Cube__seed0" / "predictions.parquet").info().metadata
    assert header["reimplemented_from"] == GRNR.card.reimplemented_from


def test_the_leaderboard_note_marks_a_reimplementation() -> None:
    from leaderboard.submit import _with_reimplementation

    assert _with_reimplementation(None, None) is None and _with_reimplementation("mine", None) == "mine"
    assert _with_reimplementation(None, "arXiv 1") == "re-implementation from arXiv 1, no official code"
    assert _with_reimplementation("mine", "arXiv 1") == "re-implementation from arXiv 1, no official code; mine"
