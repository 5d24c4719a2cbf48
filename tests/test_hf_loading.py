"""Shards load the Hugging Face way (issue 14, item 5), offline (tests run with HF_HUB_OFFLINE=1).

``datasets.load_dataset(SHARDS, CATEGORY)`` returns the category's train and test splits (the
card's ``configs``), ``load_dataset(SHARDS)`` every category's (the default config), test shards
report their split as ``test``, resized masks decode to (H, W) arrays of {0, 1}, and the torch
``DataLoader`` recipe of the README and the cards runs as written.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
import torch

from m2ad.card import LOADER_RECIPE
from m2ad.shard import shard_tree
from m2ad.synth import generate

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = generate(tmp_path_factory.mktemp("tree") / "tree", categories=["Cube", "Ring"], normal_specimens=2, ng_specimens=1,
                    resolution=32, workers=1, progress=False)
    out = tmp_path_factory.mktemp("shards") / "shards"
    shard_tree(tree, out, resolution=16, workers=1, progress=False)
    return out


def test_offline() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_load_dataset_returns_train_and_test_of_a_category(shards: Path) -> None:
    manifest = pl.read_parquet(shards / "manifest.parquet")
    loaded = datasets.load_dataset(str(shards), "Cube")
    assert set(loaded) == {"train", "test"}
    for split in ("train", "test"):
        expected = manifest.filter((pl.col("category") == "Cube") & (pl.col("split") == split))
        assert loaded[split].num_rows == expected.height
        assert sorted(loaded[split]["sample_id"]) == sorted(expected["sample_id"])
        assert set(loaded[split]["split"]) == {split}
    test = datasets.load_dataset(str(shards), "Ring", split="test")
    assert set(test["category"]) == {"Ring"}
    streamed = datasets.load_dataset(str(shards), "Ring", split="test", streaming=True)
    assert sum(1 for _ in streamed) == test.num_rows


def test_the_default_config_has_every_category(shards: Path) -> None:
    loaded = datasets.load_dataset(str(shards))
    assert set(loaded) == {"train", "test"}
    assert set(loaded["test"]["category"]) == {"Cube", "Ring"}
    assert loaded["train"].num_rows + loaded["test"].num_rows == pl.read_parquet(shards / "manifest.parquet").height
    with pytest.raises(ValueError, match="Cube"):
        datasets.load_dataset(str(shards), "Nope")


def test_test_shards_report_their_split(shards: Path) -> None:
    assert datasets.load_from_disk(str(shards / "Cube/test")).split == "test"
    assert datasets.load_from_disk(str(shards / "Cube/train")).split == "train"


def test_masks_decode_to_binary_arrays(shards: Path) -> None:
    test = datasets.load_dataset(str(shards), "Cube", split="test")
    masks = [np.asarray(row["mask"]) for row in test if row["mask"] is not None]
    assert masks
    for mask, row in zip(masks, (row for row in test if row["mask"] is not None)):
        assert mask.shape == (row["height"], row["width"])
        assert set(np.unique(mask).astype(int)) <= {0, 1} and mask.any()


def test_the_documented_dataloader_recipe_runs(shards: Path) -> None:
    assert LOADER_RECIPE.format(root="SHARDS", category="Cube") in README.read_text(), "README shows the recipe as written"
    scope: dict = {}
    exec(LOADER_RECIPE.format(root=str(shards), category="Cube"), scope)  # noqa: S102 - our own documented snippet
    batch = next(iter(scope["loader"]))
    images, masks, labels = batch["image"], batch["mask"], batch["label"]
    count = min(32, scope["test"].num_rows)
    assert images.dtype == torch.uint8 and images.shape == (count, 3, 16, 16)
    assert masks.dtype == torch.bool and masks.shape == (count, 16, 16)
    assert labels.shape == (count,)
    test = datasets.load_dataset(str(shards), "Cube", split="test")
    assert labels.tolist() == test["label"][:count]
    assert bool(masks[labels == 1].flatten(1).any(1).all()) and not masks[labels == 0].any()
