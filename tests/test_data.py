"""m2ad.data: the manifest and batches of decoded images and masks, checked against the
source files (original resolution) and against ``datasets``' own decoding (resized shards)."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from m2ad import data
from m2ad.datasets.m2ad.fixture import write
from m2ad.shard import shard_tree


def write_tree(root: Path, categories: tuple[str, ...], normal: int, ng: int) -> Path:
    """A 16-px M2AD release tree from the dataset's fixture writer."""
    root.mkdir(parents=True)
    write(root, categories=categories, normal_specimens=normal, ng_specimens=ng, resolution=16, seed=0, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree") / "m2ad", ("Cube", "Ring"), normal=2, ng=2)


@pytest.fixture(scope="module")
def original(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "original"
    shard_tree(tree, out, workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def resized(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "resized"
    shard_tree(tree, out, resolution=8, workers=2, progress=False)
    return out


def _shuffled(manifest: pl.DataFrame, count: int) -> pl.DataFrame:
    """A selection across units, in a scrambled order, with anomalous samples included."""
    anomalous = manifest.filter(pl.col("has_mask")).sample(count // 2, seed=3)
    normal = manifest.filter(~pl.col("has_mask")).sample(count - count // 2, seed=4)
    return pl.concat([anomalous, normal]).sample(fraction=1.0, shuffle=True, seed=5)


def test_batches_match_the_source_files(tree: Path, original: Path) -> None:
    manifest = data.load_manifest(original)
    frame = _shuffled(manifest, 60)
    batches = list(data.iter_batches(original, frame, batch_size=7, with_masks=True, mask_rule="official"))
    assert [len(batch) for batch in batches] == [7] * 8 + [4]
    assert sum((batch.sample_ids for batch in batches), []) == frame["sample_id"].to_list()
    for batch in batches:
        assert batch.images.dtype == torch.uint8 and batch.images.shape[1:] == (3, 16, 16)
        assert batch.masks.dtype == bool and batch.masks.shape[1:] == (16, 16)
        assert batch.categories == batch.frame["category"].to_list() and len(batch.views) == len(batch.illuminations) == len(batch)
        for index, sample_id in enumerate(batch.sample_ids):
            row = batch.frame.row(index, named=True)
            release_path = sample_id.removeprefix("m2ad/")
            expected = np.asarray(Image.open(tree / release_path).convert("RGB")).transpose(2, 0, 1)
            assert np.array_equal(batch.images[index].numpy(), expected)
            if row["has_mask"]:
                mask_path = tree / row["category"] / "GT" / row["specimen"] / f"A{row['view']}_mask.png"
                assert np.array_equal(batch.masks[index], np.asarray(Image.open(mask_path)) > 0)
                assert batch.masks[index].any()
            else:
                assert not batch.masks[index].any()


def test_consecutive_rows_read_as_in_any_order(tree: Path, original: Path) -> None:
    """Rows that follow each other in a shard (the usual case, read as one slice) and the same
    rows scattered (gathered row by row) give the same images and masks, equal to the sources."""
    manifest = data.load_manifest(original)
    in_order = manifest.sort("shard_dir", "shard_row").head(30)
    assert (np.diff(in_order.filter(pl.col("shard_dir") == in_order["shard_dir"][0])["shard_row"].to_numpy()) == 1).all()
    scattered = in_order.sample(fraction=1.0, shuffle=True, seed=11)
    images, masks = data.read_images(original, in_order), data.read_masks(original, in_order)
    position = {sample_id: index for index, sample_id in enumerate(scattered["sample_id"])}
    order = [position[sample_id] for sample_id in in_order["sample_id"]]
    assert torch.equal(images, data.read_images(original, scattered)[order])
    assert np.array_equal(masks, data.read_masks(original, scattered)[order])
    assert images.is_contiguous()
    for index, sample_id in enumerate(in_order["sample_id"]):
        expected = np.asarray(Image.open(tree / sample_id.removeprefix("m2ad/")).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(images[index].numpy(), expected)


@pytest.mark.parametrize("rule,column", [("exact", "mask"), ("official", "mask_official")])
def test_resized_masks_follow_the_chosen_rule(resized: Path, rule: str, column: str) -> None:
    manifest = data.load_manifest(resized)
    frame = _shuffled(manifest, 40)
    masks = data.read_masks(resized, frame, rule)
    images = data.read_images(resized, frame)
    assert masks.shape == (40, 8, 8) and images.shape == (40, 3, 8, 8)
    for index, row in enumerate(frame.iter_rows(named=True)):
        stored = datasets.load_from_disk(str(resized / row["shard_dir"]))[row["shard_row"]]
        assert stored["sample_id"] == row["sample_id"]
        assert np.array_equal(images[index].numpy(), np.asarray(stored["image"]).transpose(2, 0, 1))
        expected = np.zeros((8, 8), bool) if stored[column] is None else np.asarray(stored[column]) > 0
        assert np.array_equal(masks[index], expected)


def test_without_masks_and_empty_selection(original: Path) -> None:
    manifest = data.load_manifest(original)
    batch = next(data.iter_batches(original, manifest.head(5), batch_size=32))
    assert batch.masks is None and len(batch) == 5
    assert list(data.iter_batches(original, manifest.clear(), batch_size=4)) == []


def test_manifest_errors(tree: Path, original: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a sharded m2ad dataset"):
        data.load_manifest(tree)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "dataset.json").write_bytes((original / "dataset.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        data.load_manifest(copy)
    (copy / "dataset.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not an m2ad-shards file"):
        data.load_manifest(copy)


def test_reader_errors(original: Path) -> None:
    manifest = data.load_manifest(original)
    with pytest.raises(ValueError, match="mask rule"):
        next(data.iter_batches(original, manifest, mask_rule="nearest"))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.iter_batches(original, manifest, batch_size=0))
    with pytest.raises(ValueError, match="manifest columns"):
        next(data.iter_batches(original, manifest.drop("shard_row")))
    with pytest.raises(FileNotFoundError, match="shard folder"):
        data.read_images(original, manifest.head(2).with_columns(pl.lit("Nope/test").alias("shard_dir")))


def test_mixed_sizes_are_refused(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "tree", ("Cube",), normal=2, ng=1)
    for path in (root / "Cube/Good/000").iterdir():
        Image.open(path).resize((12, 12)).save(path)
    shard_tree(root, tmp_path / "out", workers=1, progress=False)
    manifest = data.load_manifest(tmp_path / "out").filter(pl.col("object_label") == 0)
    with pytest.raises(ValueError, match="different sizes"):
        data.read_images(tmp_path / "out", manifest)
    per_size = [data.read_images(tmp_path / "out", group) for _, group in manifest.group_by("width")]
    assert sorted(images.shape[-1] for images in per_size) == [12, 16]


def test_bounded_shards_read_the_same(tree: Path, original: Path, tmp_path: Path) -> None:
    small = tmp_path / "small-shards"
    shard_tree(tree, small, categories=["Ring"], max_shard_size=40_000, workers=1, progress=False)
    assert len(list((small / "Ring/test").glob("data-*.arrow"))) > 1
    frame = data.load_manifest(small).sample(fraction=1.0, shuffle=True, seed=7)
    reference = data.load_manifest(original)
    located = frame.select("sample_id").join(reference, on="sample_id", how="left", maintain_order="left")
    assert torch.equal(data.read_images(small, frame), data.read_images(original, located))
    assert np.array_equal(data.read_masks(small, frame, "exact"), data.read_masks(original, located, "exact"))


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_prefetch_depth_does_not_change_the_batches(original: Path, prefetch: int) -> None:
    manifest = data.load_manifest(original)
    frame = _shuffled(manifest, 30)
    reference = list(data.iter_batches(original, frame, batch_size=4, with_masks=True, prefetch=2))
    batches = list(data.iter_batches(original, frame, batch_size=4, with_masks=True, prefetch=prefetch))
    assert [batch.sample_ids for batch in batches] == [batch.sample_ids for batch in reference]
    for batch, expected in zip(batches, reference, strict=True):
        assert torch.equal(batch.images, expected.images) and np.array_equal(batch.masks, expected.masks)
    with pytest.raises(ValueError, match="prefetch"):
        next(data.iter_batches(original, frame, prefetch=-1))


def test_stopping_early_releases_the_reader(original: Path) -> None:
    """A consumer that stops after one batch (an exception in a method, a break) leaves no
    decoding work behind: closing the generator returns at once."""
    manifest = data.load_manifest(original)
    batches = data.iter_batches(original, manifest, batch_size=2, with_masks=True, prefetch=3)
    first = next(batches)
    assert len(first) == 2
    batches.close()
    with pytest.raises(StopIteration):
        next(batches)


def test_a_size_that_disagrees_with_the_manifest_names_the_sample(original: Path) -> None:
    frame = data.load_manifest(original).head(3).with_columns(pl.lit(9).alias("width"), pl.lit(9).alias("height"))
    with pytest.raises(ValueError, match=f"{frame['sample_id'][0]}.*differs from the manifest's 9x9"):
        data.read_images(original, frame)
