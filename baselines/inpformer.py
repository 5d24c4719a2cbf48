"""``inpformer``: INP-Former (Luo et al., CVPR 2025), faithful to the official code
(``luow23/INP-Former``; reference notes: inpformer.md), and able to load its checkpoints.

Architecture (``INPFormerModel``; parameter names identical to the official ``INP_Former``):

* a frozen DINOv2 encoder with registers; the outputs of ``target_layers`` (blocks 2-9 of
  ViT-S/B, 4, 6, ..., 18 of ViT-L) are kept without the CLS and register tokens and fused by
  their mean into F_Q;
* the INP extractor: one cross-attention block (``aggregation.0``) whose queries are the
  learnable ``prototype_token`` (M x C) and whose context is F_Q, softmax attention, the same
  LayerNorm on queries and context; its output P are the intrinsic normal prototypes;
* the INP coherence loss: mean over tokens of the cosine distance to the nearest prototype;
* a bottleneck MLP (``bottleneck.0``) on F_Q, without residual;
* the INP-guided decoder: blocks (``decoder.{i}``) with ReLU linear attention on per-head
  L2-normalised q (tokens) and k (prototypes) times a learned per-head scale, no residual
  around the attention; the block outputs are reversed and averaged in two groups, which are
  paired with the two encoder groups (shallow encoder with deep decoder).

Loss: soft-mining global cosine (gamma 3; gradients reweighted by (d / mean d)^3 through a hook)
plus 0.2 x coherence.  Anomaly map: 1 - cosine per group, bilinear (align_corners=True) to the
input size, mean over groups, bilinear to ``map_size``, 5 x 5 Gaussian of sigma 4 with zero
padding; image score: mean of the top 1 % of the map.

Presets: ``official`` (the INP-Former paper's recipe: 448 -> crop 392, StableAdamW, 200
epochs, batch 16) and ``m2ad-paper`` (the settings of the M2AD benchmark code: no crop, Adam
(0.5, 0.999) at 3.75e-3, 100 epochs, batch 12, step decay at epoch 80, full-resolution maps with
``scipy.ndimage.gaussian_filter``, sigma 4).  On CUDA the forward pass runs under bf16 autocast
and the softmax attentions use SDPA; on CPU everything is float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.backbones import registry
from baselines.backbones.dinov2 import VIT_PRESETS, DinoVisionTransformer, Mlp, ViTConfig, infer_vit_config, softmax_attention
from baselines.backbones.registry import TINY_VIT
from baselines.base import Batch, MethodCard, Setting, choose_device, choose_seed, fill_from_preset
from baselines.reconstruction import anomaly_map, default_target_layers, normalize, preprocess, resize_crop, smooth, top_mean, uncrop
from baselines.training import Recipe, StableAdamW, autocast, train_head, warm_cosine_lr


HEAD_NORM_EPS = 1e-8
COHERENCE_WEIGHT = 0.2
SOFT_MINING_GAMMA = 3.0

TINY_ENCODER = TINY_VIT
"""A 40-wide, 4-head, 4-block encoder for smoke tests with random weights (``encoder=tiny``)."""


@dataclass(frozen=True)
class INPFormerArch:
    """Shape of an INP-Former: its encoder, prototypes, decoder depth and tapped layers."""

    encoder: ViTConfig
    num_prototypes: int = 6
    decoder_depth: int = 8
    target_layers: tuple[int, ...] = tuple(range(2, 10))

    def __post_init__(self) -> None:
        if len(self.target_layers) < 2 or len(self.target_layers) % 2 or self.decoder_depth < 2 or self.decoder_depth % 2:
            raise ValueError("INP-Former needs an even number (>= 2) of target layers and of decoder blocks")
        if max(self.target_layers) >= self.encoder.depth or min(self.target_layers) < 0:
            raise ValueError(f"target layers {self.target_layers} outside the {self.encoder.depth}-block encoder")
        if self.num_prototypes < 1:
            raise ValueError("num_prototypes must be positive")

    @property
    def encoder_groups(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Indices into the tapped layers of the two fused encoder groups (official [[0..3], [4..7]])."""
        half = len(self.target_layers) // 2
        return tuple(range(half)), tuple(range(half, 2 * half))

    @property
    def decoder_groups(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Indices into the reversed decoder outputs of the two fused decoder groups."""
        half = self.decoder_depth // 2
        return tuple(range(half)), tuple(range(half, 2 * half))


class AggregationAttention(nn.Module):
    """Cross-attention of queries on a context: ``q`` from the queries, fused ``kv`` from the context."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.use_sdpa = True

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Softmax attention (B, T, C) x (B, N, C) -> (B, T, C)."""
        batch, count, dim = queries.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        query = self.q(queries).reshape(batch, count, heads, head_dim).transpose(1, 2)
        key, value = self.kv(context).reshape(batch, context.shape[1], 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = softmax_attention(query, key, value, use_sdpa=self.use_sdpa)
        return self.proj(out.transpose(1, 2).reshape(batch, count, dim))


class AggregationBlock(nn.Module):
    """The INP extractor block: tokens + attn(LN1 tokens, LN1 context), then + MLP(LN2)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=HEAD_NORM_EPS)
        self.attn = AggregationAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=HEAD_NORM_EPS)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Update the prototype tokens from the context."""
        tokens = tokens + self.attn(self.norm1(tokens), self.norm1(context))
        return tokens + self.mlp(self.norm2(tokens))


class PrototypeAttention(nn.Module):
    """ReLU linear attention of tokens on prototypes, cosine-normalised q and k, learned scale."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.learn_scale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens, (B, M, C) prototypes -> (B, N, C); cost O(N M C)."""
        batch, count, dim = tokens.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        query = F.normalize(self.q(tokens).reshape(batch, count, heads, head_dim).transpose(1, 2), dim=-1)
        key, value = self.kv(prototypes).reshape(batch, prototypes.shape[1], 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        key = F.normalize(key, dim=-1)
        weights_ = F.relu((query @ key.transpose(-2, -1)) * self.learn_scale)
        return self.proj((weights_ @ value).transpose(1, 2).reshape(batch, count, dim))


class PrototypeBlock(nn.Module):
    """The INP-guided decoder block: x = attn(LN1 x, LN1 P) (no residual), then x + MLP(LN2 x)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=HEAD_NORM_EPS)
        self.attn = PrototypeAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=HEAD_NORM_EPS)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Decode tokens guided by the prototypes."""
        tokens = self.attn(self.norm1(tokens), self.norm1(prototypes))
        return tokens + self.mlp(self.norm2(tokens))


class INPOutput(NamedTuple):
    """What ``INPFormerModel.forward`` returns: the two encoder and decoder group maps
    (B, C, h, w), the coherence loss, and each token's distance to its nearest INP (B, h*w)."""

    encoder: list[torch.Tensor]
    decoder: list[torch.Tensor]
    coherence_loss: torch.Tensor
    distance: torch.Tensor


class INPFormerModel(nn.Module):
    """INP-Former with the official parameter names (``encoder.*``, ``bottleneck.0.*``,
    ``aggregation.0.*``, ``decoder.{i}.*``, ``prototype_token``)."""

    def __init__(self, arch: INPFormerArch, encoder: DinoVisionTransformer | None = None) -> None:
        super().__init__()
        self.arch = arch
        dim, heads = arch.encoder.embed_dim, arch.encoder.num_heads
        self.encoder = encoder if encoder is not None else DinoVisionTransformer(arch.encoder)
        self.bottleneck = nn.ModuleList([Mlp(dim, dim * 4)])
        self.aggregation = nn.ModuleList([AggregationBlock(dim, heads)])
        self.decoder = nn.ModuleList(PrototypeBlock(dim, heads) for _ in range(arch.decoder_depth))
        self.prototype_token = nn.Parameter(torch.randn(arch.num_prototypes, dim))
        self.encoder.requires_grad_(False)
        self.mixed_precision = True
        """bf16 autocast on CUDA (no effect on CPU); ``False`` runs float32 everywhere."""
        self.reset_head()

    def trainable_modules(self) -> nn.ModuleList:
        """The trained parts, in the official order: bottleneck, decoder, extractor (and the INPs)."""
        return nn.ModuleList([self.bottleneck, self.decoder, self.aggregation])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates: the head and the prototype tokens (not the encoder)."""
        return [*self.trainable_modules().parameters(), self.prototype_token]

    def reset_head(self) -> None:
        """Official initialisation: Linear weights trunc-normal(0.01, [-0.03, 0.03]), biases 0, LayerNorm (1, 0)."""
        for module in self.trainable_modules().modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.01, a=-0.03, b=0.03)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> INPOutput:
        """Normalised images (B, 3, H, W), H and W multiples of the patch size -> ``INPOutput``."""
        grid_h, grid_w = images.shape[-2] // self.arch.encoder.patch_size, images.shape[-1] // self.arch.encoder.patch_size
        with torch.no_grad():
            tapped = self.encoder.intermediate_layers(images, self.arch.target_layers)
        skip = 1 + self.arch.encoder.num_register_tokens
        tapped = [layer[:, skip:] for layer in tapped]
        fused = torch.stack(tapped, dim=1).mean(dim=1)
        batch = fused.shape[0]
        prototypes = self.prototype_token
        for block in self.aggregation:
            prototypes = block(prototypes.unsqueeze(0).expand(batch, -1, -1), fused)
        coherence_loss, distance = coherence(fused, prototypes)
        tokens = fused
        for block in self.bottleneck:
            tokens = block(tokens)
        decoded = []
        for block in self.decoder:
            tokens = block(tokens, prototypes)
            decoded.append(tokens)
        decoded = decoded[::-1]

        def grouped(layers: list[torch.Tensor], groups: tuple[tuple[int, ...], ...]) -> list[torch.Tensor]:
            means = [torch.stack([layers[index] for index in group], dim=1).mean(dim=1) for group in groups]
            return [mean.transpose(1, 2).reshape(batch, -1, grid_h, grid_w).contiguous() for mean in means]

        return INPOutput(grouped(tapped, self.arch.encoder_groups), grouped(decoded, self.arch.decoder_groups), coherence_loss, distance)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, map_size: int = 256, return_raw: bool = False, smoothing: str = "official", top_fraction: float = 0.01) -> tuple[torch.Tensor, ...]:
        """The official evaluation outputs for normalised images (B, 3, H, W).

        Returns ``(scores (B,), maps (B, map_size, map_size))``: the anomaly map bilinearly
        resized to ``map_size`` (0 keeps the input size) and smoothed (``official``: 5 x 5,
        sigma 4, zero padding; ``scipy``: ``gaussian_filter`` sigma 4 as the M2AD code), and the
        mean of its top ``top_fraction`` as the score.  ``return_raw=True`` adds the unsmoothed
        maps at ``map_size`` as a third element.
        """
        was_training = self.training
        self.eval()
        try:
            with autocast(images.device, self.mixed_precision):
                output = self(images)
        finally:
            self.train(was_training)
        raw = anomaly_map(output.encoder, output.decoder, images.shape[-2:])
        if map_size:
            raw = F.interpolate(raw, size=(map_size, map_size), mode="bilinear", align_corners=False)
        maps = smooth(raw, smoothing)[:, 0]
        scores = top_mean(maps, top_fraction)
        return (scores, maps, raw[:, 0]) if return_raw else (scores, maps)


def coherence(tokens: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INP coherence loss: mean over tokens of the cosine distance to the nearest prototype;
    also returns those distances (B, N)."""
    similarity = F.normalize(tokens.float(), dim=-1, eps=1e-8) @ F.normalize(prototypes.float(), dim=-1, eps=1e-8).transpose(1, 2)
    distance = (1.0 - similarity).min(dim=2).values
    return distance.mean(), distance


def soft_mining_loss(encoder: list[torch.Tensor], decoder: list[torch.Tensor], gamma: float = SOFT_MINING_GAMMA) -> torch.Tensor:
    """The official ``global_cosine_hm_adaptive`` loss.

    Value: mean over groups of the mean over samples of 1 - cos(flattened encoder map,
    flattened decoder map).  Gradient: the decoder map's gradient is multiplied, position by
    position, by ``(d / mean d) ** gamma`` where d = 1 - cos over channels (no gradient).
    """
    total = 0.0
    for target, output in zip(encoder, decoder, strict=True):
        target = target.detach().float()
        output = output.float()
        with torch.no_grad():
            point_distance = 1.0 - F.cosine_similarity(target, output, dim=1).unsqueeze(1)
            factor = (point_distance / point_distance.mean()) ** gamma
        total = total + torch.mean(1.0 - F.cosine_similarity(target.reshape(target.shape[0], -1), output.reshape(output.shape[0], -1), dim=1))
        if output.requires_grad:
            output.register_hook(lambda grad, factor=factor: grad * factor)
    return total / len(encoder)


def infer_arch(state_dict: dict[str, torch.Tensor], target_layers: tuple[int, ...] | None = None) -> INPFormerArch:
    """The ``INPFormerArch`` of an official INP-Former state dict.

    Width, depth, registers, patch size and position grid come from the ``encoder.*`` shapes, the
    head count from ``decoder.0.attn.learn_scale`` (heads, 1, 1) (the encoder uses the same
    count), the prototypes from ``prototype_token``, the decoder depth from the ``decoder.{i}``
    keys.  The tapped layers are not stored: ``default_target_layers(depth)`` unless given.
    """
    for key in ("prototype_token", "decoder.0.attn.learn_scale", "encoder.cls_token"):
        if key not in state_dict:
            raise ValueError(f"not an official INP-Former state dict: missing {key!r}")
    heads = state_dict["decoder.0.attn.learn_scale"].shape[0]
    encoder = infer_vit_config(state_dict, prefix="encoder.", num_heads=heads)
    decoder_depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("decoder."))
    return INPFormerArch(
        encoder=encoder,
        num_prototypes=state_dict["prototype_token"].shape[0],
        decoder_depth=decoder_depth,
        target_layers=tuple(target_layers) if target_layers is not None else default_target_layers(encoder.depth),
    )


def load_official(state_dict_or_path: dict[str, torch.Tensor] | str | Path, target_layers: tuple[int, ...] | None = None) -> INPFormerModel:
    """An ``INPFormerModel`` from an official checkpoint (``model.pth``) or its state dict,
    architecture inferred from the shapes (``infer_arch``), loaded with ``strict=True``, in eval mode.

    Files are read with ``torch.load(weights_only=True)``: no pickled code runs.
    """
    if isinstance(state_dict_or_path, (str, Path)):
        path = Path(state_dict_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint")
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state_dict = state_dict_or_path
    if not isinstance(state_dict, dict):
        raise ValueError("an INP-Former checkpoint must hold a state dict (a dict of tensors)")
    model = INPFormerModel(infer_arch(state_dict, target_layers))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


PRESETS: dict[str, dict[str, Any]] = {
    "official": {
        "input_size": 448, "crop_size": 392, "epochs": 200, "batch_size": 16, "optimizer": "stableadamw",
        "lr": 1e-3, "final_lr": 1e-4, "warmup_iters": 100, "weight_decay": 1e-4, "betas": (0.9, 0.999),
        "lr_step_epoch": 0, "grad_clip": 0.1, "map_size": 256, "smoothing": "official",
    },
    "m2ad-paper": {
        "input_size": 448, "crop_size": 448, "epochs": 100, "batch_size": 12, "optimizer": "adam",
        "lr": 3.75e-3, "final_lr": 3.75e-3, "warmup_iters": 0, "weight_decay": 0.0, "betas": (0.5, 0.999),
        "lr_step_epoch": 80, "grad_clip": 5.0, "map_size": 0, "smoothing": "scipy",
    },
}
"""Training and evaluation recipes (reference inpformer.md sections 4 and 11).  ``map_size`` 0
means maps at the crop size; ``lr_step_epoch`` multiplies the lr by 0.1 from that epoch on."""


@dataclass
class INPFormerConfig:
    """Options of the ``inpformer`` method; options left ``None`` come from ``preset``."""

    preset: str = "official"
    """``official`` (INP-Former paper) or ``m2ad-paper`` (M2AD benchmark code)."""
    encoder: str = "vitb14"
    """DINOv2 reg4 size: ``vits14``, ``vitb14``, ``vitl14``; ``tiny`` is a 40-wide smoke-test encoder."""
    encoder_weights: str = "auto"
    """``auto`` (the registry's ``dinov2_<encoder>_reg4_pretrain``), a registry name, a file path,
    or ``random`` (untrained encoder; smoke tests only)."""
    num_prototypes: int = 6
    input_size: int | None = None
    crop_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    """``stableadamw`` or ``adam``."""
    lr: float | None = None
    final_lr: float | None = None
    warmup_iters: int | None = None
    weight_decay: float | None = None
    betas: tuple[float, ...] | None = None
    lr_step_epoch: int | None = None
    grad_clip: float | None = None
    seed: int | None = None
    """Seed of the initialisation and shuffling; ``None`` draws one from torch's
    global generator, which the runner seeds per cell (the official code used 1, M2AD's 42)."""
    map_size: int | None = None
    smoothing: str | None = None
    """``official`` (5 x 5 Gaussian, zero padding), ``scipy`` (gaussian_filter, sigma 4) or ``none``."""
    top_fraction: float = 0.01
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        fill_from_preset(self, PRESETS)
        if self.encoder not in (*VIT_PRESETS, "tiny"):
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from {', '.join([*VIT_PRESETS, 'tiny'])}")
        if self.optimizer not in ("stableadamw", "adam"):
            raise ValueError(f"optimizer must be stableadamw or adam, got {self.optimizer!r}")
        if self.smoothing not in ("official", "scipy", "none"):
            raise ValueError(f"smoothing must be official, scipy or none, got {self.smoothing!r}")
        if self.crop_size > self.input_size or self.crop_size < 14:
            raise ValueError(f"crop_size must be in [14, input_size], got {self.crop_size} with input_size {self.input_size}")
        if min(self.epochs, self.batch_size, self.num_prototypes) < 1:
            raise ValueError("epochs, batch_size and num_prototypes must be positive")
        if len(self.betas) != 2:
            raise ValueError(f"betas needs two values, got {self.betas}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def _prepare(batch: torch.Tensor) -> torch.Tensor:
    """Model inputs of a training batch: uint8 crops are normalised, augmented floats kept."""
    return normalize(batch) if batch.dtype == torch.uint8 else batch.float()


def few_shot_augment(image: torch.Tensor) -> torch.Tensor:
    """The official few-shot augmentation of one normalised image (3, H, W) -> (22, 3, H, W):
    the image, 8 rotations, 8 translations, a horizontal flip, greyscale and 3 quarter turns
    (applied to the normalised tensor, as the official code does)."""
    batch = image.unsqueeze(0)
    out = [batch]

    def warp(matrix: list[list[float]]) -> torch.Tensor:
        theta = torch.tensor(matrix, dtype=torch.float32).unsqueeze(0)
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        return F.grid_sample(batch, grid, padding_mode="reflection", align_corners=False)

    for angle in (-math.pi / 4, -3 * math.pi / 16, -math.pi / 8, -math.pi / 16, math.pi / 16, math.pi / 8, 3 * math.pi / 16, math.pi / 4):
        cos, sin = math.cos(angle), math.sin(angle)
        out.append(warp([[cos, -sin, 0.0], [sin, cos, 0.0]]))
    for dx, dy in ((0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2), (0.2, -0.2), (0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1)):
        out.append(warp([[1.0, 0.0, dx], [0.0, 1.0, dy]]))
    out.append(batch.flip(-1))
    grey = 0.299 * batch[:, 0] + 0.587 * batch[:, 1] + 0.114 * batch[:, 2]
    out.append(grey.unsqueeze(1).expand(-1, 3, -1, -1))
    out.extend(torch.rot90(batch, turns, dims=(-2, -1)) for turns in (1, 2, 3))
    return torch.cat(out)


class INPFormer:
    """INP-Former behind the runner's method interface (``baselines.base.Method``).

    One fit trains one model on every image it is given: the harness gives it one category
    (single-class), every category (multi-class), the shots it drew (few-shot; each training
    image is then augmented x22 as the official few-shot script does) or another dataset
    (zero-shot: the official cross-dataset training; its zero-shot map, the INP distance,
    is not ported, so predictions use the reconstruction map of the other settings).
    """

    name: ClassVar[str] = "inpformer"
    card: ClassVar[MethodCard] = MethodCard(weights=tuple(f"dinov2_{size}_reg4_pretrain" for size in VIT_PRESETS))
    Config: ClassVar[type] = INPFormerConfig

    def __init__(self, config: INPFormerConfig | None = None) -> None:
        self.config = config or INPFormerConfig()
        self.device = choose_device(self.name, self.config.device)
        self._encoder: DinoVisionTransformer | None = None
        self.model: INPFormerModel | None = None
        self.seed = choose_seed(self.config.seed)

    @property
    def arch(self) -> INPFormerArch:
        """The architecture the config asks for."""
        encoder = TINY_ENCODER if self.config.encoder == "tiny" else VIT_PRESETS[self.config.encoder]
        return INPFormerArch(encoder=encoder, num_prototypes=self.config.num_prototypes, decoder_depth=len(default_target_layers(encoder.depth)), target_layers=default_target_layers(encoder.depth))

    @property
    def backbone(self) -> str:
        """The backbone registry name of the configured encoder."""
        return registry.dinov2_name(self.config.encoder)

    def encoder(self) -> DinoVisionTransformer:
        """The frozen DINOv2 encoder, loaded (strictly) on first use from ``encoder_weights``."""
        if self._encoder is None:
            self._encoder = registry.load_dinov2(self.config.encoder, self.config.encoder_weights).to(self.device)
        return self._encoder

    def _new_model(self) -> INPFormerModel:
        """A fresh INP-Former sharing the frozen encoder, initialised as the official code."""
        encoder = self.encoder()
        arch = replace(self.arch, encoder=encoder.config)
        return INPFormerModel(arch, encoder=encoder).to(self.device)

    def _collect(self, train: Iterable[Batch], augment: bool) -> torch.Tensor:
        """Every training image as uint8 resized crops (normalised per batch later, which keeps
        memory at a quarter of float32), or, with ``augment`` (few-shot), their 22 official
        augmentations each as normalised float32."""
        crops = [resize_crop(batch.images, self.config.input_size, self.config.crop_size) for batch in train]
        if not crops:
            raise ValueError("inpformer: no training images")
        images = torch.cat(crops)
        if augment:
            return torch.cat([few_shot_augment(normalize(images[index : index + 1])[0]) for index in range(len(images))])
        return images

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Train one model on the training images with the preset's recipe; with shots (few-shot)
        on the official x22 augmentations of each shot image."""
        torch.manual_seed(self.seed)
        model = self._new_model()
        self.train_model(model, self._collect(train, augment=setting.shots is not None))
        self.model = model.eval()

    def recipe(self) -> Recipe:
        """The preset's training recipe for the shared loop (``baselines.training``)."""
        config = self.config
        stable = config.optimizer == "stableadamw"
        return Recipe(
            optimizer=config.optimizer, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
            eps=1e-10 if stable else 1e-8, amsgrad=stable, schedule="warm-cosine" if stable else "step",
            final_lr=config.final_lr, warmup_iters=config.warmup_iters, step_epoch=config.lr_step_epoch or 0,
            grad_clip=config.grad_clip, batch_size=config.batch_size, drop_last=True, epochs=config.epochs,
        )

    def train_model(self, model: INPFormerModel, images: torch.Tensor) -> list[float]:
        """The official training loop on uint8 crops or normalised float images; returns the
        loss of each iteration."""

        def loss(inputs: torch.Tensor, iteration: int) -> torch.Tensor:
            output = model(inputs)
            return soft_mining_loss(output.encoder, output.decoder) + COHERENCE_WEIGHT * output.coherence_loss

        model.train()
        return train_head(model.trainable_parameters(), images, loss, self.recipe(), prepare=_prepare, device=self.device,
                          seed=self.seed, mixed_precision=model.mixed_precision, name="inpformer")

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) by the official top-1 % rule and maps (B, H, W) at the input size.

        The map covers the centre crop; it is resized into the crop's place in the input frame
        and the uncovered border gets each map's minimum (the border is never seen, as in the
        official evaluation).
        """
        if self.model is None:
            raise RuntimeError("inpformer: predict called before fit")
        config = self.config
        images = preprocess(batch.images.to(self.device), config.input_size, config.crop_size)
        height, width = batch.images.shape[-2:]
        scores, crop_maps = self.model.predict(images, map_size=config.map_size, smoothing=config.smoothing, top_fraction=config.top_fraction)
        maps = uncrop(crop_maps.float().cpu(), height, width, config.input_size, config.crop_size)
        return scores.float().cpu().numpy().astype(np.float32), maps.numpy().astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained model's state dict, with the official parameter names (``encoder.*``
        included), so that ``load_official`` reads it too."""
        if self.model is None:
            raise RuntimeError("inpformer: state_dict called before fit")
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a model written by ``state_dict`` (or an official checkpoint's state dict)."""
        model = INPFormerModel(infer_arch(state, self.arch.target_layers))
        model.load_state_dict(state, strict=True)
        self.model = model.to(self.device).eval()
        self._encoder = self.model.encoder


__all__ = [
    "INPFormer",
    "INPFormerArch",
    "INPFormerConfig",
    "INPFormerModel",
    "PRESETS",
    "StableAdamW",
    "anomaly_map",
    "few_shot_augment",
    "infer_arch",
    "load_official",
    "normalize",
    "preprocess",
    "resize_crop",
    "soft_mining_loss",
    "warm_cosine_lr",
]
