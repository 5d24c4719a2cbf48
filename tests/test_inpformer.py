"""INP-Former: strict loading of state dicts in the official key layout (built here by hand),
architecture inference, forward/backward/predict on tiny configs against NumPy/SciPy
references, the recipe pieces (loss gradients, optimiser, schedule, presets), the method
wrapper, and an overfit test on obvious synthetic defects."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score

import baselines
from baselines import inpformer
from baselines.base import Setting
from baselines.inpformer import INPFormer, INPFormerConfig, load_official
from baselines.weights import WeightsUnavailable
from textures import method_batch, textures
from tests.test_backbones import meta_dinov2_state_dict


def official_state_dict(dim: int, heads: int, depth: int, decoder: int, prototypes: int = 6, grid: int = 37, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random tensors under the official ``INP_Former`` state-dict names (reference §8.5)."""
    if device == "meta":
        encoder = {key: torch.empty(value.shape, device="meta") for key, value in meta_dinov2_state_dict(dim, 1, 4, grid).items()}
        for index in range(1, depth):
            encoder.update({key.replace("blocks.0.", f"blocks.{index}."): value for key, value in encoder.items() if key.startswith("blocks.0.")})
    else:
        encoder = meta_dinov2_state_dict(dim, depth, 4, grid)
    state = {f"encoder.{key}": value for key, value in encoder.items()}

    def tensor(*shape: int) -> torch.Tensor:
        return torch.empty(shape, device="meta") if device == "meta" else torch.randn(shape) * 0.05

    def block(prefix: str) -> None:
        for name, shape in (
            ("norm1.weight", (dim,)), ("norm1.bias", (dim,)), ("norm2.weight", (dim,)), ("norm2.bias", (dim,)),
            ("attn.q.weight", (dim, dim)), ("attn.q.bias", (dim,)), ("attn.kv.weight", (2 * dim, dim)), ("attn.kv.bias", (2 * dim,)),
            ("attn.proj.weight", (dim, dim)), ("attn.proj.bias", (dim,)),
            ("mlp.fc1.weight", (4 * dim, dim)), ("mlp.fc1.bias", (4 * dim,)), ("mlp.fc2.weight", (dim, 4 * dim)), ("mlp.fc2.bias", (dim,)),
        ):  # fmt: skip
            state[f"{prefix}.{name}"] = tensor(*shape)

    state["prototype_token"] = tensor(prototypes, dim)
    for name, shape in (("fc1.weight", (4 * dim, dim)), ("fc1.bias", (4 * dim,)), ("fc2.weight", (dim, 4 * dim)), ("fc2.bias", (dim,))):
        state[f"bottleneck.0.{name}"] = tensor(*shape)
    block("aggregation.0")
    for index in range(decoder):
        block(f"decoder.{index}")
        state[f"decoder.{index}.attn.learn_scale"] = tensor(heads, 1, 1)
    return state


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return official_state_dict(40, 4, 4, 4, grid=4)


def test_load_official_tiny_40_dim_4_heads_strict(tiny_state: dict[str, torch.Tensor]) -> None:
    model = load_official(dict(tiny_state))
    arch = model.arch
    assert (arch.encoder.embed_dim, arch.encoder.num_heads, arch.encoder.depth) == (40, 4, 4)
    assert (arch.encoder.num_register_tokens, arch.encoder.pos_grid, arch.num_prototypes, arch.decoder_depth) == (4, 4, 6, 4)
    assert arch.target_layers == (0, 1, 2, 3)
    loaded = model.state_dict()
    assert loaded.keys() == tiny_state.keys()
    assert all(torch.equal(loaded[key], tiny_state[key]) for key in tiny_state)
    assert not model.training


def test_load_official_from_file_and_rejects_bad_input(tiny_state: dict[str, torch.Tensor], tmp_path) -> None:
    path = tmp_path / "model.pth"
    torch.save(tiny_state, path)
    assert torch.equal(load_official(path).prototype_token, tiny_state["prototype_token"])
    with pytest.raises(FileNotFoundError):
        load_official(tmp_path / "missing.pth")
    anomalib_style = {("prototype_token.0" if key == "prototype_token" else key): value for key, value in tiny_state.items()}
    with pytest.raises(ValueError, match="missing 'prototype_token'"):
        load_official(anomalib_style)
    no_bias = {key: value for key, value in tiny_state.items() if key != "bottleneck.0.fc1.bias"}
    with pytest.raises(RuntimeError, match="Missing key"):
        load_official(no_bias)


def test_load_official_twelve_block_layout() -> None:
    state = official_state_dict(64, 4, 12, 8)  # ViT-S/B's layout at a narrow width
    model = load_official(state)
    assert len(state) == 315  # the key count of official ViT-S/B checkpoints (reference §8.5)
    assert model.arch.target_layers == tuple(range(2, 10))
    assert (model.arch.encoder.num_heads, model.arch.decoder_depth) == (4, 8)


@pytest.mark.parametrize(("dim", "heads", "depth", "targets"), [(768, 12, 12, tuple(range(2, 10))), (1024, 16, 24, (4, 6, 8, 10, 12, 14, 16, 18))])
def test_infer_arch_of_base_and_large_from_shapes(dim: int, heads: int, depth: int, targets: tuple[int, ...]) -> None:
    arch = inpformer.infer_arch(official_state_dict(dim, heads, depth, 8, device="meta"))
    assert (arch.encoder.embed_dim, arch.encoder.num_heads, arch.encoder.depth, arch.target_layers) == (dim, heads, depth, targets)
    assert (arch.encoder.pos_grid, arch.encoder.patch_size, arch.decoder_depth) == (37, 14, 8)


def test_forward_backward_and_loss_gradients_on_tiny(tiny_state: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(1)
    model = load_official(dict(tiny_state)).train()
    images = torch.randn(3, 3, 56, 70)
    output = model(images)
    assert [tuple(e.shape) for e in output.encoder] == [(3, 40, 4, 5)] * 2
    assert [tuple(d.shape) for d in output.decoder] == [(3, 40, 4, 5)] * 2
    assert output.distance.shape == (3, 20)
    # coherence: mean over tokens of the cosine distance to the nearest prototype (brute force)
    tokens = torch.stack(model.encoder.intermediate_layers(images, (0, 1, 2, 3)), 1).mean(1)[:, 5:].detach().numpy()
    prototypes = model.prototype_token.detach()
    prototypes = model.aggregation[0](prototypes.unsqueeze(0).expand(3, -1, -1), torch.from_numpy(tokens)).detach().numpy()
    cos = np.einsum("bnc,bmc->bnm", tokens, prototypes) / (np.linalg.norm(tokens, axis=-1)[..., None] * np.linalg.norm(prototypes, axis=-1)[:, None])
    np.testing.assert_allclose(output.coherence_loss.item(), (1 - cos).min(-1).mean(), rtol=1e-5)

    # soft mining: the value is the global cosine; the gradient is the plain one times (d / mean d)^3
    decoded = [d.detach().clone().requires_grad_(True) for d in output.decoder]
    plain = [d.detach().clone().requires_grad_(True) for d in output.decoder]
    loss = inpformer.soft_mining_loss(output.encoder, decoded)
    loss.backward()
    reference = sum(
        torch.mean(1 - F.cosine_similarity(e.reshape(3, -1), d.reshape(3, -1), dim=1)) for e, d in zip(output.encoder, plain, strict=True)
    ) / 2
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for e, d, p in zip(output.encoder, decoded, plain, strict=True):
        distance = 1 - F.cosine_similarity(e, p.detach(), dim=1).unsqueeze(1)
        torch.testing.assert_close(d.grad, p.grad * (distance / distance.mean()) ** 3)

    total = inpformer.soft_mining_loss(output.encoder, output.decoder) + 0.2 * output.coherence_loss
    total.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.trainable_parameters())


def test_predict_matches_the_official_map_pipeline(tiny_state: dict[str, torch.Tensor]) -> None:
    model = load_official(dict(tiny_state))
    images = torch.randn(2, 3, 56, 56)
    scores, maps, raw = model.predict(images, map_size=64, return_raw=True)
    with torch.no_grad():
        output = model(images)
    per_group = [1 - F.cosine_similarity(e, d, dim=1).numpy() for e, d in zip(output.encoder, output.decoder, strict=True)]
    # bilinear align_corners=True to 56 by hand: sample at i * (n - 1) / (56 - 1)
    full = []
    for group in per_group:
        coords = np.arange(56) * (group.shape[-1] - 1) / 55
        lower = np.minimum(np.floor(coords).astype(int), group.shape[-1] - 2)
        frac = coords - lower
        rows = group[:, lower] * (1 - frac)[None, :, None] + group[:, lower + 1] * frac[None, :, None]
        full.append(rows[:, :, lower] * (1 - frac) + rows[:, :, lower + 1] * frac)
    expected_full = torch.from_numpy(np.mean(full, axis=0)).float().unsqueeze(1)
    expected_raw = F.interpolate(expected_full, size=(64, 64), mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(raw.numpy(), expected_raw, atol=1e-5)
    kernel = np.exp(-((np.arange(5) - 2.0) ** 2)[:, None] / 32 - ((np.arange(5) - 2.0) ** 2)[None, :] / 32)
    kernel /= kernel.sum()
    smoothed = np.stack([ndimage.correlate(item, kernel, mode="constant", cval=0.0) for item in expected_raw])
    np.testing.assert_allclose(maps.numpy(), smoothed, atol=1e-5)
    top = np.sort(smoothed.reshape(2, -1), axis=1)[:, ::-1][:, : int(64 * 64 * 0.01)].mean(axis=1)
    np.testing.assert_allclose(scores.numpy(), top, rtol=1e-5)
    _, scipy_maps = model.predict(images, map_size=64, smoothing="scipy")
    np.testing.assert_allclose(scipy_maps.numpy(), np.stack([ndimage.gaussian_filter(item, 4) for item in expected_raw]), atol=1e-5)


def test_official_schedule_and_stable_adamw() -> None:
    lr = [inpformer.warm_cosine_lr(i, 1e-3, 1e-4, 300, 100) for i in range(305)]
    assert lr[0] == 0.0 and lr[99] == pytest.approx(1e-3) and lr[50] == pytest.approx(1e-3 * 50 / 99)
    assert lr[100] == pytest.approx(1e-3) and lr[200] == pytest.approx(5.5e-4) and lr[300] == lr[304] == 1e-4
    # one StableAdamW step by hand: decay, amsgrad moment, bias corrections, RMS clip
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    grad = torch.tensor([0.5, 100.0, -1e-3])
    optimizer = inpformer.StableAdamW([param], lr=0.1, weight_decay=0.01, amsgrad=True, eps=1e-10)
    param.grad = grad.clone()
    optimizer.step()
    start = np.array([1.0, -2.0, 3.0]) * (1 - 0.1 * 0.01)
    m, v = 0.1 * grad.numpy(), 0.001 * grad.numpy() ** 2
    denom = np.sqrt(v) / math.sqrt(0.001) + 1e-10
    rms = np.sqrt(np.mean((grad.numpy() / denom) ** 2))
    expected = start - 0.1 / 0.1 / max(1.0, rms) * m / denom
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-5)


def test_presets_overrides_and_cli_parsing() -> None:
    official = INPFormerConfig()
    assert (official.input_size, official.crop_size, official.epochs, official.batch_size, official.optimizer) == (448, 392, 200, 16, "stableadamw")
    assert (official.lr, official.weight_decay, official.grad_clip, official.map_size, official.smoothing) == (1e-3, 1e-4, 0.1, 256, "official")
    paper = INPFormerConfig(preset="m2ad-paper", epochs=3)
    assert (paper.epochs, paper.batch_size, paper.optimizer, paper.lr, paper.betas, paper.crop_size) == (3, 12, "adam", 3.75e-3, (0.5, 0.999), 448)
    kwargs = baselines.parse_method_args("inpformer", ["preset=m2ad-paper", "betas=0.9,0.99", "encoder=vits14", "num_prototypes=4"])
    config = baselines.config_class("inpformer")(**kwargs)
    assert config.betas == (0.9, 0.99) and config.encoder == "vits14" and config.num_prototypes == 4 and config.lr_step_epoch == 80
    for moved in ("multi_class", "shots"):  # the setting belongs to the harness (m2ad run --setting, --shots)
        with pytest.raises(ValueError, match=f"no option '{moved}'"):
            baselines.parse_method_args("inpformer", [f"{moved}=1"])
    for bad in ({"preset": "nope"}, {"encoder": "vith14"}, {"crop_size": 500}, {"smoothing": "box"}, {"betas": (0.9,)}):
        with pytest.raises(ValueError):
            INPFormerConfig(**bad)


def test_missing_encoder_weights_name_the_import_command(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("M2AD_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    method = baselines.create("inpformer", encoder="vits14", device="cpu")
    batch = method_batch(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(WeightsUnavailable, match="m2ad weights import dinov2_vits14_reg4_pretrain"):
        method.fit([batch])


def test_few_shot_augmentation_matches_the_official_list() -> None:
    image = torch.randn(3, 28, 28)
    augmented = inpformer.few_shot_augment(image)
    assert augmented.shape == (22, 3, 28, 28)
    torch.testing.assert_close(augmented[0], image)
    torch.testing.assert_close(augmented[17], image.flip(-1))
    grey = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    torch.testing.assert_close(augmented[18], grey.expand(3, -1, -1))
    torch.testing.assert_close(augmented[20], image.flip(-1).flip(-2))  # a half turn
    # a shift by (+0.2, +0.2) in normalised coordinates samples 0.1 * 28 = 2.8 pixels down and right
    a, b = slice(7, 22), slice(8, 23)
    shifted = 0.04 * image[:, a, a] + 0.16 * image[:, a, b] + 0.16 * image[:, b, a] + 0.64 * image[:, b, b]
    torch.testing.assert_close(augmented[9][:, 5:20, 5:20], shifted, atol=1e-5, rtol=1e-5)






def test_overfit_detects_obvious_defects_and_round_trips_state() -> None:
    torch.manual_seed(0)
    train, _ = textures(16, 0, size=56, square=14)
    good, _ = textures(6, 1, size=56, square=14)
    bad, masks = textures(6, 2, defect=True, size=56, square=14)
    config = dict(encoder="tiny", encoder_weights="random", input_size=56, crop_size=56, epochs=10, batch_size=8, warmup_iters=0, map_size=56, device="cpu")
    method = baselines.create("inpformer", **config)
    method.fit([method_batch(train[:8]), method_batch(train[8:])])
    good_scores, good_maps = method.predict(method_batch(good))
    bad_scores, bad_maps = method.predict(method_batch(bad))
    assert good_maps.shape == (6, 56, 56) and good_maps.dtype == np.float32
    assert roc_auc_score([0] * 6 + [1] * 6, np.r_[good_scores, bad_scores]) == 1.0
    assert roc_auc_score(masks.ravel(), bad_maps.ravel()) > 0.8
    restored = INPFormer(INPFormerConfig(**config))
    restored.load_state_dict(method.state_dict())
    again_scores, again_maps = restored.predict(method_batch(bad))
    np.testing.assert_allclose(again_scores, bad_scores, rtol=1e-5)
    np.testing.assert_allclose(again_maps, bad_maps, rtol=1e-4, atol=1e-6)


def test_one_fit_trains_one_model_on_every_category_given_and_crop_border() -> None:
    images, _ = textures(4, 3, size=64, square=14)
    method = INPFormer(INPFormerConfig(encoder="tiny", encoder_weights="random", input_size=64, crop_size=56, epochs=1, batch_size=2, warmup_iters=0, device="cpu"))
    seen: list[int] = []
    original = method.train_model
    method.train_model = lambda model, data: seen.append(len(data)) or original(model, data)  # type: ignore[method-assign]
    method.fit([method_batch(images, ["a", "a", "b", "b"])])
    assert seen == [4], "the harness decides the fit unit: one model on what it is given"
    scores, maps = method.predict(method_batch(images[:2], ["b", "z"]))
    assert maps.shape == (2, 64, 64) and np.isfinite(scores).all()
    assert np.all(maps[:, :4] == maps.reshape(2, -1).min(axis=1)[:, None, None])  # 448->392 border: never seen
    assert set(method.state_dict()) == set(inpformer.load_official(method.state_dict()).state_dict()), "official parameter names"


def test_few_shot_trains_on_the_official_augmentations_of_the_harness_shots(monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = textures(6, 4, size=28, square=14)
    method = INPFormer(INPFormerConfig(encoder="tiny", encoder_weights="random", input_size=28, crop_size=28, epochs=1, batch_size=22, warmup_iters=0, seed=5, device="cpu"))
    seen: list[int] = []
    original = method.train_model
    monkeypatch.setattr(method, "train_model", lambda model, data: seen.append(len(data)) or original(model, data))
    method.fit([method_batch(images[:2], ["a", "b"])], Setting("few-shot", shots=1))
    assert seen == [2 * 22], "every image the harness drew, augmented x22"
    scores, maps = method.predict(method_batch(images[:2], ["a", "b"]))
    assert maps.shape == (2, 28, 28) and np.isfinite(maps).all()
