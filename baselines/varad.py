"""``varad``: VarAD (Cao et al., arXiv 2412.17263), re-implemented from the paper's abstract and
secondary summaries (the authors' repository ``caoyunkang/VarAD`` holds one unorganised zip,
not readable here).

Anomaly detection as visual-token prediction:

* **tokens**: the patch tokens of several blocks ("hierarchies") of a frozen DINOv2 encoder,
  each passed through a trained per-hierarchy **adapter** (a linear map initialised to the
  identity) that narrows the gap between the pretraining images and the inspected ones;
* **multi-directional sequences**: each hierarchy's h x w grid is read as 1-D sequences in
  several scan orders (rows, reversed rows, columns, reversed columns);
* **autoregressive prediction**: a stack of Mamba blocks (``baselines.selective_scan``) reads
  each sequence shifted by one behind a learned start token, so that its output at position t
  has seen tokens 0 .. t-1 only and predicts token t;
* **score**: the discrepancy (1 - cosine, or the squared distance) between predicted and actual
  token, put back on the grid, averaged over directions and hierarchies, upsampled and blurred;
  the image score is the mean of the top 1 % of the map.

Trained on normal images only, through the shared loop (``baselines.training.train_head``), to
minimise the same discrepancy.  Every choice and its source: docs/methods.md, ``varad``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from baselines.backbones import registry
from baselines.backbones.dinov2 import VIT_PRESETS
from baselines.base import Batch, MethodCard, Setting, choose_device, choose_seed, image_score_from_map
from baselines.selective_scan import SCAN_MODES, MambaBlock
from baselines.training import OPTIMIZERS, Recipe, train_head

DIRECTIONS = ("row", "row-reverse", "column", "column-reverse")
"""Scan orders of an h x w grid: raster rows, the same backwards, columns (top to bottom, left
to right), the same backwards."""


def default_layers(depth: int) -> tuple[int, ...]:
    """The blocks read (0-indexed): the 4th, 8th and 12th of a 12-block ViT (as the paper's
    DINO layers), the same thirds of any depth."""
    return tuple(sorted({max(0, depth * k // 3 - 1) for k in (1, 2, 3)}))


def scan_order(direction: str, height: int, width: int) -> torch.Tensor:
    """Raster indices of an ``height`` x ``width`` grid in the order ``direction`` reads them."""
    grid = torch.arange(height * width).view(height, width)
    orders = {"row": grid.flatten(), "column": grid.T.flatten()}
    base, _, reverse = direction.partition("-")
    if base not in orders or reverse not in ("", "reverse"):
        raise ValueError(f"unknown direction {direction!r}; choose from {', '.join(DIRECTIONS)}")
    return orders[base].flip(0) if reverse else orders[base]


@dataclass
class VarADConfig:
    """Options of the ``varad`` method (every default's source: docs/methods.md)."""

    encoder: str = "vits14"
    """DINOv2 reg4 size (``vits14``, ``vitb14``, ``vitl14``); ``tiny`` is a 40-wide smoke-test encoder."""
    encoder_weights: str = "auto"
    """``auto`` (the registry's ``dinov2_<encoder>_reg4_pretrain``), a registry name, a file, or ``random``."""
    layers: tuple[int, ...] = ()
    """Encoder blocks read as hierarchies (0-indexed); empty: the 4th, 8th and 12th of 12 (thirds of other depths)."""
    input_size: int = 448
    """Square side images are resized to (a multiple of the patch size, 14)."""
    directions: tuple[str, ...] = DIRECTIONS
    """Scan orders (any of ``row``, ``row-reverse``, ``column``, ``column-reverse``)."""
    share_directions: bool = True
    """One predictor per hierarchy for every direction (each direction has its own start token), or one per direction."""
    adapter: bool = True
    """Train a per-hierarchy linear adapter (initialised to the identity) on the tokens."""
    target: str = "frozen"
    """What is predicted: ``frozen`` encoder tokens, or the ``adapted`` tokens (detached)."""
    depth: int = 2
    """Mamba blocks per predictor (pre-norm, residual)."""
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    """Mamba sizes: state size N, causal-convolution width, inner width / model width (Mamba's defaults)."""
    loss: str = "cosine"
    """Discrepancy, trained and scored: ``cosine`` (1 - cos) or ``l2`` (mean squared difference per channel)."""
    aggregation: str = "mean"
    """How the per-direction and per-hierarchy maps combine: ``mean`` or ``max``."""
    epochs: int = 50
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 1e-3
    final_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    schedule: str = "warm-cosine"
    """``warm-cosine`` (linear warm-up over ``warmup_iters``, cosine to ``final_lr``) or ``constant``."""
    grad_clip: float | None = 1.0
    blur_sigma: float = 4.0
    """Gaussian sigma of the map, in pixels at ``input_size``; 0: none."""
    top_fraction: float = 0.01
    """Image score: mean of this fraction of the highest map pixels; 0 takes the maximum."""
    scan: str = "auto"
    """``auto`` (mamba_ssm's CUDA kernel when installed and on CUDA, else pure PyTorch), ``pure`` or ``kernel``."""
    chunk_size: int = 1
    """Steps per chunk of the pure scan: 1 is the per-step recurrence (fastest on CPUs); larger chunks
    take fewer sequential steps at a memory cost growing with the square (results do not change)."""
    seed: int | None = None
    """Seed of the initialisation and shuffling; ``None`` draws one from torch's global generator."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        if self.encoder not in (*VIT_PRESETS, "tiny"):
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from {', '.join([*VIT_PRESETS, 'tiny'])}")
        encoder = registry.spec(registry.dinov2_name(self.encoder)).vit
        if self.input_size < encoder.patch_size or self.input_size % encoder.patch_size:
            raise ValueError(f"input_size must be a positive multiple of the patch size {encoder.patch_size}, got {self.input_size}")
        if not self.layers:
            self.layers = default_layers(encoder.depth)
        if any(not 0 <= layer < encoder.depth for layer in self.layers) or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct blocks in 0..{encoder.depth - 1} of the {self.encoder} encoder, got {self.layers}")
        if not self.directions or len(set(self.directions)) != len(self.directions) or not set(self.directions) <= set(DIRECTIONS):
            raise ValueError(f"directions must be distinct names from {', '.join(DIRECTIONS)}, got {self.directions}")
        for name, value, allowed in (("target", self.target, ("frozen", "adapted")), ("loss", self.loss, ("cosine", "l2")),
                                     ("aggregation", self.aggregation, ("mean", "max")), ("scan", self.scan, SCAN_MODES),
                                     ("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, ("warm-cosine", "constant")),
                                     ("device", self.device, ("auto", "cpu", "cuda"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.target == "adapted" and not self.adapter:
            raise ValueError("target=adapted needs adapter=true")
        if min(self.depth, self.d_state, self.d_conv, self.expand, self.epochs, self.batch_size, self.chunk_size) < 1:
            raise ValueError("depth, d_state, d_conv, expand, epochs, batch_size and chunk_size must be positive")
        if min(self.lr, self.final_lr, self.weight_decay, self.warmup_iters, self.blur_sigma) < 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise ValueError("lr, final_lr, weight_decay, warmup_iters and blur_sigma must be >= 0, grad_clip positive or none")
        if not 0.0 <= self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in [0, 1], got {self.top_fraction}")


class Predictor(nn.Module):
    """``depth`` pre-norm residual Mamba blocks, a final norm and a linear head: (B, L, C) -> (B, L, C)."""

    def __init__(self, dim: int, config: VarADConfig) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(config.depth))
        self.blocks = nn.ModuleList(MambaBlock(dim, config.d_state, config.d_conv, config.expand, scan=config.scan,
                                               chunk_size=config.chunk_size) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Causal: output t depends on inputs 0..t only."""
        for norm, block in zip(self.norms, self.blocks, strict=True):
            tokens = tokens + block(norm(tokens))
        return self.head(self.norm(tokens))


class VarADModel(nn.Module):
    """The frozen encoder (``encoder.*``) and, per hierarchy, the adapter, the start tokens and the predictor(s)."""

    def __init__(self, encoder: nn.Module, config: VarADConfig) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.layers, self.directions, self.config = tuple(config.layers), tuple(config.directions), config
        dim = encoder.config.embed_dim
        count = len(self.layers)
        self.adapters = nn.ModuleList(nn.Linear(dim, dim) for _ in range(count)) if config.adapter else None
        if self.adapters is not None:
            for adapter in self.adapters:
                nn.init.eye_(adapter.weight)
                nn.init.zeros_(adapter.bias)
        self.start = nn.Parameter(torch.randn(count, len(self.directions), dim) * 0.02)
        predictors = 1 if config.share_directions else len(self.directions)
        self.predictors = nn.ModuleList(nn.ModuleList(Predictor(dim, config) for _ in range(predictors)) for _ in range(count))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the encoder."""
        return [param for name, param in self.named_parameters() if not name.startswith("encoder.")]

    def tokens(self, images: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The patch tokens (B, h*w, C) of each hierarchy, raster order, and the grid (h, w)."""
        encoder = self.encoder
        prefix = 1 + encoder.config.num_register_tokens
        grid = (images.shape[-2] // encoder.config.patch_size, images.shape[-1] // encoder.config.patch_size)
        with torch.no_grad():
            return [layer[:, prefix:] for layer in registry.tap(encoder, images, self.layers)], grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-token discrepancies (B, hierarchies, directions, h, w) of normalised images (B, 3, H, W)."""
        layers, (height, width) = self.tokens(images)
        batch = images.shape[0]
        out = []
        for index, tokens in enumerate(layers):
            tokens = tokens.float()
            adapted = self.adapters[index](tokens) if self.adapters is not None else tokens
            target = adapted.detach() if self.config.target == "adapted" else tokens
            orders = [scan_order(direction, height, width).to(images.device) for direction in self.directions]
            # position t of each sequence sees tokens 0..t-1 of its order (the start token first)
            sequences = torch.stack([torch.cat([self.start[index, slot].expand(batch, 1, -1), adapted[:, order[:-1]]], dim=1)
                                     for slot, order in enumerate(orders)])  # (directions, B, h*w, C)
            predictors = self.predictors[index]
            if self.config.share_directions:
                outputs = predictors[0](sequences.flatten(0, 1)).view_as(sequences)
            else:
                outputs = torch.stack([predictor(sequence) for predictor, sequence in zip(predictors, sequences, strict=True)])
            out.append(torch.stack([discrepancy(output[:, order.argsort()], target, self.config.loss)
                                    for output, order in zip(outputs, orders, strict=True)], dim=1))
        return torch.stack(out, dim=1).view(batch, len(layers), len(self.directions), height, width)


def discrepancy(predicted: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token discrepancy (B, N) of (B, N, C) tensors: ``cosine`` 1 - cos, ``l2`` mean squared difference."""
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(predicted.float(), target.float(), dim=-1, eps=1e-8)
    return (predicted.float() - target.float()).pow(2).mean(dim=-1)


class VarAD:
    """VarAD behind the runner's method interface: one model per fit on the images it is given."""

    name: ClassVar[str] = "varad"
    card: ClassVar[MethodCard] = MethodCard(
        settings=("single-class", "multi-class", "few-shot"), weights=tuple(f"dinov2_{size}_reg4_pretrain" for size in VIT_PRESETS),
        reimplemented_from="arXiv 2412.17263 (VarAD), from the paper's abstract and summaries",
    )
    """Trained on the target's normal images: no zero-shot recipe exists."""
    Config: ClassVar[type] = VarADConfig

    def __init__(self, config: VarADConfig | None = None) -> None:
        self.config = config or VarADConfig()
        self.device = choose_device(self.name, self.config.device)
        self.backbone = registry.dinov2_name(self.config.encoder)
        self.model: VarADModel | None = None
        self.losses: list[float] = []
        self.seed = choose_seed(self.config.seed)

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> uint8 (B, 3, S, S) at ``input_size``."""
        size = self.config.input_size
        if images.shape[-2:] == (size, size):
            return images
        resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return resized.round().clamp(0, 255).to(torch.uint8)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the encoder's normalised float inputs."""
        return registry.normalize(images, self.backbone)

    def recipe(self) -> Recipe:
        """The training recipe for the shared loop."""
        config = self.config
        return Recipe(optimizer=config.optimizer, lr=config.lr, weight_decay=config.weight_decay, schedule=config.schedule,
                      final_lr=config.final_lr, warmup_iters=config.warmup_iters, grad_clip=config.grad_clip,
                      batch_size=config.batch_size, drop_last=True, epochs=config.epochs)

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Train adapters, start tokens and predictors on every given image (``losses``: the loss per iteration)."""
        images = [self._resize(batch.images) for batch in train]
        if not images:
            raise ValueError("varad: no training images")
        torch.manual_seed(self.seed)
        encoder = registry.load_dinov2(self.config.encoder, self.config.encoder_weights)
        model = VarADModel(encoder, self.config).to(self.device)
        model.train()
        self.losses = train_head(model.trainable_parameters(), torch.cat(images), lambda inputs, _: model(inputs).mean(), self.recipe(),
                            prepare=self._prepare, device=self.device, seed=self.seed, name="varad")
        self.model = model.eval()

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Raw maps (B, h, w) of uint8 images: the per-token discrepancies combined over directions and hierarchies."""
        if self.model is None:
            raise RuntimeError("varad: predict called before fit")
        with torch.no_grad():
            tokens = self.model(self._prepare(self._resize(images).to(self.device))).float()
        flat = tokens.flatten(1, 2)
        return (flat.mean(dim=1) if self.config.aggregation == "mean" else flat.amax(dim=1)).cpu()

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, H, W) at the input size."""
        config = self.config
        raw = self.anomaly_maps(batch.images)
        maps = F.interpolate(raw.unsqueeze(1), size=(config.input_size, config.input_size), mode="bilinear", align_corners=False)[:, 0]
        if config.blur_sigma:
            maps = torch.from_numpy(np.stack([ndimage.gaussian_filter(item, sigma=config.blur_sigma) for item in maps.numpy()]))
        height, width = batch.images.shape[-2:]
        if maps.shape[-2:] != (height, width):
            maps = F.interpolate(maps.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        scores = image_score_from_map(maps, config.top_fraction)
        return scores.numpy().astype(np.float32), maps.numpy().astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model, encoder included (a random encoder is then restored exactly)."""
        if self.model is None:
            raise RuntimeError("varad: state_dict called before fit")
        return {name: value.detach().cpu() for name, value in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a model written by ``state_dict`` under the same config."""
        model = VarADModel(registry.load_backbone(self.backbone, "random"), self.config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = " ".join(line.strip() for line in str(error).splitlines()[:2])[:300]
            raise ValueError(f"varad: the saved state does not fit this config ({first}); use the config it was fitted with") from None
        self.model = model.to(self.device).eval()


__all__ = ["DIRECTIONS", "VarAD", "VarADConfig", "VarADModel", "default_layers", "discrepancy", "scan_order"]
