"""Harness overhead per image of one runner cell, against the floor of only decoding the images.

A cell with a no-op method (no fit, zero maps) still loads every test image and mask from the
shards, writes the predictions file and evaluates image and pixel metrics: what is left over
the decode floor is the harness's own cost.  The target is at most 20 % over the floor.

    .venv/bin/python benchmarks/runner.py [--resolution 256] [--normal 3] [--ng 3] [--repeats 9]
                                          [--mode exact|streaming|compat|compat-float32] [--map-dtype float16|float32]

Both are measured in the same run on the same images, interleaved; the ratio of each pair is
printed as the median and range over the repeats, by wall clock and by CPU time of the process
(all threads): on a shared machine, where the decoding threads may not get every core, the CPU
ratio is the steadier figure.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import polars as pl
from PIL import Image

import protocols
from baselines.base import Batch, MethodCard, Setting
from m2ad.data import iter_batches, load_manifest
from m2ad.run.cell import execute_cell
from m2ad.run.plan import CellSpec
from m2ad.shard import shard_tree
from m2ad.synth import generate


@dataclass
class NoOpConfig:
    """No options."""


class NoOpMethod:
    """Learns nothing, scores every image 0 with an all-zero float32 map: the harness's floor."""

    name: ClassVar[str] = "noop"
    card: ClassVar[MethodCard] = MethodCard(needs_fit=False)
    Config: ClassVar[type] = NoOpConfig

    def __init__(self, config: NoOpConfig) -> None:
        self.config = config
        self._zeros: dict[tuple[int, ...], np.ndarray] = {}

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Nothing to learn (training-free: the harness never calls it)."""

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Zero scores and zero maps (the same array for every batch of a shape: allocating
        it is the method's cost, not the harness's)."""
        count, _, height, width = batch.images.shape
        maps = self._zeros.setdefault((count, height, width), np.zeros((count, height, width), dtype=np.float32))
        return np.zeros(count), maps

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def decode_floor(shards: Path, sample_ids: list[str]) -> tuple[float, float]:
    """Seconds (wall, CPU) to read and decode the given images (RGB, uint8) from the Arrow shards
    and nothing else, with as many decoding threads as ``m2ad.data`` uses: the best a harness can do."""
    manifest = load_manifest(shards).filter(pl.col("sample_id").is_in(sample_ids))
    started, cpu_started = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for (shard_dir,), rows in manifest.group_by("shard_dir", maintain_order=True):
            table = datasets.load_from_disk(str(shards / shard_dir)).data.table
            encoded = table.column("image").take(rows["shard_row"].to_list()).to_pylist()
            list(pool.map(lambda item: np.asarray(Image.open(io.BytesIO(item["bytes"])).convert("RGB")), encoded))
    return time.perf_counter() - started, time.process_time() - cpu_started


def load_only(shards: Path, protocol: str) -> float:
    """Seconds for ``m2ad.data.iter_batches`` to deliver the test images and masks, nothing else."""
    test = protocols.get(protocol).test_samples(load_manifest(shards), "Cube")
    started = time.perf_counter()
    for _ in iter_batches(shards, test, batch_size=32, with_masks=True):
        pass
    return time.perf_counter() - started


def harness(
    shards: Path, out: Path, category: str, protocol: str, mode: str, map_dtype: str, repeat: int
) -> tuple[float, float, int, dict[str, float]]:
    """Seconds (wall, CPU) of one no-op cell (load, predict, write, evaluate), its number of
    test images and its stage timings."""
    spec = CellSpec(
        cell_id=f"noop-{repeat}",
        method="noop",
        method_class=NoOpMethod,
        method_config={},
        category=category,
        seed=0,
        config_hash="benchmark",
        data=shards,
        protocol=protocol,
        mode=mode,
        mask_rule="exact",
        map_dtype=map_dtype,
        batch_size=32,
        cell_dir=out / f"noop-{repeat}",
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    record = execute_cell(spec, report=lambda stage, done, total: None)
    return time.perf_counter() - started, time.process_time() - cpu_started, int(record["n_test"]), record["timings"]


def main() -> None:
    """Build a synthetic dataset, then time the decode floor and the no-op cell."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--normal", type=int, default=3, help="normal specimens (60 %% train)")
    parser.add_argument("--ng", type=int, default=3, help="defective specimens")
    parser.add_argument("--protocol", default="invariant")
    parser.add_argument("--mode", default="exact")
    parser.add_argument("--map-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="m2ad-bench-") as workdir:
        root = Path(workdir)
        tree = generate(root / "tree", categories=["Cube"], normal_specimens=args.normal, ng_specimens=args.ng,
                        resolution=args.resolution, progress=False)
        shards = root / "shards"
        shard_tree(tree, shards, progress=False)
        protocol = protocols.get(args.protocol)
        test_ids = protocol.test_samples(load_manifest(shards), "Cube")["sample_id"].to_list()

        floors, floor_cpus, loads, cells, cell_cpus, stages = [], [], [], [], [], []
        for repeat in range(args.repeats):  # interleaved, so that a slow spell of the machine hits both
            floor_seconds, floor_cpu = decode_floor(shards, test_ids)
            floors.append(floor_seconds)
            floor_cpus.append(floor_cpu)
            loads.append(load_only(shards, args.protocol))
            seconds, cpu, count, timings = harness(shards, root / "cells", "Cube", args.protocol, args.mode, args.map_dtype, repeat)
            cells.append(seconds)
            cell_cpus.append(cpu)
            stages.append(timings)
        floors_per_image, cells_per_image = np.array(floors) / len(test_ids), np.array(cells) / count
        wall_ratios, cpu_ratios = np.array(cells) / np.array(floors), np.array(cell_cpus) / np.array(floor_cpus)
        threads = min(8, os.cpu_count() or 1)
        print(
            f"{count} test images at {args.resolution} px, protocol {args.protocol}, mode {args.mode}, "
            f"maps {args.map_dtype}, {args.repeats} interleaved repeats (median, [min, max])"
        )
        print(f"decode floor         : {_spread(1e3 * floors_per_image)} ms/image (images only, {threads} threads)")
        print(f"m2ad.data load       : {_spread(1e3 * np.array(loads) / count)} ms/image (images + masks, iter_batches)")
        print(f"runner cell          : {_spread(1e3 * cells_per_image)} ms/image (load, no-op predict, write, evaluate)")
        print(f"  of which evaluate  : {_spread(1e3 * np.array([stage['evaluate_s'] for stage in stages]) / count)} ms/image (metrics compute)")
        print(f"ratio (wall)         : {_spread(wall_ratios)} x the decode floor (target <= 1.20x)")
        print(f"ratio (CPU time)     : {_spread(cpu_ratios)} x the decode floor's CPU time")


def _spread(values: np.ndarray) -> str:
    """Median and range of repeated measurements."""
    return f"{np.median(values):7.2f} [{np.min(values):.2f}, {np.max(values):.2f}]"


if __name__ == "__main__":
    main()
