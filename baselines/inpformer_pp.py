"""``inpformer-pp``: INP-Former++ (Luo et al., arXiv 2506.03660), re-implemented on top of our
INP-Former (``baselines.inpformer``) from the paper's abstract, the authors' answers in
``luow23/INP-Former`` issues #39 and #53 and secondary descriptions (no code was released).

What it adds to INP-Former (each a config field, so that it can be switched off):

* **soft INP coherence loss** (``coherence="soft"``): each token of F_Q is reconstructed as
  the softmax(cos / ``soft_temperature``)-weighted sum of the INPs and the loss is the mean
  over tokens of 1 - cos(token, reconstruction), instead of the distance to the nearest INP;
* **residual learning** (``residual_head=True``): the residual of the reconstruction,
  ``(1 - cos(F_E, F_D)) * |F_E - F_D|`` per channel, averaged over the two layer groups and
  detached (stop-gradient: the head never changes the reconstruction network), feeds a
  segmentation head of 2 transposed convolutions and 1 convolution, trained jointly with
  ``seg_weight`` x binary cross-entropy on synthesised anomalies (Perlin-noise masks filled
  with another training image's texture, DRAEM-style); the anomaly map is the mean of the
  reconstruction map and the head's probability map;
* **semi-supervised** training (``fit(..., anomalies=(images, masks))``): a few real anomalies
  whose masked regions are pasted onto normal images, mixed with the synthesised ones.  The
  harness never gives a method labels or masks, so this path is Python-only.

Everything else (encoder, INP extractor, decoder, soft-mining loss, presets, crop and map
pipeline) is INP-Former's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import Batch, MethodCard, Setting
from baselines.inpformer import (
    COHERENCE_WEIGHT,
    INPFormer,
    INPFormerArch,
    INPFormerConfig,
    INPFormerModel,
    INPOutput,
    _prepare,
    anomaly_map,
    infer_arch,
    normalize,
    preprocess,
    resize_crop,
    smooth,
    soft_mining_loss,
    top_mean,
)
from baselines.reconstruction import uncrop
from baselines.training import autocast, train_head


@dataclass
class INPFormerPPConfig(INPFormerConfig):
    """Options of ``inpformer-pp``: INP-Former's (same presets) plus what INP-Former++ adds."""

    coherence: str = "soft"
    """``soft`` (INP-Former++) or ``hard`` (INP-Former's nearest-INP loss)."""
    soft_temperature: float = 1.0
    """Temperature of the softmax over cosine similarities (our choice: plain softmax)."""
    residual_head: bool = True
    """Train and use the segmentation head on the reconstruction residual."""
    seg_weight: float = 1.0
    """Weight of the segmentation loss: L = L_sm + 0.2 L_sc + 1.0 L_seg (author, issue #53)."""
    seg_channels: tuple[int, ...] = (256, 64)
    """Widths of the two transposed convolutions (each x2 upsampling) of the head (our choice;
    the paper gives the layer types only)."""
    anomaly_probability: float = 0.5
    """Fraction of the synthesised batch that gets an anomaly (our choice, as DRAEM)."""
    real_anomaly_probability: float = 0.5
    """With real anomalies given: fraction of the anomalous samples pasted from them (our choice)."""
    map_fusion: str = "mean"
    """``mean`` of the reconstruction map and the head's probability, or ``reconstruction`` only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.coherence not in ("soft", "hard"):
            raise ValueError(f"coherence must be soft or hard, got {self.coherence!r}")
        if self.map_fusion not in ("mean", "reconstruction"):
            raise ValueError(f"map_fusion must be mean or reconstruction, got {self.map_fusion!r}")
        if self.soft_temperature <= 0 or self.seg_weight < 0:
            raise ValueError("soft_temperature must be positive and seg_weight >= 0")
        if len(self.seg_channels) != 2 or min(self.seg_channels) < 1:
            raise ValueError(f"seg_channels needs two positive widths, got {self.seg_channels}")
        for name in ("anomaly_probability", "real_anomaly_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def soft_coherence(tokens: torch.Tensor, prototypes: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Soft INP coherence loss: tokens (B, N, C) reconstructed by the softmax(cos / T)-weighted
    sum of the prototypes (B, M, C); mean over tokens of 1 - cos(token, reconstruction)."""
    tokens, prototypes = tokens.float(), prototypes.float()
    similarity = F.normalize(tokens, dim=-1, eps=1e-8) @ F.normalize(prototypes, dim=-1, eps=1e-8).transpose(1, 2)
    reconstruction = (similarity / temperature).softmax(dim=-1) @ prototypes
    return (1.0 - F.cosine_similarity(tokens, reconstruction, dim=-1, eps=1e-8)).mean()


def residual_features(encoder: list[torch.Tensor], decoder: list[torch.Tensor]) -> torch.Tensor:
    """The reconstruction residual (B, C, h, w): per layer group ``(1 - cos) * |F_E - F_D|``,
    averaged over the groups."""
    parts = []
    for target, output in zip(encoder, decoder, strict=True):
        target, output = target.float(), output.float()
        distance = 1.0 - F.cosine_similarity(target, output, dim=1, eps=1e-8).unsqueeze(1)
        parts.append(distance * (target - output).abs())
    return torch.stack(parts).mean(dim=0)


class SegmentationHead(nn.Module):
    """2 transposed convolutions (x2 each, ReLU) and a 1 x 1 convolution: residual -> logits at 4x."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.up1 = nn.ConvTranspose2d(in_channels, channels[0], 2, stride=2)
        self.up2 = nn.ConvTranspose2d(channels[0], channels[1], 2, stride=2)
        self.out = nn.Conv2d(channels[1], 1, 1)

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 1, 4h, 4w) logits."""
        return self.out(F.relu(self.up2(F.relu(self.up1(residual)))))


class INPFormerPPModel(INPFormerModel):
    """INP-Former plus the segmentation head (``seg_head.*``); a hook on the INP extractor keeps
    F_Q and the INPs of the last forward pass for the soft coherence loss."""

    def __init__(self, arch: INPFormerArch, seg_channels: tuple[int, ...] = (256, 64), encoder: nn.Module | None = None) -> None:
        super().__init__(arch, encoder=encoder)
        self.seg_head = SegmentationHead(arch.encoder.embed_dim, tuple(seg_channels))
        self.extracted: tuple[torch.Tensor, torch.Tensor] | None = None
        self.aggregation[-1].register_forward_hook(self._keep_prototypes)

    def _keep_prototypes(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.extracted = (inputs[1], output)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """INP-Former's trained parameters and the segmentation head."""
        return [*super().trainable_parameters(), *self.seg_head.parameters()]

    def segment(self, output: INPOutput) -> torch.Tensor:
        """Head logits (B, 1, 4h, 4w) from the detached residual of ``output``."""
        return self.seg_head(residual_features([e.detach() for e in output.encoder], [d.detach() for d in output.decoder]))


def perlin_noise(height: int, width: int, cells: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """2-D Perlin gradient noise (height, width) with ``cells`` (rows, columns) lattice cells."""
    rows, cols = cells
    angles = 2 * math.pi * torch.rand(rows + 1, cols + 1, generator=generator)
    gradients = torch.stack([angles.cos(), angles.sin()], dim=-1)
    y = torch.linspace(0, rows, height + 1)[:-1].view(-1, 1).expand(height, width)
    x = torch.linspace(0, cols, width + 1)[:-1].view(1, -1).expand(height, width)
    y0, x0 = y.floor().long(), x.floor().long()
    fy, fx = y - y0, x - x0

    def corner(dy: int, dx: int) -> torch.Tensor:
        gradient = gradients[y0 + dy, x0 + dx]
        return gradient[..., 0] * (fy - dy) + gradient[..., 1] * (fx - dx)

    def fade(t: torch.Tensor) -> torch.Tensor:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    top = torch.lerp(corner(0, 0), corner(0, 1), fade(fx))
    bottom = torch.lerp(corner(1, 0), corner(1, 1), fade(fx))
    return torch.lerp(top, bottom, fade(fy)) * math.sqrt(2)


def perlin_mask(height: int, width: int, generator: torch.Generator, threshold: float = 0.5) -> torch.Tensor:
    """A DRAEM-style anomaly mask: Perlin noise of 2^a x 2^b cells (a, b in 0..5) above ``threshold``;
    never empty (a small square is used when the noise stays under the threshold)."""
    exponents = torch.randint(0, 6, (2,), generator=generator)
    mask = (perlin_noise(height, width, (2 ** int(exponents[0]), 2 ** int(exponents[1])), generator) > threshold).float()
    if mask.sum() == 0:
        size = max(2, min(height, width) // 6)
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        mask[top : top + size, left : left + size] = 1.0
    return mask


def synthesize(images: torch.Tensor, generator: torch.Generator, probability: float,
               real: tuple[torch.Tensor, torch.Tensor] | None = None, real_probability: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomalous versions of normalised images (B, 3, H, W) and their masks (B, 1, H, W).

    Each image gets an anomaly with ``probability``: the masked region of a real anomaly
    (``real``: normalised images and masks, flipped and turned at random; with
    ``real_probability``) or a Perlin mask filled with a blend of another image of the batch,
    turned by a quarter, and the image itself (the blend factor ``beta`` uniform in [0, 0.8]).
    """
    batch, _, height, width = images.shape
    out, masks = images.clone(), torch.zeros(batch, 1, height, width)
    for index in range(batch):
        if float(torch.rand((), generator=generator)) >= probability:
            continue
        if real is not None and float(torch.rand((), generator=generator)) < real_probability:
            pick = int(torch.randint(0, len(real[0]), (1,), generator=generator))
            source, mask = real[0][pick], real[1][pick].float()
            turns, flip = int(torch.randint(0, 4, (1,), generator=generator)), bool(torch.rand((), generator=generator) < 0.5)
            source, mask = torch.rot90(source, turns, dims=(-2, -1)), torch.rot90(mask, turns, dims=(-2, -1))
            if flip:
                source, mask = source.flip(-1), mask.flip(-1)
            out[index] = images[index] * (1 - mask) + source * mask
        else:
            mask = perlin_mask(height, width, generator)
            texture = torch.rot90(images[(index + 1) % batch], 1, dims=(-2, -1))
            beta = 0.8 * float(torch.rand((), generator=generator))
            out[index] = images[index] * (1 - mask) + (beta * images[index] + (1 - beta) * texture) * mask
        masks[index, 0] = mask
    return out, masks


class INPFormerPP(INPFormer):
    """INP-Former++ behind the runner's method interface; settings as INP-Former."""

    name: ClassVar[str] = "inpformer-pp"
    card: ClassVar[MethodCard] = replace(INPFormer.card, reimplemented_from="arXiv 2506.03660 (INP-Former++), on our INP-Former")
    Config: ClassVar[type] = INPFormerPPConfig

    def __init__(self, config: INPFormerPPConfig | None = None) -> None:
        super().__init__(config or INPFormerPPConfig())
        self._real: tuple[torch.Tensor, torch.Tensor] | None = None

    def _new_model(self) -> INPFormerPPModel:
        """A fresh INP-Former++ sharing the frozen encoder."""
        encoder = self.encoder()
        return INPFormerPPModel(replace(self.arch, encoder=encoder.config), self.config.seg_channels, encoder=encoder).to(self.device)

    def fit(self, train: Iterable[Batch], setting: Setting = Setting(), anomalies: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """INP-Former's fit; ``anomalies`` (uint8 images (K, 3, H, W) and boolean masks (K, H, W))
        switches on the semi-supervised setting (Python only: the harness gives no labels)."""
        self._real = None
        if anomalies is not None:
            images, masks = anomalies
            if len(images) == 0 or images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
                raise ValueError("inpformer-pp: anomalies must be (images (K, 3, H, W), masks (K, H, W)) with K >= 1")
            crops = normalize(resize_crop(images, self.config.input_size, self.config.crop_size))
            mask_crops = resize_crop((masks.to(torch.uint8) * 255).unsqueeze(1).expand(-1, 3, -1, -1).contiguous(),
                                     self.config.input_size, self.config.crop_size)[:, :1].float().div(255).gt(0.5).float()
            self._real = (crops, mask_crops)
        super().fit(train, setting)

    def train_model(self, model: INPFormerPPModel, images: torch.Tensor) -> list[float]:
        """The INP-Former loop with the soft coherence loss and, per iteration, the head's loss on
        a synthesised (and, semi-supervised, real-pasted) version of the batch."""
        config = self.config
        generator = torch.Generator().manual_seed(self.seed + 1)
        real = None if self._real is None else (self._real[0].to(self.device), self._real[1].to(self.device))

        def loss(inputs: torch.Tensor, iteration: int) -> torch.Tensor:
            output = model(inputs)
            if config.coherence == "soft":
                tokens, prototypes = model.extracted
                coherence_loss = soft_coherence(tokens, prototypes, config.soft_temperature)
            else:
                coherence_loss = output.coherence_loss
            total = soft_mining_loss(output.encoder, output.decoder) + COHERENCE_WEIGHT * coherence_loss
            if config.residual_head and config.seg_weight > 0:
                augmented, masks = synthesize(inputs.float().cpu(), generator, config.anomaly_probability,
                                              None if real is None else (real[0].cpu(), real[1].cpu()), config.real_anomaly_probability)
                logits = model.segment(model(augmented.to(inputs.device)))
                target = F.interpolate(masks.to(inputs.device), size=logits.shape[-2:], mode="area").gt(0.5).float()
                total = total + config.seg_weight * F.binary_cross_entropy_with_logits(logits.float(), target)
            return total

        model.train()
        return train_head(model.trainable_parameters(), images, loss, self.recipe(), prepare=_prepare, device=self.device,
                          seed=self.seed, mixed_precision=model.mixed_precision, name="inpformer-pp")

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """INP-Former's maps, averaged with the head's anomaly probability (``map_fusion=mean``)."""
        if self.model is None:
            raise RuntimeError("inpformer-pp: predict called before fit")
        config, model = self.config, self.model
        images = preprocess(batch.images.to(self.device), config.input_size, config.crop_size)
        with torch.no_grad(), autocast(images.device, model.mixed_precision):
            output = model(images)
            raw = anomaly_map(output.encoder, output.decoder, images.shape[-2:])
            if config.residual_head and config.map_fusion == "mean":
                probability = torch.sigmoid(model.segment(output).float())
                raw = 0.5 * (raw + F.interpolate(probability, size=images.shape[-2:], mode="bilinear", align_corners=False))
        if config.map_size:
            raw = F.interpolate(raw.float(), size=(config.map_size, config.map_size), mode="bilinear", align_corners=False)
        maps = smooth(raw.float(), config.smoothing)[:, 0]
        scores = top_mean(maps, config.top_fraction)
        height, width = batch.images.shape[-2:]
        maps = uncrop(maps.cpu(), height, width, config.input_size, config.crop_size)
        return scores.float().cpu().numpy().astype(np.float32), maps.numpy().astype(np.float32)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a model written by ``state_dict`` (INP-Former's names plus ``seg_head.*``)."""
        backbone_state = {key: value for key, value in state.items() if not key.startswith("seg_head.")}
        model = INPFormerPPModel(infer_arch(backbone_state, self.arch.target_layers), self.config.seg_channels)
        model.load_state_dict(state, strict=True)
        self.model = model.to(self.device).eval()
        self._encoder = self.model.encoder


__all__ = ["INPFormerPP", "INPFormerPPConfig", "INPFormerPPModel", "perlin_mask", "residual_features", "soft_coherence", "synthesize"]
