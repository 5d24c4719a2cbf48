"""Pure-PyTorch backbones: strict loading of state dicts written in the original key layouts
(built here by hand from the published naming, not from our modules), DINOv2's position-embedding
resize against a NumPy bicubic reference, TF "same" padding, and the real EfficientNet-Lite0
weights classifying real photos."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_sample_image

from baselines.backbones import (
    DinoVisionTransformer,
    ViTConfig,
    dinov2_from_state_dict,
    efficientnet_lite0_from_state_dict,
    infer_vit_config,
    interpolate_pos_embed,
    packaged_weights_path,
    wide_resnet50_2_from_state_dict,
)
from baselines.backbones.dinov2 import set_sdpa
from baselines.backbones.efficientnet_lite import SameConv2d

# --------------------------------------------------------------------------- DINOv2


def meta_dinov2_state_dict(dim: int, depth: int, registers: int, grid: int = 37, patch: int = 14) -> dict[str, torch.Tensor]:
    """Random tensors under Meta's ``dinov2_vit*14_reg4_pretrain.pth`` key names and shapes."""
    state = {
        "cls_token": torch.randn(1, 1, dim),
        "pos_embed": torch.randn(1, grid * grid + 1, dim),
        "mask_token": torch.randn(1, dim),
        "patch_embed.proj.weight": torch.randn(dim, 3, patch, patch) * 0.02,
        "patch_embed.proj.bias": torch.randn(dim),
        "norm.weight": torch.randn(dim),
        "norm.bias": torch.randn(dim),
    }
    if registers:
        state["register_tokens"] = torch.randn(1, registers, dim)
    for index in range(depth):
        prefix = f"blocks.{index}."
        for name, shape in (
            ("norm1.weight", (dim,)), ("norm1.bias", (dim,)),
            ("attn.qkv.weight", (3 * dim, dim)), ("attn.qkv.bias", (3 * dim,)),
            ("attn.proj.weight", (dim, dim)), ("attn.proj.bias", (dim,)),
            ("ls1.gamma", (dim,)), ("norm2.weight", (dim,)), ("norm2.bias", (dim,)),
            ("mlp.fc1.weight", (4 * dim, dim)), ("mlp.fc1.bias", (4 * dim,)),
            ("mlp.fc2.weight", (dim, 4 * dim)), ("mlp.fc2.bias", (dim,)),
            ("ls2.gamma", (dim,)),
        ):  # fmt: skip
            state[prefix + name] = torch.randn(shape) * 0.05
    return state


def test_dinov2_vits14_reg4_layout_loads_strictly_and_is_inferred() -> None:
    state = meta_dinov2_state_dict(384, 12, 4)
    model = dinov2_from_state_dict(state)
    assert model.config == ViTConfig(embed_dim=384, depth=12, num_heads=6, num_register_tokens=4, pos_grid=37)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_dinov2_non_standard_width_needs_heads_and_rejects_bad_dicts() -> None:
    state = meta_dinov2_state_dict(40, 3, 0, grid=5)
    with pytest.raises(ValueError, match="pass num_heads"):
        infer_vit_config(state)
    model = dinov2_from_state_dict(state, num_heads=4)
    assert (model.config.embed_dim, model.config.depth, model.config.num_register_tokens, model.config.pos_grid) == (40, 3, 0, 5)
    broken = dict(state)
    broken["blocks.0.unexpected"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        dinov2_from_state_dict(broken, num_heads=4)
    with pytest.raises(ValueError, match="not a DINOv2 state dict"):
        infer_vit_config({"pos_embed": torch.zeros(1, 5, 8)})


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights for the 4 taps around a sample at fraction ``t``."""

    def near(x: float) -> float:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _bicubic_scale_reference(grid: np.ndarray, scale: tuple[float, float], out_size: tuple[int, int]) -> np.ndarray:
    """Separable bicubic resample of (C, H, W) where output pixel i samples the input at
    (i + 0.5) / scale - 0.5 (the scale factor drives the mapping), border indices clamped."""
    result = grid.astype(np.float64)
    for axis, (factor, size) in enumerate(zip(scale, out_size, strict=True), start=1):
        length = result.shape[axis]
        rows = []
        for index in range(size):
            source = (index + 0.5) / factor - 0.5
            base = math.floor(source)
            taps = _cubic_weights(source - base)
            picks = [min(max(base + offset, 0), length - 1) for offset in (-1, 0, 1, 2)]
            rows.append(sum(weight * np.take(result, pick, axis=axis) for weight, pick in zip(taps, picks, strict=True)))
        result = np.stack(rows, axis=axis)
    return result


@pytest.mark.parametrize(("grid_h", "grid_w"), [(28, 28), (16, 16), (5, 9), (37, 37)])
def test_pos_embed_resize_follows_dinov2_scale_factor_rule(grid_h: int, grid_w: int) -> None:
    torch.manual_seed(grid_h * 100 + grid_w)
    side, dim = 37, 6
    pos_embed = torch.randn(1, side * side + 1, dim)
    resized = interpolate_pos_embed(pos_embed, grid_h, grid_w)
    assert resized.shape == (1, grid_h * grid_w + 1, dim)
    assert torch.equal(resized[:, 0], pos_embed[:, 0])
    if (grid_h, grid_w) == (side, side):
        assert resized is pos_embed
        return
    patches = pos_embed[0, 1:].reshape(side, side, dim).permute(2, 0, 1).numpy()
    scale = ((grid_h + 0.1) / side, (grid_w + 0.1) / side)
    expected = _bicubic_scale_reference(patches, scale, (grid_h, grid_w)).transpose(1, 2, 0).reshape(-1, dim)
    np.testing.assert_allclose(resized[0, 1:].numpy(), expected, atol=2e-5)
    size_driven = F.interpolate(torch.from_numpy(patches)[None], size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    assert not torch.allclose(size_driven[0].permute(1, 2, 0).reshape(-1, dim), resized[0, 1:], atol=1e-3)


def test_dinov2_token_layout_and_sdpa_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    model = DinoVisionTransformer(ViTConfig(embed_dim=40, depth=2, num_heads=4, num_register_tokens=4, pos_grid=4)).eval()
    images = torch.randn(2, 3, 70, 42)
    tokens = model.prepare_tokens(images)
    assert tokens.shape == (2, 1 + 4 + 5 * 3, 40)
    assert torch.equal(tokens[0, 1:5], model.register_tokens[0])  # registers after CLS, without positions
    with torch.no_grad():
        fast = model.intermediate_layers(images, [0, 1])
        set_sdpa(model, False)
        eager = model.intermediate_layers(images, [0, 1])
    for a, b in zip(fast, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- Wide-ResNet-50-2


def torchvision_wrn50_2_state_dict(with_counters: bool) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision ``wide_resnet50_2`` key names and shapes."""
    state: dict[str, torch.Tensor] = {}

    def bn(prefix: str, channels: int) -> None:
        state.update({f"{prefix}.weight": torch.rand(channels) + 0.5, f"{prefix}.bias": torch.randn(channels) * 0.1})
        state.update({f"{prefix}.running_mean": torch.randn(channels) * 0.1, f"{prefix}.running_var": torch.rand(channels) + 0.5})
        if with_counters:
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    state["conv1.weight"] = torch.randn(64, 3, 7, 7) * 0.05
    bn("bn1", 64)
    in_channels = 64
    for layer, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        width, out = planes * 2, planes * 4
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            state[f"{prefix}.conv1.weight"] = torch.randn(width, in_channels, 1, 1) * 0.05
            bn(f"{prefix}.bn1", width)
            state[f"{prefix}.conv2.weight"] = torch.randn(width, width, 3, 3) * 0.02
            bn(f"{prefix}.bn2", width)
            state[f"{prefix}.conv3.weight"] = torch.randn(out, width, 1, 1) * 0.05
            bn(f"{prefix}.bn3", out)
            if block == 0:
                state[f"{prefix}.downsample.0.weight"] = torch.randn(out, in_channels, 1, 1) * 0.05
                bn(f"{prefix}.downsample.1", out)
            in_channels = out
    state["fc.weight"] = torch.randn(1000, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("with_counters", [True, False])
def test_wide_resnet50_2_torchvision_layout_loads_strictly(with_counters: bool) -> None:
    state = torchvision_wrn50_2_state_dict(with_counters)
    model = wide_resnet50_2_from_state_dict(state).eval()
    assert sum(p.numel() for p in model.parameters()) == 68_883_240  # torchvision's published count
    assert torch.equal(model.state_dict()["layer3.5.conv2.weight"], state["layer3.5.conv2.weight"])
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, 64, 96), ("layer2", "layer3"))
    assert features["layer2"].shape == (1, 512, 8, 12)
    assert features["layer3"].shape == (1, 1024, 4, 6)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_same_padding_matches_tensorflow_rule() -> None:
    torch.manual_seed(1)
    for size, kernel, stride in ((8, 3, 2), (7, 3, 2), (9, 5, 2), (6, 5, 1)):
        conv = SameConv2d(2, 3, kernel, stride=stride, bias=False)
        x = torch.randn(1, 2, size, size)
        out_size = math.ceil(size / stride)
        total = max((out_size - 1) * stride + kernel - size, 0)
        padded = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
        torch.testing.assert_close(conv(x), F.conv2d(padded, conv.weight, stride=stride))
        assert conv(x).shape[-1] == out_size


def test_real_lite0_weights_load_strictly_and_classify_real_photos() -> None:
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    model = efficientnet_lite0_from_state_dict(state).eval()
    assert model.state_dict().keys() == state.keys()
    # ImageNet classes: 442 bell cote, 698 palace (china.jpg); 985 daisy (flower.jpg).
    expected = {"china.jpg": {442, 698}, "flower.jpg": {985}}
    for name, classes in expected.items():
        image = Image.fromarray(load_sample_image(name)).resize((224, 224), Image.BILINEAR)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            logits = model((pixels - 0.5) / 0.5)
        assert int(logits.argmax()) in classes, name
    with torch.no_grad():
        features = model.features(torch.zeros(1, 3, 64, 64), ("stride4", "stride8", "stride16"))
    assert [tuple(f.shape[1:]) for f in features.values()] == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]


def test_lite0_rejects_other_layouts() -> None:
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    state["_blocks.0._se_reduce.weight"] = torch.zeros(8, 32, 1, 1)  # B0-style squeeze-excitation
    with pytest.raises(RuntimeError, match="Unexpected key"):
        efficientnet_lite0_from_state_dict(state)
