"""Images/s for one training epoch: 256-px m2ad shards versus the official pipeline's way.

Official way (``hustCYQ/M2AD`` data loading, re-implemented with PIL since torchvision does
not import here): open each 1024-px PNG, decode it, resize it to 256 with bilinear filtering
(what ``torchvision.transforms.Resize(256)`` does to a PIL image) and turn it into a uint8
tensor, every epoch.  Ours: ``m2ad.data.iter_batches`` over the 256-px shards of the same
images, decoded to uint8 (B, 3, 256, 256) tensors.  Both are measured in the same run on the
same images, single-threaded and (ours) with the default decoding threads; the ratio is the
figure of merit (target: at least 10x).

The 1024-px source is a small synthetic M2AD (``m2ad.synth.generate``), kept in ``--workdir``
and reused by later runs because rendering at 1024 px is slow.  ``--source`` points at another
M2AD tree instead (e.g. one real category).

    python benchmarks/read.py [--workdir DIR] [--source TREE] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from m2ad import data
from m2ad.shard import shard_tree
from m2ad.synth import generate, is_synthetic_tree

RESOLUTION = 256


def official_epoch(tree: Path, release_paths: list[str]) -> float:
    """Seconds to read one epoch the official way: decode each PNG, bilinear-resize to 256."""
    started = time.perf_counter()
    for release_path in release_paths:
        image = Image.open(tree / release_path).convert("RGB").resize((RESOLUTION, RESOLUTION), Image.Resampling.BILINEAR)
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        assert tensor.shape == (3, RESOLUTION, RESOLUTION)
    return time.perf_counter() - started


def shard_epoch(root: Path, frame: pl.DataFrame, threads: int | None) -> float:
    """Seconds to read one epoch from the shards with ``m2ad.data.iter_batches``."""
    started = time.perf_counter()
    for batch in data.iter_batches(root, frame, batch_size=32, threads=threads):
        assert batch.images.shape[1:] == (3, RESOLUTION, RESOLUTION)
    return time.perf_counter() - started


def main() -> None:
    """Prepare the source and the shards (reused when present), then time both readers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("M2AD_CACHE", Path.home() / ".cache/m2ad")) / "bench-read")
    parser.add_argument("--source", type=Path, help="an M2AD tree to read instead of the synthetic one")
    parser.add_argument("--specimens", type=int, default=2, help="normal specimens of the synthetic source (60 %% train)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per reader; the median is reported")
    args = parser.parse_args()

    tree = args.source or args.workdir / "synth-1024"
    if args.source is None and not is_synthetic_tree(tree):
        print(f"rendering a synthetic 1024-px M2AD with {args.specimens} normal specimens into {tree} (slow, done once)")
        generate(tree, categories=["Cube"], normal_specimens=args.specimens, ng_specimens=0, resolution=1024, overwrite=True)
    shards = args.workdir / f"shards-{RESOLUTION}-{tree.name}"
    started = time.perf_counter()
    report = shard_tree(tree, shards, resolution=RESOLUTION)
    shard_seconds = time.perf_counter() - started
    written = report.samples if report.written_units else 0

    manifest = data.load_manifest(shards)
    train = manifest.filter(pl.col("split") == "train").sample(fraction=1.0, shuffle=True, seed=0)
    release_paths = [sample_id.split("/", 1)[1] for sample_id in train["sample_id"]]
    with Image.open(tree / release_paths[0]) as probe:
        source_size = probe.size

    # warm the page cache for both so that neither pays for cold disk reads
    official_epoch(tree, release_paths[:8])
    shard_epoch(shards, train, None)
    official = statistics.median(official_epoch(tree, release_paths) for _ in range(args.epochs))
    ours_single = statistics.median(shard_epoch(shards, train, 1) for _ in range(args.epochs))
    ours = statistics.median(shard_epoch(shards, train, None) for _ in range(args.epochs))

    count = train.height
    print(f"machine: {os.cpu_count()} cores; torch {torch.__version__}; {count} training images, source {source_size[0]}x{source_size[1]} px")
    if written:
        print(f"sharding {written} images to {RESOLUTION} px took {shard_seconds:.1f} s ({written / shard_seconds:.1f} images/s)")
    print(f"{'reader':<44} {'images/s':>10} {'ratio':>8}")
    print(f"{'official (1024-px PNG, resize to 256 each time)':<44} {count / official:>10.1f} {1.0:>8.2f}")
    print(f"{'m2ad shards 256 px, 1 thread':<44} {count / ours_single:>10.1f} {official / ours_single:>8.2f}")
    print(f"{'m2ad shards 256 px, default threads':<44} {count / ours:>10.1f} {official / ours:>8.2f}")
    print(f"ratio (same single thread): {official / ours_single:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
