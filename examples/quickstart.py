"""The README's Python example as a script: a small synthetic M2AD, a run of a built-in method,
and a predictions file of your own method, written and then evaluated.  (A handful of 64-px
specimens, to finish in about a minute on 2 cores: the numbers are noise, not a benchmark.)

    python examples/quickstart.py [OUT]      # OUT defaults to ./quickstart

Everything here is the Python API behind the CLI (``m2ad synth``, ``m2ad shard``, ``m2ad run``,
``m2ad evaluate``).  The library calls are safe from a plain script too (no ``__main__`` guard
needed); the guard below only keeps the example importable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

from m2ad import predictions
from m2ad.data import iter_batches, load_manifest
from m2ad.run import RunConfig, run
from m2ad.shard import shard_tree
from m2ad.synth import generate
from protocols.evaluate import evaluate


def main(out: Path) -> None:
    # 1. A synthetic M2AD in the official layout (12 views x 10 lights per specimen), sharded.
    tree = generate(out / "synth", categories=["Cube"], normal_specimens=4, ng_specimens=2, resolution=64, overwrite=True)
    shards = out / "shards"
    shard_tree(tree, shards)

    # 2. A built-in method under the Synergy protocol: fits, predictions and metrics in OUT/run.
    result = run(RunConfig(protocol="synergy", methods=("gaussian",), data=shards, out=out / "run"))
    print("gaussian:", result.summary["methods"]["gaussian"]["mean"])

    # 3. Your own method: the distance of each test image to the mean normal training image of
    #    its category, view and light, written as a predictions file and evaluated.
    manifest = load_manifest(shards)
    normal: dict[tuple, list[np.ndarray]] = {}
    for batch in iter_batches(shards, manifest.filter(pl.col("split") == "train")):
        for image, key in zip(batch.images.float().numpy(), zip(batch.categories, batch.views, batch.illuminations)):
            normal.setdefault(key, []).append(image)
    mean_image = {key: np.mean(images, axis=0) for key, images in normal.items()}
    ids, scores, maps = [], [], []
    for batch in iter_batches(shards, manifest.filter(pl.col("split") == "test")):
        for sample_id, image, key in zip(batch.sample_ids, batch.images.float().numpy(),
                                         zip(batch.categories, batch.views, batch.illuminations)):
            anomaly_map = np.abs(image - mean_image[key]).mean(axis=0) / 255.0
            ids.append(sample_id)
            scores.append(float(anomaly_map.max()))
            maps.append(anomaly_map)
    predictions_file = predictions.write(out / "my_predictions.parquet", ids, scores, maps)
    mine = evaluate("synergy", shards, predictions_file)
    print("my method:", mine["mean"])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("quickstart"))
