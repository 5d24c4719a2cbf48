"""FPFH throughput (points/s): ours (``baselines.features3d.fpfh``: one cKDTree query, pair
features over every neighbourhood at once, a sparse mixing product) against a per-point
reference measured in the same run on the same cloud: Open3D's structure (a loop over the points,
each neighbourhood's SPFH and the FPFH mix computed point by point) in NumPy, timed on a sample
of query points (an SPFH and a mix timed per point, so a whole cloud's cost is extrapolated
without over-counting the sample's neighbours).  Both use the same normals; their descriptors
are checked to agree (max |diff| column).

    python benchmarks/features3d.py                     # 10k, 30k and 50k points
    python benchmarks/features3d.py --points 20000 --reference-points 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

# run as a script, this file's folder comes first on sys.path and its name would hide the package
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
from baselines.features3d import BINS, FEATURE_DIM, estimate_normals, fpfh, pair_features  # noqa: E402


def blob(count: int, seed: int = 0) -> np.ndarray:
    """``count`` points on a lumpy closed surface of radius about 10 (Real3D-AD-like units)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = 10.0 * (1.0 + 0.08 * np.sin(3.0 * directions[:, 0]) * np.cos(2.0 * directions[:, 1]))
    return directions * radii[:, None]


def reference_fpfh(points: np.ndarray, normals: np.ndarray, radius: float, max_nn: int, query: np.ndarray) -> tuple[np.ndarray, float]:
    """FPFH of ``query`` point by point, as Open3D's two loops are organised (one SPFH per point,
    then one mix per point), and the seconds per point of a whole cloud: the measured time of
    an SPFH plus that of a mix (so that the sample's neighbours' SPFHs are not over-counted)."""
    tree = cKDTree(points)

    def neighbourhood(index: int) -> tuple[np.ndarray, np.ndarray]:
        distances, indices = tree.query(points[index], k=min(max_nn, len(points)), distance_upper_bound=radius)
        keep = np.isfinite(distances)
        return distances[keep][1:], indices[keep][1:]

    def spfh_of(index: int) -> np.ndarray:
        _, neighbours = neighbourhood(index)
        histogram = np.zeros(FEATURE_DIM)
        if len(neighbours):
            features = pair_features(points[index], normals[index], points[neighbours], normals[neighbours])
            for block, (values, low, high) in enumerate(((features[:, 0], -np.pi, np.pi), (features[:, 1], -1.0, 1.0), (features[:, 2], -1.0, 1.0))):
                bins = np.clip(np.floor(BINS * (values - low) / (high - low)).astype(int), 0, BINS - 1)
                np.add.at(histogram, block * BINS + bins, 100.0 / len(neighbours))
        return histogram

    needed = sorted({int(i) for i in query} | {int(n) for i in query for n in neighbourhood(int(i))[1]})
    start = time.perf_counter()
    spfh = {index: spfh_of(index) for index in needed}
    spfh_seconds = (time.perf_counter() - start) / len(needed)
    result = np.zeros((len(query), FEATURE_DIM))
    start = time.perf_counter()
    for row, index in enumerate(query):
        distances, neighbours = neighbourhood(int(index))
        if not len(neighbours):
            continue
        mixed = np.zeros(FEATURE_DIM)
        for distance, neighbour in zip(distances, neighbours):
            if distance > 0:
                mixed += spfh[int(neighbour)] / distance**2
        sums = mixed.reshape(3, BINS).sum(axis=1, keepdims=True)
        scale = np.divide(100.0, sums, out=np.zeros_like(sums), where=sums != 0)
        result[row] = (mixed.reshape(3, BINS) * scale).ravel() + spfh[int(index)]
    mix_seconds = (time.perf_counter() - start) / len(query)
    return result, spfh_seconds + mix_seconds


def main() -> None:
    """Measure both ways on each cloud size and print points/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, action="append", help="cloud size (repeat; default 10000, 30000, 50000)")
    parser.add_argument("--reference-points", type=int, default=200, help="query points the per-point reference is timed on")
    parser.add_argument("--voxel", type=float, default=0.5, help="BTF's voxel: normals over 2x, FPFH over 5x it (Real3D-AD's 0.5)")
    args = parser.parse_args()
    print(f"voxel {args.voxel}: normals radius {2 * args.voxel} (30 nn), FPFH radius {5 * args.voxel} (100 nn)")
    print(f"{'points':>7s} {'ours pts/s':>11s} {'reference pts/s':>16s} {'ratio':>7s} {'max |diff|':>10s}")
    for count in args.points or (10_000, 30_000, 50_000):
        points = blob(count)
        normals = estimate_normals(points, radius=2 * args.voxel, max_nn=30)
        start = time.perf_counter()
        ours = fpfh(points, normals, radius=5 * args.voxel, max_nn=100)
        ours_rate = count / (time.perf_counter() - start)
        query = np.random.default_rng(1).choice(count, size=min(args.reference_points, count), replace=False)
        reference, seconds_per_point = reference_fpfh(points, normals, 5 * args.voxel, 100, query)
        reference_rate = 1.0 / seconds_per_point
        difference = float(np.abs(reference - ours[query]).max())
        print(f"{count:7d} {ours_rate:11.0f} {reference_rate:16.0f} {ours_rate / reference_rate:7.1f} {difference:10.1e}")


if __name__ == "__main__":
    main()
