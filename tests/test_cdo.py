"""CDO: the HRNet backbone's official layout and strict loading, the OOM loss and its gradient
against a NumPy brute force, both presets' maps and scores against NumPy/SciPy references,
the white-noise anomalies, the recipes, determinism, state round trips (ours, official and
M2AD apprentice files), one-line config errors, and an overfit test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score

import baselines
from baselines import cdo
from baselines.backbones import registry
from baselines.backbones.hrnet import HRNET_PRESETS, HRNet
from baselines.cdo import CDO, CDOConfig, CDOModel, cdo_loss, load_official, official_map, synthesize, white_noise
from textures import method_batch, textures

SMALL = {"backbone": "hrnet_tiny", "expert_weights": "random", "input_size": 56, "batch_size": 4, "device": "cpu", "seed": 0}


def random_model(normalize: bool = False, seed: int = 0) -> CDOModel:
    torch.manual_seed(seed)
    return CDOModel("hrnet_tiny", registry.load_backbone("hrnet_tiny", "random"), registry.spec("hrnet_tiny").build(), normalize).eval()


def test_hrnet_has_the_official_layout_and_loads_released_files_strictly(tmp_path) -> None:
    with torch.device("meta"):
        keys = set(HRNet(HRNET_PRESETS["hrnet32"]).state_dict())
    for key in ("conv2.weight", "layer1.3.conv3.weight", "layer1.0.downsample.1.running_var", "transition1.0.0.weight",
                "transition1.1.0.0.weight", "transition3.3.0.1.bias", "stage3.3.branches.2.3.conv2.weight",
                "stage4.2.fuse_layers.0.3.1.weight", "stage4.2.fuse_layers.3.0.2.0.weight", "stage4.2.fuse_layers.3.0.0.1.num_batches_tracked"):
        assert key in keys, key
    assert "transition2.0.0.weight" not in keys  # same width: no transition, as the official None
    torch.manual_seed(0)
    model = registry.load_backbone("hrnet_tiny", "random")
    outputs = registry.tap(model, torch.randn(2, 3, 64, 48), ("stride16", "stride4", "stride8"))
    assert [tuple(item.shape) for item in outputs] == [(2, 16, 4, 3), (2, 4, 16, 12), (2, 8, 8, 6)]
    released = {f"model.{key}": value for key, value in model.state_dict().items()}  # CDO's HRNet_ wrapper
    released["model.last_layer.0.weight"] = torch.zeros(1)  # its segmentation head, dropped
    torch.save(released, tmp_path / "hrnet.pth")
    loaded = registry.load_backbone("hrnet_tiny", str(tmp_path / "hrnet.pth"))
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in model.state_dict().items())
    released.pop("model.stage4.0.fuse_layers.1.0.0.0.weight")
    torch.save(released, tmp_path / "short.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        registry.load_backbone("hrnet_tiny", str(tmp_path / "short.pth"))
    with pytest.raises(ValueError, match="no released weights"):
        registry.load_backbone("hrnet32")


def reference_loss(expert: list[np.ndarray], apprentice: list[np.ndarray], mask: np.ndarray, gamma: float) -> tuple[float, list[np.ndarray]]:
    """The OOM loss on features already on one grid, by explicit loops, and the gradient of
    each apprentice level with the weights held constant."""
    total, grads = 0.0, []
    for fe, fa in zip(expert, apprentice, strict=True):
        batch, _, height, width = fe.shape
        synthetic = mask.reshape(batch, height, width) != 0
        d = np.zeros((batch, height, width))
        for b in range(batch):
            for y in range(height):
                for x in range(width):
                    e, a = fe[b, :, y, x], fa[b, :, y, x]
                    d[b, y, x] = np.sum((e / np.linalg.norm(e) - a / np.linalg.norm(a)) ** 2)
        w = np.zeros_like(d)
        w[~synthetic] = (d[~synthetic] / d[~synthetic].mean()) ** gamma
        if synthetic.any():
            w[synthetic] = (d[synthetic].mean() / d[synthetic]) ** gamma
        sign = np.where(synthetic, -1.0, 1.0)
        total += float(np.sum(sign * w * d) / w.sum() * batch)
        grad = np.zeros_like(fa)  # dd/dfa = -2 (u_e - u_a (u_e . u_a)) / |fa|
        for b in range(batch):
            for y in range(height):
                for x in range(width):
                    e, a = fe[b, :, y, x], fa[b, :, y, x]
                    ue, norm = e / np.linalg.norm(e), np.linalg.norm(a)
                    ua = a / norm
                    dd = -2 * (ue - ua * (ue @ ua)) / norm
                    grad[b, :, y, x] = sign[b, y, x] * w[b, y, x] / w.sum() * batch * dd
        grads.append(grad)
    return total, grads


def test_oom_loss_value_and_gradient_by_brute_force() -> None:
    rng = np.random.default_rng(0)
    expert = [rng.normal(size=(2, 5, 4, 4)), rng.normal(size=(2, 3, 4, 4))]
    apprentice = [rng.normal(size=(2, 5, 4, 4)), rng.normal(size=(2, 3, 4, 4))]
    mask = np.zeros((2, 1, 8, 8))
    mask[0, 0, 2:6, 0:4] = 1.0  # nearest to 4 x 4: rows 1-2, columns 0-1 of image 0
    fa = [torch.tensor(item, requires_grad=True) for item in apprentice]
    loss = cdo_loss([torch.tensor(item) for item in expert], fa, torch.tensor(mask), gamma=2.0, oom=True)
    loss.backward()
    loss = loss.detach()
    small = mask[:, :, ::2, ::2]
    value, grads = reference_loss(expert, apprentice, small, 2.0)
    assert float(loss) == pytest.approx(value, rel=1e-5)  # float32 inside
    for tensor, grad in zip(fa, grads, strict=True):
        np.testing.assert_allclose(tensor.grad.numpy(), grad, rtol=1e-4, atol=1e-6)
    # without OOM and without anomalies: B x mean distance per level
    plain = cdo_loss([torch.tensor(item) for item in expert], [torch.tensor(item) for item in apprentice], torch.zeros(2, 1, 8, 8), oom=False)
    distances = [reference_loss([e], [a], np.zeros((2, 1, 4, 4)), 0.0)[0] for e, a in zip(expert, apprentice, strict=True)]
    assert float(plain) == pytest.approx(sum(distances), rel=1e-5)


def test_levels_are_resized_to_the_first_grid_before_the_distance() -> None:
    torch.manual_seed(0)
    expert = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    apprentice = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    up = [F.interpolate(item, size=(8, 8), mode="bilinear", align_corners=True) for item in (expert[1], apprentice[1])]
    alone = cdo_loss([expert[0], up[0]], [apprentice[0], up[1]], torch.zeros(1, 1, 8, 8))
    torch.testing.assert_close(cdo_loss(expert, apprentice, torch.zeros(1, 1, 8, 8)), alone)


def test_official_and_m2ad_maps_and_scores() -> None:
    model = random_model()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        output = model(images)
    expected = 0
    for fe, fa in zip(output.expert, output.apprentice, strict=True):
        fe = F.interpolate(fe, size=(16, 16), mode="bilinear", align_corners=True).numpy()
        fa = F.interpolate(fa, size=(16, 16), mode="bilinear", align_corners=True).numpy()
        unit = [item / np.maximum(np.linalg.norm(item, axis=1, keepdims=True), 1e-12) for item in (fe, fa)]  # F.normalize: 0 stays 0
        d = ((unit[0] - unit[1]) ** 2).sum(1)
        expected = expected + F.interpolate(torch.from_numpy(d)[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(official_map(output.expert, output.apprentice, (64, 64))[:, 0].numpy(), expected, rtol=1e-5, atol=1e-6)
    smoothed = np.stack([ndimage.gaussian_filter(item.astype(np.float32), sigma=4) for item in expected])
    scores, maps = model.predict(images, scoring="official")
    np.testing.assert_allclose(maps.numpy(), smoothed, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), smoothed.reshape(2, -1).max(1), rtol=1e-5)

    normalized = random_model(normalize=True)
    with torch.no_grad():
        output = normalized(images)
    total = 0
    for fe, fa in zip(output.expert, output.apprentice, strict=True):
        cosine = (fe * fa).sum(1) / (fe.norm(dim=1).clamp_min(1e-8) * fa.norm(dim=1).clamp_min(1e-8))
        total = total + F.interpolate((1 - cosine)[:, None], size=(64, 64), mode="bilinear", align_corners=True)[:, 0].double().numpy()
    reference = np.stack([ndimage.gaussian_filter(item, sigma=4) for item in total / 9])  # N^2 with N = 3
    scores, maps = normalized.predict(images, scoring="m2ad")
    np.testing.assert_allclose(maps.numpy(), reference, rtol=1e-6, atol=1e-8)
    top = np.sort(reference.reshape(2, -1), axis=1)[:, ::-1][:, : int(64 * 64 * 0.01)].mean(1)
    np.testing.assert_allclose(scores.numpy(), top, rtol=1e-6)
    assert all(((item.norm(dim=1) - 1).abs() < 1e-5).float().mean() > 0.5 for item in output.expert)  # unit (or zero) vectors


def test_white_noise_patches_follow_the_official_draws() -> None:
    image = np.full((80, 80, 3), 100, np.uint8)
    counts = set()
    for seed in range(40):
        augmented, mask = white_noise(image, np.random.RandomState(seed))
        assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
        assert np.array_equal(augmented[mask == 0], image[mask == 0])
        rows = np.flatnonzero(mask.any(1))
        counts.add(int(mask.any()))
        if rows.size:  # every rectangle is at most 2 x (80 // 10 - 1) = 14 high; union of at most 4
            assert rows.size <= 4 * 14
        again = white_noise(image, np.random.RandomState(seed))
        assert np.array_equal(again[0], augmented) and np.array_equal(again[1], mask)
    assert counts == {0, 1}  # some images get no patch (patch_number 0)
    # the official order of draws: noise first, then the patch count
    state = np.random.RandomState(3)
    state.randint(0, 255, size=image.shape)
    expected_patches = state.randint(0, 5)
    _, mask = white_noise(image, np.random.RandomState(3))
    assert (ndimage.label(mask)[1] >= 1) == (expected_patches >= 1)
    # background: a bright frame everywhere but a dark centre keeps every patch centre in the centre
    framed = np.full((80, 80, 3), 250, np.uint8)
    framed[20:60, 20:60] = 90
    background = cdo.estimate_background(framed)
    assert background[0, 0] and not background[40, 40]
    for seed in range(10):
        _, mask = white_noise(framed, np.random.RandomState(seed), skip_background=True)
        labels, count = ndimage.label(mask)
        for index in range(1, count + 1):
            ys, xs = np.nonzero(labels == index)
            assert not background[(ys.min() + ys.max() + 1) // 2, (xs.min() + xs.max() + 1) // 2]


def test_m2ad_anomalies_are_drawn_at_the_work_size_with_soft_masks() -> None:
    images = torch.full((6, 3, 64, 64), 100, dtype=torch.uint8)
    hard_images, hard = synthesize(images, np.random.RandomState(0), 64, 64, False)
    soft_images, soft = synthesize(images, np.random.RandomState(0), 64, 256, False)
    assert hard.shape == soft.shape == (6, 1, 64, 64) and hard_images.dtype == soft_images.dtype == torch.uint8
    assert set(torch.unique(hard).tolist()) <= {0.0, 1.0}
    fractional = soft[(soft > 0) & (soft < 1)]
    assert fractional.numel() > 0  # bilinear edges, which count as anomalous in the loss
    noisy = soft_images.float()[(soft == 1).expand_as(soft_images)]
    assert noisy.std() < hard_images.float()[(hard == 1).expand_as(hard_images)].std()  # 4x-averaged noise is smoother


def test_presets_recipes_and_cli() -> None:
    official, paper = CDOConfig(), CDOConfig(preset="m2ad-paper")
    assert (official.backbone, official.optimizer, official.lr, official.weight_decay, official.epochs, official.batch_size) == ("hrnet32", "adamw", 4e-4, 1e-4, 50, 16)
    assert (paper.optimizer, paper.lr, paper.betas, paper.epochs, paper.batch_size, paper.grad_clip, paper.scoring) == ("adam", 3.75e-4, (0.5, 0.999), 100, 12, 5.0, "m2ad")
    recipe = CDO(official).recipe()
    assert [recipe.lr_at(0, epoch, 100) for epoch in (0, 1, 10)] == pytest.approx([4e-4, 3.8e-4, 4e-4 * 0.95**10])
    assert recipe.grad_clip is None and not recipe.drop_last
    m2ad = CDO(paper).recipe()
    assert (m2ad.schedule, m2ad.step_epoch, m2ad.grad_clip, m2ad.lr_at(0, 80, 100)) == ("step", 80, 5.0, pytest.approx(3.75e-5))
    config = baselines.config_class("cdo")(**baselines.parse_method_args("cdo", ["preset=m2ad-paper", "epochs=3", "backbone=wide_resnet50_2"]))
    assert (config.epochs, config.backbone, config.work_size) == (3, "wide_resnet50_2", 1024)
    assert cdo.LAYERS[config.backbone] == ("layer1", "layer2", "layer3")
    method = CDO(official)  # the official SKIP_BACKGROUND table, per fit
    assert method.skips_background({"screw"}) and method.skips_background({"bottle", "zipper"})
    assert not method.skips_background({"carpet"}) and not method.skips_background({"screw", "carpet"}) and not method.skips_background({"Cube"})
    assert not CDO(paper).skips_background({"screw"}) and CDO(CDOConfig(skip_background="always")).skips_background({"Cube"})


@pytest.mark.parametrize(("bad", "message"), [
    ({"preset": "x"}, "unknown preset 'x'"), ({"backbone": "resnet18"}, "unknown backbone 'resnet18'"),
    ({"scoring": "mean"}, "scoring must be"), ({"optimizer": "sgd"}, "optimizer must be"), ({"schedule": "cosine"}, "schedule must be"),
    ({"input_size": 16}, "input_size must be"), ({"work_size": 100}, "work_size must be"), ({"gamma": -1.0}, "gamma and grad_clip"),
    ({"device": "tpu"}, "device must be"), ({"skip_background": "yes"}, "skip_background must be one of"),
])  # fmt: skip
def test_bad_configs_fail_with_one_line(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        CDOConfig(**bad)
    assert "\n" not in str(error.value)


def test_fit_is_deterministic_and_presets_differ() -> None:
    train, _ = textures(8, 0, size=56, square=14)
    states, losses = [], []
    for preset in ("official", "official", "m2ad-paper"):
        method = baselines.create("cdo", preset=preset, epochs=2, work_size=0 if preset == "official" else 112, **SMALL)
        torch.manual_seed(0)
        model = method.new_model()
        images = torch.cat([method_batch(train).images])
        losses.append(method.train_model(model, images))
        method.model = model.eval()
        states.append(method.state_dict())
    assert losses[0] == losses[1] and len(losses[0]) == 4  # 8 images, batch 4, 2 epochs
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert states[0].keys() == states[2].keys() and losses[0] != losses[2]
    assert not torch.equal(states[0]["apprentice.conv1.weight"], states[2]["apprentice.conv1.weight"])
    assert all(torch.equal(states[0][key], states[2][key]) for key in states[0] if key.startswith("expert."))  # the expert is frozen


def test_state_round_trip_and_official_and_m2ad_apprentice_files(tmp_path) -> None:
    train, _ = textures(4, 0, size=56, square=14)
    test, _ = textures(3, 1, defect=True, size=56, square=14)
    torch.manual_seed(0)
    expert = registry.load_backbone("hrnet_tiny", "random")
    torch.save(expert.state_dict(), tmp_path / "expert.pth")
    method = baselines.create("cdo", epochs=1, **{**SMALL, "expert_weights": str(tmp_path / "expert.pth")})
    method.fit([method_batch(train)])
    scores, maps = method.predict(method_batch(test))
    assert scores.shape == (3,) and maps.shape == (3, 56, 56) and maps.dtype == np.float32
    apprentice = {key[len("apprentice."):]: value for key, value in method.state_dict().items() if key.startswith("apprentice.")}
    official = {f"model.{key}": value for key, value in apprentice.items()} | {"model.last_layer.3.bias": torch.zeros(19)}
    torch.save(official, tmp_path / "Cube.pt")  # what the official train.py writes: MA.state_dict() of HRNet_
    for state in (method.state_dict(), {f"net_s.{key}": value for key, value in official.items()}):  # ours, M2AD's
        restored = baselines.create("cdo", **{**SMALL, "expert_weights": str(tmp_path / "expert.pth")})
        restored.load_state_dict(state)
        again_scores, again_maps = restored.predict(method_batch(test))
        np.testing.assert_array_equal(again_scores, scores)
        np.testing.assert_array_equal(again_maps, maps)
    model = load_official(tmp_path / "Cube.pt", "hrnet_tiny", str(tmp_path / "expert.pth"))
    assert not model.training and not any(p.requires_grad for p in model.expert.parameters())
    official.pop("model.conv1.weight")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_official(official, "hrnet_tiny", "random")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_official(tmp_path / "absent.pt", "hrnet_tiny", "random")
    with pytest.raises(RuntimeError, match="before fit"):
        baselines.create("cdo", **SMALL).predict(method_batch(test))
    with pytest.raises(ValueError, match="hrnet32 has no registered weights; pass its ImageNet checkpoint as expert_weights=PATH") as error:
        baselines.create("cdo").fit([method_batch(train)])  # the presets' HRNet-W32 without a file
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("preset", ["official", "m2ad-paper"])
def test_overfit_detects_obvious_defects(preset: str) -> None:
    torch.manual_seed(0)
    train, _ = textures(16, 0, size=64, square=14)
    good, _ = textures(6, 1, size=64, square=14)
    bad, masks = textures(6, 2, defect=True, size=64, square=14)
    extra = {"epochs": 12, "lr": 3e-3} | ({"work_size": 128, "lr_step_epoch": 10} if preset == "m2ad-paper" else {})
    small = {**SMALL, "backbone": "efficientnet_lite0", "expert_weights": "auto", "input_size": 64, "batch_size": 8}  # ImageNet expert, offline
    method = baselines.create("cdo", preset=preset, **small, **extra)
    method.fit([method_batch(train[:8]), method_batch(train[8:])])
    good_scores, good_maps = method.predict(method_batch(good))
    bad_scores, bad_maps = method.predict(method_batch(bad))
    assert good_maps.shape == (6, 64, 64)
    assert roc_auc_score([0] * 6 + [1] * 6, np.r_[good_scores, bad_scores]) == 1.0
    assert roc_auc_score(masks.ravel(), bad_maps.ravel()) > 0.95
