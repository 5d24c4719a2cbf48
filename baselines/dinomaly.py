"""``dinomaly``: Dinomaly (Guo et al., CVPR 2025), faithful to the official code
(``guojiajeremy/Dinomaly``, ``models/uad.py::ViTill``, ``models/vision_transformer.py``,
``utils.py``, ``dinomaly_*_{uni,sep}.py``) and able to load its released checkpoints.

Architecture (``DinomalyModel``; parameter names identical to the official ``ViTill``):

* a frozen DINOv2 encoder with registers; the outputs of ``target_layers`` (blocks 2-9 of
  ViT-S/B, 4, 6, ..., 18 of ViT-L) are kept **with** the CLS and register tokens and fused by
  their mean;
* the noisy bottleneck (``bottleneck.0``): an MLP with dropout 0.2 on its input, after GELU
  and on its output (dropout is active while training only);
* the decoder (``decoder.{i}``): pre-norm transformer blocks (LayerNorm eps 1e-8) whose attention
  is linear with the elu + 1 kernel (``LinearAttention2``), residuals on both branches; the
  block outputs are reversed and averaged in two groups, which are paired with the two encoder
  groups; CLS and registers are stripped at the end.

Loss: global cosine with hard mining (``global_cosine_hm_percent``): the value is 1 - cos of the
flattened maps; the gradient of the points whose distance is below the ``(1 - p)`` top quantile
is multiplied by ``factor``.  Anomaly map and image score: as INP-Former's (official) or the M2AD
code's ``compute_discrepancy_map`` (sum / N^2, 33 x 33 Gaussian, maximum).

Presets: ``official`` (the multi-class scripts ``dinomaly_{mvtec,visa}_uni.py``: 448 -> crop
392, StableAdamW 2e-3 with warm-up + cosine to 2e-4, 10,000 iterations (5,000 for a
single-class or few-shot fit, the ``_sep`` scripts), batch 16, clip 0.1, p warmed up to 0.9 over
1,000 iterations with factor 0.1) and ``m2ad-paper`` (``hustCYQ/M2AD`` ``configs/benchmark/
dinomaly/dinomaly_100e.py`` and its trainer: see docs/methods.md for every difference).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.backbones import registry
from baselines.backbones.dinov2 import VIT_PRESETS, DinoVisionTransformer, Mlp, ViTConfig, infer_vit_config
from baselines.base import Batch, MethodCard, Setting, choose_device, choose_seed, fill_from_preset
from baselines.reconstruction import anomaly_map, default_target_layers, m2ad_discrepancy_map, normalize, preprocess, resize_crop, smooth, top_mean, uncrop
from baselines.training import Recipe, autocast, train_head

HEAD_NORM_EPS = 1e-8
BOTTLENECK_DROPOUT = 0.2


@dataclass(frozen=True)
class DinomalyArch:
    """Shape of a Dinomaly: its encoder, decoder depth and tapped layers."""

    encoder: ViTConfig
    decoder_depth: int = 8
    target_layers: tuple[int, ...] = tuple(range(2, 10))
    dropout: float = BOTTLENECK_DROPOUT

    def __post_init__(self) -> None:
        if len(self.target_layers) < 2 or len(self.target_layers) % 2 or self.decoder_depth < 2 or self.decoder_depth % 2:
            raise ValueError("Dinomaly needs an even number (>= 2) of target layers and of decoder blocks")
        if max(self.target_layers) >= self.encoder.depth or min(self.target_layers) < 0:
            raise ValueError(f"target layers {self.target_layers} outside the {self.encoder.depth}-block encoder")

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


class LinearAttention(nn.Module):
    """The official ``LinearAttention2``: fused ``qkv``, kernel elu(x) + 1 on q and k,
    out_i = sum_s phi(q_i) . phi(k_s) v_s / sum_s phi(q_i) . phi(k_s); cost O(N C d)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        batch, count, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, count, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        query, key, value = F.elu(qkv[0]) + 1.0, F.elu(qkv[1]) + 1.0, qkv[2]
        context = key.transpose(-2, -1) @ value  # (B, h, d, d)
        normaliser = 1.0 / (query @ key.sum(dim=-2).unsqueeze(-1))  # (B, h, N, 1)
        out = (query @ context) * normaliser
        return self.proj(out.transpose(1, 2).reshape(batch, count, dim))


class DecoderBlock(nn.Module):
    """x + attn(LN1 x), then x + MLP(LN2 x): the official ``Block`` with ``LinearAttention2``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=HEAD_NORM_EPS)
        self.attn = LinearAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=HEAD_NORM_EPS)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode tokens."""
        tokens = tokens + self.attn(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class NoisyBottleneck(nn.Module):
    """The official ``bMlp``: dropout -> fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Noisy MLP."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(self.drop(tokens))))))


class DinomalyOutput(NamedTuple):
    """The two encoder and decoder group maps (B, C, h, w), as the official ``ViTill`` returns."""

    encoder: list[torch.Tensor]
    decoder: list[torch.Tensor]


class DinomalyModel(nn.Module):
    """Dinomaly with the official parameter names (``encoder.*``, ``bottleneck.0.*``, ``decoder.{i}.*``)."""

    def __init__(self, arch: DinomalyArch, encoder: DinoVisionTransformer | None = None) -> None:
        super().__init__()
        self.arch = arch
        dim, heads = arch.encoder.embed_dim, arch.encoder.num_heads
        self.encoder = encoder if encoder is not None else DinoVisionTransformer(arch.encoder)
        self.bottleneck = nn.ModuleList([NoisyBottleneck(dim, dim * 4, arch.dropout)])
        self.decoder = nn.ModuleList(DecoderBlock(dim, heads) for _ in range(arch.decoder_depth))
        self.encoder.requires_grad_(False)
        self.mixed_precision = True
        """bf16 autocast on CUDA (no effect on CPU); ``False`` runs float32 everywhere."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The trained parts in the official order: bottleneck, then decoder."""
        return [*self.bottleneck.parameters(), *self.decoder.parameters()]

    def train(self, mode: bool = True) -> DinomalyModel:
        """Train the head only; the frozen encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def reset_head(self) -> None:
        """Official initialisation: Linear weights trunc-normal(0.01, [-0.03, 0.03]), biases 0, LayerNorm (1, 0)."""
        for module in [*self.bottleneck.modules(), *self.decoder.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.01, a=-0.03, b=0.03)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> DinomalyOutput:
        """Normalised images (B, 3, H, W), H and W multiples of the patch size -> ``DinomalyOutput``."""
        patch = self.arch.encoder.patch_size
        grid_h, grid_w = images.shape[-2] // patch, images.shape[-1] // patch
        with torch.no_grad():
            tapped = self.encoder.intermediate_layers(images, self.arch.target_layers)
        tokens = torch.stack(tapped, dim=1).mean(dim=1)
        for block in self.bottleneck:
            tokens = block(tokens)
        decoded = []
        for block in self.decoder:
            tokens = block(tokens)
            decoded.append(tokens)
        decoded = decoded[::-1]
        skip = 1 + self.arch.encoder.num_register_tokens
        batch = images.shape[0]

        def grouped(layers: list[torch.Tensor], groups: tuple[tuple[int, ...], ...]) -> list[torch.Tensor]:
            means = [torch.stack([layers[index] for index in group], dim=1).mean(dim=1)[:, skip:] for group in groups]
            return [mean.transpose(1, 2).reshape(batch, -1, grid_h, grid_w).contiguous() for mean in means]

        return DinomalyOutput(grouped(tapped, self.arch.encoder_groups), grouped(decoded, self.arch.decoder_groups))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, map_size: int = 256, scoring: str = "official", top_fraction: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,) and maps (B, h, w) of normalised images (B, 3, H, W).

        ``official`` (``utils.evaluation_batch``): mean of the two cosine maps at the input size,
        bilinear to ``map_size`` (0 keeps it), 5 x 5 Gaussian (sigma 4, zero padding), mean of the
        top ``top_fraction``.  ``m2ad`` (M2AD ``compute_discrepancy_map`` and
        ``maximum_as_anomaly_score``): the sum of the maps over N^2 at the input size, SciPy
        ``gaussian_filter`` sigma 4 (33 x 33), score the top ``top_fraction`` mean, or the
        maximum when it is 0.
        """
        was_training = self.training
        self.eval()
        try:
            with autocast(images.device, self.mixed_precision):
                output = self(images)
        finally:
            self.train(was_training)
        if scoring == "official":
            raw = anomaly_map(output.encoder, output.decoder, images.shape[-2:])
            if map_size:
                raw = F.interpolate(raw, size=(map_size, map_size), mode="bilinear", align_corners=False)
            maps = smooth(raw, "official")[:, 0]
        elif scoring == "m2ad":
            maps = smooth(m2ad_discrepancy_map(output.encoder, output.decoder, images.shape[-2:]), "scipy")[:, 0]
        else:
            raise ValueError(f"scoring must be official or m2ad, got {scoring!r}")
        return top_mean(maps, top_fraction), maps


def hard_mining_loss(encoder: list[torch.Tensor], decoder: list[torch.Tensor], p: float, factor: float) -> torch.Tensor:
    """The official ``global_cosine_hm_percent`` (``utils.py:70``).

    Value: mean over groups of the mean over samples of 1 - cos(flattened encoder map, flattened
    decoder map).  Gradient: the decoder map's gradient at the points whose cosine distance d is
    below the k-th largest d (k = int(points x (1 - p))) is multiplied by ``factor``; the hardest
    points keep theirs.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"hard-mining p must be in [0, 1), got {p}")
    total = 0.0
    for target, output in zip(encoder, decoder, strict=True):
        target = target.detach().float()
        output = output.float()
        with torch.no_grad():
            point_distance = 1.0 - F.cosine_similarity(target, output, dim=1).unsqueeze(1)
            count = int(point_distance.numel() * (1 - p))
            if count < 1:
                raise ValueError(f"hard mining keeps no point: {point_distance.numel()} points at p={p}")
            threshold = torch.topk(point_distance.reshape(-1), k=count).values[-1]
            scale = torch.where(point_distance < threshold, factor, 1.0).to(output.dtype)
        total = total + torch.mean(1.0 - F.cosine_similarity(target.reshape(target.shape[0], -1), output.reshape(output.shape[0], -1), dim=1))
        if output.requires_grad:
            output.register_hook(lambda grad, scale=scale: grad * scale)
    return total / len(encoder)


def infer_arch(state_dict: dict[str, torch.Tensor], target_layers: tuple[int, ...] | None = None, num_heads: int | None = None) -> DinomalyArch:
    """The ``DinomalyArch`` of an official ``ViTill`` state dict: encoder from the ``encoder.*``
    shapes (heads: ``num_heads``, else DINOv2's 64 channels per head), decoder depth from the
    ``decoder.{i}`` keys; tapped layers ``default_target_layers(depth)`` unless given."""
    for key in ("encoder.cls_token", "bottleneck.0.fc1.weight", "decoder.0.attn.qkv.weight"):
        if key not in state_dict:
            raise ValueError(f"not an official Dinomaly state dict: missing {key!r}")
    encoder = infer_vit_config(state_dict, prefix="encoder.", num_heads=num_heads)
    decoder_depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("decoder."))
    layers = tuple(target_layers) if target_layers is not None else default_target_layers(encoder.depth)
    return DinomalyArch(encoder=encoder, decoder_depth=decoder_depth, target_layers=layers)


def official_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official names of a checkpoint: M2AD's wrapper stores them under ``model.``."""
    if state_dict and all(key.startswith("model.") for key in state_dict):
        return {key[len("model."):]: value for key, value in state_dict.items()}
    return state_dict


def load_official(state_dict_or_path: dict[str, torch.Tensor] | str | Path, target_layers: tuple[int, ...] | None = None, num_heads: int | None = None) -> DinomalyModel:
    """A ``DinomalyModel`` from a released checkpoint (``model.pth`` of the README's Drive links,
    or an M2AD checkpoint), architecture inferred from the shapes, ``strict=True``, eval mode.
    Files are read with ``torch.load(weights_only=True)``."""
    if isinstance(state_dict_or_path, (str, Path)):
        path = Path(state_dict_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint")
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state_dict = state_dict_or_path
    if not isinstance(state_dict, dict):
        raise ValueError("a Dinomaly checkpoint must hold a state dict (a dict of tensors)")
    state_dict = official_state(state_dict)
    model = DinomalyModel(infer_arch(state_dict, target_layers, num_heads))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


PRESETS: dict[str, dict[str, Any]] = {
    "official": {
        "input_size": 448, "crop_size": 392, "iterations": 0, "epochs": 0, "batch_size": 16, "optimizer": "stableadamw",
        "lr": 2e-3, "final_lr": 2e-4, "warmup_iters": 100, "weight_decay": 1e-4, "betas": (0.9, 0.999), "lr_step_epoch": 0,
        "grad_clip": 0.1, "drop_last": True, "hard_mining_p": 0.9, "hard_mining_warmup": 1000, "hard_mining_factor": 0.1,
        "head_init": "trunc-normal", "scoring": "official", "map_size": 256, "top_fraction": 0.01,
    },
    "m2ad-paper": {
        "input_size": 448, "crop_size": 448, "iterations": 0, "epochs": 100, "batch_size": 12, "optimizer": "adam",
        "lr": 3.75e-3, "final_lr": 3.75e-3, "warmup_iters": 0, "weight_decay": 0.0, "betas": (0.5, 0.999), "lr_step_epoch": 80,
        "grad_clip": 5.0, "drop_last": False, "hard_mining_p": 0.9, "hard_mining_warmup": 0, "hard_mining_factor": 0.0,
        "head_init": "pytorch", "scoring": "m2ad", "map_size": 0, "top_fraction": 0.0,
    },
}
"""``iterations`` 0 with ``epochs`` 0 means the official count for the setting (10,000 multi-class,
5,000 otherwise); ``iterations`` 0 with ``epochs`` > 0 trains that many epochs."""

OFFICIAL_ITERATIONS = {"multi-class": 10_000, "single-class": 5_000, "few-shot": 5_000}


@dataclass
class DinomalyConfig:
    """Options of the ``dinomaly`` method; options left ``None`` come from ``preset``."""

    preset: str = "official"
    """``official`` (Dinomaly's scripts) or ``m2ad-paper`` (the M2AD benchmark code)."""
    encoder: str = "vitb14"
    """DINOv2 reg4 size: ``vits14``, ``vitb14``, ``vitl14``; ``tiny`` is a 40-wide smoke-test encoder."""
    encoder_weights: str = "auto"
    """``auto`` (the registry's ``dinov2_<encoder>_reg4_pretrain``), a registry name, a file, or ``random``."""
    input_size: int | None = None
    crop_size: int | None = None
    iterations: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    """``stableadamw``, ``adam`` or ``adamw``."""
    lr: float | None = None
    final_lr: float | None = None
    warmup_iters: int | None = None
    weight_decay: float | None = None
    betas: tuple[float, ...] | None = None
    lr_step_epoch: int | None = None
    grad_clip: float | None = None
    drop_last: bool | None = None
    hard_mining_p: float | None = None
    hard_mining_warmup: int | None = None
    """Iterations over which p grows linearly from 0 to ``hard_mining_p`` (official 1,000; 0: fixed)."""
    hard_mining_factor: float | None = None
    """Gradient factor of the easy points (official 0.1; M2AD 0: they get no gradient)."""
    head_init: str | None = None
    """``trunc-normal`` (official) or ``pytorch`` (PyTorch's defaults; the M2AD code initialises nothing)."""
    scoring: str | None = None
    """``official`` (mean map, resize to ``map_size``, 5 x 5 Gaussian) or ``m2ad`` (sum / N^2, 33 x 33 Gaussian)."""
    map_size: int | None = None
    top_fraction: float | None = None
    """Image score: mean of this top fraction of the map (official 0.01); 0 takes the maximum (M2AD)."""
    seed: int | None = None
    """Seed of the initialisation, dropout and shuffling; ``None`` draws one from torch's global
    generator, which the runner seeds per cell (the official code used 1, M2AD's 42)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        fill_from_preset(self, PRESETS)
        if self.encoder not in (*VIT_PRESETS, "tiny"):
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from {', '.join([*VIT_PRESETS, 'tiny'])}")
        if self.head_init not in ("trunc-normal", "pytorch"):
            raise ValueError(f"head_init must be trunc-normal or pytorch, got {self.head_init!r}")
        if self.scoring not in ("official", "m2ad"):
            raise ValueError(f"scoring must be official or m2ad, got {self.scoring!r}")
        if self.crop_size > self.input_size or self.crop_size < 14:
            raise ValueError(f"crop_size must be in [14, input_size], got {self.crop_size} with input_size {self.input_size}")
        if min(self.iterations, self.epochs) < 0 or self.batch_size < 1:
            raise ValueError("iterations and epochs must be >= 0 and batch_size positive")
        if not 0.0 <= self.hard_mining_p < 1.0 or not 0.0 <= self.top_fraction <= 1.0:
            raise ValueError("hard_mining_p must be in [0, 1) and top_fraction in [0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        Recipe(optimizer=self.optimizer, betas=tuple(self.betas))  # validates optimizer and betas


class Dinomaly:
    """Dinomaly behind the runner's method interface (``baselines.base.Method``).

    One fit trains one model on every image it is given (one category, every category, or the
    shots the harness drew).  Dinomaly has no zero-shot recipe.
    """

    name: ClassVar[str] = "dinomaly"
    card: ClassVar[MethodCard] = MethodCard(settings=("single-class", "multi-class", "few-shot"),
                                            weights=tuple(f"dinov2_{size}_reg4_pretrain" for size in VIT_PRESETS))
    Config: ClassVar[type] = DinomalyConfig

    def __init__(self, config: DinomalyConfig | None = None) -> None:
        self.config = config or DinomalyConfig()
        self.device = choose_device(self.name, self.config.device)
        self._encoder: DinoVisionTransformer | None = None
        self.model: DinomalyModel | None = None
        self.seed = choose_seed(self.config.seed)

    @property
    def backbone(self) -> str:
        """The backbone registry name of the configured encoder."""
        return registry.dinov2_name(self.config.encoder)

    def encoder(self) -> DinoVisionTransformer:
        """The frozen DINOv2 encoder, loaded (strictly) on first use from ``encoder_weights``."""
        if self._encoder is None:
            self._encoder = registry.load_dinov2(self.config.encoder, self.config.encoder_weights).to(self.device)
        return self._encoder

    def new_model(self) -> DinomalyModel:
        """A fresh Dinomaly on the frozen encoder, its head initialised as the preset says."""
        encoder = self.encoder()
        arch = DinomalyArch(encoder=encoder.config, decoder_depth=len(default_target_layers(encoder.config.depth)),
                            target_layers=default_target_layers(encoder.config.depth))
        model = DinomalyModel(arch, encoder=encoder)
        if self.config.head_init == "trunc-normal":
            model.reset_head()
        return model.to(self.device)

    def recipe(self, setting: Setting) -> Recipe:
        """The preset's recipe for the shared loop; the official length depends on the setting."""
        config = self.config
        iterations = config.iterations or (None if config.epochs else OFFICIAL_ITERATIONS.get(setting.name, 5_000))
        stable = config.optimizer == "stableadamw"
        return Recipe(
            optimizer=config.optimizer, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
            eps=1e-10 if stable else 1e-8, amsgrad=stable, schedule="warm-cosine" if stable else "step",
            final_lr=config.final_lr, warmup_iters=config.warmup_iters, step_epoch=config.lr_step_epoch or 0,
            grad_clip=config.grad_clip, batch_size=config.batch_size, drop_last=config.drop_last,
            epochs=config.epochs or 1, iterations=iterations,
        )

    def hard_mining_p(self, iteration: int) -> float:
        """p of ``iteration``: official ``min(p_final * it / 1000, p_final)``, or fixed."""
        config = self.config
        if config.hard_mining_warmup:
            return min(config.hard_mining_p * iteration / config.hard_mining_warmup, config.hard_mining_p)
        return config.hard_mining_p

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Train one model on the training images with the preset's recipe."""
        torch.manual_seed(self.seed)
        model = self.new_model()
        crops = [resize_crop(batch.images, self.config.input_size, self.config.crop_size) for batch in train]
        if not crops:
            raise ValueError("dinomaly: no training images")
        self.train_model(model, torch.cat(crops), setting)
        self.model = model.eval()

    def train_model(self, model: DinomalyModel, images: torch.Tensor, setting: Setting = Setting()) -> list[float]:
        """The training loop on uint8 crops; returns the loss of each iteration."""

        def loss(inputs: torch.Tensor, iteration: int) -> torch.Tensor:
            output = model(inputs)
            return hard_mining_loss(output.encoder, output.decoder, self.hard_mining_p(iteration), self.config.hard_mining_factor)

        model.train()
        return train_head(model.trainable_parameters(), images, loss, self.recipe(setting), prepare=normalize, device=self.device,
                          seed=self.seed, mixed_precision=model.mixed_precision, name="dinomaly")

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, H, W) at the input size; the border outside the centre crop
        gets each map's minimum (never seen, as in the official evaluation)."""
        if self.model is None:
            raise RuntimeError("dinomaly: predict called before fit")
        config = self.config
        images = preprocess(batch.images.to(self.device), config.input_size, config.crop_size)
        height, width = batch.images.shape[-2:]
        scores, crop_maps = self.model.predict(images, map_size=config.map_size, scoring=config.scoring, top_fraction=config.top_fraction)
        maps = uncrop(crop_maps.float().cpu(), height, width, config.input_size, config.crop_size)
        return scores.float().cpu().numpy().astype(np.float32), maps.numpy().astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained model's state dict with the official ``ViTill`` names (``encoder.*`` included)."""
        if self.model is None:
            raise RuntimeError("dinomaly: state_dict called before fit")
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a model written by ``state_dict`` (or an official / M2AD checkpoint's state dict)."""
        state = official_state(state)
        heads = VIT_PRESETS[self.config.encoder].num_heads if self.config.encoder in VIT_PRESETS else registry.TINY_VIT.num_heads
        model = DinomalyModel(infer_arch(state, num_heads=heads))
        model.load_state_dict(state, strict=True)
        self.model = model.to(self.device).eval()
        self._encoder = self.model.encoder


__all__ = ["Dinomaly", "DinomalyArch", "DinomalyConfig", "DinomalyModel", "PRESETS", "hard_mining_loss", "infer_arch", "load_official"]
