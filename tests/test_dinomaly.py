"""Dinomaly: strict loading of state dicts in the official ``ViTill`` layout (built here by hand,
also under M2AD's ``model.`` prefix), the forward pass (CLS and registers kept through the
decoder), the hard-mining loss against a brute-force gradient, both presets' maps and scores
against NumPy/SciPy references, the recipes, determinism, and an overfit test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score

import baselines
from baselines import dinomaly
from baselines.base import Setting
from baselines.dinomaly import Dinomaly, DinomalyConfig, load_official
from tests.test_backbones import meta_dinov2_state_dict
from textures import method_batch, textures


def official_state_dict(dim: int = 40, depth: int = 4, decoder: int = 4, grid: int = 4) -> dict[str, torch.Tensor]:
    """Random tensors under the official ``ViTill`` state-dict names."""
    state = {f"encoder.{key}": value for key, value in meta_dinov2_state_dict(dim, depth, 4, grid).items()}
    for name, shape in (("fc1.weight", (4 * dim, dim)), ("fc1.bias", (4 * dim,)), ("fc2.weight", (dim, 4 * dim)), ("fc2.bias", (dim,))):
        state[f"bottleneck.0.{name}"] = torch.randn(shape) * 0.05
    for index in range(decoder):
        for name, shape in (
            ("norm1.weight", (dim,)), ("norm1.bias", (dim,)), ("attn.qkv.weight", (3 * dim, dim)), ("attn.qkv.bias", (3 * dim,)),
            ("attn.proj.weight", (dim, dim)), ("attn.proj.bias", (dim,)), ("norm2.weight", (dim,)), ("norm2.bias", (dim,)),
            ("mlp.fc1.weight", (4 * dim, dim)), ("mlp.fc1.bias", (4 * dim,)), ("mlp.fc2.weight", (dim, 4 * dim)), ("mlp.fc2.bias", (dim,)),
        ):  # fmt: skip
            state[f"decoder.{index}.{name}"] = torch.randn(shape) * 0.05
    return state


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return official_state_dict()


def test_load_official_strict_with_and_without_the_m2ad_prefix(tiny_state: dict[str, torch.Tensor], tmp_path) -> None:
    model = load_official(dict(tiny_state), num_heads=4)
    assert (model.arch.encoder.embed_dim, model.arch.encoder.depth, model.arch.decoder_depth, model.arch.target_layers) == (40, 4, 4, (0, 1, 2, 3))
    assert set(model.state_dict()) == set(tiny_state) and not model.training
    path = tmp_path / "model.pth"
    torch.save({f"model.{key}": value for key, value in tiny_state.items()}, path)  # M2AD's Dinomaly wraps ViTill as .model
    assert torch.equal(load_official(path, num_heads=4).decoder[0].attn.qkv.weight, tiny_state["decoder.0.attn.qkv.weight"])
    with pytest.raises(RuntimeError, match="Missing key"):
        load_official({key: value for key, value in tiny_state.items() if key != "bottleneck.0.fc1.bias"}, num_heads=4)
    with pytest.raises(ValueError, match="missing 'decoder.0.attn.qkv.weight'"):
        load_official({key: value for key, value in tiny_state.items() if not key.startswith("decoder.")}, num_heads=4)
    twelve = load_official(official_state_dict(64, 12, 8, 37), num_heads=4)  # ViT-S/B's layout at a narrow width
    assert twelve.arch.target_layers == tuple(range(2, 10))


def test_forward_keeps_cls_and_registers_through_the_decoder(tiny_state: dict[str, torch.Tensor]) -> None:
    model = load_official(dict(tiny_state), num_heads=4)
    images = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        output = model(images)
        tapped = model.encoder.intermediate_layers(images, (0, 1, 2, 3))
        tokens = model.bottleneck[0](torch.stack(tapped, 1).mean(1))  # eval: dropout off
        assert tokens.shape == (2, 1 + 4 + 20, 40)
        decoded = []
        for block in model.decoder:
            tokens = block(tokens)
            decoded.append(tokens)
    assert [tuple(e.shape) for e in output.encoder] == [(2, 40, 4, 5)] * 2
    expected_de0 = (decoded[3] + decoded[2])[:, 5:] / 2  # reversed: the first group is the deepest pair
    torch.testing.assert_close(output.decoder[0], expected_de0.transpose(1, 2).reshape(2, 40, 4, 5))
    torch.testing.assert_close(output.encoder[1], ((tapped[2] + tapped[3])[:, 5:] / 2).transpose(1, 2).reshape(2, 40, 4, 5))
    # linear attention by hand: phi = elu + 1, out_i = sum_s (phi(q_i).phi(k_s)) v_s / sum_s phi(q_i).phi(k_s)
    attn = model.decoder[0].attn
    x = torch.randn(1, 7, 40)
    q, k, v = attn.qkv(x).reshape(1, 7, 3, 4, 10).permute(2, 0, 3, 1, 4)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    weights = q @ k.transpose(-2, -1)
    expected = attn.proj(((weights / weights.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(1, 7, 40))
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


def test_hard_mining_loss_value_and_gradient_by_brute_force() -> None:
    torch.manual_seed(2)
    encoder = [torch.randn(2, 8, 3, 5) for _ in range(2)]
    decoder = [torch.randn(2, 8, 3, 5, requires_grad=True) for _ in range(2)]
    plain = [d.detach().clone().requires_grad_(True) for d in decoder]
    loss = dinomaly.hard_mining_loss(encoder, decoder, p=0.8, factor=0.1)
    loss.backward()
    reference = sum(torch.mean(1 - F.cosine_similarity(e.reshape(2, -1), d.reshape(2, -1), dim=1)) for e, d in zip(encoder, plain, strict=True)) / 2
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for e, d, p in zip(encoder, decoder, plain, strict=True):
        distance = (1 - F.cosine_similarity(e, p.detach(), dim=1)).flatten()
        hardest = set(np.argsort(-distance.numpy())[: int(30 * (1 - 0.8))])  # int(5.99..) = 5 largest of 30 keep theirs
        scale = torch.tensor([1.0 if index in hardest else 0.1 for index in range(30)]).reshape(2, 1, 3, 5)
        torch.testing.assert_close(d.grad, p.grad * scale)
    with pytest.raises(ValueError, match="keeps no point"):
        dinomaly.hard_mining_loss([torch.randn(1, 2, 2, 2)], [torch.randn(1, 2, 2, 2)], p=0.9, factor=0.0)


def test_official_and_m2ad_maps_and_scores(tiny_state: dict[str, torch.Tensor]) -> None:
    model = load_official(dict(tiny_state), num_heads=4)
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        output = model(images)
    per_group = [F.interpolate((1 - F.cosine_similarity(e, d, dim=1)).unsqueeze(1), size=(56, 56), mode="bilinear", align_corners=True)[:, 0].numpy()
                 for e, d in zip(output.encoder, output.decoder, strict=True)]
    scores, maps = model.predict(images, map_size=64, scoring="official", top_fraction=0.01)
    resized = F.interpolate(torch.from_numpy(np.mean(per_group, axis=0)).unsqueeze(1), size=(64, 64), mode="bilinear", align_corners=False)[:, 0].numpy()
    kernel = np.exp(-((np.arange(5) - 2.0) ** 2)[:, None] / 32 - ((np.arange(5) - 2.0) ** 2)[None, :] / 32)
    smoothed = np.stack([ndimage.correlate(item, kernel / kernel.sum(), mode="constant") for item in resized])
    np.testing.assert_allclose(maps.numpy(), smoothed, atol=1e-6)
    np.testing.assert_allclose(scores.numpy(), np.sort(smoothed.reshape(2, -1))[:, ::-1][:, :40].mean(1), rtol=1e-5)
    # M2AD: sum over N^2 (half the mean for N = 2), scipy gaussian_filter sigma 4 (33 x 33), the maximum
    m2ad_scores, m2ad_maps = model.predict(images, scoring="m2ad", top_fraction=0.0)
    expected = np.stack([ndimage.gaussian_filter(item, 4) for item in np.sum(per_group, axis=0).astype(np.float64) / 4])
    np.testing.assert_allclose(m2ad_maps.numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(m2ad_scores.numpy(), expected.reshape(2, -1).max(1), rtol=1e-6)


def test_presets_recipes_and_cli() -> None:
    official, paper = DinomalyConfig(), DinomalyConfig(preset="m2ad-paper")
    assert (official.crop_size, official.optimizer, official.lr, official.grad_clip, official.hard_mining_factor) == (392, "stableadamw", 2e-3, 0.1, 0.1)
    assert (paper.crop_size, paper.optimizer, paper.lr, paper.betas, paper.epochs, paper.scoring, paper.top_fraction) == (448, "adam", 3.75e-3, (0.5, 0.999), 100, "m2ad", 0.0)
    method = Dinomaly(official)
    assert method.recipe(Setting("multi-class")).iterations == 10_000 and method.recipe(Setting("single-class")).iterations == 5_000
    assert [method.hard_mining_p(it) for it in (0, 500, 1000, 5000)] == pytest.approx([0.0, 0.45, 0.9, 0.9])
    m2ad = Dinomaly(paper)
    recipe = m2ad.recipe(Setting())
    assert (recipe.iterations, recipe.epochs, recipe.drop_last, recipe.schedule, recipe.step_epoch) == (None, 100, False, "step", 80)
    assert m2ad.hard_mining_p(0) == 0.9
    config = baselines.config_class("dinomaly")(**baselines.parse_method_args("dinomaly", ["preset=m2ad-paper", "iterations=30", "betas=0.9,0.99"]))
    assert config.iterations == 30 and config.betas == (0.9, 0.99) and Dinomaly(config).recipe(Setting()).iterations == 30
    for bad in ({"preset": "x"}, {"scoring": "mean"}, {"head_init": "zeros"}, {"hard_mining_p": 1.0}, {"optimizer": "sgd"}):
        with pytest.raises(ValueError):
            DinomalyConfig(**bad)


SMALL = dict(encoder="tiny", encoder_weights="random", input_size=56, crop_size=56, batch_size=8, map_size=56, device="cpu", seed=0)


def test_fit_is_deterministic_and_presets_differ() -> None:
    train, _ = textures(8, 0, size=56, square=14)
    states = []
    for preset, extra in (("official", {"iterations": 3, "warmup_iters": 1}), ("official", {"iterations": 3, "warmup_iters": 1}), ("m2ad-paper", {"epochs": 3})):
        method = baselines.create("dinomaly", preset=preset, **SMALL, **extra)
        method.fit([method_batch(train)])
        states.append(method.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert not torch.equal(states[0]["decoder.0.attn.qkv.weight"], states[2]["decoder.0.attn.qkv.weight"])
    assert states[0].keys() == states[2].keys()


@pytest.mark.parametrize("preset", ["official", "m2ad-paper"])
def test_overfit_detects_obvious_defects(preset: str) -> None:
    torch.manual_seed(0)
    train, _ = textures(16, 0, size=56, square=14)
    good, _ = textures(6, 1, size=56, square=14)
    bad, masks = textures(6, 2, defect=True, size=56, square=14)
    extra = {"iterations": 30, "warmup_iters": 5, "hard_mining_warmup": 10} if preset == "official" else {"epochs": 15, "lr_step_epoch": 12}
    method = baselines.create("dinomaly", preset=preset, **SMALL, **extra)
    method.fit([method_batch(train[:8]), method_batch(train[8:])])
    good_scores, good_maps = method.predict(method_batch(good))
    bad_scores, bad_maps = method.predict(method_batch(bad))
    assert good_maps.shape == (6, 56, 56) and good_maps.dtype == np.float32
    assert roc_auc_score([0] * 6 + [1] * 6, np.r_[good_scores, bad_scores]) == 1.0
    assert roc_auc_score(masks.ravel(), bad_maps.ravel()) > 0.8
