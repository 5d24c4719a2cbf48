"""Strict `m2ad shard` refuses what it used to accept (issue 14, item 11), each with a named problem.

An image of another size inside a specimen (``image-size``), a symbolic link that points out of
the tree (``symlink-outside``; never followed, even with ``--skip-bad``), a 16-bit or an RGBA
mask (``mask-mode``), and an empty category folder (``empty-category``).  Written against the
public API only (``m2ad.synth.generate``, ``m2ad.shard.shard_tree``), so that the same file
shows the old code accepting each of them.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from m2ad.shard import FolderSource, ShardError, shard_tree
from m2ad.synth import generate


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic M2AD tree: one category, 2 normal and 1 NG specimens, 16 px."""
    return generate(tmp_path_factory.mktemp("template") / "tree", categories=["Cube"], normal_specimens=2, ng_specimens=1,
                    resolution=16, workers=1, progress=False)


@pytest.fixture()
def tree(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "tree", symlinks=True))


def _a_mask(tree: Path) -> Path:
    return sorted(tree.glob("Cube/GT/*/*_mask.png"))[0]


def _refused(tree: Path, out: Path) -> list[tuple[str, str]]:
    with pytest.raises(ShardError) as raised:
        shard_tree(tree, out, workers=1, progress=False)
    assert not (out / "manifest.parquet").exists()
    return [(problem.kind, problem.path) for problem in raised.value.problems]


def _png_16bit_rgba(path: Path, pixels: np.ndarray) -> None:
    """Write a 16-bit RGBA PNG by hand (PIL writes no such file): (H, W, 4) uint16."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_an_image_of_another_size_in_a_specimen(tree: Path, tmp_path: Path) -> None:
    odd = "Cube/Good/000/A330_I10.png"
    Image.open(tree / odd).resize((12, 12)).save(tree / odd)
    assert ("image-size", odd) in _refused(tree, tmp_path / "out")


def test_a_symlink_out_of_the_tree_is_refused_and_never_followed(tree: Path, tmp_path: Path) -> None:
    linked = "Cube/Good/000/A000_I01.png"
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(secret)
    (tree / linked).unlink()
    (tree / linked).symlink_to(secret)
    assert ("symlink-outside", linked) in _refused(tree, tmp_path / "strict")
    with pytest.raises(ValueError, match="never followed"):
        FolderSource(tree).read_bytes(linked)
    report = shard_tree(tree, tmp_path / "skip", strict=False, workers=1, progress=False)
    assert any(problem.kind == "symlink-outside" and problem.path == linked for problem in report.skipped)
    stored = [row["image"]["bytes"] for unit in ("Cube/train", "Cube/test") if (tmp_path / "skip" / unit).is_dir()
              for row in datasets.load_from_disk(str(tmp_path / "skip" / unit)).data.table.to_pylist()]
    assert stored and secret.read_bytes() not in stored


def test_a_symlink_inside_the_tree_is_read(tree: Path, tmp_path: Path) -> None:
    """A link that stays in the tree is an ordinary file (release mirrors deduplicate with links)."""
    linked = "Cube/Good/000/A000_I02.png"
    shutil.move(tree / linked, tree / "kept.bin")  # files at the root are no samples
    (tree / linked).symlink_to(tree / "kept.bin")
    assert shard_tree(tree, tmp_path / "out", workers=1, progress=False).samples == 3 * 120


@pytest.mark.parametrize("mode", ["16-bit grey", "RGBA", "16-bit RGBA"])
def test_a_mask_that_is_not_one_8_bit_channel(mode: str, tree: Path, tmp_path: Path) -> None:
    mask = _a_mask(tree)
    values = np.asarray(Image.open(mask)) > 0
    if mode == "16-bit grey":
        Image.fromarray(values.astype(np.uint16) * 65535).save(mask)
        assert Image.open(mask).mode.startswith("I")
    elif mode == "RGBA":
        Image.fromarray(np.dstack([values * 255] * 4).astype(np.uint8), "RGBA").save(mask)
    else:
        _png_16bit_rgba(mask, np.dstack([values * 65535] * 4).astype(np.uint16))
        assert Image.open(mask).mode == "RGBA"
    assert ("mask-mode", mask.relative_to(tree).as_posix()) in _refused(tree, tmp_path / "out")


def test_an_empty_category_folder(tree: Path, tmp_path: Path) -> None:
    (tree / "Ring").mkdir()
    assert ("empty-category", "Ring") in _refused(tree, tmp_path / "out")
    shutil.rmtree(tree / "Ring")
    (tree / "Ring" / "Good" / "000").mkdir(parents=True)  # folders, but not one file
    assert ("empty-category", "Ring") in _refused(tree, tmp_path / "again")
