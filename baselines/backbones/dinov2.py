"""DINOv2 vision transformers (ViT-S/B/L/14, optionally with registers) in plain PyTorch.

The module tree reproduces the parameter names of Meta's released checkpoints
(``dinov2_vit{s,b,l}14[_reg4]_pretrain.pth``: ``cls_token``, ``pos_embed``, ``register_tokens``,
``mask_token``, ``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``), so they load with ``strict=True``.  Positional
embeddings are resized exactly as DINOv2 does: bicubic, driven by a *scale factor*
``(grid + 0.1) / sqrt(N)`` rather than by a target size, antialiasing off (the official
INP-Former code builds DINOv2 this way; a size-driven resize gives different numbers).

Attention uses ``torch.nn.functional.scaled_dot_product_attention``; ``use_sdpa=False`` on an
``Attention`` switches to the explicit softmax formula (for benchmarks and parity checks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6
INTERPOLATE_OFFSET = 0.1


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a DINOv2 ViT; ``pos_grid`` is the side of the stored position-embedding grid."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 14
    num_register_tokens: int = 4
    mlp_ratio: float = 4.0
    pos_grid: int = 37

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if min(self.embed_dim, self.depth, self.num_heads, self.patch_size, self.pos_grid) < 1 or self.num_register_tokens < 0:
            raise ValueError(f"invalid ViT configuration: {self}")


VIT_PRESETS: dict[str, ViTConfig] = {
    "vits14": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vitb14": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vitl14": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
}
"""DINOv2 sizes at patch 14 with 4 registers and the 518-px (37 x 37) position grid."""


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, through one strided convolution (``proj``)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p * W/p, C)."""
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)
        self.use_sdpa = True

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Self-attention over (B, N, C) tokens."""
        batch, count, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, count, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        out = softmax_attention(query, key, value, use_sdpa=self.use_sdpa)
        return self.proj(out.transpose(1, 2).reshape(batch, count, dim))


def softmax_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, use_sdpa: bool = True) -> torch.Tensor:
    """Scaled dot-product softmax attention over (B, heads, N, d); SDPA kernel or the explicit formula."""
    if use_sdpa:
        return F.scaled_dot_product_attention(query, key, value)
    weights = (query * query.shape[-1] ** -0.5) @ key.transpose(-2, -1)
    return weights.softmax(dim=-1) @ value


class LayerScale(nn.Module):
    """Per-channel residual scale (``gamma``)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scale the channels."""
        return tokens * self.gamma


class Mlp(nn.Module):
    """``fc1`` -> GELU -> ``fc2``: the transformer feed-forward layer."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Apply the two linear layers."""
        return self.fc2(self.act(self.fc1(tokens)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """x + ls1(attn(norm1 x)), then + ls2(mlp(norm2 x))."""
        tokens = tokens + self.ls1(self.attn(self.norm1(tokens)))
        return tokens + self.ls2(self.mlp(self.norm2(tokens)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT with Meta's parameter names; tokens are ordered [CLS, registers, patches]."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_size = config.patch_size
        self.num_register_tokens = config.num_register_tokens
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.pos_grid**2 + 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim)) if config.num_register_tokens else None
        self.blocks = nn.ModuleList(Block(dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Position embeddings for an image of ``height`` x ``width`` pixels, DINOv2's way."""
        return interpolate_pos_embed(self.pos_embed, height // self.patch_size, width // self.patch_size).to(tokens.dtype)

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-embed, prepend CLS, add positions, insert registers after CLS."""
        _, _, height, width = images.shape
        tokens = self.patch_embed(images)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens, height, width)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        return tokens

    def intermediate_layers(self, images: torch.Tensor, layers: list[int] | tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs (B, N_tokens, C) of the blocks listed in ``layers`` (0-indexed, no final norm);
        blocks after the last requested one are not run."""
        tokens = self.prepare_tokens(images)
        wanted = set(layers)
        outputs = []
        for index, block in enumerate(self.blocks[: max(layers) + 1]):
            tokens = block(tokens)
            if index in wanted:
                outputs.append(tokens)
        return outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The normalised CLS token (B, C), as DINOv2's default ``forward``."""
        tokens = self.prepare_tokens(images)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """DINOv2's position-embedding resize: (1, 1 + M*M, C) -> (1, 1 + grid_h*grid_w, C).

    Bicubic with ``scale_factor = (grid + 0.1) / M`` (not a target size) and no antialiasing,
    computed in float32; returned unchanged when the grid already matches and is square.
    """
    count = pos_embed.shape[1] - 1
    side = math.sqrt(count)
    if count == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    if int(side) ** 2 != count:
        raise ValueError(f"pos_embed holds {count} patch positions, not a square grid")
    pos = pos_embed.float()
    dim = pos.shape[-1]
    patches = pos[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    scale = (float(grid_h + INTERPOLATE_OFFSET) / side, float(grid_w + INTERPOLATE_OFFSET) / side)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
    if patches.shape[-2:] != (grid_h, grid_w):
        raise RuntimeError(f"position-embedding resize gave {tuple(patches.shape[-2:])}, expected {(grid_h, grid_w)}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos[:, :1], patches), dim=1)


def infer_vit_config(state_dict: dict[str, torch.Tensor], prefix: str = "", num_heads: int | None = None) -> ViTConfig:
    """The ``ViTConfig`` of a DINOv2 state dict (keys under ``prefix``).

    Width, depth, patch size, registers, MLP ratio and position grid come from the shapes; the
    head count is not stored in a plain ViT, so it is ``num_heads`` when given, else the DINOv2
    convention of 64 channels per head (which fails for widths not divisible by 64).
    """
    try:
        cls_token = state_dict[f"{prefix}cls_token"]
        pos_embed = state_dict[f"{prefix}pos_embed"]
        patch_weight = state_dict[f"{prefix}patch_embed.proj.weight"]
        fc1 = state_dict[f"{prefix}blocks.0.mlp.fc1.weight"]
    except KeyError as missing:
        raise ValueError(f"not a DINOv2 state dict: missing {missing.args[0]!r}") from None
    dim = cls_token.shape[-1]
    block_ids = {int(key[len(prefix) + 7 :].split(".")[0]) for key in state_dict if key.startswith(f"{prefix}blocks.")}
    depth = max(block_ids) + 1
    registers = state_dict.get(f"{prefix}register_tokens")
    grid = math.isqrt(pos_embed.shape[1] - 1)
    if grid * grid != pos_embed.shape[1] - 1:
        raise ValueError(f"{prefix}pos_embed has {pos_embed.shape[1] - 1} patch positions, not a square grid")
    if num_heads is None:
        if dim % 64:
            raise ValueError(f"cannot infer the head count of a {dim}-wide ViT; pass num_heads")
        num_heads = dim // 64
    return ViTConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch_weight.shape[-1],
        num_register_tokens=0 if registers is None else registers.shape[1],
        mlp_ratio=fc1.shape[0] / dim,
        pos_grid=grid,
    )


def dinov2_from_state_dict(state_dict: dict[str, torch.Tensor], num_heads: int | None = None) -> DinoVisionTransformer:
    """Build the ViT that ``state_dict`` (Meta's naming) describes and load it strictly."""
    model = DinoVisionTransformer(infer_vit_config(state_dict, num_heads=num_heads))
    model.load_state_dict(state_dict, strict=True)
    return model


def set_sdpa(model: nn.Module, enabled: bool) -> None:
    """Switch every softmax attention in ``model`` between SDPA and the explicit formula."""
    for module in model.modules():
        if hasattr(module, "use_sdpa"):
            module.use_sdpa = enabled
