"""``pnpt``: Prior Normality Prompt Transformer (Yao et al., arXiv 2406.11507), re-implemented
from the paper's abstract and a secondary summary (no code was released; the paper's body could
not be read here, so every size, layer and rule below is our choice unless docs/methods.md says
otherwise).

What the abstract names, and how it is built here:

* a frozen pre-trained backbone whose features at several levels are reconstructed (the
  "cosine-based hierarchical reconstruction loss" of the summary);
* **Hierarchical Patch Embedding (HPE)**: each level, pooled to the grid of the coarsest one,
  is layer-normalised and projected to ``dim``; the levels are summed and a fixed 2-D sine-cosine
  position code is added;
* **Class-Specific Normality Prompting Pool (CS-NPP)**: ``prompts_per_class`` learnable prompt
  tokens per training category.  Training uses each image's category (the harness gives it);
  at test the category is *not* used (multi-class AD): the image's query, the mean of each
  frozen level over the positions, L2-normalised per level and concatenated, picks the class
  whose key (the normalised mean query of its training images) is the most cosine-similar
  (``prompt_selection="query"``; ``"label"`` reads the batch's categories instead);
* **Semantic Alignment Coupling Encoding (SACE)**: transformer blocks over the concatenation of
  the selected prompts and the patch tokens, so that prompts and tokens attend to each other;
* **Contextual Semantic Conditional Decoding (CSCD)**, two streams: the *self* stream decodes
  the tokens with self-attention (the sample's own context) and cross-attention to the
  encoded prompts; the *prior* stream rebuilds each token from the encoded prompts only
  (cross-attention without residual, as INP-Former's decoder, so its output lies in what the
  normality prompts span and an anomaly cannot be copied through);
* each stream reconstructs every level (a linear head per level); the loss is the mean over
  streams and levels of the per-position cosine distance; the anomaly map of a stream is the
  mean over levels of the cosine distance, bilinearly resized to the input; the two streams'
  maps are averaged (``stream_fusion``), smoothed by a Gaussian, and the image score is the
  mean of the top ``top_fraction`` of the map.

Switches that remove what the paper adds: ``prompt_pool="none"`` (no prompts: a plain
reconstruction transformer, self stream only) or ``"shared"`` (one class-agnostic prompt set),
and ``streams="self"`` or ``"prior"`` (one decoding stream).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from baselines.backbones import efficientnet_lite, hrnet, registry, wide_resnet
from baselines.backbones.dinov2 import DinoVisionTransformer, Mlp
from baselines.base import Batch, MethodCard, Setting, choose_device, choose_seed, image_score_from_map
from baselines.reconstruction import resize_crop
from baselines.training import Recipe, autocast, train_head


PROMPT_POOLS = ("class", "shared", "none")
PROMPT_SELECTIONS = ("query", "label")
STREAMS = ("dual", "self", "prior")
STREAM_FUSIONS = ("mean", "max")


def vit_layers(depth: int) -> tuple[str, ...]:
    """Three evenly spaced blocks of a ``depth``-block ViT ending with the last: (3, 7, 11) of 12,
    (7, 15, 23) of 24, (0, 2, 3) of 4 (our choice)."""
    return tuple(dict.fromkeys(str(max(0, round(depth * step / 3) - 1)) for step in (1, 2, 3)))


@dataclass
class PNPTConfig:
    """Options of the ``pnpt`` method (every default is our choice unless docs/methods.md cites the paper)."""

    backbone: str = "wide_resnet50_2"
    """A backbone registry name (``wide_resnet50_2``, ``efficientnet_lite0``, ``dinov2_vitb14_reg4``, ``dinov2_tiny``, ...)."""
    backbone_weights: str = "auto"
    """``auto`` (the released weights), ``random`` (untrained; smoke tests), a weights name or a file path."""
    layers: tuple[str, ...] | None = None
    """Levels read: CNN stage names, or ViT block indices; ``None``: ``cnn_layers(backbone)[:3]`` / ``vit_layers``."""
    image_size: int = 256
    """Side of the square the images are resized to (a multiple of the ViT patch size)."""
    dim: int = 256
    heads: int = 8
    encoder_depth: int = 2
    """SACE blocks."""
    decoder_depth: int = 2
    """CSCD blocks per stream."""
    prompts_per_class: int = 10
    prompt_pool: str = "class"
    """``class`` (CS-NPP: a prompt set per category), ``shared`` (one set) or ``none``."""
    prompt_selection: str = "query"
    """How a test image's prompts are chosen: ``query`` (nearest class key; no label) or ``label``."""
    streams: str = "dual"
    """``dual`` (self + prior), ``self`` or ``prior``."""
    stream_fusion: str = "mean"
    """How the two streams' maps combine: ``mean`` or ``max``."""
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_iters: int = 0
    grad_clip: float | None = 1.0
    smoothing_sigma: float = 4.0
    """Gaussian sigma in input pixels (0: none)."""
    top_fraction: float = 0.01
    seed: int | None = None
    """Seed of the initialisation and shuffling; ``None`` draws one from torch's global generator."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        entry = registry.spec(self.backbone)
        if self.layers is None:
            self.layers = vit_layers(entry.vit.depth) if entry.is_vit else cnn_layers(self.backbone)[:3]
        self.layers = tuple(str(layer) for layer in self.layers)
        if not self.layers:
            raise ValueError("pnpt: layers must name at least one level")
        if entry.is_vit:
            if not all(layer.isdigit() and int(layer) < entry.vit.depth for layer in self.layers):
                raise ValueError(f"pnpt: layers of {self.backbone} must be block indices 0..{entry.vit.depth - 1}, got {self.layers}")
            if self.image_size % entry.stride:
                raise ValueError(f"pnpt: image_size must be a multiple of the patch size {entry.stride}, got {self.image_size}")
        elif not set(self.layers) <= set(cnn_layers(self.backbone)):
            raise ValueError(f"pnpt: layers of {self.backbone} must be among {', '.join(cnn_layers(self.backbone))}, got {self.layers}")
        if self.image_size < 32:
            raise ValueError(f"pnpt: image_size must be at least 32, got {self.image_size}")
        for name, allowed in (("prompt_pool", PROMPT_POOLS), ("prompt_selection", PROMPT_SELECTIONS), ("streams", STREAMS),
                              ("stream_fusion", STREAM_FUSIONS), ("device", ("auto", "cpu", "cuda"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"pnpt: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.prompt_pool == "none" and self.streams != "self":
            raise ValueError(f"pnpt: streams={self.streams} decodes from the prompts; with prompt_pool=none use streams=self")
        if min(self.dim, self.heads, self.encoder_depth, self.decoder_depth, self.prompts_per_class, self.epochs, self.batch_size) < 1:
            raise ValueError("pnpt: dim, heads, encoder_depth, decoder_depth, prompts_per_class, epochs and batch_size must be positive")
        if self.dim % self.heads or self.dim % 4:
            raise ValueError(f"pnpt: dim must be a multiple of 4 and of heads, got dim={self.dim}, heads={self.heads}")
        if self.lr <= 0 or self.weight_decay < 0 or self.smoothing_sigma < 0 or not 0.0 <= self.top_fraction <= 1.0:
            raise ValueError("pnpt: lr must be positive, weight_decay and smoothing_sigma >= 0, top_fraction in [0, 1]")


def cnn_layers(backbone: str) -> tuple[str, ...]:
    """Stage names a CNN backbone of the registry can tap, finest first; the default levels are
    the first three (our choice: strides 4, 8 and 16, as the reverse-distillation and UniAD family)."""
    if backbone == "wide_resnet50_2":
        return tuple(wide_resnet.FEATURE_CHANNELS)
    if backbone == "efficientnet_lite0":
        return tuple(efficientnet_lite.FEATURE_BLOCKS)
    return tuple(hrnet.FEATURE_NAMES)


def sincos_position(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes (height * width, dim): half the channels code the row, half the column."""
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows = torch.arange(height, dtype=torch.float32)[:, None] * frequencies
    cols = torch.arange(width, dtype=torch.float32)[:, None] * frequencies
    row_code = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(height, width, -1)
    col_code = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(height, width, -1)
    return torch.cat([row_code, col_code], dim=-1).reshape(height * width, dim)


class CouplingBlock(nn.Module):
    """SACE block: pre-norm self-attention and MLP over [prompts; tokens]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, M + N, D) -> (B, M + N, D)."""
        normed = self.norm1(tokens)
        tokens = tokens + self.attn(normed, normed, normed, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


class SelfStreamBlock(nn.Module):
    """CSCD self stream: tokens + self-attention, + cross-attention to the prompts (when any), + MLP."""

    def __init__(self, dim: int, heads: int, with_prompts: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.with_prompts = with_prompts
        if with_prompts:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, tokens: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """(B, N, D) tokens, (B, M, D) prompts or None -> (B, N, D)."""
        normed = self.norm1(tokens)
        tokens = tokens + self.attn(normed, normed, normed, need_weights=False)[0]
        if self.with_prompts:
            context = self.norm_cross(prompts)
            tokens = tokens + self.cross(self.norm_cross(tokens), context, context, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


class PriorStreamBlock(nn.Module):
    """CSCD prior stream: each token rebuilt by cross-attention to the prompts (no residual), then + MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens, (B, M, D) prompts -> (B, N, D), a mix of the prompts' values."""
        context = self.norm1(prompts)
        tokens = self.cross(self.norm1(tokens), context, context, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


class PNPTModel(nn.Module):
    """The trained part of PNPT (the backbone is frozen and kept outside): HPE, the prompt pool,
    SACE and the two CSCD streams with a reconstruction head per level."""

    def __init__(self, level_channels: tuple[int, ...], pool_size: int, config: PNPTConfig) -> None:
        super().__init__()
        dim, heads = config.dim, config.heads
        self.embed = nn.ModuleList(nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, dim)) for channels in level_channels)
        self.uses_prompts = config.prompt_pool != "none"
        if self.uses_prompts:
            self.pool = nn.Parameter(torch.empty(pool_size, config.prompts_per_class, dim))
            nn.init.trunc_normal_(self.pool, std=0.02)
        self.coupling = nn.ModuleList(CouplingBlock(dim, heads) for _ in range(config.encoder_depth))
        self.stream_names = ("self", "prior") if config.streams == "dual" else (config.streams,)
        if "self" in self.stream_names:
            self.self_stream = nn.ModuleList(SelfStreamBlock(dim, heads, self.uses_prompts) for _ in range(config.decoder_depth))
            self.self_out = nn.ModuleList(nn.Linear(dim, channels) for channels in level_channels)
        if "prior" in self.stream_names:
            self.prior_stream = nn.ModuleList(PriorStreamBlock(dim, heads) for _ in range(config.decoder_depth))
            self.prior_out = nn.ModuleList(nn.Linear(dim, channels) for channels in level_channels)
        self.dim = dim

    def forward(self, levels: list[torch.Tensor], pool_index: torch.Tensor | None) -> dict[str, list[torch.Tensor]]:
        """Frozen levels (B, C_l, h, w) and each image's prompt set (B,) -> per stream, the
        reconstructed levels (B, C_l, h, w)."""
        batch, _, height, width = levels[0].shape
        tokens = sum(embed(level.flatten(2).transpose(1, 2)) for embed, level in zip(self.embed, levels, strict=True))
        tokens = tokens + sincos_position(height, width, self.dim).to(tokens.device, tokens.dtype)
        prompts = self.pool[pool_index] if self.uses_prompts else None
        count = 0 if prompts is None else prompts.shape[1]
        joint = tokens if prompts is None else torch.cat([prompts, tokens], dim=1)
        for block in self.coupling:
            joint = block(joint)
        prompts = joint[:, :count] if count else None
        tokens = joint[:, count:]
        outputs: dict[str, list[torch.Tensor]] = {}
        for name in self.stream_names:
            stream = tokens
            blocks, projections = (self.self_stream, self.self_out) if name == "self" else (self.prior_stream, self.prior_out)
            for block in blocks:
                stream = block(stream, prompts)
            outputs[name] = [projection(stream).transpose(1, 2).reshape(batch, -1, height, width) for projection in projections]
        return outputs


def reconstruction_loss(levels: list[torch.Tensor], outputs: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """Hierarchical cosine loss: mean over streams and levels of the mean per-position 1 - cos."""
    terms = [(1.0 - F.cosine_similarity(target.float(), output.float(), dim=1)).mean()
             for stream in outputs.values() for target, output in zip(levels, stream, strict=True)]
    return torch.stack(terms).mean()


def stream_maps(levels: list[torch.Tensor], outputs: dict[str, list[torch.Tensor]], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Per stream, the mean over levels of the per-position cosine distance, bilinear to ``size`` -> (B, H, W)."""
    maps = {}
    for name, stream in outputs.items():
        distances = [1.0 - F.cosine_similarity(target.float(), output.float(), dim=1).unsqueeze(1) for target, output in zip(levels, stream, strict=True)]
        maps[name] = F.interpolate(torch.cat(distances, dim=1), size=size, mode="bilinear", align_corners=False).mean(dim=1)
    return maps


def select_by_query(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the key (K, Q) most cosine-similar to each query (B, Q)."""
    return (F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T).argmax(dim=1)


class PNPT:
    """PNPT behind the runner's method interface (``baselines.base.Method``).

    One fit trains one model on every image it is given; under ``--setting multi-class`` the
    harness gives every category's training images, and each category gets its own prompt set.
    """

    name: ClassVar[str] = "pnpt"
    card: ClassVar[MethodCard] = MethodCard(
        weights=("wide_resnet50_2", "efficientnet_lite0", "dinov2_vits14_reg4_pretrain", "dinov2_vitb14_reg4_pretrain", "dinov2_vitl14_reg4_pretrain"),
        reimplemented_from="arXiv 2406.11507 (PNPT), from its abstract; the architecture's details are ours",
    )
    Config: ClassVar[type] = PNPTConfig

    def __init__(self, config: PNPTConfig | None = None) -> None:
        self.config = config or PNPTConfig()
        self.device = choose_device(self.name, self.config.device)
        self.seed = choose_seed(self.config.seed)
        self._backbone: nn.Module | None = None
        self.model: PNPTModel | None = None
        self.classes: list[str] = []
        self.keys: torch.Tensor | None = None

    # -- frozen features -------------------------------------------------------------------------

    def backbone(self) -> nn.Module:
        """The frozen backbone, loaded on first use (random weights are drawn from ``seed``)."""
        if self._backbone is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self._backbone = registry.load_backbone(self.config.backbone, self.config.backbone_weights).to(self.device)
        return self._backbone

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised (B, 3, S, S) at ``image_size``."""
        size = self.config.image_size
        return registry.normalize(resize_crop(images.to(self.device), size, size), self.config.backbone)

    @torch.no_grad()
    def levels(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """The frozen levels (B, C_l, h, w) of normalised inputs, all on the grid of the coarsest level."""
        backbone = self.backbone()
        if isinstance(backbone, DinoVisionTransformer):
            grid_h, grid_w = inputs.shape[-2] // backbone.config.patch_size, inputs.shape[-1] // backbone.config.patch_size
            skip = 1 + backbone.config.num_register_tokens
            tapped = registry.tap(backbone, inputs, [int(layer) for layer in self.config.layers])
            return [layer[:, skip:].transpose(1, 2).reshape(len(inputs), -1, grid_h, grid_w).float() for layer in tapped]
        tapped = registry.tap(backbone, inputs, list(self.config.layers))
        grid = min((level.shape[-2], level.shape[-1]) for level in tapped)
        return [F.adaptive_avg_pool2d(level.float(), grid) for level in tapped]

    @staticmethod
    def queries(levels: list[torch.Tensor]) -> torch.Tensor:
        """The selection query (B, sum C_l): each level's mean over positions, L2-normalised, concatenated."""
        return torch.cat([F.normalize(level.mean(dim=(2, 3)), dim=1) for level in levels], dim=1)

    # -- prompt selection ------------------------------------------------------------------------

    def _pool_index(self, class_index: torch.Tensor) -> torch.Tensor:
        """Prompt set of each class index: the class's own (``class``) or the one shared set."""
        return class_index if self.config.prompt_pool == "class" else torch.zeros_like(class_index)

    def select_classes(self, batch: Batch) -> list[str]:
        """The training category whose prompts each image of ``batch`` gets."""
        if self.keys is None:
            raise RuntimeError("pnpt: select_classes called before fit")
        return [self.classes[index] for index in self._class_index(batch, self.levels(self._inputs(batch.images))).tolist()]

    def _class_index(self, batch: Batch, levels: list[torch.Tensor]) -> torch.Tensor:
        """Index into ``classes`` of each image: the nearest key to its query, or its category (``label``)."""
        if self.config.prompt_selection == "label":
            unknown = sorted(set(batch.categories) - set(self.classes))
            if unknown:
                raise ValueError(f"pnpt: categories {unknown} were not in training; prompt_selection=label needs known categories (use query)")
            return torch.tensor([self.classes.index(category) for category in batch.categories], device=self.device)
        return select_by_query(self.queries(levels), self.keys.to(self.device))

    # -- fit / predict ---------------------------------------------------------------------------

    def _new_model(self) -> PNPTModel:
        """A fresh model for ``classes`` (its level widths probed on a blank image), initialised from ``seed``."""
        probe = self.levels(torch.zeros(1, 3, self.config.image_size, self.config.image_size, device=self.device))
        pool_size = len(self.classes) if self.config.prompt_pool == "class" else 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            return PNPTModel(tuple(level.shape[1] for level in probe), pool_size, self.config).to(self.device)

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Train on every image given, each category with its own prompts; then set each class's key."""
        images, categories = [], []
        for batch in train:
            images.append(resize_crop(batch.images, self.config.image_size, self.config.image_size))
            categories.extend(batch.categories)
        if not images:
            raise ValueError("pnpt: no training images")
        images = torch.cat(images)
        self.classes = sorted(set(categories))
        class_index = torch.tensor([self.classes.index(category) for category in categories])
        self.model = self._new_model()
        model, config = self.model, self.config

        def loss(indices: torch.Tensor, iteration: int) -> torch.Tensor:
            levels = self.levels(registry.normalize(images[indices.cpu()].to(self.device), config.backbone))
            return reconstruction_loss(levels, model(levels, self._pool_index(class_index[indices.cpu()].to(self.device))))

        recipe = Recipe(optimizer="adamw", lr=config.lr, weight_decay=config.weight_decay, schedule="warm-cosine", final_lr=0.0,
                        warmup_iters=config.warmup_iters, grad_clip=config.grad_clip, batch_size=config.batch_size, drop_last=True,
                        epochs=config.epochs)
        model.train()
        train_head(list(model.parameters()), torch.arange(len(images)), loss, recipe, prepare=lambda indices: indices,
                   device=self.device, seed=self.seed, name="pnpt")
        model.eval()
        queries = torch.cat([self.queries(self.levels(self._inputs(images[start : start + 32]))).cpu() for start in range(0, len(images), 32)])
        self.keys = torch.stack([F.normalize(queries[class_index == index].mean(dim=0), dim=0) for index in range(len(self.classes))])

    @torch.no_grad()
    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) (top ``top_fraction`` mean) and maps (B, H, W) at the input size."""
        if self.model is None or self.keys is None:
            raise RuntimeError("pnpt: predict called before fit")
        levels = self.levels(self._inputs(batch.images))
        pool_index = self._pool_index(self._class_index(batch, levels))
        with autocast(self.device):
            outputs = self.model(levels, pool_index)
        maps = torch.stack(list(stream_maps(levels, outputs, tuple(batch.images.shape[-2:])).values()))
        maps = (maps.mean(dim=0) if self.config.stream_fusion == "mean" else maps.amax(dim=0)).cpu()
        if self.config.smoothing_sigma > 0:
            maps = torch.from_numpy(np.stack([ndimage.gaussian_filter(item, sigma=self.config.smoothing_sigma) for item in maps.numpy()]))
        scores = image_score_from_map(maps, self.config.top_fraction)
        return scores.numpy().astype(np.float32), maps.numpy().astype(np.float32)

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained model (``model.*``), the class keys and names, and the backbone (``backbone.*``)
        when its weights are random (they are not stored anywhere else)."""
        if self.model is None or self.keys is None:
            raise RuntimeError("pnpt: state_dict called before fit")
        state = {f"model.{key}": value.detach().cpu().contiguous() for key, value in self.model.state_dict().items()}
        state["keys"] = self.keys.contiguous()
        state["class_names"] = torch.tensor(list(json.dumps(self.classes).encode()), dtype=torch.uint8)
        if self.config.backbone_weights == "random":
            state.update({f"backbone.{key}": value.detach().cpu().contiguous() for key, value in self.backbone().state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a method written by ``state_dict``."""
        if "class_names" not in state or "keys" not in state:
            raise ValueError("not a pnpt state: missing 'class_names' or 'keys'")
        self.classes = json.loads(bytes(state["class_names"].tolist()).decode())
        self.keys = state["keys"].float()
        if self.config.backbone_weights == "random":
            backbone = self.backbone()
            backbone.load_state_dict({key[len("backbone."):]: value for key, value in state.items() if key.startswith("backbone.")}, strict=True)
        self.model = self._new_model()
        self.model.load_state_dict({key[len("model."):]: value for key, value in state.items() if key.startswith("model.")}, strict=True)
        self.model.eval()


__all__ = ["PNPT", "PNPTConfig", "PNPTModel", "cnn_layers", "reconstruction_loss", "select_by_query", "sincos_position", "stream_maps", "vit_layers"]
