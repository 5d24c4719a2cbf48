"""PCA normals, SPFH and FPFH against a brute-force implementation written here from the
definitions (plain loops over a tiny cloud, ``math`` only), and on hand cases: a plane, a
sphere, rigid motions, isolated points, duplicates and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baselines.features3d import BINS, FEATURE_DIM, estimate_normals, fpfh, pair_features


def _neighbours(points: np.ndarray, index: int, radius: float, max_nn: int) -> list[tuple[float, int]]:
    """(distance, index) of the max_nn nearest points within radius, nearest first, by brute force."""
    found = sorted((math.dist(points[index], points[other]), other) for other in range(len(points)))
    return [(distance, other) for distance, other in found[:max_nn] if distance <= radius]


def _pair(p1, n1, p2, n2) -> tuple[float, float, float]:
    """Darboux-frame pair features of Rusu et al., with Open3D's choice of the source point."""
    d = [b - a for a, b in zip(p1, p2)]
    length = math.sqrt(sum(x * x for x in d))
    if length == 0.0:
        return 0.0, 0.0, 0.0
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    cross = lambda a, b: [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    a1, a2 = dot(n1, d) / length, dot(n2, d) / length
    if math.acos(min(1.0, abs(a1))) > math.acos(min(1.0, abs(a2))):
        n1, n2, d, phi = n2, n1, [-x for x in d], -a2
    else:
        phi = a1
    v = cross(d, n1)
    v_length = math.sqrt(dot(v, v))
    if v_length == 0.0:
        return 0.0, 0.0, 0.0
    v = [x / v_length for x in v]
    w = cross(n1, v)
    return math.atan2(dot(w, n2), dot(n1, n2)), dot(v, n2), phi


def _bin(value: float, low: float, high: float) -> int:
    return min(BINS - 1, max(0, math.floor(BINS * (value - low) / (high - low))))


def brute_force_fpfh(points: np.ndarray, normals: np.ndarray, radius: float, max_nn: int, power: float = 2.0) -> np.ndarray:
    count = len(points)
    spfh = [[0.0] * FEATURE_DIM for _ in range(count)]
    neighbourhoods = [_neighbours(points, i, radius, max_nn)[1:] for i in range(count)]  # the point itself first, skipped
    for i in range(count):
        for _, j in neighbourhoods[i]:
            theta, alpha, phi = _pair(points[i], normals[i], points[j], normals[j])
            for block, (value, low, high) in enumerate(((theta, -math.pi, math.pi), (alpha, -1, 1), (phi, -1, 1))):
                spfh[i][block * BINS + _bin(value, low, high)] += 100.0 / len(neighbourhoods[i])
    result = np.zeros((count, FEATURE_DIM))
    for i in range(count):
        if not neighbourhoods[i]:
            continue
        total = [0.0] * FEATURE_DIM
        for distance, j in neighbourhoods[i]:
            if distance == 0.0:
                continue
            for b in range(FEATURE_DIM):
                total[b] += spfh[j][b] / distance**power
        for b in range(FEATURE_DIM):
            block_sum = sum(total[(b // BINS) * BINS : (b // BINS + 1) * BINS])
            result[i, b] = (total[b] * 100.0 / block_sum if block_sum else 0.0) + spfh[i][b]
    return result


def _bumpy_surface(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, size=(count, 2))
    z = 0.3 * np.sin(2.5 * xy[:, 0]) * np.cos(1.7 * xy[:, 1]) + 0.01 * rng.normal(size=count)
    return np.column_stack([xy, z])


@pytest.mark.parametrize(("radius", "max_nn", "power"), [(0.5, 12, 2.0), (0.35, 40, 2.0), (0.5, 12, 1.0), (10.0, 7, 2.0)])
def test_fpfh_matches_brute_force(radius: float, max_nn: int, power: float) -> None:
    points = _bumpy_surface(70, seed=int(radius * 100) + max_nn)
    rng = np.random.default_rng(1)
    normals = rng.normal(size=points.shape)  # arbitrary unit normals exercise every branch
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    points[5] = points[4]  # a duplicate point: distance-0 pairs
    normals[5] = normals[4]
    ours = fpfh(points, normals, radius=radius, max_nn=max_nn, neighbour_weight_power=power)
    reference = brute_force_fpfh(points, normals, radius, max_nn, power)
    assert ours.shape == (70, FEATURE_DIM)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9)
    query = np.array([3, 60, 0, 4])
    np.testing.assert_allclose(fpfh(points, normals, radius=radius, max_nn=max_nn, query=query, neighbour_weight_power=power),
                               reference[query], rtol=1e-9, atol=1e-9)


def test_pair_features_match_the_scalar_definition() -> None:
    rng = np.random.default_rng(2)
    p1, p2, n1, n2 = (rng.normal(size=(200, 3)) for _ in range(4))
    n1 /= np.linalg.norm(n1, axis=1, keepdims=True)
    n2 /= np.linalg.norm(n2, axis=1, keepdims=True)
    ours = pair_features(p1, n1, p2, n2)
    for k in range(200):
        np.testing.assert_allclose(ours[k, :3], _pair(p1[k], n1[k], p2[k], n2[k]), atol=1e-12)
        assert ours[k, 3] == pytest.approx(np.linalg.norm(p2[k] - p1[k]))
    assert pair_features(p1[:1], n1[:1], p1[:1], n2[:1]).tolist() == [[0.0, 0.0, 0.0, 0.0]]  # same point
    along = pair_features(np.zeros(3), np.array([0, 0, 1.0]), np.array([0, 0, 2.0]), np.array([0, 0, 1.0]))
    assert along.tolist() == [0.0, 0.0, 0.0, 0.0]  # the line parallel to the normal: no frame


def test_a_planar_patch_has_one_bin_per_histogram() -> None:
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 12)), axis=-1).reshape(-1, 2)
    rng = np.random.default_rng(3)
    points = np.column_stack([grid + rng.uniform(-0.01, 0.01, grid.shape), np.zeros(len(grid))])
    normals = estimate_normals(points, radius=0.3, max_nn=30, orientation="camera")
    points_above = points + [0, 0, -5.0]  # camera at the origin looks down onto z = -5
    normals_above = estimate_normals(points_above, radius=0.3, max_nn=30, orientation="camera")
    np.testing.assert_allclose(normals_above, np.tile([0, 0, 1.0], (len(points), 1)), atol=1e-12)
    assert np.allclose(np.abs(normals[:, 2]), 1.0)
    features = fpfh(points_above, normals_above, radius=0.25, max_nn=100)
    # every pair lies in the plane: phi = 0, alpha = 0, theta = 0 -> the middle bin (5) of each third
    expected = np.zeros(FEATURE_DIM)
    expected[[5, 16, 27]] = 200.0  # 100 from the neighbours' normalised SPFHs, 100 from its own
    np.testing.assert_allclose(features, np.tile(expected, (len(points), 1)), atol=1e-9)


def test_sphere_normals_point_outwards_and_fpfh_is_invariant_to_rigid_motion() -> None:
    rng = np.random.default_rng(4)
    directions = rng.normal(size=(400, 3))
    points = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    normals = estimate_normals(points, radius=0.4, max_nn=30, orientation="centroid")
    assert (np.einsum("ni,ni->n", normals, points) > 0.95).all()  # PCA of a 30-point cap, outwards
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = points @ rotation.T + [3.0, -2.0, 7.0]
    moved_normals = estimate_normals(moved, radius=0.4, max_nn=30, orientation="centroid")
    np.testing.assert_allclose(moved_normals, normals @ rotation.T, atol=1e-9)
    np.testing.assert_allclose(fpfh(moved, moved_normals, radius=0.5), fpfh(points, normals, radius=0.5), atol=1e-6)
    # every point of a sphere looks alike: the descriptors agree up to sampling noise
    features = fpfh(points, normals, radius=0.5)
    assert np.abs(features - features.mean(axis=0)).mean() < 0.1 * features.mean(axis=0).max()


def test_isolated_points_and_tiny_clouds() -> None:
    points = np.array([[0, 0, 0], [0.1, 0, 0], [5, 5, 5.0]])
    normals = estimate_normals(points, radius=0.5, max_nn=30)
    np.testing.assert_array_equal(normals, np.tile([0, 0, 1.0], (3, 1)))  # < 3 neighbours: Open3D's default
    features = fpfh(points, normals, radius=0.5, max_nn=10)
    assert np.all(features[2] == 0) and features[:2].sum() > 0
    assert fpfh(points[:1], normals[:1], radius=0.5).tolist() == [[0.0] * FEATURE_DIM]
    assert fpfh(np.zeros((0, 3)), np.zeros((0, 3)), radius=0.5).shape == (0, FEATURE_DIM)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: fpfh(np.zeros((4, 2)), np.zeros((4, 2)), radius=1.0), r"points must have shape \(N, 3\)"),
    (lambda: fpfh(np.full((4, 3), np.nan), np.zeros((4, 3)), radius=1.0), "NaN or infinite"),
    (lambda: fpfh(np.zeros((4, 3)), np.zeros((3, 3)), radius=1.0), "normals must have the shape"),
    (lambda: fpfh(np.zeros((4, 3)), np.zeros((4, 3)), radius=0.0), "radius must be positive"),
    (lambda: fpfh(np.zeros((4, 3)), np.zeros((4, 3)), radius=1.0, max_nn=1), "max_nn must be at least 2"),
    (lambda: fpfh(np.zeros((4, 3)), np.zeros((4, 3)), radius=1.0, query=[7]), "query indices must lie in"),
    (lambda: estimate_normals(np.zeros((4, 3)), radius=1.0, orientation="up"), "orientation must be one of"),
])
def test_bad_inputs_are_refused_in_one_line(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
