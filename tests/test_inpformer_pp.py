"""INP-Former++: the soft coherence loss and the residual against brute-force references, the
anomaly synthesis (Perlin masks, real-anomaly pasting), determinism, what each added component
changes, the semi-supervised fit and a state round trip, on a tiny random-weight encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import baselines
from baselines.inpformer_pp import INPFormerPP, INPFormerPPConfig, perlin_mask, residual_features, soft_coherence, synthesize
from textures import method_batch, textures

TINY = {"encoder": "tiny", "encoder_weights": "random", "input_size": 28, "crop_size": 28, "epochs": 1, "batch_size": 4,
        "warmup_iters": 0, "map_size": 28, "device": "cpu", "seed": 3, "seg_channels": (8, 4)}


def test_soft_coherence_matches_a_loop_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens, prototypes = torch.randn(2, 5, 6, generator=generator), torch.randn(2, 3, 6, generator=generator)
    total = 0.0
    for b in range(2):
        for n in range(5):
            token = tokens[b, n].double().numpy()
            cos = np.array([token @ p / np.linalg.norm(token) / np.linalg.norm(p) for p in prototypes[b].double().numpy()])
            weights = np.exp(cos / 0.5) / np.exp(cos / 0.5).sum()
            rebuilt = weights @ prototypes[b].double().numpy()
            total += 1 - token @ rebuilt / np.linalg.norm(token) / np.linalg.norm(rebuilt)
    assert soft_coherence(tokens, prototypes, 0.5).item() == pytest.approx(total / 10, rel=1e-5)
    assert soft_coherence(prototypes, prototypes, 1e-4).item() == pytest.approx(0.0, abs=1e-5)  # an INP rebuilds itself


def test_residual_is_cosine_distance_times_absolute_difference_averaged_over_groups() -> None:
    generator = torch.Generator().manual_seed(1)
    encoder = [torch.randn(1, 4, 2, 2, generator=generator) for _ in range(2)]
    decoder = [torch.randn(1, 4, 2, 2, generator=generator) for _ in range(2)]
    expected = np.zeros((4, 2, 2))
    for e, d in zip(encoder, decoder, strict=True):
        e, d = e[0].numpy(), d[0].numpy()
        for y in range(2):
            for x in range(2):
                cos = e[:, y, x] @ d[:, y, x] / np.linalg.norm(e[:, y, x]) / np.linalg.norm(d[:, y, x])
                expected[:, y, x] += (1 - cos) * np.abs(e[:, y, x] - d[:, y, x]) / 2
    np.testing.assert_allclose(residual_features(encoder, decoder)[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_perlin_masks_and_synthesis() -> None:
    masks = [perlin_mask(32, 40, torch.Generator().manual_seed(seed)) for seed in range(6)]
    assert all(mask.shape == (32, 40) and mask.sum() > 0 and set(mask.unique().tolist()) <= {0.0, 1.0} for mask in masks)
    torch.testing.assert_close(perlin_mask(32, 40, torch.Generator().manual_seed(2)), masks[2])
    images = torch.randn(3, 3, 32, 32)
    unchanged, empty = synthesize(images, torch.Generator().manual_seed(0), probability=0.0)
    torch.testing.assert_close(unchanged, images)
    assert empty.sum() == 0
    out, marks = synthesize(images, torch.Generator().manual_seed(0), probability=1.0)
    assert (marks.sum(dim=(1, 2, 3)) > 0).all()
    outside = marks.expand(-1, 3, -1, -1) == 0
    torch.testing.assert_close(out[outside], images[outside])  # only the masked pixels change
    real_images, real_masks = torch.full((1, 3, 32, 32), 7.0), torch.zeros(1, 1, 32, 32)
    real_masks[..., :8, :8] = 1.0  # a corner: the random turn and flip move it, the pasted region follows
    pasted, pasted_masks = synthesize(images, torch.Generator().manual_seed(0), 1.0, (real_images, real_masks), real_probability=1.0)
    assert torch.equal(pasted_masks.sum(dim=(1, 2, 3)), torch.full((3,), 64.0))
    assert torch.equal(pasted[pasted_masks.expand(-1, 3, -1, -1) == 1], torch.full((3 * 3 * 64,), 7.0))


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    train, _ = textures(8, 0, size=28, square=8)
    test, _ = textures(2, 1, defect=True, size=28, square=8)
    return train, test


def _fit(train: torch.Tensor, **changes: object) -> INPFormerPP:
    method = baselines.create("inpformer-pp", **{**TINY, **changes})
    method.fit([method_batch(train)])
    return method


@pytest.fixture(scope="module")
def fits(images: tuple[torch.Tensor, torch.Tensor]) -> dict[str, INPFormerPP]:
    """INP-Former++ and the same fit without one of its components, each once."""
    train, _ = images
    return {"full": _fit(train), "again": _fit(train), "hard": _fit(train, coherence="hard"), "no_head": _fit(train, residual_head=False)}


def test_shapes_determinism_and_state_round_trip(images: tuple[torch.Tensor, torch.Tensor], fits: dict[str, INPFormerPP]) -> None:
    _, test = images
    scores, maps = fits["full"].predict(method_batch(test))
    assert scores.shape == (2,) and maps.shape == (2, 28, 28) and np.isfinite(maps).all()
    np.testing.assert_array_equal(fits["again"].predict(method_batch(test))[1], maps)
    state = fits["full"].state_dict()
    assert any(key.startswith("seg_head.") for key in state) and "prototype_token" in state
    restored = INPFormerPP(INPFormerPPConfig(**TINY))
    restored.load_state_dict(state)
    np.testing.assert_allclose(restored.predict(method_batch(test))[1], maps, rtol=1e-5, atol=1e-6)
    assert INPFormerPP.card.reimplemented_from and INPFormerPP.card.settings == baselines.method_class("inpformer").card.settings


def test_each_added_component_changes_the_output(images: tuple[torch.Tensor, torch.Tensor], fits: dict[str, INPFormerPP]) -> None:
    _, test = images
    full_state, hard_state = fits["full"].state_dict(), fits["hard"].state_dict()
    assert not torch.equal(full_state["prototype_token"], hard_state["prototype_token"])  # the soft loss trains the INPs otherwise
    assert "seg_head.out.weight" in full_state and not torch.equal(full_state["seg_head.out.weight"], fits["no_head"].state_dict()["seg_head.out.weight"])
    _, full = fits["full"].predict(method_batch(test))
    _, no_head = fits["no_head"].predict(method_batch(test))
    assert np.abs(full - no_head).max() > 1e-3 * np.abs(full).max()
    fits["full"].config.map_fusion = "reconstruction"  # the same fit, without the head's probability in the map
    try:
        _, reconstruction_only = fits["full"].predict(method_batch(test))
    finally:
        fits["full"].config.map_fusion = "mean"
    assert np.abs(full - reconstruction_only).max() > 1e-3 * np.abs(full).max()


def test_the_semi_supervised_fit_pastes_real_anomalies(images: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = images
    _, masks = textures(2, 1, defect=True, size=28, square=8)
    seen: list[bool] = []
    import baselines.inpformer_pp as module

    original = module.synthesize
    monkeypatch.setattr(module, "synthesize", lambda *args, **kwargs: seen.append(args[3] is not None) or original(*args, **kwargs))
    method = baselines.create("inpformer-pp", **TINY)
    method.fit([method_batch(train)], anomalies=(test, torch.from_numpy(masks)))
    assert seen and all(seen)
    assert method._real is not None and method._real[1].sum() == masks.sum()
    with pytest.raises(ValueError, match="anomalies must be"):
        method.fit([method_batch(train)], anomalies=(test, torch.from_numpy(masks[:1])))


def test_bad_options_are_refused() -> None:
    for kwargs, message in (({"coherence": "x"}, "coherence"), ({"map_fusion": "max"}, "map_fusion"), ({"seg_channels": (4,)}, "seg_channels"),
                            ({"anomaly_probability": 2.0}, "anomaly_probability")):
        with pytest.raises(ValueError, match=message):
            INPFormerPPConfig(**kwargs)
