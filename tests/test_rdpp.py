"""RD++: strict loading of the official checkpoint layout (``{'proj', 'bn', 'decoder'}``) and of the
M2AD one (``proj_layer.``, ``mff_oce.``, ``net_s.``), the shapes of the three scales, the losses
against hand-written references (the Sinkhorn divergence against a plain log-domain Sinkhorn run
to convergence), both presets' maps and scores against SciPy, gradient accumulation in the shared
loop against a hand loop, the observable differences between the presets (which parameters one
optimiser step moves, and by how much), determinism and the state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from textures import method_batch, textures

import baselines
from baselines import rdpp
from baselines.backbones.wide_resnet import WideResNet50
from baselines.base import Setting
from baselines.rdpp import RDPP, RDPPArch, RDPPConfig, RDPPModel, load_official
from baselines.training import Recipe, train_head

TINY = RDPPArch(channels=(32, 64, 128))
SMALL = {"backbone": "wide_resnet50_2_tiny", "encoder_weights": "random", "input_size": 64, "batch_size": 4, "device": "cpu", "seed": 0}


def tiny_model(arch: RDPPArch = TINY, seed: int = 0) -> RDPPModel:
    torch.manual_seed(seed)
    model = RDPPModel(arch, WideResNet50(base=arch.channels[0] // 4) if arch.channels != (24, 40, 112) else None)
    model.mixed_precision = False
    return model


def test_load_official_strict_in_both_layouts(tmp_path) -> None:
    model = tiny_model()
    state = model.state_dict()
    official = {part: {key[len(part) + 1 :]: value for key, value in state.items() if key.startswith(part + ".")} for part in ("proj", "bn", "decoder")}
    assert "conv4.weight" in official["bn"]  # the official BN_layer keeps its unused conv4 / bn4
    path = tmp_path / "wres50_carpet.pth"
    torch.save(official, path)  # the layout of main.py:199-201
    loaded = load_official(path, encoder_weights="random")
    assert loaded.arch == TINY and not loaded.training
    assert torch.equal(loaded.decoder.layer3[5].conv3.weight, state["decoder.layer3.5.conv3.weight"])
    with pytest.raises(RuntimeError, match="Missing key"):
        load_official({**official, "decoder": {k: v for k, v in official["decoder"].items() if k != "layer1.0.bn1.bias"}}, encoder_weights="random")
    with pytest.raises(ValueError, match="missing 'decoder.layer1.0.conv1.weight'"):
        load_official({"proj": official["proj"], "bn": official["bn"], "decoder": {}}, encoder_weights="random")
    # the M2AD release: narrower OCBE (timm Bottleneck, base_width 64), no conv4 / bn4, other prefixes
    m2ad_arch = RDPPArch(channels=(32, 64, 128), ocbe_width_factor=1, ocbe_spare_conv=False)
    m2ad_state = tiny_model(m2ad_arch).state_dict()
    renamed = {key.replace("proj.", "proj_layer.", 1).replace("bn.", "mff_oce.", 1).replace("decoder.", "net_s.", 1).replace("encoder.", "net_t.", 1): value
               for key, value in m2ad_state.items()}
    loaded = load_official(renamed)
    assert loaded.arch == m2ad_arch and loaded.bn.bn_layer[0].conv1.weight.shape == (64, 384, 1, 1)
    with pytest.raises(ValueError, match="unexpected key 'head.weight'"):
        load_official({**renamed, "head.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_official({**state, "bn.conv5.weight": torch.zeros(1)})


def test_shapes_of_the_three_scales() -> None:
    model = tiny_model().eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(images, images + 0.1)
        code = model.bn(out.projected)
    expected = [(2, 32, 16, 24), (2, 64, 8, 12), (2, 128, 4, 6)]
    for maps in (out.teacher, out.student, out.projected, out.noisy_teacher, out.noisy_projected):
        assert [tuple(m.shape) for m in maps] == expected
    assert tuple(code.shape) == (2, 256, 2, 3)
    lite = tiny_model(RDPPArch(channels=(24, 40, 112))).eval()  # our offline teacher: EfficientNet-Lite0's strides 4, 8, 16
    with torch.no_grad():
        assert [tuple(m.shape) for m in lite(torch.randn(1, 3, 64, 64)).student] == [(1, 24, 16, 16), (1, 40, 8, 8), (1, 112, 4, 4)]
    with torch.device("meta"):  # the real widths, shapes only
        official = RDPPModel(RDPPArch(), WideResNet50()).eval()
        assert [tuple(m.shape) for m in official(torch.randn(1, 3, 256, 256)).student] == [(1, 256, 64, 64), (1, 512, 32, 32), (1, 1024, 16, 16)]
    assert official.bn.bn_layer[0].conv1.weight.shape == (1024, 3072, 1, 1)
    assert sum(p.numel() for p in official.encoder.parameters()) == 68_883_240  # torchvision's wide_resnet50_2


def plain_sinkhorn(x: np.ndarray, y: np.ndarray, eps: float, iterations: int = 2000) -> float:
    """Entropic OT dual value <a, f> + <b, g> by log-domain Sinkhorn at a fixed eps, float64."""
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / 2
    log_a, log_b = np.full(len(x), -math.log(len(x))), np.full(len(y), -math.log(len(y)))
    f, g = np.zeros(len(x)), np.zeros(len(y))
    for _ in range(iterations):
        f = -eps * np.logaddexp.reduce(log_b[None, :] + (g[None, :] - cost) / eps, axis=1)
        g = -eps * np.logaddexp.reduce(log_a[:, None] + (f[:, None] - cost) / eps, axis=0)
    return float(np.exp(log_a) @ f + np.exp(log_b) @ g)


def test_sinkhorn_divergence_against_a_plain_sinkhorn() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 2)) * 0.3, rng.normal(size=(6, 2)) * 0.3 + 0.2
    eps = 0.05**2
    expected = plain_sinkhorn(x, y, eps) - 0.5 * plain_sinkhorn(x, x, eps) - 0.5 * plain_sinkhorn(y, y, eps)
    value = rdpp.sinkhorn_divergence(torch.tensor(x), torch.tensor(y))
    # GeomLoss's annealing spends one update per temperature: 1.5 % off the converged value at the
    # official scaling 0.95, and converging to it as the schedule gets finer
    assert value.item() == pytest.approx(expected, rel=0.02)
    assert rdpp.sinkhorn_divergence(torch.tensor(x), torch.tensor(y), scaling=0.999).item() == pytest.approx(expected, rel=1e-5)
    assert abs(rdpp.sinkhorn_divergence(torch.tensor(x), torch.tensor(x)).item()) < 1e-6  # debiased: S(a, a) = 0
    # the gradient is the envelope gradient through the last update only; it is finite and moves x towards y
    points = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    rdpp.sinkhorn_divergence(points, torch.tensor(y, dtype=torch.float32)).backward()
    assert torch.isfinite(points.grad).all()
    moved = points.detach() - 0.5 * points.grad
    assert rdpp.sinkhorn_divergence(moved, torch.tensor(y, dtype=torch.float32)) < value


def test_distillation_and_projection_losses_by_hand() -> None:
    torch.manual_seed(1)
    teacher = [torch.randn(3, 4, 5, 5), torch.randn(3, 8, 3, 3), torch.randn(3, 16, 2, 2)]
    student = [t + 0.3 * torch.randn_like(t) for t in teacher]
    expected = sum(float(np.mean([1 - np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a.ravel()) / np.linalg.norm(b.ravel())
                                  for a, b in zip(t.numpy(), s.numpy(), strict=True)])) for t, s in zip(teacher, student, strict=True))
    assert rdpp.distillation_loss(teacher, student).item() == pytest.approx(expected, rel=1e-5)
    noisy = [t + 0.5 * torch.randn_like(t) for t in teacher]
    noisy_proj = [t + 0.2 * torch.randn_like(t) for t in teacher]
    permutation = torch.tensor([2, 0, 1])
    value = rdpp.projection_loss(noisy, noisy_proj, teacher, permutation)
    ssot = sum(rdpp.sinkhorn_divergence(torch.softmax(t.reshape(3, -1), -1), torch.softmax(t[permutation].reshape(3, -1), -1)) for t in teacher)
    reconstruction = sum(float(np.mean(1 - (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
                         for a, b in ((p.numpy(), t.numpy()) for p, t in zip(noisy_proj, teacher, strict=True)))
    contrast = 0.0
    for n, t in zip(noisy, teacher, strict=True):
        a, b = n.reshape(3, -1).numpy(), t.reshape(3, -1).numpy()
        contrast += float(np.mean(np.maximum(0.0, (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1) - 0.5)))
    assert value.item() == pytest.approx((float(ssot) + 0.01 * reconstruction + 0.1 * contrast) / 1.11, rel=1e-5)


def test_official_and_m2ad_maps_and_scores() -> None:
    model = tiny_model().eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
    per_scale = [F.interpolate((1 - F.cosine_similarity(t, s, dim=1)).unsqueeze(1), size=(64, 64), mode="bilinear", align_corners=True)[:, 0].double().numpy()
                 for t, s in zip(out.teacher, out.student, strict=True)]
    summed = np.sum(per_scale, axis=0)
    scores, maps = model.predict(images, scoring="official", top_fraction=0.0)
    expected = np.stack([ndimage.gaussian_filter(item, 4) for item in summed])
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(scores.numpy(), expected.reshape(2, -1).max(1), rtol=1e-7)
    scores, maps = model.predict(images, scoring="m2ad", top_fraction=0.01)
    expected = np.stack([ndimage.gaussian_filter(item, 4) for item in summed / 9])  # compute_am.py:46: / (N * sum(weights))
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-8)
    top = np.sort(expected.reshape(2, -1), axis=1)[:, ::-1][:, : int(64 * 64 * 0.01)].mean(1)  # 40 pixels
    np.testing.assert_allclose(scores.numpy(), top, rtol=1e-7)
    with pytest.raises(ValueError, match="scoring must be official or m2ad"):
        model.predict(images, scoring="mean")


def test_gradient_accumulation_of_the_shared_loop_matches_a_hand_loop() -> None:
    torch.manual_seed(0)
    images = torch.randn(10, 3)
    target = torch.randn(3)

    def run(recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        first, second = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
        groups = [{"params": list(first.parameters()), "lr_scale": 0.2}, {"params": list(second.parameters()), "lr_scale": 1.0}]
        train_head(groups, images, lambda x, it: ((second(first(x)) - x @ target) ** 2).mean(), recipe, prepare=lambda x: x, device=torch.device("cpu"), seed=3)
        return first.weight.detach().clone(), second.weight.detach().clone()

    ours = run(Recipe(optimizer="adam", lr=5e-3, betas=(0.5, 0.999), schedule="constant", batch_size=4, drop_last=False, epochs=2, accumulation=2))
    torch.manual_seed(1)
    first, second = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    opt_first = torch.optim.Adam(first.parameters(), lr=1e-3, betas=(0.5, 0.999))  # main.py:72-73: two optimisers
    opt_second = torch.optim.Adam(second.parameters(), lr=5e-3, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        order = torch.randperm(10, generator=generator)
        for i in range(3):  # 4 + 4 + 2 images: the third batch's gradient carries into the next epoch
            x = images[order[i * 4 : (i + 1) * 4]]
            ((second(first(x)) - x @ target) ** 2).mean().backward()
            if (i + 1) % 2 == 0:
                opt_first.step(), opt_second.step()
                opt_first.zero_grad(), opt_second.zero_grad()
    torch.testing.assert_close(ours[0], first.weight.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours[1], second.weight.detach(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="accumulation must be positive"):
        Recipe(accumulation=0)


def step_changes(preset: str, iterations: int) -> dict[str, float]:
    """Largest change of each parameter group after ``iterations`` training batches of 4."""
    method = RDPP(RDPPConfig(preset=preset, **{**SMALL, "epochs": 1}))
    model = tiny_model(method.arch())
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    images, _ = textures(4 * iterations, 0, size=64)
    method.train_model(model, images)
    changes = {"proj": 0.0, "bn": 0.0, "decoder": 0.0, "encoder": 0.0}
    for name, param in model.named_parameters():
        changes[name.split(".")[0]] = max(changes[name.split(".")[0]], float((param.detach() - before[name]).abs().max()))
    return changes


def test_the_presets_differ_observably() -> None:
    official, paper = RDPPConfig(), RDPPConfig(preset="m2ad-paper")
    assert (official.batch_size, official.proj_lr, official.distill_lr, official.accumulation, official.anomalies, official.ocbe_width_factor) == (16, 1e-3, 5e-3, 2, "simplex", 2)
    assert (paper.batch_size, paper.proj_lr, paper.distill_lr, paper.grad_clip, paper.lr_step_epoch, paper.epochs, paper.scoring) == (8, 2.5e-4, 2.5e-4, 5.0, 80, 100, "m2ad")
    assert RDPP(official).epochs(["carpet"]) == 10 and RDPP(official).epochs(["Cube"]) == 200 and RDPP(official).epochs(["carpet", "screw"]) == 280
    assert RDPP(paper).epochs(["carpet"]) == 100
    # official: one batch accumulates, no step; two batches step, Adam's first step is ~lr per element
    assert max(step_changes("official", 1).values()) == 0.0
    changes = step_changes("official", 2)
    assert changes["encoder"] == 0.0
    assert changes["proj"] == pytest.approx(1e-3, rel=0.05) and changes["decoder"] == pytest.approx(5e-3, rel=0.05)
    # M2AD: one Adam at 2.5e-4 for everything, a step per batch
    changes = step_changes("m2ad-paper", 1)
    assert changes["proj"] == pytest.approx(2.5e-4, rel=0.05) and changes["decoder"] == pytest.approx(2.5e-4, rel=0.05) and changes["encoder"] == 0.0
    assert RDPP(paper).arch().ocbe_width_factor == 1 and not RDPP(paper).arch().ocbe_spare_conv


def test_noise_patches_follow_the_official_geometry() -> None:
    images = torch.zeros(8, 3, 256, 256)
    noisy = rdpp.simplex_patches(images, torch.Generator().manual_seed(0))
    for item in noisy:
        rows, cols = torch.nonzero(item.abs().sum(0) > 0, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert 10 <= height < 32 and 10 <= width < 32 and rows.min() >= 1 and cols.min() >= 1
    pixel_noise = (noisy * torch.tensor(baselines.backbones.registry.IMAGENET_STD).view(1, 3, 1, 1)).abs().max()
    assert 0.0 < pixel_noise <= 0.2 * 2.5  # 0.2 x a fractal sum of amplitudes 1 + 0.6 + ... < 2.5
    again = rdpp.simplex_patches(images, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)


def test_bad_configs_say_what_is_wrong() -> None:
    for bad, message in (({"preset": "x"}, "unknown preset"), ({"backbone": "resnet18"}, "backbone must be"), ({"anomalies": "gauss"}, "anomalies must be"),
                         ({"scoring": "mean"}, "scoring must be"), ({"input_size": 100}, "multiple of 32"), ({"accumulation": 0}, "accumulation"),
                         ({"proj_lr": 0.0}, "learning rates"), ({"betas": (0.9,)}, "betas"), ({"device": "tpu"}, "device must be")):
        with pytest.raises(ValueError, match=message) as error:
            RDPPConfig(**bad)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="no pretrained weights"):
        RDPP(RDPPConfig(backbone="wide_resnet50_2_tiny")).new_model()
    config = baselines.config_class("rdpp")(**baselines.parse_method_args("rdpp", ["preset=m2ad-paper", "epochs=3", "betas=0.9,0.99"]))
    assert config.epochs == 3 and config.betas == (0.9, 0.99) and config.distill_lr == 2.5e-4


def test_fit_is_deterministic_and_the_state_round_trips() -> None:
    train, _ = textures(8, 0, size=64)
    test, _ = textures(3, 1, defect=True, size=56)
    results = []
    for _ in range(2):
        method = baselines.create("rdpp", **SMALL, epochs=1)
        method.fit([method_batch(train[:4]), method_batch(train[4:])], Setting())
        results.append((method.state_dict(), *method.predict(method_batch(test))))
    assert all(torch.equal(results[0][0][key], results[1][0][key]) for key in results[0][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    scores, maps = results[0][1], results[0][2]
    assert scores.shape == (3,) and maps.shape == (3, 56, 56) and maps.dtype == np.float32
    restored = baselines.create("rdpp", **{**SMALL, "seed": 99})
    restored.load_state_dict(results[0][0])
    again_scores, again_maps = restored.predict(method_batch(test))
    np.testing.assert_array_equal(again_scores, scores)
    np.testing.assert_array_equal(again_maps, maps)
    with pytest.raises(RuntimeError, match="before fit"):
        baselines.create("rdpp", **SMALL).predict(method_batch(test))
