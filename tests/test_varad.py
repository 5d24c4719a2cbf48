"""VarAD: the pure selective scan against a per-step recurrence written here, the choice between it
and mamba_ssm's kernel (without the package), causality, the scan orders, shapes, determinism, a
state round trip, what each added component changes, the one-line config errors, and that a
tiny fit finds a defect, on a tiny random-weight encoder."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import baselines
import baselines.selective_scan as scan_module
from baselines.backbones import registry
from baselines.selective_scan import MambaBlock, scan_function, selective_scan
from baselines.varad import VarAD, VarADConfig, VarADModel, default_layers, discrepancy, scan_order
from leaderboard.submit import _with_reimplementation
from textures import method_batch, textures

TINY = {"encoder": "tiny", "encoder_weights": "random", "input_size": 56, "epochs": 3, "batch_size": 4, "warmup_iters": 0,
        "depth": 1, "d_state": 4, "device": "cpu", "seed": 5}


def per_step_scan(u, delta, A, B, C, D, z, delta_bias, initial=None):
    """The recurrence one (batch, channel, state, step) at a time, in float64 NumPy."""
    u, delta, A, B, C, D, z, delta_bias = (t.detach().double().numpy() for t in (u, delta, A, B, C, D, z, delta_bias))
    batch, dim, length = u.shape
    y = np.zeros((batch, dim, length))
    state = np.zeros((batch, dim, A.shape[1])) if initial is None else initial.double().numpy().copy()
    for b in range(batch):
        for d in range(dim):
            for t in range(length):
                step = np.log1p(np.exp(delta[b, d, t] + delta_bias[d]))  # softplus
                for n in range(A.shape[1]):
                    state[b, d, n] = np.exp(step * A[d, n]) * state[b, d, n] + step * B[b, n, t] * u[b, d, t]
                    y[b, d, t] += C[b, n, t] * state[b, d, n]
                silu = z[b, d, t] / (1 + np.exp(-z[b, d, t]))
                y[b, d, t] = (y[b, d, t] + D[d] * u[b, d, t]) * silu
    return y, state


def scan_inputs(seed: int, batch: int = 2, dim: int = 3, state: int = 4, length: int = 37, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=generator, dtype=torch.float64)
    delta = torch.randn(batch, dim, length, generator=generator, dtype=torch.float64) * scale
    A = -torch.rand(dim, state, generator=generator, dtype=torch.float64) * 4 - 0.1
    B, C = (torch.randn(batch, state, length, generator=generator, dtype=torch.float64) for _ in range(2))
    D, bias = torch.randn(dim, generator=generator, dtype=torch.float64), torch.randn(dim, generator=generator, dtype=torch.float64)
    z = torch.randn(batch, dim, length, generator=generator, dtype=torch.float64)
    return u, delta, A, B, C, D, z, bias


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_selective_scan_matches_the_per_step_recurrence(chunk_size: int) -> None:
    u, delta, A, B, C, D, z, bias = scan_inputs(0)
    expected, last = per_step_scan(u, delta, A, B, C, D, z, bias)
    y, state = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, return_last_state=True, chunk_size=chunk_size)
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(state.numpy(), last, rtol=0, atol=1e-6)
    # float32 in, float32 out, still close to the float64 recurrence
    y32 = selective_scan(*(t.float() for t in (u, delta, A, B, C, D)), z=z.float(), delta_bias=bias.float(), delta_softplus=True, chunk_size=chunk_size)
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.double().numpy(), expected, rtol=0, atol=1e-4)


def test_the_scan_carries_its_state_and_survives_strong_decay() -> None:
    u, delta, A, B, C, D, z, bias = scan_inputs(1, scale=30.0)  # steps up to ~100: exp(delta A) underflows, exp(-delta A) would overflow
    expected, _ = per_step_scan(u, delta, A, B, C, D, z, bias)
    whole = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, chunk_size=8)
    assert torch.isfinite(whole).all()
    np.testing.assert_allclose(whole.numpy(), expected, rtol=0, atol=1e-6)
    u, delta, A, B, C, D, z, bias = scan_inputs(2)
    first, state = selective_scan(u[..., :20], delta[..., :20], A, B[..., :20], C[..., :20], D, z=z[..., :20], delta_bias=bias,
                                  delta_softplus=True, return_last_state=True)
    second = selective_scan(u[..., 20:], delta[..., 20:], A, B[..., 20:], C[..., 20:], D, z=z[..., 20:], delta_bias=bias,
                            delta_softplus=True, initial_state=state)
    expected, _ = per_step_scan(u, delta, A, B, C, D, z, bias)
    np.testing.assert_allclose(torch.cat([first, second], dim=-1).numpy(), expected, rtol=0, atol=1e-6)


def test_chunked_gradients_equal_the_per_step_gradients() -> None:
    grads = []
    for chunk_size in (1, 7):
        inputs = [t.clone().requires_grad_(True) for t in scan_inputs(3, length=15)]
        u, delta, A, B, C, D, z, bias = inputs
        selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, chunk_size=chunk_size).square().sum().backward()
        grads.append([t.grad for t in inputs])
    for one, chunked in zip(*grads, strict=True):
        torch.testing.assert_close(chunked, one, rtol=1e-9, atol=1e-9)


def test_the_kernel_is_chosen_only_with_the_package_and_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("mamba_ssm") is None:
        assert scan_module.load_kernel() is None
    # a package that imports without its compiled extension offers no kernel; one with it does
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn, interface.selective_scan_cuda = selective_scan, None
    monkeypatch.setitem(sys.modules, interface.__name__, interface)
    assert scan_module.load_kernel() is None
    interface.selective_scan_cuda = object()
    assert scan_module.load_kernel() is selective_scan
    monkeypatch.setattr(scan_module, "load_kernel", lambda: None)
    assert scan_function("auto", torch.device("cpu"))[1] == "pure"
    assert scan_function("auto", torch.device("cuda"))[1] == "pure"  # no package: the pure scan, on any device
    with pytest.raises(ValueError, match=r"^scan=kernel needs mamba_ssm's CUDA kernel, but the mamba_ssm package does not import"):
        scan_function("kernel", torch.device("cuda"))
    with pytest.raises(ValueError, match="not on a CUDA device"):
        scan_function("kernel", torch.device("cpu"))
    with pytest.raises(ValueError, match="scan must be one of"):
        scan_function("fast", torch.device("cpu"))
    calls: list[dict] = []

    def fake_kernel(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls.append(kwargs)
        return selective_scan(*args, **kwargs)

    monkeypatch.setattr(scan_module, "load_kernel", lambda: fake_kernel)
    assert scan_function("auto", torch.device("cuda")) == (fake_kernel, "kernel")
    assert scan_function("auto", torch.device("cpu"))[1] == "pure"
    assert scan_function("pure", torch.device("cuda"))[1] == "pure"
    # the block calls a kernel with mamba_ssm's arguments (no chunk_size) and gets the pure scan's result
    torch.manual_seed(0)
    block, hidden = MambaBlock(8, d_state=4), torch.randn(2, 11, 8)
    pure = block(hidden)
    assert block.last_scan == "pure"
    monkeypatch.setattr(scan_module, "scan_function", lambda mode, device: (fake_kernel, "kernel"))
    torch.testing.assert_close(block(hidden), pure)
    assert calls and set(calls[-1]) == {"z", "delta_bias", "delta_softplus"}


def test_the_mamba_block_and_the_token_predictions_are_causal(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    block, hidden = MambaBlock(6, d_state=4, d_conv=3), torch.randn(2, 20, 6)
    changed = hidden.clone()
    changed[:, 12:] += torch.randn(2, 8, 6)
    before, after = block(hidden), block(changed)
    torch.testing.assert_close(after[:, :12], before[:, :12], rtol=0, atol=0)
    assert (after[:, 12:] - before[:, 12:]).abs().max() > 1e-3
    # the model: a token changes no prediction of the tokens before it in a direction's order
    torch.manual_seed(2)
    config = VarADConfig(**{**TINY, "directions": ("row", "column-reverse")})
    model = VarADModel(registry.load_backbone("dinov2_tiny", "random"), config)
    tokens = [torch.randn(1, 12, 40) for _ in config.layers]
    monkeypatch.setattr(model, "tokens", lambda images: ([t.clone() for t in tokens], (3, 4)))
    base = model(torch.zeros(1, 3, 42, 56))
    position = 6  # row 1, column 2
    tokens[0][0, position] += 3 * torch.randn(40)  # not a constant shift, which the layer norms would remove
    moved = model(torch.zeros(1, 3, 42, 56))
    for slot, direction in enumerate(config.directions):
        order = scan_order(direction, 3, 4)
        rank = int((order == position).nonzero())
        earlier, later = order[:rank], order[rank + 1 :]
        torch.testing.assert_close(moved[0, 0, slot].flatten()[earlier], base[0, 0, slot].flatten()[earlier], rtol=0, atol=0)
        assert (moved[0, 0, slot].flatten()[later] - base[0, 0, slot].flatten()[later]).abs().max() > 1e-3
    torch.testing.assert_close(moved[0, 1:], base[0, 1:], rtol=0, atol=0)  # other hierarchies untouched


def test_scan_orders() -> None:
    assert scan_order("row", 2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert scan_order("row-reverse", 2, 3).tolist() == [5, 4, 3, 2, 1, 0]
    assert scan_order("column", 2, 3).tolist() == [0, 3, 1, 4, 2, 5]
    assert scan_order("column-reverse", 2, 3).tolist() == [5, 2, 4, 1, 3, 0]
    with pytest.raises(ValueError, match="unknown direction 'diagonal'"):
        scan_order("diagonal", 2, 3)


def test_discrepancies_layers_and_the_other_options(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(3)
    predicted, target = torch.randn(2, 5, 7, generator=generator), torch.randn(2, 5, 7, generator=generator)
    p, t = predicted.double().numpy(), target.double().numpy()
    cosine = 1 - (p * t).sum(-1) / np.linalg.norm(p, axis=-1) / np.linalg.norm(t, axis=-1)
    np.testing.assert_allclose(discrepancy(predicted, target, "cosine").numpy(), cosine, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(discrepancy(predicted, target, "l2").numpy(), ((p - t) ** 2).mean(-1), rtol=1e-5)
    assert default_layers(12) == (3, 7, 11) and default_layers(24) == (7, 15, 23) and default_layers(4) == (0, 1, 3)
    assert VarADConfig(encoder="vits14", encoder_weights="random").layers == (3, 7, 11)
    tokens = [torch.randn(2, 12, 40, generator=generator) for _ in range(3)]
    outputs = {}
    for name, overrides in (("default", {}), ("separate", {"share_directions": False}), ("adapted", {"target": "adapted"}), ("l2", {"loss": "l2"})):
        torch.manual_seed(4)
        model = VarADModel(registry.load_backbone("dinov2_tiny", "random"), VarADConfig(**{**TINY, **overrides}))
        monkeypatch.setattr(model, "tokens", lambda images: ([t.clone() for t in tokens], (3, 4)))
        outputs[name] = model(torch.zeros(2, 3, 42, 56))
        assert outputs[name].shape == (2, 3, 4, 3, 4) and torch.isfinite(outputs[name]).all()
        assert len(model.predictors[0]) == (4 if name == "separate" else 1)
    for name in ("separate", "l2"):
        assert (outputs[name] - outputs["default"]).abs().max() > 1e-4, name
    # at initialisation the adapter is the identity, so adapted and frozen targets agree
    torch.testing.assert_close(outputs["adapted"], outputs["default"])


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    train, _ = textures(8, 0, size=56, square=14)
    test, masks = textures(4, 1, defect=True, size=56, square=14)
    return train, test, masks


def _fit(train: torch.Tensor, **overrides: object) -> VarAD:
    method = baselines.create("varad", **{**TINY, **overrides})
    method.fit([method_batch(train[:4]), method_batch(train[4:])])
    return method


@pytest.fixture(scope="module")
def fits(images: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> dict[str, VarAD]:
    train = images[0]
    return {"full": _fit(train), "again": _fit(train), "one_direction": _fit(train, directions=("row",)), "no_adapter": _fit(train, adapter=False)}


def test_shapes_determinism_and_state_round_trip(images: tuple[torch.Tensor, torch.Tensor, np.ndarray], fits: dict[str, VarAD]) -> None:
    _, test, _ = images
    scores, maps = fits["full"].predict(method_batch(test))
    assert scores.shape == (4,) and scores.dtype == np.float32 and maps.shape == (4, 56, 56) and np.isfinite(maps).all()
    assert fits["full"].losses == fits["again"].losses and len(fits["full"].losses) == 6  # 3 epochs x 2 batches of 4
    np.testing.assert_array_equal(fits["again"].predict(method_batch(test))[1], maps)
    np.testing.assert_allclose(fits["full"].predict(method_batch(test[:2]))[1], maps[:2], rtol=1e-5, atol=1e-6)  # batch-independent
    small, _ = fits["full"].predict(method_batch(F.interpolate(test.float(), size=(40, 48)).round().to(torch.uint8)))
    assert small.shape == (4,)
    state = fits["full"].state_dict()
    assert any(key.startswith("encoder.") for key in state) and "start" in state
    torch.manual_seed(999)
    restored = VarAD(VarADConfig(**TINY))
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.predict(method_batch(test))[1], maps)
    with pytest.raises(ValueError, match=r"^varad: the saved state does not fit this config \(.*\); use the config"):
        VarAD(VarADConfig(**{**TINY, "depth": 2})).load_state_dict(state)
    assert "zero-shot" not in VarAD.card.settings
    assert _with_reimplementation(None, VarAD.card.reimplemented_from).startswith("re-implementation from arXiv 2412.17263 (VarAD)")


def test_each_added_component_changes_the_output(images: tuple[torch.Tensor, torch.Tensor, np.ndarray], fits: dict[str, VarAD],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, test, _ = images
    full = fits["full"]
    _, maps = full.predict(method_batch(test))
    for other in ("one_direction", "no_adapter"):
        assert np.abs(fits[other].predict(method_batch(test))[1] - maps).max() > 1e-3 * np.abs(maps).max(), other
    # the combined map is the mean of the per-direction maps, and the directions disagree
    raw = full.model(full._prepare(full._resize(test)))
    torch.testing.assert_close(full.anomaly_maps(test), raw.flatten(1, 2).mean(dim=1))
    full.config.aggregation = "max"
    try:
        torch.testing.assert_close(full.anomaly_maps(test), raw.flatten(1, 2).amax(dim=1))
    finally:
        full.config.aggregation = "mean"
    assert (raw[:, :, 0] - raw[:, :, 1]).abs().max() > 1e-4
    # the selective scan against an identity in its place (y = (u + D u) * silu(z): no context from earlier tokens)
    monkeypatch.setattr(scan_module, "scan_function", lambda mode, device: (lambda u, delta, A, B, C, D, z, **_: (u + D[:, None] * u) * F.silu(z), "pure"))
    _, identity = full.predict(method_batch(test))
    assert np.abs(identity - maps).max() > 1e-3 * np.abs(maps).max()


def test_a_tiny_fit_learns_and_finds_the_defects(images: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> None:
    train, test, masks = images
    good, _ = textures(4, 2, size=56, square=14)
    method = _fit(train, epochs=40, batch_size=8, lr=5e-3)
    assert method.losses[-1] < 0.5 * method.losses[0]
    defect_scores, maps = method.predict(method_batch(test))
    good_scores, _ = method.predict(method_batch(good))
    assert roc_auc_score(masks.ravel(), maps.ravel()) > 0.8
    assert defect_scores.mean() > good_scores.mean()  # image level is noisier on a 4 x 4 token grid


def test_bad_options_are_refused_in_one_line() -> None:
    for kwargs, message in (({"directions": ("row", "diagonal")}, "directions must be distinct names"), ({"directions": ()}, "directions"),
                            ({"input_size": 50}, "multiple of the patch size 14"), ({"layers": (0, 9)}, r"layers must be distinct blocks in 0\.\.3"),
                            ({"loss": "l1"}, "loss must be one of cosine, l2"), ({"scan": "cuda"}, "scan must be one of"),
                            ({"target": "adapted", "adapter": False}, "target=adapted needs adapter=true"), ({"d_state": 0}, "must be positive"),
                            ({"encoder": "vit"}, "unknown encoder"), ({"top_fraction": 2.0}, "top_fraction"), ({"aggregation": "sum"}, "aggregation")):
        with pytest.raises(ValueError, match=message) as error:
            baselines.create("varad", **{**TINY, **kwargs})
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="varad: no training images"):
        baselines.create("varad", **TINY).fit([])
    with pytest.raises(RuntimeError, match="predict called before fit"):
        baselines.create("varad", **TINY).predict(method_batch(textures(1, 0, size=56)[0]))
