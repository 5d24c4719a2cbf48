"""``rdpp``: RD++, "Revisiting Reverse Distillation for Anomaly Detection" (Tien et al., CVPR 2023),
faithful to the official code (``tientrandinh/Revisiting-Reverse-Distillation``: ``main.py``,
``model/resnet.py``, ``model/de_resnet.py``, ``utils/utils_train.py``, ``utils/utils_test.py``,
``dataset/dataset.py``) and able to load its released checkpoints.

Architecture (``RDPPModel``; parameter names as the official modules, under ``proj.``, ``bn.``
and ``decoder.``, the keys of the official checkpoint file):

* a frozen WRN-50-2 teacher tapped at ``layer1``-``layer3`` (the backbone registry's ``tap``);
* the multi-scale projection layers (``MultiProjectionLayer``): per scale four 3 x 3
  convolutions C -> C/2 -> C/4 -> C/2 -> C, each followed by InstanceNorm and LeakyReLU;
* the one-class bottleneck (``BN_layer``, "OCBE"): scales 1 and 2 brought to scale 3 by strided
  3 x 3 convolutions, concatenated, three bottleneck blocks (the first with stride 2);
* the student decoder (``de_wide_resnet50_2``): three stages of bottlenecks whose strided
  convolutions are 2 x 2 transposed convolutions, returning three maps matched to the teacher's.

Losses: the cosine distillation loss (per scale 1 - cos of the flattened maps, summed) plus 0.2 x
the projection loss ``(SSOT + 0.01 reconstruction + 0.1 contrast) / 1.11``: SSOT is the debiased
Sinkhorn divergence (GeomLoss ``SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.95,
diameter=1e7)``, re-implemented here) between the softmax of each projected sample and a shuffled
copy of the batch; reconstruction is 1 - per-pixel cosine between projected noisy and projected
clean features; contrast is ``CosineEmbeddingLoss(margin=0.5)`` with target -1 between the noisy
teacher features and the projected clean ones.  The noisy images carry a patch of fractal noise
(official) or DRAEM-style anomalies (the M2AD code).

Anomaly map: per scale 1 - cos over channels, bilinear (``align_corners=True``) to the input size,
summed (official; the M2AD code divides the sum by N^2 = 9), SciPy ``gaussian_filter`` sigma 4;
image score: the map's maximum (official) or the mean of its top 1 % (M2AD).

Presets: ``official`` (``main.py``: Adam (0.5, 0.999) at 1e-3 for the projection layers and 5e-3
for OCBE + decoder, gradients of 2 batches accumulated, batch 16, per-category epochs) and
``m2ad-paper`` (``hustCYQ/M2AD`` ``configs/benchmark/rdpp/rdpp_256_100e.py`` and its trainer): see
docs/methods.md for every difference with its source line.  Every width follows from the three
tapped teacher widths, so an EfficientNet-Lite0 teacher (ours, for offline runs) fits the same code.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.backbones import registry
from baselines.backbones.efficientnet_lite import EfficientNetLite0
from baselines.backbones.wide_resnet import Bottleneck, WideResNet50
from baselines.base import Batch, MethodCard, Setting, choose_device, choose_seed, fill_from_preset
from baselines.inpformer_pp import synthesize
from baselines.reconstruction import resize_crop, smooth, top_mean
from baselines.training import Recipe, autocast, train_head

TEACHERS: dict[str, tuple[tuple[str, ...], tuple[int, int, int]]] = {
    "wide_resnet50_2": (("layer1", "layer2", "layer3"), (256, 512, 1024)),
    "wide_resnet50_2_tiny": (("layer1", "layer2", "layer3"), tuple(c * registry.TINY_WRN_BASE // 64 for c in (256, 512, 1024))),
    "efficientnet_lite0": (("stride4", "stride8", "stride16"), (24, 40, 112)),
}
"""Teachers: the registry backbone, its tapped layers (strides 4, 8, 16) and their channels.
EfficientNet-Lite0 is our addition (ImageNet weights available offline), not in either code."""
PROJECTION_WEIGHT = 0.2
"""Weight of the projection loss next to the distillation loss (``main.py:38,147``)."""

OFFICIAL_EPOCHS = {
    "carpet": 10, "leather": 10, "grid": 260, "tile": 260, "wood": 100, "cable": 240, "capsule": 300, "hazelnut": 160,
    "metal_nut": 160, "screw": 280, "toothbrush": 280, "transistor": 300, "zipper": 300, "pill": 200, "bottle": 200,
}  # fmt: skip
"""The official per-category epochs of MVTec AD (``main.py:95-120``)."""


@dataclass(frozen=True)
class RDPPArch:
    """Widths of an RD++: the channels (c1, c2, c3) of the three tapped teacher maps (WRN-50-2:
    256, 512, 1024) and the bottleneck width factors of the decoder and of the OCBE.  Every width
    of the official network is the formula of these below (with WRN-50-2's, the official ones)."""

    channels: tuple[int, int, int] = (256, 512, 1024)
    decoder_width_factor: int = 2
    ocbe_width_factor: int = 2
    """2 in the official ``BN_layer`` (``width_per_group=128``); 1 in the M2AD code, whose ``MFF_OCE``
    uses timm's ``Bottleneck`` with its default ``base_width=64`` (``model/rdpp.py:378``)."""
    ocbe_spare_conv: bool = True
    """The official ``BN_layer`` holds a ``conv4``/``bn4`` that its forward never uses (``resnet.py:400-401``);
    M2AD's ``MFF_OCE`` drops them."""

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or any(c < 4 or c % 4 for c in self.channels) or self.channels[2] % 8 or min(self.decoder_width_factor, self.ocbe_width_factor) < 1:
            raise ValueError(f"RD++ needs three tapped widths divisible by 4 (the last by 8) and width factors >= 1, got {self}")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3 x 3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def deconv2x2(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """2 x 2 transposed convolution with stride 2 (the decoder's upsampling), no bias."""
    return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)


class ProjectionLayer(nn.Module):
    """Official ``ProjLayer``: C -> C/2 -> C/4 -> C/2 -> C 3 x 3 convolutions (with bias), each
    followed by InstanceNorm2d (no affine) and LeakyReLU(0.01); parameters ``proj.{0,3,6,9}``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = (channels, channels // 2, channels // 4, channels // 2, channels)
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(width_in, width_out, 3, padding=1), nn.InstanceNorm2d(width_out), nn.LeakyReLU()]
        self.proj = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project one scale's features."""
        return self.proj(features)


class MultiProjection(nn.Module):
    """Official ``MultiProjectionLayer``: one ``ProjectionLayer`` per tapped scale (``proj_a/b/c``)."""

    def __init__(self, channels: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj_a = ProjectionLayer(channels[0])
        self.proj_b = ProjectionLayer(channels[1])
        self.proj_c = ProjectionLayer(channels[2])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Project the three scales."""
        return [self.proj_a(features[0]), self.proj_b(features[1]), self.proj_c(features[2])]


class OneClassBottleneck(nn.Module):
    """Official ``BN_layer`` (OCBE): scale 1 through two strided 3 x 3 conv-BN-ReLU, scale 2 through
    one, concatenated with scale 3, then three bottlenecks (the first strided) -> 2 x c3 channels."""

    def __init__(self, arch: RDPPArch) -> None:
        super().__init__()
        (c1, c2, c3), factor = arch.channels, arch.ocbe_width_factor
        self.conv1 = conv3x3(c1, c2, 2)
        self.bn1 = nn.BatchNorm2d(c2)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c2, c3, 2)
        self.bn2 = nn.BatchNorm2d(c3)
        self.conv3 = conv3x3(c2, c3, 2)
        self.bn3 = nn.BatchNorm2d(c3)
        if arch.ocbe_spare_conv:
            self.conv4 = nn.Conv2d(4 * c3, 2 * c3, 1, bias=False)
            self.bn4 = nn.BatchNorm2d(2 * c3)
        self.bn_layer = nn.Sequential(Bottleneck(3 * c3, c3 // 2, 2, factor), *(Bottleneck(2 * c3, c3 // 2, 1, factor) for _ in range(2)))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Fuse the three projected scales into the bottleneck code."""
        first = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(features[0]))))))
        second = self.relu(self.bn3(self.conv3(features[1])))
        return self.bn_layer(torch.cat([first, second, features[2]], dim=1)).contiguous()


class DecoderBottleneck(nn.Module):
    """The official decoder ``Bottleneck``: 1 x 1, then 3 x 3 (or a 2 x 2 transposed convolution
    when upsampling), then 1 x 1, with an ``upsample`` shortcut when the shape changes."""

    def __init__(self, in_channels: int, planes: int, stride: int, width_factor: int) -> None:
        super().__init__()
        width, out_channels = planes * width_factor, planes * 4
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = deconv2x2(width, width) if stride == 2 else conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = None
        if stride != 1 or in_channels != out_channels:
            self.upsample = nn.Sequential(deconv2x2(in_channels, out_channels), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual (upsampling) bottleneck."""
        shortcut = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


class Decoder(nn.Module):
    """Official ``de_wide_resnet50_2``: stages of 3, 4 and 6 bottlenecks (planes c3/4, c2/4, c1/4),
    each doubling the resolution; returns [scale 1, scale 2, scale 3] like the teacher's taps."""

    def __init__(self, arch: RDPPArch) -> None:
        super().__init__()
        c1, c2, c3 = arch.channels
        in_channels = 2 * c3
        for index, (planes, blocks) in enumerate(((c3 // 4, 3), (c2 // 4, 4), (c1 // 4, 6)), start=1):
            layer = [DecoderBottleneck(in_channels, planes, 2, arch.decoder_width_factor)]
            layer += [DecoderBottleneck(planes * 4, planes, 1, arch.decoder_width_factor) for _ in range(blocks - 1)]
            in_channels = planes * 4
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def forward(self, code: torch.Tensor) -> list[torch.Tensor]:
        """Decode the bottleneck code into three maps (finest first)."""
        third = self.layer1(code)
        second = self.layer2(third)
        first = self.layer3(second)
        return [first, second, third]


def official_init(module: nn.Module) -> None:
    """The official initialisation of OCBE and decoder: Kaiming-normal (fan_out, ReLU) for Conv2d
    (transposed convolutions keep PyTorch's default), BatchNorm (1, 0)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class RDPPOutput(NamedTuple):
    """Teacher and student maps (three scales each); in training also the projected clean
    features and, with noisy images, their teacher features and projections."""

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]
    projected: list[torch.Tensor]
    noisy_teacher: list[torch.Tensor] | None = None
    noisy_projected: list[torch.Tensor] | None = None


class RDPPModel(nn.Module):
    """RD++ with the official parameter names (``proj.*``, ``bn.*``, ``decoder.*``) and the frozen
    teacher under ``encoder.*``."""

    def __init__(self, arch: RDPPArch, encoder: WideResNet50 | EfficientNetLite0 | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.encoder = encoder if encoder is not None else registry.spec(teacher_name(arch.channels)).build()
        self.encoder.requires_grad_(False)
        self.taps = TEACHERS["efficientnet_lite0" if isinstance(self.encoder, EfficientNetLite0) else "wide_resnet50_2"][0]
        self.proj = MultiProjection(arch.channels)
        self.bn = OneClassBottleneck(arch)
        self.decoder = Decoder(arch)
        official_init(self.bn)
        official_init(self.decoder)
        self.mixed_precision = True
        """bf16 autocast on CUDA (no effect on CPU); ``False`` runs float32 everywhere."""

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(projection parameters, OCBE + decoder parameters): the official two optimisers' sets."""
        return list(self.proj.parameters()), [*self.decoder.parameters(), *self.bn.parameters()]

    def train(self, mode: bool = True) -> RDPPModel:
        """Train the heads; the frozen teacher stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def teacher(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen teacher's three tapped maps."""
        with torch.no_grad():
            return registry.tap(self.encoder, images, self.taps)

    def forward(self, images: torch.Tensor, noisy: torch.Tensor | None = None) -> RDPPOutput:
        """Normalised images (B, 3, H, W), optionally their noisy versions -> ``RDPPOutput``."""
        teacher = self.teacher(images)
        projected = self.proj(teacher)
        student = self.decoder(self.bn(projected))
        if noisy is None:
            return RDPPOutput(teacher, student, projected)
        noisy_teacher = self.teacher(noisy)
        return RDPPOutput(teacher, student, projected, noisy_teacher, self.proj(noisy_teacher))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, scoring: str = "official", top_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,) and maps (B, H, W) of normalised images at their own size, float64.

        ``official`` (``utils_test.py:16-36,72-73,82``): the sum of the three 1 - cos maps,
        ``m2ad`` (``util/compute_am.py:29-46``): that sum / 9; both smoothed with SciPy
        ``gaussian_filter`` sigma 4; the score is the mean of the top ``top_fraction`` of the map
        (0: its maximum, the official score).
        """
        if scoring not in ("official", "m2ad"):
            raise ValueError(f"scoring must be official or m2ad, got {scoring!r}")
        was_training = self.training
        self.eval()
        try:
            with autocast(images.device, self.mixed_precision):
                output = self(images)
        finally:
            self.train(was_training)
        total = summed_distance_map(output.teacher, output.student, images.shape[-2:])
        if scoring == "m2ad":
            total = total / len(output.teacher) ** 2
        maps = smooth(total, "scipy")[:, 0]
        return top_mean(maps, top_fraction), maps


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 when it is a half type (bf16 autocast), unchanged otherwise."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def summed_distance_map(teacher: list[torch.Tensor], student: list[torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Per scale 1 - cos over channels, bilinear (``align_corners=True``) to ``size``, summed in
    float64 (official ``cal_anomaly_map`` with ``amap_mode='a'``) -> (B, 1, H, W)."""
    total = None
    for target, output in zip(teacher, student, strict=True):
        distance = 1.0 - F.cosine_similarity(full_precision(target), full_precision(output), dim=1)
        resized = F.interpolate(distance.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=True).double()
        total = resized if total is None else total + resized
    return total


def distillation_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Official ``loss_fucntion``: the sum over scales of the batch mean of 1 - cos between the
    flattened teacher and student maps."""
    total = 0.0
    for target, output in zip(teacher, student, strict=True):
        target, output = full_precision(target).reshape(target.shape[0], -1), full_precision(output).reshape(output.shape[0], -1)
        total = total + torch.mean(1.0 - F.cosine_similarity(target, output, dim=1))
    return total


def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, blur: float = 0.05, scaling: float = 0.95, diameter: float = 1e7) -> torch.Tensor:
    """Debiased Sinkhorn divergence between the uniform point clouds ``x`` (N, D) and ``y`` (M, D)
    for the cost |x - y|^2 / 2, as GeomLoss 0.2.6 computes it with ``p=2`` and its tensorised
    backend: epsilon annealed from ``diameter``^2 to ``blur``^2 by ``scaling``^2 per step, symmetric
    (averaged) dual updates without gradient, one last update with gradient through the costs
    (each cost matrix differentiable in its first argument only), S = <a, f_ba - f_aa> + <b, g_ab - g_bb>."""
    x, y = full_precision(x), full_precision(y)

    def cost(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        second = second.detach()
        return ((first * first).sum(-1)[:, None] - 2 * first @ second.T + (second * second).sum(-1)[None, :]) / 2

    cost_xy, cost_yx, cost_xx, cost_yy = cost(x, y), cost(y, x), cost(x, x), cost(y, y)
    weight_a = torch.full((x.shape[0],), 1.0 / x.shape[0], device=x.device, dtype=x.dtype)
    weight_b = torch.full((y.shape[0],), 1.0 / y.shape[0], device=y.device, dtype=y.dtype)
    log_a, log_b = weight_a.log(), weight_b.log()
    steps = np.arange(2 * np.log(diameter), 2 * np.log(blur), 2 * np.log(scaling))
    schedule = [diameter**2, *(float(np.exp(step)) for step in steps), blur**2]

    def softmin(eps: float, costs: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        return -eps * (log_weights[None, :] - costs / eps).logsumexp(dim=1)

    with torch.no_grad():
        eps = schedule[0]
        g_ab, f_ba = softmin(eps, cost_yx, log_a), softmin(eps, cost_xy, log_b)
        f_aa, g_bb = softmin(eps, cost_xx, log_a), softmin(eps, cost_yy, log_b)
        for eps in schedule:
            new_f_ba, new_g_ab = softmin(eps, cost_xy, log_b + g_ab / eps), softmin(eps, cost_yx, log_a + f_ba / eps)
            new_f_aa, new_g_bb = softmin(eps, cost_xx, log_a + f_aa / eps), softmin(eps, cost_yy, log_b + g_bb / eps)
            f_ba, g_ab = 0.5 * (f_ba + new_f_ba), 0.5 * (g_ab + new_g_ab)
            f_aa, g_bb = 0.5 * (f_aa + new_f_aa), 0.5 * (g_bb + new_g_bb)
    f_ba, g_ab = softmin(eps, cost_xy, log_b + g_ab / eps), softmin(eps, cost_yx, log_a + f_ba / eps)
    f_aa, g_bb = softmin(eps, cost_xx, log_a + f_aa / eps), softmin(eps, cost_yy, log_b + g_bb / eps)
    return (weight_a * (f_ba - f_aa)).sum() + (weight_b * (g_ab - g_bb)).sum()


def projection_loss(noisy_teacher: list[torch.Tensor], noisy_projected: list[torch.Tensor], projected: list[torch.Tensor],
                    permutation: torch.Tensor) -> torch.Tensor:
    """Official ``Revisit_RDLoss``: (SSOT + 0.01 reconstruction + 0.1 contrast) / 1.11, each summed
    over the three scales; ``permutation`` is the batch shuffle of the SSOT pairs."""
    batch = projected[0].shape[0]
    ssot = reconstruction = contrast = 0.0
    for noisy, noisy_proj, proj in zip(noisy_teacher, noisy_projected, projected, strict=True):
        proj, noisy_proj, noisy = full_precision(proj), full_precision(noisy_proj), full_precision(noisy)
        flat = proj.reshape(batch, -1)
        target = -torch.ones(batch, device=flat.device, dtype=flat.dtype)
        ssot = ssot + sinkhorn_divergence(torch.softmax(flat, dim=-1), torch.softmax(flat[permutation], dim=-1))
        reconstruction = reconstruction + torch.mean(1.0 - F.cosine_similarity(noisy_proj, proj, dim=1))
        contrast = contrast + F.cosine_embedding_loss(noisy.reshape(batch, -1), flat, target, margin=0.5)
    return (ssot + 0.01 * reconstruction + 0.1 * contrast) / 1.11


def fractal_noise(channels: int, height: int, width: int, generator: torch.Generator, octaves: int = 6, persistence: float = 0.6,
                  feature_size: float = 32.0) -> torch.Tensor:
    """Fractal 3-D gradient noise (channels, height, width): ``octaves`` layers of Perlin noise
    sampled at (channel, row, column) / f, f = ``feature_size`` halved per octave, amplitude x
    ``persistence`` per octave.  The parameters are the official ``rand_3d_octaves((3, h, w), 6,
    0.6)`` (``dataset.py:71``, ``noise.py:35-52``); the noise itself is Perlin noise with a random
    lattice offset per octave, not the official OpenSimplex (our choice; same role, not bit-identical)."""
    total = torch.zeros(channels, height, width, dtype=torch.float64)
    amplitude, frequency = 1.0, feature_size
    for _ in range(octaves):
        coords = [torch.arange(size, dtype=torch.float64) / frequency + float(torch.rand((), generator=generator, dtype=torch.float64))
                  for size in (channels, height, width)]
        cells = [int(coord.max().floor()) + 2 for coord in coords]
        gradients = torch.randn(*cells, 3, generator=generator, dtype=torch.float64)
        gradients = gradients / gradients.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        grid = torch.stack(torch.meshgrid(*coords, indexing="ij"), dim=-1)
        lower = grid.floor().long()
        frac = grid - lower
        fade = frac**3 * (frac * (frac * 6 - 15) + 10)
        value = torch.zeros(channels, height, width, dtype=torch.float64)
        for corner in range(8):
            offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
            index = lower + offset
            gradient = gradients[index[..., 0], index[..., 1], index[..., 2]]
            dot = (gradient * (frac - offset)).sum(-1)
            weight = torch.where(offset.bool(), fade, 1 - fade).prod(-1)
            value = value + weight * dot
        total += amplitude * value * (2.0 / math.sqrt(3.0))  # Perlin 3-D spans about +-sqrt(3)/2
        frequency /= 2
        amplitude *= persistence
    return total.float()


def simplex_patches(images: torch.Tensor, generator: torch.Generator, strength: float = 0.2,
                    std: tuple[float, float, float] = registry.IMAGENET_STD) -> torch.Tensor:
    """The official anomaly simulation (``dataset.py:64-75``) on normalised images (B, 3, S, S):
    per image a patch of h x w pixels, h, w uniform in [10, S/8) (at S = 256; scaled with S),
    at a uniform position in [1, S - h) x [1, S - w), receives ``strength`` x fractal noise in
    [0, 1] pixel units (added before normalisation, so divided by the normalisation ``std`` here)."""
    batch, _, size, _ = images.shape
    scale = size / 256
    low, high = max(1, round(10 * scale)), max(2, int(size // 8))
    std = torch.tensor(std, device=images.device).view(3, 1, 1)
    noisy = images.clone()
    for index in range(batch):
        patch_h, patch_w = (int(torch.randint(low, max(low + 1, high), (1,), generator=generator)) for _ in range(2))
        top = int(torch.randint(1, max(2, size - patch_h), (1,), generator=generator))
        left = int(torch.randint(1, max(2, size - patch_w), (1,), generator=generator))
        noise = strength * fractal_noise(3, patch_h, patch_w, generator, feature_size=32.0 * scale).to(images.device)
        region = noisy[index, :, top : top + patch_h, left : left + patch_w]
        region += (noise[:, : region.shape[1], : region.shape[2]] / std).to(images.dtype)
    return noisy


PRESETS: dict[str, dict[str, Any]] = {
    "official": {
        "input_size": 256, "batch_size": 16, "epochs": 0, "proj_lr": 1e-3, "distill_lr": 5e-3, "betas": (0.5, 0.999),
        "accumulation": 2, "grad_clip": 0.0, "lr_step_epoch": 0, "anomalies": "simplex", "ocbe_width_factor": 2,
        "scoring": "official", "top_fraction": 0.0,
    },
    "m2ad-paper": {
        "input_size": 256, "batch_size": 8, "epochs": 100, "proj_lr": 2.5e-4, "distill_lr": 2.5e-4, "betas": (0.5, 0.999),
        "accumulation": 1, "grad_clip": 5.0, "lr_step_epoch": 80, "anomalies": "draem", "ocbe_width_factor": 1,
        "scoring": "m2ad", "top_fraction": 0.01,
    },
}
"""``epochs`` 0: the official per-category count (``OFFICIAL_EPOCHS``; ``default_epochs`` for a
category it does not list, and the largest count of the categories of a multi-category fit)."""


@dataclass
class RDPPConfig:
    """Options of the ``rdpp`` method; options left ``None`` come from ``preset``."""

    preset: str = "official"
    """``official`` (the RD++ authors' ``main.py``) or ``m2ad-paper`` (the M2AD benchmark code)."""
    backbone: str = "wide_resnet50_2"
    """The teacher: ``wide_resnet50_2`` (both codes), ``wide_resnet50_2_tiny`` (1/8 width, random
    weights only, for smoke tests) or ``efficientnet_lite0`` (ours: ImageNet weights available offline)."""
    encoder_weights: str = "auto"
    """``auto`` (the registry's ImageNet ``wide_resnet50_2``), a registry name, a file, or ``random``."""
    input_size: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    default_epochs: int = 200
    """Epochs of the official preset for a category outside its MVTec table (our choice)."""
    proj_lr: float | None = None
    """Adam learning rate of the projection layers (official 1e-3; M2AD: the one shared 2.5e-4)."""
    distill_lr: float | None = None
    """Adam learning rate of OCBE + decoder (official 5e-3; M2AD 2.5e-4)."""
    betas: tuple[float, ...] | None = None
    accumulation: int | None = None
    """Batches per optimiser step (official 2, M2AD 1)."""
    grad_clip: float | None = None
    """Gradient-norm clip; 0: none (official)."""
    lr_step_epoch: int | None = None
    """Epoch from which the learning rates are x0.1 (M2AD 80); 0: constant (official)."""
    anomalies: str | None = None
    """Noisy training images: ``simplex`` (official fractal-noise patch) or ``draem`` (M2AD's DRAEM-style anomalies)."""
    ocbe_width_factor: int | None = None
    """OCBE bottleneck width factor: 2 (official) or 1 (M2AD's timm ``Bottleneck`` default)."""
    scoring: str | None = None
    """``official`` (sum of the 3 maps) or ``m2ad`` (sum / 9); both SciPy Gaussian sigma 4."""
    top_fraction: float | None = None
    """Image score: mean of this top fraction of the map (M2AD 0.01); 0 takes the maximum (official)."""
    seed: int | None = None
    """Seed of the initialisation, noise and shuffling; ``None`` draws one from torch's global
    generator, which the runner seeds per cell (the official code used 111, M2AD's 42)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        fill_from_preset(self, PRESETS)
        if self.backbone not in TEACHERS:
            raise ValueError(f"rdpp: backbone must be one of {', '.join(TEACHERS)}, got {self.backbone!r}")
        if self.anomalies not in ("simplex", "draem"):
            raise ValueError(f"rdpp: anomalies must be simplex or draem, got {self.anomalies!r}")
        if self.scoring not in ("official", "m2ad"):
            raise ValueError(f"rdpp: scoring must be official or m2ad, got {self.scoring!r}")
        if self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"rdpp: input_size must be a multiple of 32 (the teacher's stride), got {self.input_size}")
        if self.epochs < 0 or self.default_epochs < 1 or self.batch_size < 1 or self.accumulation < 1 or self.ocbe_width_factor < 1:
            raise ValueError("rdpp: epochs must be >= 0 and default_epochs, batch_size, accumulation, ocbe_width_factor positive")
        if min(self.proj_lr, self.distill_lr) <= 0 or self.grad_clip < 0 or not 0.0 <= self.top_fraction <= 1.0:
            raise ValueError("rdpp: learning rates must be positive, grad_clip >= 0 and top_fraction in [0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"rdpp: device must be auto, cpu or cuda, got {self.device!r}")
        Recipe(optimizer="adam", betas=tuple(self.betas))  # validates betas


def infer_arch(state_dict: dict[str, torch.Tensor]) -> RDPPArch:
    """The ``RDPPArch`` of a state dict with ``proj.``/``bn.``/``decoder.`` names, from its shapes."""
    for key in ("proj.proj_a.proj.0.weight", "bn.bn_layer.0.conv1.weight", "decoder.layer1.0.conv1.weight"):
        if key not in state_dict:
            raise ValueError(f"not an RD++ state dict: missing {key!r}")
    channels = tuple(int(state_dict[f"proj.proj_{scale}.proj.0.weight"].shape[1]) for scale in "abc")
    ocbe = state_dict["bn.bn_layer.0.conv1.weight"].shape[0] // (channels[2] // 2)
    decoder = state_dict["decoder.layer1.0.conv1.weight"].shape[0] // (channels[2] // 4)
    return RDPPArch(channels=channels, decoder_width_factor=decoder, ocbe_width_factor=ocbe, ocbe_spare_conv="bn.conv4.weight" in state_dict)


def teacher_name(channels: tuple[int, ...]) -> str:
    """The registry teacher whose tapped widths are ``channels``."""
    for name, (_, widths) in TEACHERS.items():
        if tuple(channels) == widths:
            return name
    raise ValueError(f"no teacher in the registry has tapped widths {tuple(channels)}; known: {', '.join(f'{n} {w}' for n, (_, w) in TEACHERS.items())}")


M2AD_PREFIXES = {"proj_layer.": "proj.", "mff_oce.": "bn.", "net_s.": "decoder.", "net_t.": "encoder."}


def official_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Our names for an official RD++ checkpoint (``{'proj': ..., 'bn': ..., 'decoder': ...}``,
    ``main.py:199-201``) or an M2AD one (``proj_layer.``, ``mff_oce.``, ``net_s.``, ``net_t.``,
    possibly under ``net``); a flat state dict in our names passes unchanged."""
    if "net" in checkpoint and isinstance(checkpoint["net"], dict):
        checkpoint = checkpoint["net"]
    if set(checkpoint) == {"proj", "bn", "decoder"}:
        return {f"{part}.{key}": value for part in ("proj", "bn", "decoder") for key, value in checkpoint[part].items()}
    if any(key.startswith(tuple(M2AD_PREFIXES)) for key in checkpoint):
        renamed = {}
        for key, value in checkpoint.items():
            prefix = next((p for p in M2AD_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                raise ValueError(f"unexpected key {key!r} in an M2AD RD++ checkpoint")
            renamed[M2AD_PREFIXES[prefix] + key[len(prefix):]] = value
        return renamed
    return checkpoint


def load_official(checkpoint_or_path: dict[str, Any] | str | Path, encoder_weights: str = "auto") -> RDPPModel:
    """An ``RDPPModel`` from a released checkpoint (``wres50_<class>.pth`` of the README's Drive
    folder, or an M2AD checkpoint), widths inferred from the shapes, loaded with ``strict=True``;
    the teacher (not stored in the official file) comes from ``encoder_weights`` unless the file
    holds it.  Files are read with ``torch.load(weights_only=True)``; eval mode."""
    if isinstance(checkpoint_or_path, (str, Path)):
        path = Path(checkpoint_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    else:
        checkpoint = checkpoint_or_path
    if not isinstance(checkpoint, dict):
        raise ValueError("an RD++ checkpoint must hold a dict of state dicts")
    state = official_state(checkpoint)
    arch = infer_arch(state)
    has_encoder = any(key.startswith("encoder.") for key in state)
    if has_encoder:
        model = RDPPModel(arch)
    else:
        model = RDPPModel(arch, registry.load_backbone(teacher_name(arch.channels), encoder_weights))
        state = {**{f"encoder.{key}": value for key, value in model.encoder.state_dict().items()}, **state}
    model.load_state_dict(state, strict=True)
    return model.eval()


class RDPP:
    """RD++ behind the runner's method interface (``baselines.base.Method``).

    One fit trains one model on every image it is given (one category in the official recipe).
    """

    name: ClassVar[str] = "rdpp"
    card: ClassVar[MethodCard] = MethodCard(settings=("single-class", "multi-class", "few-shot"), weights=("wide_resnet50_2", "efficientnet_lite0"))
    Config: ClassVar[type] = RDPPConfig

    def __init__(self, config: RDPPConfig | None = None) -> None:
        self.config = config or RDPPConfig()
        self.device = choose_device(self.name, self.config.device)
        self.model: RDPPModel | None = None
        self.seed = choose_seed(self.config.seed)

    def arch(self) -> RDPPArch:
        """The architecture of the configured backbone and preset."""
        return RDPPArch(channels=TEACHERS[self.config.backbone][1], ocbe_width_factor=self.config.ocbe_width_factor,
                        ocbe_spare_conv=self.config.preset == "official")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images normalised as the teacher expects (ImageNet mean/std; Lite0: 0.5/0.5)."""
        return registry.normalize(images, self.config.backbone)

    def new_model(self) -> RDPPModel:
        """A fresh RD++ on the frozen teacher (loaded strictly from ``encoder_weights``)."""
        if self.config.backbone == "wide_resnet50_2_tiny" and self.config.encoder_weights == "auto":
            raise ValueError("rdpp: backbone=wide_resnet50_2_tiny has no pretrained weights; use encoder_weights=random")
        encoder = registry.load_backbone(self.config.backbone, self.config.encoder_weights)
        return RDPPModel(self.arch(), encoder).to(self.device)

    def epochs(self, categories: Iterable[str]) -> int:
        """The preset's epochs; official 0: the largest per-category count of the fit's categories."""
        if self.config.epochs:
            return self.config.epochs
        return max((OFFICIAL_EPOCHS.get(name.lower(), self.config.default_epochs) for name in categories), default=self.config.default_epochs)

    def recipe(self, categories: Iterable[str] = ()) -> Recipe:
        """The preset's recipe for the shared loop (Adam; the projection group's rate via ``lr_scale``)."""
        config = self.config
        return Recipe(optimizer="adam", lr=config.distill_lr, betas=tuple(config.betas), schedule="step" if config.lr_step_epoch else "constant",
                      step_epoch=config.lr_step_epoch, grad_clip=config.grad_clip or None, batch_size=config.batch_size, drop_last=False,
                      epochs=self.epochs(categories), accumulation=config.accumulation)

    def parameter_groups(self, model: RDPPModel) -> list[dict[str, Any]]:
        """The two parameter groups: projection (``proj_lr``) and OCBE + decoder (``distill_lr``)."""
        proj, distill = model.parameter_groups()
        return [{"params": proj, "lr_scale": self.config.proj_lr / self.config.distill_lr}, {"params": distill, "lr_scale": 1.0}]

    def noisy(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The noisy copies of a normalised batch, as the preset simulates anomalies."""
        if self.config.anomalies == "simplex":
            return simplex_patches(images, generator, std=registry.spec(self.config.backbone).std)
        return synthesize(images.cpu(), generator, probability=0.5)[0].to(images.device)

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Train one model on the training images with the preset's recipe."""
        torch.manual_seed(self.seed)
        model = self.new_model()
        crops, categories = [], set()
        for batch in train:
            crops.append(resize_crop(batch.images, self.config.input_size, self.config.input_size))
            categories.update(batch.categories)
        if not crops:
            raise ValueError("rdpp: no training images")
        self.train_model(model, torch.cat(crops), sorted(categories))
        self.model = model.eval()

    def train_model(self, model: RDPPModel, images: torch.Tensor, categories: Iterable[str] = ()) -> list[float]:
        """The training loop on uint8 images; returns the loss of each iteration."""
        generator = torch.Generator().manual_seed(self.seed + 1)

        def loss(inputs: torch.Tensor, iteration: int) -> torch.Tensor:
            output = model(inputs, self.noisy(inputs, generator))
            permutation = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
            with autocast(inputs.device, False):
                projection = projection_loss(output.noisy_teacher, output.noisy_projected, output.projected, permutation)
            return distillation_loss(output.teacher, output.student) + PROJECTION_WEIGHT * projection

        model.train()
        return train_head(self.parameter_groups(model), images, loss, self.recipe(categories), prepare=self.normalize, device=self.device,
                          seed=self.seed, mixed_precision=model.mixed_precision, name="rdpp")

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, H, W) at the batch's size (maps resized from ``input_size``)."""
        if self.model is None:
            raise RuntimeError("rdpp: predict called before fit")
        images = self.normalize(resize_crop(batch.images.to(self.device), self.config.input_size, self.config.input_size))
        scores, maps = self.model.predict(images, scoring=self.config.scoring, top_fraction=self.config.top_fraction)
        height, width = batch.images.shape[-2:]
        if maps.shape[-2:] != (height, width):
            maps = F.interpolate(maps.unsqueeze(1).float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        return scores.float().cpu().numpy().astype(np.float32), maps.float().cpu().numpy().astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained model's state dict (``encoder.*``, ``proj.*``, ``bn.*``, ``decoder.*``)."""
        if self.model is None:
            raise RuntimeError("rdpp: state_dict called before fit")
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a model written by ``state_dict`` (or an official / M2AD checkpoint's state dict)."""
        self.model = load_official(dict(state), self.config.encoder_weights).to(self.device).eval()


__all__ = [
    "PRESETS",
    "RDPP",
    "RDPPArch",
    "RDPPConfig",
    "RDPPModel",
    "distillation_loss",
    "infer_arch",
    "load_official",
    "projection_loss",
    "sinkhorn_divergence",
]
