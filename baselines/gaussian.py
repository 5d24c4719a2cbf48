"""``gaussian``: per-pixel Gaussian statistics of the aligned training images.

M2AD's cameras and lights are fixed, so the normal images of one (category, view,
illumination) are pixel-aligned: each pixel's colour is well described by a mean and a
standard deviation per channel.  A test pixel's anomaly score is its squared, diagonal
Mahalanobis distance to those statistics, ``sum_c ((x_c - mean_c) / std_c) ** 2``, smoothed
with a small Gaussian blur.  The image score is the mean of the top ``top_fraction`` of the
map (the official M2AD trainers' rule, m2ad.md section 11.5) or, with ``top_fraction=0``, its
maximum.

Groups: statistics are kept per (category, view, illumination).  Datasets without views or
lights (MVTec-AD) give one group per category; a test image whose (view, illumination) was
never seen in training falls back to the statistics pooled over all training images of its
category.  Statistics are kept at ``stats_size`` pixels on the longer side at most (larger
images are area-averaged down, and maps are upsampled back), which bounds memory: 120 groups
at 256 x 256 take about 190 MB.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from baselines.base import Batch, MethodCard, Setting, image_score_from_map

GroupKey = tuple[str, str | None, str | None]


@dataclass
class GaussianConfig:
    """Options of the ``gaussian`` method."""

    stats_size: int = 256
    """Longer side, in pixels, at which statistics are kept; larger images are downsampled."""
    min_std: float = 0.02
    """Floor of the per-pixel standard deviation, in [0, 1] intensity units: pixels that never
    vary in training would otherwise score noise as infinitely anomalous."""
    blur_sigma: float = 2.0
    """Sigma, in pixels of the statistics grid, of the Gaussian blur of the map; 0 disables it."""
    top_fraction: float = 0.01
    """Image score: mean of this fraction of the highest map pixels; 0 takes the maximum."""

    def __post_init__(self) -> None:
        if self.stats_size < 8:
            raise ValueError(f"stats_size must be at least 8, got {self.stats_size}")
        if self.min_std <= 0:
            raise ValueError(f"min_std must be positive, got {self.min_std}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        if not 0.0 <= self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in [0, 1], got {self.top_fraction}")


class _Moments:
    """Running per-pixel sum and sum of squares (float64) of one group's images."""

    def __init__(self, shape: torch.Size) -> None:
        self.count = 0
        self.total = torch.zeros(shape, dtype=torch.float64)
        self.total_squares = torch.zeros(shape, dtype=torch.float64)

    def add(self, image: torch.Tensor) -> None:
        if image.shape != self.total.shape:
            raise ValueError(
                f"training images of one group must share a size: got {tuple(image.shape)} after {tuple(self.total.shape)}"
            )
        image = image.double()
        self.count += 1
        self.total += image
        self.total_squares += image * image

    def mean_and_inverse_std(self, min_std: float) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        variance = (self.total_squares / self.count - mean * mean).clamp_min(0.0)
        inverse_std = 1.0 / torch.sqrt(variance + min_std**2)
        return mean.float(), inverse_std.float()


class GaussianMethod:
    """Per-pixel Gaussian statistics per (category, view, illumination)."""

    name: ClassVar[str] = "gaussian"
    card: ClassVar[MethodCard] = MethodCard(settings=("single-class", "multi-class", "few-shot"))
    """Statistics are per category and pixel-aligned pose, so nothing transfers to a category
    never seen in training: no zero-shot."""
    Config: ClassVar[type] = GaussianConfig

    def __init__(self, config: GaussianConfig | None = None) -> None:
        self.config = config or GaussianConfig()
        self._means: dict[GroupKey, torch.Tensor] = {}
        self._inverse_stds: dict[GroupKey, torch.Tensor] = {}

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Accumulate the per-pixel mean and variance of every group in one pass."""
        moments: dict[GroupKey, _Moments] = {}
        for batch in train:
            images = self._to_stats_grid(batch.images)
            for index, key in enumerate(_group_keys(batch)):
                for group in (key, (key[0], None, None)):
                    if group not in moments:
                        moments[group] = _Moments(images[index].shape)
                    moments[group].add(images[index])
        if not moments:
            raise ValueError("gaussian: no training images")
        self._means, self._inverse_stds = {}, {}
        for key, moment in moments.items():
            self._means[key], self._inverse_stds[key] = moment.mean_and_inverse_std(self.config.min_std)

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Squared per-pixel z-scores summed over channels, blurred, at the input size."""
        if not self._means:
            raise RuntimeError("gaussian: predict called before fit")
        images = self._to_stats_grid(batch.images)
        means, inverse_stds = [], []
        for key in _group_keys(batch):
            group = key if key in self._means else (key[0], None, None)
            if group not in self._means:
                raise ValueError(f"gaussian: category {key[0]!r} was not in the training data")
            if self._means[group].shape != images.shape[1:]:
                raise ValueError(
                    f"gaussian: image size {tuple(batch.images.shape[-2:])} differs from the training images of {key[0]!r}"
                )
            means.append(self._means[group])
            inverse_stds.append(self._inverse_stds[group])
        distances = ((images - torch.stack(means)) * torch.stack(inverse_stds)).square().sum(dim=1, keepdim=True)
        distances = _gaussian_blur(distances, self.config.blur_sigma)
        height, width = batch.images.shape[-2:]
        if distances.shape[-2:] != (height, width):
            distances = F.interpolate(distances, size=(height, width), mode="bilinear", align_corners=False)
        maps = distances[:, 0]
        scores = image_score_from_map(maps, self.config.top_fraction)
        return scores.numpy().astype(np.float32), maps.numpy().astype(np.float32, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """``mean/<group>`` and ``inverse_std/<group>`` tensors; ``<group>`` is the JSON list
        ``[category, view, illumination]``."""
        state: dict[str, Any] = {}
        for key, mean in self._means.items():
            name = json.dumps(list(key))
            state[f"mean/{name}"] = mean
            state[f"inverse_std/{name}"] = self._inverse_stds[key]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the statistics written by ``state_dict``."""
        means, inverse_stds = {}, {}
        for name, tensor in state.items():
            kind, _, group = name.partition("/")
            if kind not in ("mean", "inverse_std"):
                raise ValueError(f"gaussian: unexpected state entry {name!r}")
            target = means if kind == "mean" else inverse_stds
            target[tuple(json.loads(group))] = torch.as_tensor(tensor, dtype=torch.float32)
        if means.keys() != inverse_stds.keys():
            raise ValueError("gaussian: state has means and inverse stds for different groups")
        self._means, self._inverse_stds = means, inverse_stds

    def _to_stats_grid(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 in [0, 1], area-downsampled to at most ``stats_size``."""
        pixels = images.float().div_(255.0)
        height, width = pixels.shape[-2:]
        longer = max(height, width)
        if longer <= self.config.stats_size:
            return pixels
        scale = self.config.stats_size / longer
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return F.interpolate(pixels, size=size, mode="area")


def _group_keys(batch: Batch) -> list[GroupKey]:
    return list(zip(batch.categories, batch.views, batch.illuminations, strict=True))


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps, kernel radius 3 sigma, reflected borders."""
    if sigma == 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    if radius < 1:
        return maps
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))
