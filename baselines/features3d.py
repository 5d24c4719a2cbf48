"""Hand-crafted 3-D point features: PCA normals, SPFH and FPFH (Rusu et al., "Fast Point Feature
Histograms (FPFH) for 3D registration", ICRA 2009), vectorised with NumPy and SciPy.

The definitions follow Open3D's ``compute_fpfh_feature`` (``cpp/open3d/pipelines/registration/
Feature.cpp``), the implementation that BTF's official code (3D-ADS) and Real3D-AD's BTF call:

* **Neighbourhoods** are *hybrid* searches: the ``max_nn`` nearest points within ``radius``
  (the point itself included, as the first neighbour), from one :class:`scipy.spatial.cKDTree`.
* **Pair features** of a point ``p1`` (normal ``n1``) and a neighbour ``p2`` (``n2``), with
  ``d = p2 - p1``: the source of the Darboux frame is the end whose normal makes the smaller
  angle with the line (``acos|n.d/|d||``), the frame is ``u = n_s``, ``v = d x u / |d x u|``
  (``d`` pointing from source to target), ``w = u x v``, and the features are
  ``theta = atan2(w.n_t, u.n_t)`` in [-pi, pi], ``alpha = v.n_t`` and
  ``phi = u.d/|d|`` in [-1, 1]; a pair at distance 0, or with ``d`` parallel to the normal,
  gives (0, 0, 0).
* **SPFH** of a point: three 11-bin histograms (theta, alpha, phi; bins of equal width, the
  top edge in the last bin), each pair adding ``100 / (neighbours - 1)``, over the
  neighbourhood without its first entry (the point itself); a point with no other neighbour
  has an all-zero SPFH.
* **FPFH** of a point: the SPFHs of its neighbours (the first entry skipped, and any at
  distance 0), weighted by ``1 / distance**2`` (Open3D's choice; the paper's formula weights by
  ``1 / distance`` and divides by the neighbour count, ``neighbour_weight_power=1``), each
  11-bin third of the sum rescaled to total 100, plus the point's own SPFH.

Normals are the eigenvector of the smallest eigenvalue of the neighbourhood covariance (the
point included; Open3D's ``estimate_normals``), ``(0, 0, 1)`` when the neighbourhood has fewer
than three points.  The sign of a PCA normal is arbitrary and FPFH depends on it, so normals
are oriented consistently (:data:`ORIENTATIONS`): away from the cloud's centroid (``centroid``,
for closed scans such as Real3D-AD) or towards a camera at the origin (``camera``, for
organised depth maps such as MVTec 3D-AD).  Open3D leaves the sign to its eigen-solver.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

BINS = 11
"""Bins of each of the three sub-histograms (33 in all)."""
FEATURE_DIM = 3 * BINS
ORIENTATIONS = ("centroid", "camera", "none")
"""How normals are signed: away from the centroid, towards the origin (the camera), or as the
eigen-solver returns them."""


def _check_points(points: np.ndarray) -> np.ndarray:
    """Float64 (N, 3) points, or a ValueError naming the problem."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("points contain NaN or infinite coordinates; drop them first")
    return array


def _check_search(radius: float, max_nn: int) -> None:
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if max_nn < 2:
        raise ValueError(f"max_nn must be at least 2 (the point and one neighbour), got {max_nn}")


def hybrid_neighbors(tree: cKDTree, queries: np.ndarray, radius: float, max_nn: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``max_nn`` nearest points of ``tree`` within ``radius`` of each query, nearest first.

    Returns distances (Q, K) and indices (Q, K) with ``K = min(max_nn, len(tree))``; missing
    neighbours have distance ``inf`` and index ``len(tree)``.
    """
    _check_search(radius, max_nn)
    count = min(max_nn, tree.n)
    distances, indices = tree.query(queries, k=count, distance_upper_bound=radius)
    if count == 1:
        distances, indices = distances[:, None], indices[:, None]
    return distances, indices


def estimate_normals(points: np.ndarray, radius: float, max_nn: int = 30, orientation: str = "centroid") -> np.ndarray:
    """Unit normals (N, 3) by PCA of each point's hybrid neighbourhood, signed by ``orientation``."""
    points = _check_points(points)
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    normals = np.zeros_like(points)
    normals[:, 2] = 1.0
    if len(points) == 0:
        return normals
    tree = cKDTree(points)
    distances, indices = hybrid_neighbors(tree, points, radius, max_nn)
    valid = np.isfinite(distances)
    counts = valid.sum(axis=1)
    enough = counts >= 3
    padded = np.concatenate([points, np.zeros((1, 3))])
    neighbours = padded[indices]  # (N, K, 3), zero rows where missing
    weights = valid[..., None].astype(np.float64)
    means = (neighbours * weights).sum(axis=1) / np.maximum(counts, 1)[:, None]
    centred = (neighbours - means[:, None, :]) * weights
    covariances = np.einsum("nki,nkj->nij", centred, centred) / np.maximum(counts, 1)[:, None, None]
    _, vectors = np.linalg.eigh(covariances[enough])
    normals[enough] = vectors[:, :, 0]  # eigh sorts eigenvalues ascending
    if orientation == "centroid":
        outward = points - points.mean(axis=0)
    elif orientation == "camera":
        outward = -points  # towards a camera at the origin
    else:
        return normals
    flip = enough & (np.einsum("ni,ni->n", normals, outward) < 0)  # the (0, 0, 1) default stays as Open3D sets it
    normals[flip] *= -1.0
    return normals


Vector = tuple[np.ndarray, np.ndarray, np.ndarray]
"""A 3-vector per pair as three 1-D component arrays (contiguous: much faster than (P, 3) rows)."""


def _dot(a: Vector, b: Vector) -> np.ndarray:
    """Dot products summed left to right, as Eigen's 3-vector dot (near-ties break as in Open3D)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Vector, b: Vector) -> Vector:
    return a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]


def _source_swapped(angle1: np.ndarray, angle2: np.ndarray) -> np.ndarray:
    """Open3D's ``acos(|angle1|) > acos(|angle2|)``: the second end becomes the frame's source.

    ``acos`` decreases, so this is ``|angle1| < |angle2|`` (a cosine rounded above 1 makes C's
    ``acos`` NaN, which never swaps).  Comparing the cosines themselves breaks the near-ties of
    two almost equal normals as Open3D 0.20 does (no mismatch on 3000-point clouds), where
    NumPy's vectorised ``arccos`` can round two close cosines to one value and not swap.
    """
    first, second = np.abs(angle1), np.abs(angle2)
    return (first < second) & (second <= 1.0)


def _pair_components(p1: Vector, n1: Vector, p2: Vector, n2: Vector) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """theta, alpha, phi and distance of each pair (see the module docstring)."""
    delta = (p2[0] - p1[0], p2[1] - p1[1], p2[2] - p1[2])
    distance = np.sqrt(_dot(delta, delta))
    safe = np.where(distance == 0.0, 1.0, distance)
    angle1 = _dot(n1, delta) / safe
    angle2 = _dot(n2, delta) / safe
    swap = _source_swapped(angle1, angle2)
    source = tuple(np.where(swap, b, a) for a, b in zip(n1, n2))
    target = tuple(np.where(swap, a, b) for a, b in zip(n1, n2))
    sign = np.where(swap, -1.0, 1.0)
    delta = (delta[0] * sign, delta[1] * sign, delta[2] * sign)
    phi = np.where(swap, -angle2, angle1)
    v = _cross(delta, source)
    v_norm = np.sqrt(_dot(v, v))
    safe_norm = np.where(v_norm == 0.0, 1.0, v_norm)
    v = (v[0] / safe_norm, v[1] / safe_norm, v[2] / safe_norm)
    w = _cross(source, v)
    alpha = _dot(v, target)
    theta = np.arctan2(_dot(w, target), _dot(source, target))
    degenerate = (distance == 0.0) | (v_norm == 0.0)
    for values in (theta, alpha, phi, distance):
        values[degenerate] = 0.0
    return theta, alpha, phi, distance


def _components(array: np.ndarray) -> Vector:
    return array[..., 0], array[..., 1], array[..., 2]


def pair_features(p1: np.ndarray, n1: np.ndarray, p2: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Open3D's pair features (theta, alpha, phi, distance) of point pairs, shape (..., 4)."""
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (p1, n1, p2, n2)))
    flat = [_components(np.ascontiguousarray(a).reshape(-1, 3).T.T) for a in arrays]
    result = np.stack(_pair_components(*flat), axis=-1)
    return result.reshape(*arrays[0].shape[:-1], 4)


def _bin(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Bin index in [0, BINS) of each value on [low, high] (Open3D: floor, then clamp)."""
    return np.clip(np.floor(BINS * (values - low) / (high - low)).astype(np.int64), 0, BINS - 1)


def spfh(points: np.ndarray, normals: np.ndarray, distances: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Simplified point feature histograms (len(rows), 33) of ``points[rows]``, given each row's
    hybrid neighbourhood (``distances``, ``indices`` from :func:`hybrid_neighbors`)."""
    neighbour = indices[:, 1:]  # (R, K - 1); missing neighbours point at the padding row
    valid = np.isfinite(distances[:, 1:])
    counts = valid.sum(axis=1)
    point_axes = [np.append(points[:, k], 0.0) for k in range(3)]
    normal_axes = [np.append(normals[:, k], 0.0) for k in range(3)]
    with np.errstate(invalid="ignore", divide="ignore"):  # padding pairs are computed, then weighted 0
        theta, alpha, phi, _ = _pair_components(
            tuple(axis[rows][:, None] for axis in point_axes), tuple(axis[rows][:, None] for axis in normal_axes),
            tuple(axis[neighbour] for axis in point_axes), tuple(axis[neighbour] for axis in normal_axes))
        increment = np.where(valid, (100.0 / np.maximum(counts, 1))[:, None], 0.0).ravel()
        histogram = np.zeros(len(rows) * FEATURE_DIM)
        base = (np.arange(len(rows)) * FEATURE_DIM)[:, None]
        for block, (values, low, high) in enumerate(((theta, -np.pi, np.pi), (alpha, -1.0, 1.0), (phi, -1.0, 1.0))):
            slots = (base + block * BINS + _bin(np.nan_to_num(values), low, high)).ravel()
            histogram += np.bincount(slots, weights=increment, minlength=histogram.size)
    return histogram.reshape(len(rows), FEATURE_DIM)


def fpfh(
    points: np.ndarray,
    normals: np.ndarray,
    radius: float,
    max_nn: int = 100,
    query: np.ndarray | None = None,
    neighbour_weight_power: float = 2.0,
) -> np.ndarray:
    """FPFH descriptors (Q, 33), float64, of the points ``query`` (indices; all points when None).

    Only the SPFHs the queries need (theirs and their neighbours') are computed, so a sparse
    set of queries on a large cloud is cheap.  ``neighbour_weight_power`` is the exponent of
    the inverse-distance weights of the neighbours' SPFHs: 2 as Open3D, 1 as the paper.
    """
    points = _check_points(points)
    normals = np.asarray(normals, dtype=np.float64)
    if normals.shape != points.shape:
        raise ValueError(f"normals must have the shape of points {points.shape}, got {normals.shape}")
    _check_search(radius, max_nn)
    rows = np.arange(len(points)) if query is None else np.asarray(query, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(points)):
        raise ValueError(f"query indices must lie in [0, {len(points)}), got [{rows.min()}, {rows.max()}]")
    if len(points) == 0 or rows.size == 0:
        return np.zeros((rows.size, FEATURE_DIM))
    tree = cKDTree(points)
    distances, indices = hybrid_neighbors(tree, points[rows], radius, max_nn)
    if query is None:
        needed, needed_distances, needed_indices = rows, distances, indices
    else:
        needed = np.union1d(rows, indices[np.isfinite(distances)])
        needed_distances, needed_indices = hybrid_neighbors(tree, points[needed], radius, max_nn)
    histograms = np.zeros((len(points) + 1, FEATURE_DIM))  # the last row stands for missing neighbours
    histograms[needed] = spfh(points, normals, needed_distances, needed_indices, needed)

    neighbour = indices[:, 1:]
    squared = distances[:, 1:] ** 2
    valid = np.isfinite(squared) & (squared > 0.0)
    row_of_pair, column = np.nonzero(valid)
    weights = 1.0 / squared[row_of_pair, column] ** (neighbour_weight_power / 2.0)
    mixing = sparse.csr_matrix((weights, (row_of_pair, neighbour[row_of_pair, column])), shape=(len(rows), len(points) + 1))
    weighted = np.asarray(mixing @ histograms).reshape(len(rows), 3, BINS)
    sums = weighted.sum(axis=2, keepdims=True)
    scale = np.divide(100.0, sums, out=np.zeros_like(sums), where=sums != 0.0)
    result = (weighted * scale).reshape(len(rows), FEATURE_DIM) + histograms[rows]
    has_neighbours = np.isfinite(distances[:, 1:]).any(axis=1)
    result[~has_neighbours] = 0.0
    return result
