"""PNPT: shapes, determinism, a state round trip, what the prompt pool and the second decoding
stream change, label-free prompt selection on separable classes, the loss and maps against
loop references, and one-line refusals of bad options, on a tiny random-weight encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

import baselines
from baselines.backbones import registry
from baselines.pnpt import PNPT, PNPTConfig, reconstruction_loss, select_by_query, stream_maps, vit_layers
from m2ad import predictions
from m2ad.run import RunConfig, run
from m2ad.shard import shard_tree
from m2ad.synth import generate
from textures import method_batch, textures

TINY = {"backbone": "dinov2_tiny", "backbone_weights": "random", "image_size": 56, "dim": 16, "heads": 2, "encoder_depth": 1,
        "decoder_depth": 1, "prompts_per_class": 3, "epochs": 12, "batch_size": 4, "lr": 3e-3, "device": "cpu", "seed": 5,
        "smoothing_sigma": 1.0}


def _coloured(count: int, seed: int, channel: int) -> torch.Tensor:
    """Texture images with one colour channel raised: a category that a query tells apart."""
    images, _ = textures(count, seed, size=56, square=8)
    images = images.clone()
    images[:, channel] = images[:, channel].to(torch.int16).add(90).clamp(0, 255).to(torch.uint8)
    return images


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return {"red": _coloured(6, 0, 0), "blue": _coloured(6, 1, 2), "test_red": _coloured(3, 2, 0), "test_blue": _coloured(3, 3, 2)}


def _multi_class_batch(data: dict[str, torch.Tensor], names: tuple[str, str] = ("red", "blue")) -> list:
    return [method_batch(data[name], [name.removeprefix("test_")] * len(data[name]), prefix=name) for name in names]


def _fit(data: dict[str, torch.Tensor], **changes: object) -> PNPT:
    method = baselines.create("pnpt", **{**TINY, **changes})
    method.fit(_multi_class_batch(data))
    return method


@pytest.fixture(scope="module")
def fits(data: dict[str, torch.Tensor]) -> dict[str, PNPT]:
    return {"full": _fit(data), "again": _fit(data), "no_pool": _fit(data, prompt_pool="none", streams="self"),
            "shared": _fit(data, prompt_pool="shared"), "self": _fit(data, streams="self")}


def _test_batch(data: dict[str, torch.Tensor]) -> baselines.Batch:
    images = torch.cat([data["test_red"], data["test_blue"]])
    return method_batch(images, ["red"] * 3 + ["blue"] * 3, prefix="t")


def test_shapes_determinism_and_state_round_trip(data: dict[str, torch.Tensor], fits: dict[str, PNPT]) -> None:
    batch = _test_batch(data)
    scores, maps = fits["full"].predict(batch)
    assert scores.shape == (6,) and maps.shape == (6, 56, 56) and scores.dtype == maps.dtype == np.float32 and np.isfinite(maps).all()
    again_scores, again_maps = fits["again"].predict(batch)
    np.testing.assert_array_equal(again_maps, maps)
    np.testing.assert_array_equal(again_scores, scores)
    state = fits["full"].state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    assert state["model.pool"].shape == (2, 3, 16) and "keys" in state and any(key.startswith("backbone.") for key in state)
    torch.manual_seed(999)
    restored = PNPT(PNPTConfig(**{**TINY, "seed": None}))
    restored.load_state_dict(state)
    assert restored.classes == ["blue", "red"]
    restored_scores, restored_maps = restored.predict(batch)
    np.testing.assert_array_equal(restored_maps, maps)
    np.testing.assert_array_equal(restored_scores, scores)
    with pytest.raises(ValueError, match="not a pnpt state"):
        restored.load_state_dict({"model.pool": state["model.pool"]})


def test_maps_follow_the_input_size_and_score_a_defect_higher(data: dict[str, torch.Tensor], fits: dict[str, PNPT]) -> None:
    scores, maps = fits["full"].predict(method_batch(data["test_red"][:, :, :40, :48].contiguous(), ["red"] * 3))
    assert maps.shape == (3, 40, 48) and scores.shape == (3,)
    defective = data["test_red"].clone()
    defective[:, :, 20:32, 20:32] = 255
    good_scores, _ = fits["full"].predict(method_batch(data["test_red"], ["red"] * 3))
    bad_scores, bad_maps = fits["full"].predict(method_batch(defective, ["red"] * 3))
    assert (bad_scores > good_scores).all()
    assert bad_maps[:, 20:32, 20:32].mean() > bad_maps[:, :10, :10].mean()


def test_the_prompt_pool_and_the_second_stream_change_the_output(data: dict[str, torch.Tensor], fits: dict[str, PNPT]) -> None:
    batch = _test_batch(data)
    _, full = fits["full"].predict(batch)
    for variant in ("no_pool", "shared", "self"):
        _, maps = fits[variant].predict(batch)
        assert np.abs(full - maps).max() > 1e-3 * np.abs(full).max(), variant
    assert "model.pool" not in fits["no_pool"].state_dict() and fits["shared"].state_dict()["model.pool"].shape[0] == 1
    assert not any(key.startswith("model.prior") for key in fits["self"].state_dict())
    # the same fit: swapping the prompts of the two classes changes the maps
    method = fits["full"]
    original = method.model.pool.data.clone()
    try:
        method.model.pool.data = original.flip(0)
        _, swapped = method.predict(batch)
    finally:
        method.model.pool.data = original
    assert np.abs(full - swapped).max() > 1e-3 * np.abs(full).max()
    method.config.stream_fusion = "max"  # the same fit, the streams combined otherwise
    try:
        _, fused_max = method.predict(batch)
    finally:
        method.config.stream_fusion = "mean"
    assert (fused_max >= full - 1e-6).all() and np.abs(fused_max - full).max() > 1e-4


def test_prompt_selection_picks_the_class_without_the_label(data: dict[str, torch.Tensor], fits: dict[str, PNPT]) -> None:
    method = fits["full"]
    wrong_labels = method_batch(torch.cat([data["test_red"], data["test_blue"]]), ["blue"] * 3 + ["red"] * 3, prefix="w")
    assert method.select_classes(wrong_labels) == ["red"] * 3 + ["blue"] * 3  # the query, not the (wrong) label
    query_scores, query_maps = method.predict(_test_batch(data))
    method.config.prompt_selection = "label"
    try:
        assert method.select_classes(wrong_labels) == ["blue"] * 3 + ["red"] * 3
        label_scores, label_maps = method.predict(_test_batch(data))  # right labels: the same prompts as the query picks
        with pytest.raises(ValueError, match="were not in training"):
            method.predict(method_batch(data["test_red"], ["green"] * 3))
    finally:
        method.config.prompt_selection = "query"
    np.testing.assert_array_equal(label_maps, query_maps)
    np.testing.assert_array_equal(label_scores, query_scores)


def test_selection_and_loss_against_loop_references() -> None:
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(5, 7, generator=generator), torch.randn(3, 7, generator=generator)
    expected = [int(np.argmax([q @ k / np.linalg.norm(q) / np.linalg.norm(k) for k in keys.double().numpy()])) for q in queries.double().numpy()]
    assert select_by_query(queries, keys).tolist() == expected
    levels = [torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 6, 3, 3, generator=generator)]
    outputs = {"self": [torch.randn_like(level) for level in levels], "prior": [torch.randn_like(level) for level in levels]}
    terms, distance = [], {name: np.zeros((2, 2, 3, 3)) for name in outputs}
    for name, stream in outputs.items():
        for index, (target, output) in enumerate(zip(levels, stream, strict=True)):
            t, o = target.double().numpy(), output.double().numpy()
            cos = (t * o).sum(1) / np.linalg.norm(t, axis=1) / np.linalg.norm(o, axis=1)
            terms.append((1 - cos).mean())
            distance[name][:, index] = 1 - cos
    assert reconstruction_loss(levels, outputs).item() == pytest.approx(np.mean(terms), rel=1e-5)
    maps = stream_maps(levels, outputs, (3, 3))  # same size: the bilinear resize is the identity
    for name in outputs:
        np.testing.assert_allclose(maps[name].numpy(), distance[name].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_default_layers_and_the_card() -> None:
    assert vit_layers(12) == ("3", "7", "11") and vit_layers(24) == ("7", "15", "23") and vit_layers(4) == ("0", "2", "3")
    assert PNPTConfig().layers == ("layer1", "layer2", "layer3")
    assert PNPTConfig(backbone="efficientnet_lite0").layers == PNPTConfig(backbone="hrnet32").layers == ("stride4", "stride8", "stride16")
    assert PNPTConfig(backbone="dinov2_vitb14_reg4", image_size=224).layers == ("3", "7", "11")
    assert PNPT.card.reimplemented_from and PNPT.card.needs_fit and "multi-class" in PNPT.card.settings
    assert "pnpt" in baselines.available()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backbone": "resnet18"}, "unknown backbone"),
    ({"backbone": "dinov2_tiny", "image_size": 50}, "multiple of the patch size"),
    ({"backbone": "dinov2_tiny", "image_size": 56, "layers": ("9",)}, "block indices"),
    ({"layers": ("layer7",)}, "must be among"),
    ({"prompt_pool": "global"}, "prompt_pool must be one of"),
    ({"prompt_selection": "oracle"}, "prompt_selection must be one of"),
    ({"streams": "both"}, "streams must be one of"),
    ({"prompt_pool": "none"}, "with prompt_pool=none use streams=self"),
    ({"dim": 30, "heads": 4}, "dim must be a multiple"),
    ({"epochs": 0}, "must be positive"),
    ({"top_fraction": 2.0}, "top_fraction"),
    ({"image_size": 16}, "at least 32"),
])
def test_bad_options_are_refused_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        PNPTConfig(**kwargs)
    assert "\n" not in str(error.value)


def test_cli_arguments_are_typed() -> None:
    kwargs = baselines.parse_method_args("pnpt", ["layers=layer2,layer3", "prompt_pool=shared", "grad_clip=none", "epochs=3"])
    assert kwargs == {"layers": ("layer2", "layer3"), "prompt_pool": "shared", "grad_clip": None, "epochs": 3}


@pytest.mark.slow
def test_a_multi_class_run_trains_one_model_with_a_prompt_set_per_category(tmp_path: Path) -> None:
    tree = generate(tmp_path / "tree", categories=("Cube", "Ring"), normal_specimens=2, ng_specimens=1, resolution=32, workers=1, progress=False)
    shard_tree(tree, tmp_path / "shards", progress=False)
    small = {**TINY, "epochs": 3, "batch_size": 16, "smoothing_sigma": 2.0}
    config = RunConfig(protocol="invariant", data=tmp_path / "shards", out=tmp_path / "run", executor="local", methods=("pnpt", "random"),
                       setting="multi-class", method_args={"pnpt": small})
    result = run(config, progress=False)
    (fit_dir,) = (result.run_dir / "fits").iterdir()
    assert fit_dir.name == "pnpt__all-categories__seed0"
    state = load_file(fit_dir / "state.safetensors")
    assert json.loads(bytes(state["class_names"].tolist()).decode()) == ["Cube", "Ring"] and state["model.pool"].shape[0] == 2
    values = {(row["method"], row["category"], row["metric"]): row["value"]
              for row in pl.read_parquet(result.run_dir / "metrics.parquet").iter_rows(named=True)}
    for category in ("Cube", "Ring"):
        assert values[("pnpt", category, "pixel_auroc")] > values[("random", category, "pixel_auroc")] + 0.1
        header = predictions.read(result.run_dir / "cells" / f"pnpt__{category}__seed0" / "predictions.parquet").info().metadata
        assert header["reimplemented_from"] == PNPT.card.reimplemented_from


def test_a_cnn_backbone_pools_its_levels_to_the_coarsest_grid(data: dict[str, torch.Tensor]) -> None:
    method = baselines.create("pnpt", **{**TINY, "backbone": "efficientnet_lite0", "image_size": 64, "epochs": 1})
    levels = method.levels(method._inputs(data["red"][:2]))
    assert [tuple(level.shape) for level in levels] == [(2, 24, 4, 4), (2, 40, 4, 4), (2, 112, 4, 4)]  # strides 4, 8, 16 at 64 px
    method.fit(_multi_class_batch(data))
    scores, maps = method.predict(_test_batch(data))
    assert scores.shape == (6,) and maps.shape == (6, 56, 56) and np.isfinite(maps).all()


def test_weights_from_a_file_are_not_saved_in_the_state(data: dict[str, torch.Tensor], tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(registry.load_backbone("efficientnet_lite0", "random").state_dict(), tmp_path / "lite0.pt")
    config = {**TINY, "backbone": "efficientnet_lite0", "backbone_weights": str(tmp_path / "lite0.pt"), "image_size": 64, "epochs": 1}
    method = baselines.create("pnpt", **config)
    method.fit(_multi_class_batch(data))
    state = method.state_dict()
    assert not any(key.startswith("backbone.") for key in state)
    restored = baselines.create("pnpt", **{**config, "seed": None})
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.predict(_test_batch(data))[1], method.predict(_test_batch(data))[1])
