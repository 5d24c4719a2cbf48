"""Maps, scores and image geometry shared by the feature-reconstruction methods (INP-Former,
Dinomaly): the cosine-distance anomaly maps of the official code and of the M2AD code, their
smoothing, the top-k image score, and the resize / centre-crop / ImageNet normalisation of the
official test transform (with the way back from crop maps to the input frame).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from baselines.backbones import registry


def default_target_layers(depth: int) -> tuple[int, ...]:
    """DINOv2 blocks INP-Former and Dinomaly tap: 2-9 for 12 blocks (ViT-S/B), 4, 6, ..., 18 for 24 (ViT-L);
    for other depths every block (an even count) or every block but the first (odd depths)."""
    if depth == 12:
        return tuple(range(2, 10))
    if depth == 24:
        return tuple(range(4, 19, 2))
    return tuple(range(depth % 2, depth))


def anomaly_map(encoder: list[torch.Tensor], decoder: list[torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Official ``cal_anomaly_maps``: per group 1 - cosine over channels, bilinear
    (``align_corners=True``) to ``size``, mean over groups -> (B, 1, H, W) float32."""
    maps = []
    for target, output in zip(encoder, decoder, strict=True):
        distance = 1.0 - F.cosine_similarity(target.float(), output.float(), dim=1)
        maps.append(F.interpolate(distance.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=True))
    return torch.cat(maps, dim=1).mean(dim=1, keepdim=True)


def m2ad_discrepancy_map(encoder: list[torch.Tensor], decoder: list[torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The M2AD code's ``compute_discrepancy_map`` (``util/compute_am.py``, ``amap_mode='add'``,
    cosine): per group 1 - cosine, bilinear (``align_corners=True``) to ``size``, summed in
    float64 and divided by N * N (its line 46 divides by ``len(list) * sum(weights)`` with unit
    weights, i.e. N squared, not N) -> (B, 1, H, W) float64."""
    total = None
    for target, output in zip(encoder, decoder, strict=True):
        distance = 1.0 - F.cosine_similarity(target.float(), output.float(), dim=1)
        resized = F.interpolate(distance.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=True).double()
        total = resized if total is None else total + resized
    return total / (len(encoder) ** 2)


def official_gaussian_kernel(size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """The official ``get_gaussian_kernel``: a normalised ``size`` x ``size`` Gaussian (1, 1, k, k)."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    grid = coords[None, :] ** 2 + coords[:, None] ** 2
    kernel = torch.exp(-grid / (2.0 * sigma**2))
    return (kernel / kernel.sum()).view(1, 1, size, size)


def smooth(maps: torch.Tensor, method: str = "official") -> torch.Tensor:
    """Smooth (B, 1, H, W) maps: ``official`` 5 x 5 sigma-4 Gaussian with zero padding,
    ``scipy`` ``ndimage.gaussian_filter(sigma=4)`` per map (M2AD code), or ``none``."""
    if method == "official":
        kernel = official_gaussian_kernel().to(maps.device, maps.dtype)
        return F.conv2d(maps, kernel, padding=kernel.shape[-1] // 2)
    if method == "scipy":
        smoothed = np.stack([ndimage.gaussian_filter(item, sigma=4) for item in maps[:, 0].cpu().numpy()])
        return torch.from_numpy(smoothed).unsqueeze(1).to(maps.device)  # truncate 4: a 33 x 33 kernel
    if method == "none":
        return maps
    raise ValueError(f"unknown smoothing {method!r}; expected official, scipy or none")


def top_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Official image score: mean of the top ``int(pixels * fraction)`` values of each map; the
    maximum when that count is 0."""
    flat = maps.reshape(maps.shape[0], -1)
    count = int(flat.shape[1] * fraction)
    if count == 0:
        return flat.amax(dim=1)
    return flat.topk(count, dim=1).values.mean(dim=1)


def resize_crop(images: torch.Tensor, input_size: int, crop_size: int) -> torch.Tensor:
    """Official geometry of uint8 (B, 3, H, W): resize to ``input_size`` square (bilinear,
    antialiased, rounded to uint8 as PIL does), then centre-crop ``crop_size``; stays uint8."""
    if images.shape[-2:] != (input_size, input_size):
        resized = F.interpolate(images.float(), size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
        images = resized.round_().clamp_(0, 255).to(torch.uint8)
    offset = (input_size - crop_size) // 2
    return images[..., offset : offset + crop_size, offset : offset + crop_size]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 scaled to [0, 1] and ImageNet-normalised (ToTensor + Normalize)."""
    return registry.normalize(images, "wide_resnet50_2")


def preprocess(images: torch.Tensor, input_size: int, crop_size: int) -> torch.Tensor:
    """The official test transform of uint8 images: ``resize_crop`` then ``normalize``."""
    return normalize(resize_crop(images, input_size, crop_size))


def uncrop(maps: torch.Tensor, height: int, width: int, input_size: int, crop_size: int) -> torch.Tensor:
    """Place (B, h, w) maps of the centre crop into (B, height, width) input frames; the border
    outside the crop gets each map's minimum."""
    top = round((input_size - crop_size) // 2 * height / input_size)
    left = round((input_size - crop_size) // 2 * width / input_size)
    crop_h, crop_w = height - 2 * top, width - 2 * left
    resized = F.interpolate(maps.unsqueeze(1), size=(crop_h, crop_w), mode="bilinear", align_corners=False)[:, 0]
    if (crop_h, crop_w) == (height, width):
        return resized
    out = maps.reshape(maps.shape[0], -1).amin(dim=1).view(-1, 1, 1).expand(-1, height, width).clone()
    out[:, top : top + crop_h, left : left + crop_w] = resized
    return out


__all__ = ["anomaly_map", "default_target_layers", "m2ad_discrepancy_map", "normalize", "official_gaussian_kernel", "preprocess", "resize_crop", "smooth", "top_mean", "uncrop"]
