"""Images/s of `m2ad shard` on a synthetic M2AD, against the floor of the pixel work alone.

The floor does only what sharding must do to every image, in one process: decode the PNG
fully, and at a resolution N resize it (PIL bilinear) and encode it as PNG, masks included
(decoded, and at N resized under both rules and encoded).  `shard_tree` adds parsing, checks,
Arrow writing, the manifest and the card, and runs its workers in parallel; the ratio
floor time / shard time is the figure of merit (above 1 when the workers win more than the
harness costs).  Both are measured in the same run on the same images.

The source is a synthetic M2AD (``m2ad.synth.generate``) kept in ``--workdir`` and reused.

    python benchmarks/shard.py [--workdir DIR] [--size 256] [--specimens 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from m2ad.shard import resize_mask_exact, resize_mask_official, shard_tree
from m2ad.synth import generate, is_synthetic_tree


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def floor_seconds(tree: Path, resolution: int | str) -> tuple[float, int]:
    """Seconds (and images) of the pixel work alone, single process."""
    images = sorted([*tree.glob("*/Good/*/*.png"), *tree.glob("*/NG/*/*.png")])
    masks = sorted(tree.glob("*/GT/*/*_mask.png"))
    started = time.perf_counter()
    for path in images:
        with Image.open(path) as image:
            image.load()
            if resolution != "original":
                _png(image.convert("RGB").resize((resolution, resolution), Image.Resampling.BILINEAR))
    for path in masks:
        with Image.open(path) as mask:
            foreground = np.asarray(mask.convert("L")) > 0
            if resolution != "original":
                size = (resolution, resolution)
                _png(Image.fromarray(resize_mask_exact(foreground, size)))
                _png(Image.fromarray(resize_mask_official(foreground, size)))
    return time.perf_counter() - started, len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("M2AD_CACHE", Path.home() / ".cache/m2ad")) / "bench-shard")
    parser.add_argument("--size", type=int, default=256, help="pixels of the synthetic renders")
    parser.add_argument("--specimens", type=int, default=4, help="normal and NG specimens each (120 images per specimen)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    tree = args.workdir / f"synth-{args.size}-{args.specimens}"
    if not is_synthetic_tree(tree):
        print(f"rendering a synthetic M2AD ({args.specimens} + {args.specimens} specimens, {args.size} px) into {tree}")
        generate(tree, categories=["Cube"], normal_specimens=args.specimens, ng_specimens=args.specimens, resolution=args.size, overwrite=True)
    print(f"machine: {os.cpu_count()} cores; {args.workers} shard workers")
    print(f"{'resolution':<12} {'images':>7} {'floor img/s':>12} {'shard img/s':>12} {'floor/shard':>12}")
    for resolution in ("original", args.size // 2):
        floor, count = floor_seconds(tree, resolution)
        with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
            out = Path(scratch) / "shards"
            started = time.perf_counter()
            shard_tree(tree, out, resolution=resolution, workers=args.workers, progress=False)
            seconds = time.perf_counter() - started
            shutil.rmtree(out)
        print(f"{resolution!s:<12} {count:>7} {count / floor:>12.1f} {count / seconds:>12.1f} {floor / seconds:>12.2f}")


if __name__ == "__main__":
    main()
