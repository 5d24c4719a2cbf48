"""PatchCore: greedy coreset and chunked nearest neighbours against brute force, the image-score
reweighting by hand, memory-bounded fitting, an overfit test on obvious synthetic defects, and
real EfficientNet-Lite0 features against ``random`` on the synthetic M2AD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score

import baselines
from baselines import patchcore
from baselines.base import Batch
from baselines.patchcore import PatchCore, PatchCoreConfig, greedy_coreset, nearest_neighbors
from textures import method_batch, textures






@pytest.mark.parametrize("count", [1, 7, 40])
def test_greedy_coreset_matches_brute_force_k_center(count: int) -> None:
    rng = np.random.default_rng(count)
    points = rng.normal(size=(120, 5)) * rng.uniform(0.1, 3, size=5)  # anisotropic cloud
    points[:10] += 8.0  # a far cluster the coreset must reach
    start = int(torch.randint(120, (1,), generator=torch.Generator().manual_seed(3)))
    chosen = [start]
    nearest = np.linalg.norm(points - points[start], axis=1)
    while len(chosen) < count:
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(points - points[chosen[-1]], axis=1))
    result = greedy_coreset(torch.from_numpy(points).float(), count, projection_dim=0, generator=torch.Generator().manual_seed(3))
    assert result.tolist() == chosen
    assert len(set(result.tolist())) == count
    if count >= 2:
        assert any(index < 10 for index in result.tolist())
    assert greedy_coreset(torch.zeros(5, 3), 9).tolist() == [0, 1, 2, 3, 4]


def test_projected_coreset_still_covers_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 256)) * 10
    points = np.concatenate([center + rng.normal(size=(50, 256)) * 0.1 for center in centers])
    chosen = greedy_coreset(torch.from_numpy(points).float(), 6, projection_dim=32, generator=torch.Generator().manual_seed(0))
    assert sorted(index // 50 for index in chosen.tolist()) == list(range(6))


def test_chunked_nearest_neighbors_match_scipy() -> None:
    rng = np.random.default_rng(1)
    queries, bank = rng.normal(size=(53, 7)), rng.normal(size=(29, 7))
    distances, indices = nearest_neighbors(torch.from_numpy(queries).float(), torch.from_numpy(bank).float(), query_chunk=8, bank_chunk=5)
    reference = cdist(queries, bank)
    np.testing.assert_array_equal(indices.numpy(), reference.argmin(axis=1))
    np.testing.assert_allclose(distances.numpy(), reference.min(axis=1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        nearest_neighbors(torch.zeros(2, 7), torch.zeros(0, 7))


def test_image_score_reweighting_by_hand() -> None:
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(30, 4)).astype(np.float32)
    features = rng.normal(size=(2, 6, 4)).astype(np.float32)
    method = PatchCore(PatchCoreConfig(backbone="efficientnet_lite0", num_neighbors=5))
    method.memory_bank = torch.from_numpy(bank)
    distances, indices = nearest_neighbors(torch.from_numpy(features.reshape(-1, 4)), method.memory_bank)
    scores = method._image_scores(torch.from_numpy(features), distances.reshape(2, 6), indices.reshape(2, 6)).numpy()
    for image in range(2):
        patch_distances = cdist(features[image], bank)
        worst = patch_distances.min(axis=1).argmax()
        s_star = patch_distances[worst].min()
        match = bank[patch_distances[worst].argmin()]
        support = np.argsort(np.linalg.norm(bank - match, axis=1))[:5]
        support_distances = np.linalg.norm(bank[support] - features[image, worst], axis=1)
        weight = 1 - np.exp(s_star) / np.exp(support_distances).sum()
        assert scores[image] == pytest.approx(weight * s_star, rel=1e-4)


def test_memory_bounded_fit_keeps_the_coreset_size_and_state_round_trips() -> None:
    images, _ = textures(6, 0, size=64, square=12)
    batches = [method_batch(images[i : i + 2]) for i in range(0, 6, 2)]
    bounded = PatchCore(PatchCoreConfig(backbone="efficientnet_lite0", image_size=64, coreset_ratio=0.25, max_pool_patches=200))
    bounded.fit(batches)
    patches_per_image = (64 // 8) ** 2
    assert bounded.memory_bank.shape == (math.ceil(0.25 * 6 * patches_per_image), 152)  # Lite0: 40 + 112 channels
    everything = PatchCore(PatchCoreConfig(backbone="efficientnet_lite0", image_size=64, coreset_ratio=1.0))
    everything.fit(batches)
    assert everything.memory_bank.shape == (6 * patches_per_image, 152)
    # every bounded bank row is a real training patch
    exact = torch.cdist(bounded.memory_bank, everything.memory_bank, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.min(dim=1).values.max() < 1e-4
    restored = PatchCore(PatchCoreConfig(backbone="efficientnet_lite0", image_size=64))
    restored.load_state_dict(bounded.state_dict())
    first, second = bounded.predict(batches[0]), restored.predict(batches[0])
    np.testing.assert_allclose(first[0], second[0], rtol=1e-5)
    np.testing.assert_allclose(first[1], second[1], rtol=1e-5)


def test_auto_backbone_falls_back_to_lite0_offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("M2AD_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert PatchCoreConfig().backbone == "efficientnet_lite0"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "wide_resnet50_2-95faca4d.pth").write_bytes(b"x")
    assert patchcore.choose_backbone("auto") == "wide_resnet50_2"
    assert PatchCoreConfig(backbone="efficientnet_lite0").backbone == "efficientnet_lite0"
    with pytest.raises(ValueError, match="backbone must be"):
        PatchCoreConfig(backbone="resnet18")
    with pytest.raises(RuntimeError, match="before fit"):
        PatchCore(PatchCoreConfig(backbone="efficientnet_lite0")).predict(method_batch(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)))


def test_overfit_detects_obvious_defects() -> None:
    train, _ = textures(8, 0, size=64, square=12)
    good, _ = textures(6, 1, size=64, square=12)
    bad, masks = textures(6, 2, defect=True, size=64, square=12)
    method = baselines.create("patchcore", backbone="efficientnet_lite0", image_size=64)
    method.fit([method_batch(train[:4]), method_batch(train[4:])])
    good_scores, good_maps = method.predict(method_batch(good))
    bad_scores, bad_maps = method.predict(method_batch(bad, prefix="b"))
    assert bad_maps.shape == (6, 64, 64) and bad_maps.dtype == np.float32 and good_scores.dtype == np.float32
    assert roc_auc_score([0] * 6 + [1] * 6, np.r_[good_scores, bad_scores]) == 1.0
    assert roc_auc_score(masks.ravel(), bad_maps.ravel()) > 0.95


@pytest.mark.slow
def test_real_lite0_patchcore_beats_random_on_synthetic_m2ad(tmp_path) -> None:
    from m2ad import data, shard, synth

    synth.generate(tmp_path / "tree", categories=["Cube"], normal_specimens=3, ng_specimens=2, resolution=128, seed=0, progress=False, workers=1)
    shard.shard_tree(tmp_path / "tree", tmp_path / "shards", progress=False, workers=1)
    manifest = data.load_manifest(tmp_path / "shards").sort("sample_id")
    train = manifest.filter(manifest["split"] == "train")
    test = manifest.filter(manifest["split"] == "test").gather_every(4)  # every 4th image: 120 of 480

    def batches(frame) -> list[Batch]:
        return [
            Batch(b.sample_ids, b.images, b.frame["category"].to_list(), b.frame["view"].to_list(), b.frame["illumination"].to_list())
            for b in data.iter_batches(tmp_path / "shards", frame, batch_size=32)
        ]

    labels = test["label"].to_numpy()
    masks = data.read_masks(tmp_path / "shards", test)
    assert 0 < labels.sum() < len(labels)
    results = {}
    for name, options in (("patchcore", {"backbone": "efficientnet_lite0", "image_size": 128}), ("random", {"seed": 0})):
        method = baselines.create(name, **options)
        method.fit(batches(train))
        scores, maps = zip(*(method.predict(batch) for batch in batches(test)), strict=True)
        results[name] = (roc_auc_score(labels, np.concatenate(scores)), roc_auc_score(masks.ravel(), np.concatenate(maps).ravel()))
    print(f"image / pixel AUROC: patchcore {results['patchcore']}, random {results['random']}")
    assert results["patchcore"][0] > 0.6 and results["patchcore"][0] > results["random"][0] + 0.05
    assert results["patchcore"][1] > 0.75 and results["patchcore"][1] > results["random"][1] + 0.2
