"""``msflow``: MSFlow (Zhou et al., IEEE TNNLS 2024, arXiv 2308.15300), re-implemented without
the official code (it is CC BY-NC-ND: nothing here is derived from it).

Architecture (``MSFlowModel``):

* a frozen CNN encoder from the backbone registry; three stages (WRN-50-2 ``layer1..3``,
  EfficientNet-Lite0 strides 4, 8, 16), each 3 x 3 average-pooled with stride 2;
* one **parallel flow** per scale, of different depths (asymmetric: 2, 5, 8 blocks): each block
  (``CouplingBlock``) is an affine coupling whose subnet (conv 3 x 3 - LayerNorm - ReLU - conv
  3 x 3) reads one half of the channels and a 2-D sine/cosine position code, then a learned
  global per-channel scale and offset and a fixed channel permutation;
* the **fusion flow** (``FusionCoupling``): a fixed permutation per scale, then a two-sided
  affine coupling whose subnet sees every scale at once (average-pooled to the coarsest grid,
  concatenated, mixed, split and resized back), so the scales exchange information.

Loss: the negative log-likelihood of a standard normal latent, sum over scales of
0.5 ||z||^2 minus the total log|det J|, averaged over the batch.  Maps: per scale the log
density -0.5 mean_c z^2; the pixel map sums the per-scale probabilities (exp of the log density
minus its image maximum, resized to the input), the image score is the top-k mean of the map
made from the product of the scales (the sum of their log densities).

Presets: ``official`` (the paper's recipe: every flow trains) and ``m2ad-paper`` (what the M2AD
release ``hustCYQ/M2AD`` does: its parallel flows sit in a plain Python list, so they keep their
random initialisation and only the fusion flow trains, with its trainer's recipe).  Every
choice and its source is in docs/methods.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.backbones import registry, wide_resnet
from baselines.base import Batch, MethodCard, Setting, choose_device, choose_seed, fill_from_preset
from baselines.patchcore import choose_backbone
from baselines.reconstruction import resize_crop
from baselines.training import Recipe, autocast, train_head

STAGES = {"wide_resnet50_2": ("layer1", "layer2", "layer3"), "efficientnet_lite0": ("stride4", "stride8", "stride16")}
STAGE_CHANNELS = {
    "wide_resnet50_2": tuple(wide_resnet.FEATURE_CHANNELS[name] for name in STAGES["wide_resnet50_2"]),
    "efficientnet_lite0": (24, 40, 112),
}
FUSION_ATAN_FACTOR = 0.636
"""Soft clamp of the fusion coupling: ``clamp * 0.636 * atan(s / clamp)`` (0.636 ~ 2 / pi, so |log scale| < clamp)."""
COEFFICIENT_SCALE = 0.1
"""The parallel blocks' subnet output is multiplied by this before the clamp (small steps at initialisation)."""


def position_code(channels: int, height: int, width: int) -> torch.Tensor:
    """2-D sine/cosine position code (channels, height, width): the first half of the channels
    encodes the column, the second the row, alternating sin and cos at the frequencies
    10000^(-2i / (channels / 2)) of the transformer code."""
    if channels % 4:
        raise ValueError(f"the position code needs a multiple of 4 channels, got {channels}")
    half = channels // 2
    frequencies = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * (-math.log(10000.0) / half))
    columns = torch.arange(width, dtype=torch.float32)[None, :] * frequencies[:, None]  # (half/2, W)
    rows = torch.arange(height, dtype=torch.float32)[None, :] * frequencies[:, None]  # (half/2, H)
    code = torch.zeros(channels, height, width)
    code[0:half:2] = torch.sin(columns)[:, None, :].expand(-1, height, -1)
    code[1:half:2] = torch.cos(columns)[:, None, :].expand(-1, height, -1)
    code[half::2] = torch.sin(rows)[:, :, None].expand(-1, -1, width)
    code[half + 1 :: 2] = torch.cos(rows)[:, :, None].expand(-1, -1, width)
    return code


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise every position's channel vector."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvSubnet(nn.Sequential):
    """conv 3 x 3 (in -> hidden) - LayerNorm over channels - ReLU - conv 3 x 3 (hidden -> out)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int | None = None) -> None:
        hidden = hidden or in_channels
        super().__init__(nn.Conv2d(in_channels, hidden, 3, padding=1), ChannelNorm(hidden), nn.ReLU(), nn.Conv2d(hidden, out_channels, 3, padding=1))


class CouplingBlock(nn.Module):
    """One block of a parallel flow, (B, C, H, W) -> (B, C, H, W) with an exact log|det J|.

    x = [x1, x2] (the first ceil(C / 2) channels and the rest); a = 0.1 * subnet([x1, cond]); s = clamp * tanh(a_s);
    y2 = x2 * exp(s) + a_t; then y = P(g * [x1, y2] + b) with a per-channel scale
    g = 0.1 softplus_{beta=0.5}(w) (1 at initialisation), offset b and a fixed random channel
    permutation P.  log|det J| = sum(s) + H W sum(log g).  The layout of FrEIA's
    ``AllInOneBlock`` (MIT) with soft-plus global affine, which the M2AD release's parallel flows use.
    """

    def __init__(self, channels: int, cond_channels: int, clamp: float, generator: torch.Generator) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling block needs at least 2 channels, got {channels}")
        self.split = (channels - channels // 2, channels // 2)
        self.clamp = clamp
        self.subnet = ConvSubnet(self.split[0] + cond_channels, 2 * self.split[1])
        self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), 2.0 * math.log(math.exp(5.0) - 1.0)))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        permutation = torch.randperm(channels, generator=generator)
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def scale(self) -> torch.Tensor:
        """The global per-channel scale g (1, C, 1, 1)."""
        return 0.1 * F.softplus(self.global_scale, beta=0.5)

    def coefficients(self, x1: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clamped log-scale s and shift t of the second half, from the first half and the condition."""
        inputs = x1 if cond is None else torch.cat([x1, cond], dim=1)
        a = COEFFICIENT_SCALE * self.subnet(inputs)
        log_scale, shift = a.split(self.split[1], dim=1)
        return self.clamp * torch.tanh(log_scale), shift

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det J| per sample)."""
        x1, x2 = x.split(self.split, dim=1)
        log_scale, shift = self.coefficients(x1, cond)
        y = torch.cat([x1, x2 * torch.exp(log_scale) + shift], dim=1)
        scale = self.scale()
        y = (y * scale + self.global_offset)[:, self.permutation]
        log_det = log_scale.sum(dim=(1, 2, 3)) + x.shape[-2] * x.shape[-1] * torch.log(scale).sum()
        return y, log_det

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x of ``forward``'s y (exact up to rounding)."""
        y = (y[:, self.inverse_permutation] - self.global_offset) / self.scale()
        x1, y2 = y.split(self.split, dim=1)
        log_scale, shift = self.coefficients(x1, cond)
        return torch.cat([x1, (y2 - shift) * torch.exp(-log_scale)], dim=1)


class ParallelFlow(nn.Module):
    """A stack of ``CouplingBlock`` on one scale, conditioned on the position code."""

    def __init__(self, channels: int, cond_channels: int, depth: int, clamp: float, generator: torch.Generator) -> None:
        super().__init__()
        self.cond_channels = cond_channels
        self.blocks = nn.ModuleList(CouplingBlock(channels, cond_channels, clamp, generator) for _ in range(depth))

    def condition(self, x: torch.Tensor) -> torch.Tensor | None:
        """The position code of ``x``'s grid, repeated over the batch."""
        if not self.cond_channels:
            return None
        code = position_code(self.cond_channels, x.shape[-2], x.shape[-1]).to(x.device, x.dtype)
        return code.unsqueeze(0).expand(x.shape[0], -1, -1, -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log|det J| per sample)."""
        cond = self.condition(x)
        log_det = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, block_log_det = block(x, cond)
            log_det = log_det + block_log_det
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """x of ``forward``'s z."""
        cond = self.condition(z)
        for block in reversed(self.blocks):
            z = block.inverse(z, cond)
        return z


class FusionSubnet(nn.Module):
    """Cross-scale subnet: the inputs of every scale, average-pooled to the last (coarsest) grid
    and concatenated, go through conv 3 x 3 (to a quarter of the channels) - LayerNorm - ReLU -
    conv 3 x 3 - ReLU; the result is split per scale, resized back (bilinear, align_corners),
    added to that scale's input, and two 3 x 3 convolutions per scale give its log-scale and shift."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        total = sum(in_channels)
        self.in_channels = tuple(in_channels)
        self.mix = nn.Sequential(nn.Conv2d(total, max(1, total // 4), 3, padding=1), ChannelNorm(max(1, total // 4)), nn.ReLU(),
                                 nn.Conv2d(max(1, total // 4), total, 3, padding=1), nn.ReLU())
        self.log_scale = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1) for cin, cout in zip(in_channels, out_channels, strict=True))
        self.shift = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1) for cin, cout in zip(in_channels, out_channels, strict=True))

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per scale (raw log-scale, shift)."""
        grid = inputs[-1].shape[-2:]
        mixed = self.mix(torch.cat([F.adaptive_avg_pool2d(x, grid) for x in inputs], dim=1)).split(self.in_channels, dim=1)
        context = [x + F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=True) for x, m in zip(inputs, mixed, strict=True)]
        return [(conv_s(c), conv_t(c)) for c, conv_s, conv_t in zip(context, self.log_scale, self.shift, strict=True)]


class FusionCoupling(nn.Module):
    """The fusion flow: a fixed random channel permutation per scale, then x_l = [a_l, b_l];
    a_l' = a_l exp(c(s_l)) + t_l with (s, t) = subnet_b(b); b_l' = b_l exp(c(s'_l)) + t'_l with
    (s', t') = subnet_a(a'); c(s) = clamp * 0.636 * atan(s / clamp).  log|det J| = sum of every c(s)."""

    def __init__(self, channels: Sequence[int], clamp: float, generator: torch.Generator) -> None:
        super().__init__()
        self.first = tuple(c // 2 for c in channels)
        self.second = tuple(c - c // 2 for c in channels)
        self.clamp = clamp
        for index, count in enumerate(channels):
            permutation = torch.randperm(count, generator=generator)
            self.register_buffer(f"permutation{index}", permutation)
            self.register_buffer(f"inverse_permutation{index}", torch.argsort(permutation))
        self.subnet_b = FusionSubnet(self.second, self.first)
        self.subnet_a = FusionSubnet(self.first, self.second)

    def soft_clamp(self, s: torch.Tensor) -> torch.Tensor:
        """The clamped log-scale."""
        return self.clamp * FUSION_ATAN_FACTOR * torch.atan(s / self.clamp)

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(z per scale, log|det J| per sample)."""
        xs = [x[:, getattr(self, f"permutation{index}")] for index, x in enumerate(xs)]
        halves = [x.split((a, b), dim=1) for x, a, b in zip(xs, self.first, self.second, strict=True)]
        log_det = xs[0].new_zeros(xs[0].shape[0])
        new_a = []
        for (a, _), (s, t) in zip(halves, self.subnet_b([b for _, b in halves]), strict=True):
            s = self.soft_clamp(s)
            new_a.append(a * torch.exp(s) + t)
            log_det = log_det + s.sum(dim=(1, 2, 3))
        out = []
        for (_, b), a, (s, t) in zip(halves, new_a, self.subnet_a(new_a), strict=True):
            s = self.soft_clamp(s)
            out.append(torch.cat([a, b * torch.exp(s) + t], dim=1))
            log_det = log_det + s.sum(dim=(1, 2, 3))
        return out, log_det

    def inverse(self, zs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """x per scale of ``forward``'s z."""
        halves = [z.split((a, b), dim=1) for z, a, b in zip(zs, self.first, self.second, strict=True)]
        new_a = [a for a, _ in halves]
        old_b = [(b - t) * torch.exp(-self.soft_clamp(s)) for (_, b), (s, t) in zip(halves, self.subnet_a(new_a), strict=True)]
        old_a = [(a - t) * torch.exp(-self.soft_clamp(s)) for a, (s, t) in zip(new_a, self.subnet_b(old_b), strict=True)]
        return [torch.cat([a, b], dim=1)[:, getattr(self, f"inverse_permutation{index}")] for index, (a, b) in enumerate(zip(old_a, old_b, strict=True))]


@dataclass(frozen=True)
class MSFlowArch:
    """Shape of an MSFlow head: channels per scale, parallel depths, condition width, clamp, pooling."""

    channels: tuple[int, ...]
    depths: tuple[int, ...] = (2, 5, 8)
    cond_channels: int = 64
    clamp: float = 1.9
    pool: str = "avg"

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.depths) or not self.channels:
            raise ValueError(f"one parallel depth per scale: {len(self.channels)} scales, depths {self.depths}")
        if min(self.depths) < 1 or self.clamp <= 0:
            raise ValueError("parallel depths must be >= 1 and clamp positive")
        if self.cond_channels < 0 or self.cond_channels % 4:
            raise ValueError(f"cond_channels must be a non-negative multiple of 4, got {self.cond_channels}")
        if self.pool not in ("avg", "max", "none"):
            raise ValueError(f"pool must be avg, max or none, got {self.pool!r}")


class MSFlowModel(nn.Module):
    """Frozen encoder + parallel flows (``parallel.{l}``) + fusion flow (``fusion``)."""

    def __init__(self, arch: MSFlowArch, encoder: nn.Module, layers: Sequence[str], seed: int = 0) -> None:
        super().__init__()
        self.arch = arch
        self.layers = tuple(layers)
        self.encoder = encoder.eval().requires_grad_(False)
        generator = torch.Generator().manual_seed(seed)
        self.parallel = nn.ModuleList(ParallelFlow(c, arch.cond_channels, d, arch.clamp, generator) for c, d in zip(arch.channels, arch.depths, strict=True))
        self.fusion = FusionCoupling(arch.channels, arch.clamp, generator)
        self.mixed_precision = False
        """bf16 autocast of the encoder on CUDA when ``True`` (the flows and maps stay float32)."""

    def train(self, mode: bool = True) -> MSFlowModel:
        """The frozen encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Pooled encoder maps (B, C_l, h_l, w_l) of normalised images, float32."""
        with torch.no_grad(), autocast(images.device, self.mixed_precision):
            maps = registry.tap(self.encoder, images, self.layers)
        if self.arch.pool == "avg":
            maps = [F.avg_pool2d(m, 3, stride=2, padding=1) for m in maps]
        elif self.arch.pool == "max":
            maps = [F.max_pool2d(m, 3, stride=2, padding=1) for m in maps]
        return [m.float() for m in maps]

    def flow(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Parallel flows then the fusion flow: (z per scale, total log|det J| per sample)."""
        zs, log_det = [], features[0].new_zeros(features[0].shape[0])
        for x, parallel in zip(features, self.parallel, strict=True):
            z, block_log_det = parallel(x)
            zs.append(z)
            log_det = log_det + block_log_det
        zs, fusion_log_det = self.fusion(zs)
        return zs, log_det + fusion_log_det

    def inverse(self, zs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Features of ``flow``'s latents."""
        return [parallel.inverse(x) for x, parallel in zip(self.fusion.inverse(zs), self.parallel, strict=True)]

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Latents per scale and the total log|det J| of normalised images."""
        return self.flow(self.features(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, top_k: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,) and pixel maps (B, H, W) at the size of the normalised ``images``."""
        was_training = self.training
        self.eval()
        try:
            zs, _ = self(images)
        finally:
            self.train(was_training)
        return aggregate([log_density(z) for z in zs], tuple(images.shape[-2:]), top_k)


def nll_loss(zs: Sequence[torch.Tensor], log_det: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood under a standard normal latent, constants dropped:
    mean over the batch of sum_l 0.5 ||z_l||^2 - log|det J|."""
    return (sum(0.5 * (z.float() ** 2).sum(dim=(1, 2, 3)) for z in zs) - log_det).mean()


def log_density(z: torch.Tensor) -> torch.Tensor:
    """Per-position log density of one scale's latent, -0.5 mean over channels of z^2 (B, h, w)."""
    return -0.5 * (z.float() ** 2).mean(dim=1)


def _image_max(maps: torch.Tensor) -> torch.Tensor:
    return maps.amax(dim=(-2, -1), keepdim=True)


def aggregate(log_densities: Sequence[torch.Tensor], size: tuple[int, int], top_k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Image scores (B,) and pixel maps (B, H, W), float32, from per-scale log densities.

    Pixel map (sum of probabilities): P = sum_l up(exp(log p_l - max log p_l)), map = max P - P.
    Image score (product of probabilities): L = sum_l up(log p_l); Q = exp(L - max L);
    score = mean of the top ``int(H W top_k)`` values (at least one) of max Q - Q.
    ``up`` is bilinear with ``align_corners=True`` to ``size``; maxima are per image.
    """
    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.unsqueeze(1), size=size, mode="bilinear", align_corners=True)[:, 0]

    probability = sum(up(torch.exp(lp - _image_max(lp))) for lp in log_densities)
    pixel_map = _image_max(probability) - probability
    joint = sum(up(lp) for lp in log_densities)
    joint = torch.exp(joint - _image_max(joint))
    image_map = (_image_max(joint) - joint).reshape(joint.shape[0], -1)
    count = max(1, int(size[0] * size[1] * top_k))
    return image_map.topk(count, dim=1).values.mean(dim=1), pixel_map


@dataclass(frozen=True)
class StepRecipe(Recipe):
    """``Recipe`` whose learning rate warms up linearly (per iteration) from ``warmup_from`` x lr
    over ``warmup_epochs`` and is multiplied by ``gamma`` from each epoch in ``milestones`` on."""

    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    warmup_from: float = 1.0
    iterations_per_epoch: int = 1

    def lr_at(self, iteration: int, epoch: int, total: int) -> float:
        """Learning rate of ``iteration`` in ``epoch``."""
        rate = self.lr * self.gamma ** sum(epoch >= milestone for milestone in self.milestones)
        warmup = self.warmup_epochs * max(1, self.iterations_per_epoch)
        if iteration < warmup:
            rate *= self.warmup_from + (1.0 - self.warmup_from) * iteration / warmup
        return rate


PRESETS: dict[str, dict[str, Any]] = {
    "official": {
        "input_size": 512, "train_parallel": True, "epochs": 100, "batch_size": 4, "lr": 1e-4, "betas": (0.9, 0.999),
        "milestones": (70, 90), "gamma": 0.33, "warmup_epochs": 3, "warmup_from": 0.1, "grad_clip": 0.0, "drop_last": False,
    },
    "m2ad-paper": {
        "input_size": 256, "train_parallel": False, "epochs": 100, "batch_size": 24, "lr": 7.5e-4, "betas": (0.5, 0.999),
        "milestones": (80,), "gamma": 0.1, "warmup_epochs": 0, "warmup_from": 1.0, "grad_clip": 5.0, "drop_last": False,
    },
}


@dataclass
class MSFlowConfig:
    """Options of the ``msflow`` method; options left ``None`` come from ``preset``."""

    preset: str = "official"
    """``official`` (the paper: every flow trains) or ``m2ad-paper`` (the M2AD release: only the fusion flow trains)."""
    backbone: str = "auto"
    """``auto`` (WRN-50-2 when its weights are cached, else EfficientNet-Lite0), ``wide_resnet50_2`` or ``efficientnet_lite0``."""
    backbone_weights: str = "auto"
    """``auto`` (the registry's released weights), a weights name, a file, or ``random`` (then saved with the state)."""
    input_size: int | None = None
    """Square side the images are resized to (official code default 512; M2AD 256 or 512)."""
    depths: tuple[int, ...] = (2, 5, 8)
    """Coupling blocks of the parallel flow of each scale (asymmetric)."""
    cond_channels: int = 64
    clamp: float = 1.9
    pool: str = "avg"
    train_parallel: bool | None = None
    """Whether the parallel flows train (official) or keep their initialisation (M2AD)."""
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    betas: tuple[float, ...] | None = None
    milestones: tuple[int, ...] | None = None
    gamma: float | None = None
    warmup_epochs: int | None = None
    warmup_from: float | None = None
    grad_clip: float | None = None
    """Gradient-norm clip; 0 disables it."""
    drop_last: bool | None = None
    top_k: float = 0.03
    """Image score: mean of this top fraction of the product map."""
    feature_cache_mb: int = 2048
    """Train on features computed once when those of all training images fit in this many MiB; 0 encodes every batch."""
    seed: int | None = None
    """Seed of the flows' initialisation and the shuffling; ``None`` draws one from torch's global generator."""
    device: str = "auto"

    def __post_init__(self) -> None:
        fill_from_preset(self, PRESETS)
        if self.backbone not in ("auto", *STAGES):
            raise ValueError(f"msflow: backbone must be auto or one of {', '.join(STAGES)}, got {self.backbone!r}")
        if self.input_size < 32 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("msflow: input_size must be >= 32 and epochs, batch_size, lr positive")
        if not 0.0 < self.top_k <= 1.0 or not 0.0 < self.warmup_from <= 1.0 or self.gamma <= 0 or min(self.grad_clip, self.feature_cache_mb) < 0:
            raise ValueError("msflow: top_k and warmup_from must be in (0, 1], gamma positive, grad_clip and feature_cache_mb >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"msflow: device must be auto, cpu or cuda, got {self.device!r}")
        if len(self.depths) != len(STAGES["wide_resnet50_2"]):
            raise ValueError(f"msflow: one parallel depth per scale: the encoder gives {len(STAGES['wide_resnet50_2'])} scales, got depths {self.depths}")
        MSFlowArch(channels=(2,) * len(self.depths), depths=tuple(self.depths), cond_channels=self.cond_channels, clamp=self.clamp, pool=self.pool)
        Recipe(optimizer="adam", betas=tuple(self.betas))


class MSFlow:
    """MSFlow behind the runner's method interface: one fit trains one model on every image it is given."""

    name: ClassVar[str] = "msflow"
    card: ClassVar[MethodCard] = MethodCard(
        settings=("single-class", "multi-class", "few-shot"), weights=("wide_resnet50_2", "efficientnet_lite0"),
        reimplemented_from="arXiv 2308.15300 (MSFlow; official code CC BY-NC-ND, not used) and the M2AD release's observable behaviour",
    )
    Config: ClassVar[type] = MSFlowConfig

    def __init__(self, config: MSFlowConfig | None = None) -> None:
        self.config = config or MSFlowConfig()
        self.device = choose_device(self.name, self.config.device)
        self.backbone = choose_backbone(self.config.backbone)
        self.seed = choose_seed(self.config.seed)
        self.model: MSFlowModel | None = None

    def new_model(self) -> MSFlowModel:
        """A fresh model on the frozen encoder (random encoder weights drawn from ``seed``)."""
        config = self.config
        torch.manual_seed(self.seed)
        encoder = registry.load_backbone(self.backbone, config.backbone_weights)
        arch = MSFlowArch(channels=STAGE_CHANNELS[self.backbone], depths=tuple(config.depths), cond_channels=config.cond_channels,
                          clamp=config.clamp, pool=config.pool)
        return MSFlowModel(arch, encoder, STAGES[self.backbone], seed=self.seed).to(self.device)

    def trainable_parameters(self, model: MSFlowModel) -> list[nn.Parameter]:
        """The fusion flow's parameters, and the parallel flows' when ``train_parallel``."""
        parallel = list(model.parallel.parameters())
        for parameter in parallel:
            parameter.requires_grad_(bool(self.config.train_parallel))
        return [*(parallel if self.config.train_parallel else []), *model.fusion.parameters()]

    def recipe(self, images: int) -> StepRecipe:
        """The preset's recipe for ``images`` training images."""
        config = self.config
        batch = min(config.batch_size, images)
        per_epoch = images // batch if config.drop_last else math.ceil(images / batch)
        return StepRecipe(optimizer="adam", lr=config.lr, betas=tuple(config.betas), schedule="step", grad_clip=config.grad_clip or None,
                          batch_size=config.batch_size, drop_last=config.drop_last, epochs=config.epochs, milestones=tuple(config.milestones),
                          gamma=config.gamma, warmup_epochs=config.warmup_epochs, warmup_from=config.warmup_from, iterations_per_epoch=per_epoch)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the backbone's normalised input at ``input_size``."""
        return registry.normalize(resize_crop(images, self.config.input_size, self.config.input_size), self.backbone)

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Train the flows on the training images with the preset's recipe."""
        images = [resize_crop(batch.images, self.config.input_size, self.config.input_size) for batch in train]
        if not images:
            raise ValueError("msflow: no training images")
        model = self.new_model()
        self.train_model(model, torch.cat(images))
        self.model = model.eval()

    def train_model(self, model: MSFlowModel, images: torch.Tensor) -> list[float]:
        """The shared training loop on uint8 images at ``input_size``; returns the loss of each iteration.

        The encoder is frozen and neither recipe augments, so when the pooled features of every
        training image fit in ``feature_cache_mb`` they are computed once and the loop trains the
        flows on them (the same training up to float rounding); otherwise each batch is encoded.
        """
        model.train()
        with torch.no_grad():
            shapes = [tuple(f.shape[1:]) for f in model.features(registry.normalize(images[:1].to(self.device), self.backbone))]
        per_image = sum(math.prod(shape) for shape in shapes) * 4
        if len(images) * per_image <= self.config.feature_cache_mb * 2**20:
            inputs = self.encode(model, images)
            sizes = [math.prod(shape) for shape in shapes]

            def loss(batch: torch.Tensor, iteration: int) -> torch.Tensor:
                parts = [part.reshape(len(batch), *shape) for part, shape in zip(batch.split(sizes, dim=1), shapes, strict=True)]
                return nll_loss(*model.flow(parts))

            prepare = None
        else:
            inputs = images

            def loss(batch: torch.Tensor, iteration: int) -> torch.Tensor:
                return nll_loss(*model(batch))

            def prepare(batch: torch.Tensor) -> torch.Tensor:
                return registry.normalize(batch, self.backbone)

        return train_head(self.trainable_parameters(model), inputs, loss, self.recipe(len(images)),
                          prepare=prepare or (lambda batch: batch), device=self.device, seed=self.seed, mixed_precision=False, name="msflow")

    def encode(self, model: MSFlowModel, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of uint8 images, each image's scales flattened into one row (N, D), on the CPU."""
        rows = []
        with torch.no_grad():
            for start in range(0, len(images), self.config.batch_size):
                features = model.features(registry.normalize(images[start : start + self.config.batch_size].to(self.device), self.backbone))
                rows.append(torch.cat([f.reshape(len(f), -1) for f in features], dim=1).cpu())
        return torch.cat(rows)

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, H, W) at the batch's size."""
        if self.model is None:
            raise RuntimeError("msflow: predict called before fit")
        height, width = batch.images.shape[-2:]
        scores, maps = self.model.predict(self.prepare(batch.images.to(self.device)), top_k=self.config.top_k)
        if maps.shape[-2:] != (height, width):
            maps = F.interpolate(maps.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        return scores.cpu().numpy().astype(np.float32), maps.cpu().numpy().astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both flows (the M2AD preset's frozen parallel flows too: predict needs them) and their
        permutations; the encoder only when its weights are random (else it reloads from the registry)."""
        if self.model is None:
            raise RuntimeError("msflow: state_dict called before fit")
        keep_encoder = self.config.backbone_weights == "random"
        return {key: value for key, value in self.model.state_dict().items() if keep_encoder or not key.startswith("encoder.")}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a model written by ``state_dict`` (strict key matching)."""
        model = self.new_model()
        expected = set(model.state_dict()) if self.config.backbone_weights == "random" else {k for k in model.state_dict() if not k.startswith("encoder.")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"msflow: the state does not fit this config (backbone {self.backbone}, depths {self.config.depths}): "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.load_state_dict(state, strict=False)
        self.model = model.eval()


__all__ = ["PRESETS", "CouplingBlock", "FusionCoupling", "MSFlow", "MSFlowArch", "MSFlowConfig", "MSFlowModel", "aggregate", "log_density", "nll_loss", "position_code"]
