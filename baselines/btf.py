"""``btf``: "Back to the Feature" (Horwitz & Hoshen, 2022): FPFH point features and a
PatchCore-style memory bank, scored by nearest-neighbour distance.  No pretrained weights.

Two inputs, two pipelines, each following the official code that defines BTF on it:

**Point clouds** (``points``, Real3D-AD), as Real3D-AD's ``main_btf_fpfh.py`` (M-3LAB/Real3D-AD
@9a9cd04): FPFH (:mod:`baselines.features3d`) of every ``stride``-th point (indices 0, s, 2s,
...; ``train_stride`` 100 for the bank, ``test_stride`` 500 at test), normals over radius
``2 voxel_size`` (30 neighbours at most), FPFH over ``5 voxel_size`` (100 at most), voxel 0.5;
no coreset (the bank is every training sample's strided FPFHs); each scored point's score is
its distance to the nearest bank entry, and every point of the cloud takes the score of its
nearest scored point (``fill_missing_values(k=1)``); each cloud's mean is subtracted first, as
Real3D-AD's loader does.

**Organised xyz maps** (``image+xyz``, MVTec 3D-AD), as 3D-ADS (eliahuhorwitz/3D-ADS @612eb7b):
the background plane is removed (a plane fitted by RANSAC to the 10-pixel border, points
within ``plane_distance`` of it zeroed: ``utils/preprocessing.py``, which 3D-ADS runs once over
the dataset in place), the map is resized to ``image_size`` (nearest), only the largest DBSCAN
group of its points is kept (3D-ADS's ``connected_components_cleaning``), FPFH is computed on
the points with no zero coordinate (voxel 0.05) and placed back on the grid (zeros elsewhere), the
33-channel map is averaged over 3 x 3 (no padding) and adaptively average-pooled to
``feature_grid`` x ``feature_grid`` patches; the bank keeps ``coreset_ratio`` (0.1) of the
training patches by greedy k-center from patch 0 on the raw 33-d features (3D-ADS's sparse
projection cannot go below 33 dimensions at eps 0.9 and is skipped, its ValueError caught).  The
patch distance map is upsampled (bilinear) to ``image_size``, blurred, and resized to the
input images' size.

The sample score is the largest scored distance ``s*`` reweighted as 3D-ADS does
(``features.py:150-167``): ``s = (1 - exp(s*/sqrt(D)) / sum_k exp(|m_test - m_k|/sqrt(D))) s*``
over the ``reweight_neighbors - 1`` bank entries nearest to ``s*``'s match after the match
itself.  See docs/methods.md for every choice and where it differs.

``btf-rgb`` (:class:`BTFRGB`) is 3D-ADS's "RGB + FPFH" (``rgb_fpfh_features.py``): each xyz patch
feature concatenated with the RGB patch feature of a frozen ImageNet backbone (two stages, 3 x 3
averaged, pooled to the same grid).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from baselines.backbones import registry
from baselines.base import Batch, MethodCard, Setting
from baselines.features3d import FEATURE_DIM, estimate_normals, fpfh
from baselines.patchcore import BACKBONES, choose_backbone, greedy_coreset, nearest_neighbors

logger = logging.getLogger(__name__)

MODES = ("points", "xyz")
"""What a fitted bank was built from: point clouds or organised xyz maps."""
BLURS = ("pil", "gaussian", "none")
DEFAULTS: dict[str, dict[str, Any]] = {
    "points": {"voxel_size": 0.5, "coreset_ratio": 1.0, "normal_orientation": "centroid"},
    "xyz": {"voxel_size": 0.05, "coreset_ratio": 0.1, "normal_orientation": "camera"},
}
"""The official choices per input (Real3D-AD's main_btf_fpfh.py:25; 3D-ADS fpfh_features.py:8,
features.py:108) for the fields left at ``None``."""


@dataclass
class BTFConfig:
    """Options of the ``btf`` method; ``None`` takes the input's official default (:data:`DEFAULTS`)."""

    voxel_size: float | None = None
    """Scale of the neighbourhoods: normals over ``normal_radius_factor`` x, FPFH over
    ``feature_radius_factor`` x it (0.5 for points, 0.05 for xyz, in the data's units)."""
    normal_radius_factor: float = 2.0
    normal_max_nn: int = 30
    feature_radius_factor: float = 5.0
    feature_max_nn: int = 100
    normal_orientation: str | None = None
    """``centroid`` (away from the cloud's centroid; points), ``camera`` (towards the origin;
    xyz) or ``none`` (the eigen-solver's sign; Open3D leaves it to its own solver)."""
    neighbour_weight_power: float = 2.0
    """FPFH weights neighbours' SPFHs by 1 / distance ** power: 2 as Open3D, 1 as the paper."""
    train_stride: int = 100
    """Points: every ``train_stride``-th point of a training cloud enters the bank."""
    test_stride: int = 500
    """Points: every ``test_stride``-th point of a test cloud is scored; the others take the score
    of their nearest scored point."""
    center: bool = True
    """Points: subtract each cloud's mean first, as Real3D-AD's loader (``dataset_pc.py:21-26``).
    FPFH does not depend on it but its rounding does: centred, the scores equal the official
    code's to 1e-6; uncentred, a few near-tie bins flip (scores differ by up to 1e-3)."""
    coreset_ratio: float | None = None
    """Fraction of the bank kept by greedy k-center (1 keeps all: points 1, xyz 0.1)."""
    reweight: bool = True
    """Reweight the sample score as 3D-ADS; ``False`` takes the plain maximum."""
    reweight_neighbors: int = 3
    """3D-ADS's ``n_reweight``: bank neighbours of the match, the match itself included."""
    image_size: int = 224
    """xyz: maps are resized (nearest) to this square size before FPFH."""
    feature_grid: int = 28
    """xyz: patches per side after the 3 x 3 average and the adaptive average pooling."""
    remove_plane: bool = True
    """xyz: remove the background plane first (3D-ADS's preprocessing)."""
    plane_border: int = 10
    """xyz: width in pixels of the border the plane is fitted to."""
    plane_distance: float = 0.005
    """xyz: points closer than this to the plane are removed."""
    plane_inlier_distance: float = 0.004
    """xyz: RANSAC inlier threshold of the plane fit."""
    plane_iterations: int = 1000
    plane_sample: int = 50
    """xyz: points per RANSAC hypothesis (Open3D's ``ransac_n`` in 3D-ADS)."""
    keep_largest_cluster: bool = True
    """xyz: after the resize, keep only the largest DBSCAN group of the points (3D-ADS's
    ``connected_components_cleaning``; noise counts as a group, as there)."""
    cluster_eps: float = 0.006
    cluster_min_points: int = 30
    blur: str = "pil"
    """xyz: map smoothing: ``pil`` as 3D-ADS (the map divided by its maximum, truncated to 8 bits,
    PIL GaussianBlur of radius ``blur_sigma``, scaled back), ``gaussian`` (float, scipy sigma
    ``blur_sigma``) or ``none``."""
    blur_sigma: float = 4.0
    query_chunk: int = 1024
    bank_chunk: int = 16_384
    seed: int = 0
    """Seed of the plane RANSAC."""

    def __post_init__(self) -> None:
        if self.voxel_size is not None and not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be positive, got {self.voxel_size}")
        if self.normal_orientation not in (None, "centroid", "camera", "none"):
            raise ValueError(f"normal_orientation must be centroid, camera or none, got {self.normal_orientation!r}")
        if self.coreset_ratio is not None and not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.blur not in BLURS:
            raise ValueError(f"blur must be one of {BLURS}, got {self.blur!r}")
        for name in ("normal_max_nn", "feature_max_nn"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2, got {getattr(self, name)}")
        for name in ("train_stride", "test_stride", "reweight_neighbors", "image_size", "feature_grid", "plane_iterations",
                     "plane_sample", "query_chunk", "bank_chunk", "cluster_min_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("normal_radius_factor", "feature_radius_factor", "plane_distance", "plane_inlier_distance", "cluster_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.plane_border < 1 or self.blur_sigma < 0 or self.neighbour_weight_power < 0:
            raise ValueError("plane_border must be positive and blur_sigma, neighbour_weight_power >= 0")
        if self.image_size < self.feature_grid + 2:
            raise ValueError(f"image_size ({self.image_size}) must exceed feature_grid + 2 ({self.feature_grid + 2})")

    def resolved(self, mode: str, name: str) -> Any:
        """The value of field ``name`` for input ``mode``: the field, else the mode's default."""
        value = getattr(self, name)
        return DEFAULTS[mode][name] if value is None else value


# --------------------------------------------------------------------------- features


def cloud_fpfh(points: np.ndarray, config: BTFConfig, mode: str, query: np.ndarray | None = None) -> np.ndarray:
    """FPFH (Q, 33) of the points ``query`` (all when None) with the configured neighbourhoods."""
    voxel = config.resolved(mode, "voxel_size")
    normals = estimate_normals(points, radius=config.normal_radius_factor * voxel, max_nn=config.normal_max_nn,
                               orientation=config.resolved(mode, "normal_orientation"))
    return fpfh(points, normals, radius=config.feature_radius_factor * voxel, max_nn=config.feature_max_nn, query=query,
                neighbour_weight_power=config.neighbour_weight_power)


def strided(count: int, stride: int) -> np.ndarray:
    """Indices 0, s, 2s, ... of ``count // stride`` points (Real3D-AD's sampling), at least one."""
    return np.arange(max(1, count // stride)) * stride if count else np.zeros(0, dtype=np.int64)


def fit_plane(points: np.ndarray, inlier_distance: float, iterations: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    """Plane ``(a, b, c, d)`` (unit normal) fitted by RANSAC: each hypothesis is the least-squares
    plane of ``sample`` random points; the one with most inliers (then the smaller inlier RMS)
    is refitted to its inliers."""
    if len(points) < 3:
        raise ValueError(f"btf: the plane fit needs at least 3 border points, got {len(points)}; set remove_plane=false")

    def least_squares(subset: np.ndarray) -> np.ndarray:
        centre = subset.mean(axis=0)
        normal = np.linalg.svd(subset - centre, full_matrices=False)[2][-1]
        return np.append(normal, -normal @ centre)

    best, best_key = None, (-1, 0.0)
    take = min(sample, len(points))
    for _ in range(iterations):
        plane = least_squares(points[rng.choice(len(points), size=take, replace=False)])
        distance = np.abs(points @ plane[:3] + plane[3])
        inliers = distance < inlier_distance
        key = (int(inliers.sum()), -float(np.sqrt(np.mean(distance[inliers] ** 2))) if inliers.any() else 0.0)
        if key > best_key:
            best, best_key = plane, key
    assert best is not None
    inliers = np.abs(points @ best[:3] + best[3]) < inlier_distance
    return least_squares(points[inliers]) if inliers.sum() >= 3 else best


def remove_background_plane(xyz: np.ndarray, config: BTFConfig, rng: np.random.Generator) -> np.ndarray:
    """A copy of the (H, W, 3) map with the points near the border's plane set to zero."""
    border = np.zeros(xyz.shape[:2], dtype=bool)
    width = config.plane_border
    border[:width], border[-width:], border[:, :width], border[:, -width:] = True, True, True, True
    edge = xyz[border]
    edge = edge[np.all(edge != 0, axis=1)]
    plane = fit_plane(edge, config.plane_inlier_distance, config.plane_iterations, config.plane_sample, rng)
    cleaned = xyz.copy()
    cleaned[np.abs(xyz @ plane[:3] + plane[3]) < config.plane_distance] = 0.0
    return cleaned


def largest_cluster(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """Mask (N,) of the largest DBSCAN group of ``points``: core points have ``min_points``
    within ``eps`` (themselves included), clusters are the connected core points, a border point
    joins a neighbouring core point's cluster, the rest is noise, itself one group (3D-ADS keeps
    the most numerous label of Open3D's ``cluster_dbscan``, noise included)."""
    count = len(points)
    if count == 0:
        return np.zeros(0, dtype=bool)
    pairs = cKDTree(points).query_pairs(eps, output_type="ndarray")
    core = np.bincount(pairs.ravel(), minlength=count) + 1 >= min_points
    linked = pairs[core[pairs[:, 0]] & core[pairs[:, 1]]]
    graph = sparse.coo_matrix((np.ones(len(linked)), (linked[:, 0], linked[:, 1])), shape=(count, count))
    labels = csgraph.connected_components(graph, directed=False)[1]
    labels[~core] = -1
    border = pairs[core[pairs[:, 0]] ^ core[pairs[:, 1]]]
    member, anchor = np.where(core[border[:, 0]], border[:, 1], border[:, 0]), np.where(core[border[:, 0]], border[:, 0], border[:, 1])
    first = np.unique(member, return_index=True)[1]
    labels[member[first]] = labels[anchor[first]]
    groups, sizes = np.unique(labels, return_counts=True)
    return labels == groups[np.argmax(sizes)]


def xyz_patches(xyz: np.ndarray, config: BTFConfig, rng: np.random.Generator) -> torch.Tensor:
    """Patch features (feature_grid**2, 33) of one organised (H, W, 3) map (zeros = no data)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if config.remove_plane:
        xyz = remove_background_plane(xyz, config, rng)
    size = config.image_size
    grid = torch.from_numpy(xyz).permute(2, 0, 1)[None]
    resized = F.interpolate(grid, size=(size, size), mode="nearest")[0].permute(1, 2, 0).reshape(-1, 3).numpy()
    valid = np.flatnonzero(np.all(resized != 0, axis=1))
    if config.keep_largest_cluster and len(valid):
        valid = valid[largest_cluster(resized[valid], config.cluster_eps, config.cluster_min_points)]
    features = np.zeros((size * size, FEATURE_DIM))
    if len(valid):
        features[valid] = cloud_fpfh(resized[valid], config, "xyz")
    feature_map = torch.from_numpy(features.T.reshape(1, FEATURE_DIM, size, size))
    pooled = F.adaptive_avg_pool2d(F.avg_pool2d(feature_map, kernel_size=3, stride=1), config.feature_grid)
    return pooled[0].reshape(FEATURE_DIM, -1).T


# --------------------------------------------------------------------------- scoring


def reweighted_score(queries: torch.Tensor, distances: torch.Tensor, indices: torch.Tensor, bank: torch.Tensor, neighbors: int) -> float:
    """3D-ADS's sample score: the largest distance, reweighted by the softmax-like factor of
    features.py:150-167 (the match's ``neighbors`` nearest bank entries, the match skipped,
    distances divided by sqrt(D))."""
    worst = int(torch.argmax(distances))
    s_star = distances[worst]
    match = bank[indices[worst]]
    count = min(neighbors, bank.shape[0])
    support = torch.cdist(match[None], bank)[0].topk(count, largest=False).indices[1:]
    if support.numel() == 0:
        return float(s_star)
    scale = math.sqrt(bank.shape[1])
    spread = torch.linalg.vector_norm(queries[worst] - bank[support], dim=1)
    weight = 1.0 - torch.exp(s_star / scale) / torch.exp(spread / scale).sum()
    return float(weight * s_star)


def blur_map(score_map: np.ndarray, how: str, sigma: float) -> np.ndarray:
    """Smooth a float map: 3D-ADS's 8-bit PIL Gaussian blur, scipy's float one, or not at all."""
    if how == "none" or sigma == 0:
        return score_map
    if how == "gaussian":
        return ndimage.gaussian_filter(score_map, sigma=sigma)
    peak = float(score_map.max())
    if not peak > 0:
        return np.zeros_like(score_map)
    quantised = (score_map / peak * 255.0).astype(np.uint8)  # ToPILImage: mul(255).byte(), truncating
    blurred = Image.fromarray(quantised, mode="L").filter(ImageFilter.GaussianBlur(radius=sigma))
    return np.asarray(blurred, dtype=np.float32) / 255.0 * peak


def _as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def batch_clouds(batch: Batch) -> list[np.ndarray] | None:
    """The batch's point clouds (``Batch.points``) as float64 (N_i, 3) arrays, or None."""
    if batch.points is None:
        return None
    return [np.asarray(cloud, dtype=np.float64).reshape(-1, 3) for cloud in batch.points]


def batch_xyz(batch: Batch) -> list[np.ndarray] | None:
    """The batch's organised maps (modality ``xyz``, float32 (B, 3, H, W) as the reader gives
    them; (B, H, W, 3) is accepted too) as float64 (H, W, 3) arrays, or None."""
    maps = batch.modalities.get("xyz")
    if maps is None:
        return None
    array = np.asarray(_as_numpy(maps), dtype=np.float64)
    if array.ndim == 4 and array.shape[1] == 3:
        array = array.transpose(0, 2, 3, 1)
    elif array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"btf: xyz maps must be (B, 3, H, W) or (B, H, W, 3), got {tuple(array.shape)}")
    return list(array)


class BTF:
    """Back to the Feature: a memory bank of FPFH features, nearest-neighbour anomaly scores."""

    name: ClassVar[str] = "btf"
    card: ClassVar[MethodCard] = MethodCard(inputs=("points", "image+xyz"), outputs=("point_map", "pixel_map"),
                                            settings=("single-class", "multi-class", "few-shot"))
    """A bank of one object's normal geometry says nothing about another's: no zero-shot."""
    Config: ClassVar[type] = BTFConfig
    bank_dtype: ClassVar[torch.dtype] = torch.float64
    """FPFH banks are small: float64, as the official codes score (float32 distances of features
    near 200 lose about 0.07 to cancellation)."""

    def __init__(self, config: BTFConfig | None = None) -> None:
        self.config = config or BTFConfig()
        self.memory_bank = torch.empty(0)
        self.mode: str | None = None

    def _mode_of(self, batch: Batch) -> tuple[str, list[np.ndarray]]:
        clouds = batch_clouds(batch)
        if clouds is not None:
            return "points", [cloud - cloud.mean(axis=0) if self.config.center and len(cloud) else cloud for cloud in clouds]
        maps = batch_xyz(batch)
        if maps is not None:
            return "xyz", maps
        raise ValueError("btf reads point clouds (Batch.points) or organised xyz maps (modality xyz); the batch has neither")

    def _rng(self, sample_id: str) -> np.random.Generator:
        """A RANSAC generator that depends on the seed and the sample only (not on batching)."""
        return np.random.default_rng([self.config.seed, *sample_id.encode()])

    def _features(self, mode: str, sample: np.ndarray, sample_id: str, stride: int) -> tuple[torch.Tensor, np.ndarray | None]:
        """A sample's bank-comparable features and, for a cloud, the indices of its scored points."""
        if mode == "points":
            query = strided(len(sample), stride)
            return torch.from_numpy(cloud_fpfh(sample, self.config, mode, query)), query
        return xyz_patches(sample, self.config, self._rng(sample_id)), None

    def _batch_features(self, batch: Batch, mode: str, samples: list[np.ndarray], stride: int) -> list[tuple[torch.Tensor, np.ndarray | None]]:
        """:meth:`_features` of every sample of the batch."""
        return [self._features(mode, sample, sample_id, stride) for sample_id, sample in zip(batch.sample_ids, samples)]

    def _feature_dim(self) -> int:
        return FEATURE_DIM

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Bank the FPFH features of every training sample, then keep its coreset."""
        parts: list[torch.Tensor] = []
        for batch in train:
            mode, samples = self._mode_of(batch)
            if self.mode is not None and mode != self.mode:
                raise ValueError(f"{self.name}: training batches mix {self.mode} and {mode}")
            self.mode = mode
            parts.extend(features for features, _ in self._batch_features(batch, mode, samples, self.config.train_stride))
        if not parts or self.mode is None:
            raise ValueError(f"{self.name}: no training samples")
        bank = torch.cat(parts).to(self.bank_dtype)
        ratio = self.config.resolved(self.mode, "coreset_ratio")
        if ratio < 1.0:
            bank = bank[greedy_coreset(bank, max(1, int(ratio * bank.shape[0])), projection_dim=0, start=0)]
        self.memory_bank = bank.contiguous()
        logger.info("btf (%s): %d bank features", self.mode, self.memory_bank.shape[0])

    def predict(self, batch: Batch) -> tuple[np.ndarray, Any]:
        """Sample scores (B,) and per-point scores (a list of (N_i,) float32 arrays) for clouds,
        or anomaly maps (B, H, W) float32 at the images' size for xyz maps."""
        if self.mode is None or self.memory_bank.shape[0] == 0:
            raise RuntimeError(f"{self.name}: predict called before fit")
        mode, samples = self._mode_of(batch)
        if mode != self.mode:
            raise ValueError(f"{self.name}: fitted on {self.mode} but the batch has {mode}")
        scores = np.empty(len(samples), dtype=np.float32)
        outputs = []
        for index, (sample, (features, query)) in enumerate(zip(samples, self._batch_features(batch, mode, samples, self.config.test_stride))):
            features = features.to(self.bank_dtype)
            distances, nearest = nearest_neighbors(features, self.memory_bank, self.config.query_chunk, self.config.bank_chunk)
            scores[index] = reweighted_score(features, distances, nearest, self.memory_bank, self.config.reweight_neighbors) \
                if self.config.reweight else float(distances.max())
            if mode == "points":
                outputs.append(self._spread(sample, query, distances.numpy()))
            else:
                outputs.append(self._pixel_map(distances.numpy(), batch.images.shape[-2:]))
        if mode == "points":
            return scores, outputs
        return scores, np.stack(outputs).astype(np.float32)

    @staticmethod
    def _spread(cloud: np.ndarray, query: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """Every point's score: that of its nearest scored point (Real3D-AD's fill_missing_values, k=1)."""
        if len(cloud) == 0:
            return np.zeros(0, dtype=np.float32)
        _, nearest = cKDTree(cloud[query]).query(cloud, k=1)
        return distances[nearest].astype(np.float32)

    def _pixel_map(self, distances: np.ndarray, out_size: Sequence[int]) -> np.ndarray:
        grid = self.config.feature_grid
        patch_map = torch.from_numpy(distances.reshape(1, 1, grid, grid)).float()
        size = self.config.image_size
        upsampled = F.interpolate(patch_map, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        smoothed = torch.from_numpy(blur_map(upsampled, self.config.blur, self.config.blur_sigma).astype(np.float32))
        if tuple(out_size) != (size, size):
            smoothed = F.interpolate(smoothed[None, None], size=tuple(out_size), mode="bilinear", align_corners=False)[0, 0]
        return smoothed.numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The memory bank and what it was built from (an index into :data:`MODES`)."""
        if self.mode is None:
            raise RuntimeError(f"{self.name}: state_dict called before fit")
        return {"memory_bank": self.memory_bank, "mode": torch.tensor(MODES.index(self.mode))}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a fitted memory bank."""
        missing = {"memory_bank", "mode"} - set(state)
        if missing:
            raise ValueError(f"{self.name}: state lacks {sorted(missing)}")
        bank = torch.as_tensor(state["memory_bank"], dtype=self.bank_dtype)
        if bank.ndim != 2 or bank.shape[1] != self._feature_dim():
            raise ValueError(f"{self.name}: the memory bank must be (M, {self._feature_dim()}), got {tuple(bank.shape)}")
        self.memory_bank, self.mode = bank, MODES[int(state["mode"])]


# --------------------------------------------------------------------------- RGB + FPFH


@dataclass
class BTFRGBConfig(BTFConfig):
    """Options of ``btf-rgb``: those of ``btf`` (its xyz pipeline) and the RGB backbone."""

    backbone: str = "auto"
    """``auto`` (WRN-50-2 when its weights are cached, else EfficientNet-Lite0; resolved when the
    config is built), ``wide_resnet50_2`` (3D-ADS's) or ``efficientnet_lite0``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backbone not in ("auto", *BACKBONES):
            raise ValueError(f"backbone must be 'auto' or one of {BACKBONES}, got {self.backbone!r}")
        self.backbone = choose_backbone(self.backbone)


RGB_LAYERS = {"wide_resnet50_2": ("layer2", "layer3"), "efficientnet_lite0": ("stride8", "stride16")}
"""The two backbone stages 3D-ADS taps (timm ``out_indices=(2, 3)``: strides 8 and 16)."""
RGB_CHANNELS = {"wide_resnet50_2": 512 + 1024, "efficientnet_lite0": 40 + 112}


class BTFRGB(BTF):
    """3D-ADS's "RGB + FPFH": each patch's RGB features (two backbone stages, 3 x 3 averaged,
    pooled to the FPFH patch grid) concatenated with its FPFH patch feature, one memory bank."""

    name: ClassVar[str] = "btf-rgb"
    card: ClassVar[MethodCard] = MethodCard(inputs=("image+xyz",), outputs=("pixel_map",),
                                            settings=("single-class", "multi-class", "few-shot"), weights=BACKBONES)
    Config: ClassVar[type] = BTFRGBConfig
    bank_dtype: ClassVar[torch.dtype] = torch.float32
    """1569-wide patches before the coreset: float32 keeps the pool at half the memory."""

    def __init__(self, config: BTFRGBConfig | None = None) -> None:
        super().__init__(config or BTFRGBConfig())
        self._backbone: torch.nn.Module | None = None

    @property
    def backbone(self) -> torch.nn.Module:
        """The frozen backbone, loaded on first use."""
        if self._backbone is None:
            self._backbone = registry.load_backbone(self.config.backbone)
        return self._backbone

    def _feature_dim(self) -> int:
        return RGB_CHANNELS[self.config.backbone] + FEATURE_DIM

    def rgb_patches(self, images: torch.Tensor) -> torch.Tensor:
        """RGB patch features (B, feature_grid**2, C) of uint8 (B, 3, H, W) images, as 3D-ADS:
        bicubic resize to ``image_size``, ImageNet normalisation, each stage 3 x 3 averaged (no
        padding) and adaptively pooled to the patch grid, the stages concatenated."""
        size, grid = self.config.image_size, self.config.feature_grid
        resized = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        resized = resized.round().clamp(0, 255)  # PIL resizes 8-bit images
        with torch.no_grad():
            maps = registry.tap(self.backbone, registry.normalize(resized, self.config.backbone), RGB_LAYERS[self.config.backbone])
        pooled = [F.adaptive_avg_pool2d(F.avg_pool2d(feature, kernel_size=3, stride=1), grid) for feature in maps]
        features = torch.cat(pooled, dim=1)
        return features.flatten(2).transpose(1, 2).float()

    def _mode_of(self, batch: Batch) -> tuple[str, list[np.ndarray]]:
        maps = batch_xyz(batch)
        if maps is None or batch.images is None:
            raise ValueError("btf-rgb reads RGB images with organised xyz maps (image+xyz); the batch has not both")
        return "xyz", maps

    def _batch_features(self, batch: Batch, mode: str, samples: list[np.ndarray], stride: int) -> list[tuple[torch.Tensor, np.ndarray | None]]:
        assert batch.images is not None
        rgb = self.rgb_patches(batch.images)
        return [(torch.cat([colour, geometry.float()], dim=1), None)
                for colour, (geometry, _) in zip(rgb, super()._batch_features(batch, mode, samples, stride))]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The memory bank, its mode and the backbone that produced it (an index into ``BACKBONES``)."""
        return {**super().state_dict(), "backbone": torch.tensor(BACKBONES.index(self.config.backbone))}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a fitted memory bank and its backbone."""
        if "backbone" not in state:
            raise ValueError("btf-rgb: state lacks ['backbone']")
        backbone = BACKBONES[int(state["backbone"])]
        if backbone != self.config.backbone:
            self.config.backbone, self._backbone = backbone, None
        super().load_state_dict(state)
