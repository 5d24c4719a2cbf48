"""BTF: the pieces against hand computations (3D-ADS's score reweighting, Real3D-AD's strided
sampling and nearest-point score spreading, the RANSAC plane), then both pipelines end to end on
synthetic clouds and xyz maps with bulges and sinks (against ``random``), a safetensors round
trip, determinism and one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.spatial.distance import cdist
from sklearn.metrics import average_precision_score, roc_auc_score

import baselines
from baselines.btf import BTF, BTFConfig, blur_map, fit_plane, remove_background_plane, reweighted_score, strided
from clouds import blob_cloud, point_batch, table_xyz, xyz_batch

SMALL_POINTS = {"train_stride": 10, "test_stride": 10}
SMALL_XYZ = {"image_size": 64, "feature_grid": 14, "voxel_size": 0.02, "plane_iterations": 50}


def test_strided_sampling_is_real3d_ads() -> None:
    assert strided(1234, 100).tolist() == [i * 100 for i in range(12)]  # range(int(N / ratio)) * ratio
    assert strided(99, 100).tolist() == [0]  # at least one point, where the official code would have none
    assert strided(0, 100).tolist() == []


def test_reweighted_score_matches_3d_ads_formula_by_hand() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(40, 33)).astype(np.float32)
    queries = rng.normal(size=(12, 33)).astype(np.float32)
    distances_all = cdist(queries, bank)
    distances, nearest = distances_all.min(axis=1), distances_all.argmin(axis=1)
    score = reweighted_score(torch.from_numpy(queries), torch.from_numpy(distances).float(), torch.from_numpy(nearest), torch.from_numpy(bank), 3)
    worst = distances.argmax()
    s_star = distances[worst]
    match = bank[nearest[worst]]
    support = np.argsort(np.linalg.norm(bank - match, axis=1))[1:3]  # topk(3) without the match itself
    spread = np.linalg.norm(queries[worst] - bank[support], axis=1)
    expected = (1 - math.exp(s_star / math.sqrt(33)) / np.exp(spread / math.sqrt(33)).sum()) * s_star
    assert score == pytest.approx(expected, rel=1e-5)
    lonely = reweighted_score(torch.from_numpy(queries), torch.from_numpy(distances).float(), torch.zeros(12, dtype=torch.long), torch.from_numpy(bank[:1]), 3)
    assert lonely == pytest.approx(float(distances.max()), rel=1e-6)  # a one-entry bank: nothing to reweight by


def test_points_take_the_score_of_their_nearest_scored_point() -> None:
    cloud, _ = blob_cloud(500, seed=1)
    cloud = cloud.astype(np.float64)
    query = strided(len(cloud), 7)
    distances = np.random.default_rng(2).random(len(query))
    spread = BTF._spread(cloud, query, distances)
    brute = distances[cdist(cloud, cloud[query]).argmin(axis=1)]
    np.testing.assert_array_equal(spread, brute.astype(np.float32))
    np.testing.assert_array_equal(spread[query], distances.astype(np.float32))


def test_ransac_plane_ignores_the_object_and_background_removal_keeps_it() -> None:
    xyz, _ = table_xyz(64, seed=3)
    rng = np.random.default_rng(0)
    border = np.concatenate([xyz[:10].reshape(-1, 3), xyz[-10:].reshape(-1, 3)]).astype(np.float64)
    border = border[np.all(border != 0, axis=1)]
    noisy = np.concatenate([border, border[:20] + [0, 0, -0.05]])  # 20 stray points 5 cm off the table
    plane = fit_plane(noisy, 0.004, 200, 50, rng)
    true_normal = np.array([-0.05, 0.03, 1.0]) / np.linalg.norm([-0.05, 0.03, 1.0])  # z = 0.5 + 0.05 x - 0.03 y
    assert abs(abs(plane[:3] @ true_normal) - 1) < 1e-3
    cleaned = remove_background_plane(xyz.astype(np.float64), BTFConfig(**SMALL_XYZ), np.random.default_rng(0))
    kept = np.all(cleaned != 0, axis=-1)
    v, u = np.mgrid[0:64, 0:64]
    inside_dome = ((u + 0.5 - 32) ** 2 + (v + 0.5 - 32) ** 2) < (0.7 * 0.05 / 0.2 * 64) ** 2  # >= 7.6 mm above the table
    assert kept[inside_dome].mean() > 0.95 and kept[~inside_dome].mean() < 0.05
    with pytest.raises(ValueError, match="at least 3 border points"):
        fit_plane(np.zeros((2, 3)), 0.004, 10, 50, rng)


def test_blur_modes() -> None:
    yy, xx = np.mgrid[0:48, 0:48]
    score_map = (2.0 * np.exp(-((yy - 20) ** 2 + (xx - 27) ** 2) / (2 * 5.0**2))).astype(np.float32)
    pil = blur_map(score_map, "pil", 4.0)
    gaussian = blur_map(score_map, "gaussian", 4.0)
    assert pil.shape == (48, 48) and np.unravel_index(pil.argmax(), pil.shape) == (20, 27)
    assert np.abs(pil - gaussian).max() < 0.03 * 2.0  # PIL's box-approximated Gaussian, on 8 bits
    steps = pil / (score_map.max() / 255.0)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # 3D-ADS's 8-bit round trip: multiples of max/255
    constant = np.full((16, 16), 0.7, dtype=np.float32)
    np.testing.assert_allclose(blur_map(constant, "pil", 4.0), constant, atol=1e-6)
    assert blur_map(np.zeros((8, 8), np.float32), "pil", 4.0).max() == 0.0
    np.testing.assert_array_equal(blur_map(score_map, "none", 4.0), score_map)


@pytest.fixture(scope="module")
def point_clouds() -> dict[str, list]:
    train = [blob_cloud(3000, seed=seed)[0] for seed in range(3)]
    test = [blob_cloud(3000, seed=10 + k, defect=defect) for k, defect in enumerate([None, None, None, "bulge", "sink", "bulge", "sink"])]
    return {"train": train, "test": [cloud for cloud, _ in test], "labels": [labels for _, labels in test]}


def test_btf_on_point_clouds_beats_random(point_clouds: dict[str, list]) -> None:
    method = baselines.create("btf", **SMALL_POINTS)
    method.fit([point_batch(point_clouds["train"][:2]), point_batch(point_clouds["train"][2:], prefix="d")])
    assert method.mode == "points" and method.memory_bank.shape == (3 * 300, 33)  # coreset_ratio 1: every strided point
    scores, point_scores = method.predict(point_batch(point_clouds["test"], prefix="t"))
    assert scores.dtype == np.float32 and scores.shape == (7,)
    assert [len(s) for s in point_scores] == [3000] * 7 and all(s.dtype == np.float32 for s in point_scores)
    labels = np.concatenate(point_clouds["labels"])
    flat = np.concatenate(point_scores)
    assert roc_auc_score(labels, flat) > 0.85 and average_precision_score(labels, flat) > 5 * labels.mean()
    assert roc_auc_score([0, 0, 0, 1, 1, 1, 1], scores) == 1.0
    # normal clouds score below defective ones point by point too: the defect patches stand out
    for cloud_scores, cloud_labels in zip(point_scores[3:], point_clouds["labels"][3:]):
        assert cloud_scores[cloud_labels == 1].mean() > 2 * cloud_scores[cloud_labels == 0].mean()


def test_btf_state_round_trips_through_safetensors_and_is_deterministic(point_clouds: dict[str, list], tmp_path) -> None:
    first = baselines.create("btf", **SMALL_POINTS, coreset_ratio=0.5)
    first.fit([point_batch(point_clouds["train"])])
    second = baselines.create("btf", **SMALL_POINTS, coreset_ratio=0.5)
    second.fit([point_batch(point_clouds["train"][:1]), point_batch(point_clouds["train"][1:], prefix="c1")])
    torch.testing.assert_close(first.memory_bank, second.memory_bank, rtol=0, atol=0)  # batching does not matter
    assert first.memory_bank.shape == (450, 33)
    save_file(first.state_dict(), tmp_path / "state.safetensors")
    restored = baselines.create("btf", **SMALL_POINTS, coreset_ratio=0.5)
    restored.load_state_dict(load_file(tmp_path / "state.safetensors"))
    batch = point_batch(point_clouds["test"][3:5], prefix="t")
    expected, again = first.predict(batch), restored.predict(batch)
    np.testing.assert_array_equal(expected[0], again[0])
    for a, b in zip(expected[1], again[1]):
        np.testing.assert_array_equal(a, b)


def test_btf_on_xyz_maps_finds_bulges_and_sinks_and_returns_image_sized_maps() -> None:
    train = [table_xyz(64, seed=seed)[0] for seed in range(4)]
    cases = [table_xyz(64, seed=20 + k, defect=defect) for k, defect in enumerate([None, None, "bulge", "sink", "bulge", "sink"])]
    method = baselines.create("btf", **SMALL_XYZ)
    method.fit([xyz_batch(train)])
    assert method.mode == "xyz" and method.memory_bank.shape == (int(0.1 * 4 * 14 * 14), 33)
    scores, maps = method.predict(xyz_batch([xyz for xyz, _ in cases], prefix="t", image_size=80))
    assert maps.shape == (6, 80, 80) and maps.dtype == np.float32
    masks = np.stack([mask for _, mask in cases])
    resized = torch.nn.functional.interpolate(torch.from_numpy(masks[:, None].astype(np.float32)), size=(80, 80), mode="nearest")[:, 0].numpy() > 0.5
    assert roc_auc_score(resized.ravel(), maps.ravel()) > 0.8
    assert roc_auc_score([0, 0, 1, 1, 1, 1], scores) >= 0.75
    channels_first = method.predict(xyz_batch([xyz.transpose(2, 0, 1) for xyz, _ in cases[:2]], prefix="t", image_size=80))
    np.testing.assert_allclose(channels_first[1], maps[:2], rtol=1e-6)


def test_btf_refuses_bad_use_in_one_line(point_clouds: dict[str, list]) -> None:
    method = baselines.create("btf", **SMALL_POINTS)
    with pytest.raises(RuntimeError, match="before fit"):
        method.predict(point_batch(point_clouds["test"][:1]))
    with pytest.raises(ValueError, match="no training samples"):
        method.fit([])
    with pytest.raises(ValueError, match=r"reads point clouds \(Batch.points\) or organised xyz maps"):
        method.fit([xyz_batch([table_xyz(32, seed=0)[0]]).__class__(["a"], torch.zeros((1, 3, 4, 4), dtype=torch.uint8), ["c"], [None], [None])])
    method.fit([point_batch(point_clouds["train"][:1])])
    with pytest.raises(ValueError, match="fitted on points but the batch has xyz"):
        method.predict(xyz_batch([table_xyz(32, seed=0)[0]]))
    with pytest.raises(ValueError, match="xyz maps must be"):
        BTF().fit([xyz_batch([table_xyz(32, seed=0)[0]]).__class__(["a"], torch.zeros((1, 3, 1, 1), dtype=torch.uint8), ["c"], [None], [None],
                                                                    modalities={"xyz": torch.zeros(1, 5, 5)})])
    with pytest.raises(ValueError, match="state lacks"):
        method.load_state_dict({"memory_bank": torch.zeros(3, 33)})
    with pytest.raises(ValueError, match=r"must be \(M, 33\)"):
        method.load_state_dict({"memory_bank": torch.zeros(3, 4), "mode": torch.tensor(0)})


@pytest.mark.parametrize(("options", "message"), [
    ({"voxel_size": 0.0}, "voxel_size must be positive"),
    ({"coreset_ratio": 0.0}, r"coreset_ratio must be in \(0, 1\]"),
    ({"blur": "box"}, "blur must be one of"),
    ({"normal_orientation": "up"}, "normal_orientation must be"),
    ({"feature_max_nn": 1}, "feature_max_nn must be at least 2"),
    ({"test_stride": 0}, "test_stride must be positive"),
    ({"image_size": 20, "feature_grid": 28}, "must exceed feature_grid"),
])
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BTFConfig(**options)
    assert baselines.parse_method_args("btf", ["voxel_size=0.25", "blur=gaussian"]) == {"voxel_size": 0.25, "blur": "gaussian"}


def test_btf_rgb_concatenates_rgb_and_fpfh_patches_and_finds_colour_defects(tmp_path) -> None:
    from textures import textures

    options = {**SMALL_XYZ, "backbone": "efficientnet_lite0"}
    train_images, _ = textures(4, 0, size=64, square=12)
    good_images, _ = textures(3, 1, size=64, square=12)
    bad_images, masks = textures(3, 2, defect=True, size=64, square=12)  # colour defects on normal geometry
    geometry = [table_xyz(64, seed=seed)[0] for seed in range(10)]

    def batch(images: torch.Tensor, maps: list[np.ndarray], prefix: str):
        made = xyz_batch(maps, prefix=prefix)
        made.images = images
        return made

    method = baselines.create("btf-rgb", **options)
    method.fit([batch(train_images, geometry[:4], "r")])
    assert method.memory_bank.shape == (int(0.1 * 4 * 14 * 14), 152 + 33)  # Lite0 stages 40 + 112, then FPFH
    test = batch(torch.cat([good_images, bad_images]), geometry[4:], "t")
    features = method._batch_features(test, "xyz", [m for m in geometry[4:]], 1)
    plain = baselines.create("btf", **SMALL_XYZ)
    np.testing.assert_array_equal(features[0][0][:, 152:].numpy(), plain._features("xyz", geometry[4], "t0", 1)[0].float().numpy())
    torch.testing.assert_close(features[1][0][:, :152], method.rgb_patches(test.images[1:2])[0])
    scores, maps = method.predict(test)
    assert maps.shape == (6, 64, 64)
    assert roc_auc_score([0, 0, 0, 1, 1, 1], scores) == 1.0
    assert roc_auc_score(masks.ravel(), maps[3:].ravel()) > 0.8
    save_file(method.state_dict(), tmp_path / "state.safetensors")
    restored = baselines.create("btf-rgb", **options)
    restored.load_state_dict(load_file(tmp_path / "state.safetensors"))
    np.testing.assert_array_equal(restored.predict(test)[0], scores)
    with pytest.raises(ValueError, match="reads RGB images with organised xyz maps"):
        method.predict(point_batch([blob_cloud(100, seed=0)[0]]))
    with pytest.raises(ValueError, match=r"must be \(M, 185\)"):
        restored.load_state_dict({"memory_bank": torch.zeros(3, 33), "mode": torch.tensor(1), "backbone": torch.tensor(1)})


def test_btf_runs_on_the_synthetic_real3d_ad_and_beats_random(tmp_path) -> None:
    import json

    from m2ad import shard, synth
    from m2ad.run import RunConfig, run

    synth.generate(tmp_path / "tree", dataset="real3d-ad", categories=["candybar"], normal_specimens=6, ng_specimens=4, resolution=400,
                   seed=0, workers=1, progress=False)
    shard.shard_tree(tmp_path / "tree", tmp_path / "shards", progress=False, workers=1)
    means = {}
    for method, options in (("btf", {"train_stride": 5, "test_stride": 5}), ("random", {})):
        result = run(RunConfig(protocol="real3d-ad", methods=(method,), data=tmp_path / "shards", out=tmp_path / method, executor="local",
                               method_args={method: options}), progress=False)
        assert result.ok, result.failed
        means[method] = json.loads((tmp_path / method / "summary.json").read_text())["methods"][method]["mean"]
    assert means["btf"]["point_auroc"] > 0.85 and means["btf"]["point_auroc"] > means["random"]["point_auroc"] + 0.3
    assert means["btf"]["point_ap"] > 3 * means["random"]["point_ap"]


def test_largest_cluster_matches_scikit_learn_dbscan() -> None:
    from sklearn.cluster import DBSCAN

    from baselines.btf import largest_cluster

    rng = np.random.default_rng(5)
    big = rng.normal(size=(400, 3)) * 0.003
    small = rng.normal(size=(120, 3)) * 0.003 + [0.2, 0, 0]
    stray = rng.uniform(-0.5, 0.5, size=(30, 3)) + [0, 0.8, 0]
    points = np.concatenate([big, small, stray])
    ours = largest_cluster(points, eps=0.006, min_points=10)
    labels = DBSCAN(eps=0.006, min_samples=10).fit(points).labels_
    values, counts = np.unique(labels, return_counts=True)
    np.testing.assert_array_equal(ours, labels == values[np.argmax(counts)])
    assert ours[:400].mean() > 0.9 and not ours[400:].any()
    assert largest_cluster(stray, eps=0.006, min_points=10).all()  # all noise: noise is the largest group, kept (as 3D-ADS)
    assert largest_cluster(np.zeros((0, 3)), 0.006, 10).shape == (0,)
