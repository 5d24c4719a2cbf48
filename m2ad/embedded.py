"""The embedded default dataset: a small synthetic M2AD, generated and sharded on first use.

``m2ad run`` without ``--data`` runs on it, so the whole pipeline works on any machine with no
download.  It lives in ``CACHE/datasets/m2ad-synth-default`` where ``CACHE`` is ``$M2AD_CACHE``,
else ``$XDG_CACHE_HOME/m2ad``, else ``~/.cache/m2ad``.

First use is safe under concurrency and resumable: one process at a time builds it under a
file lock (``m2ad.ownership.ExclusiveLock``: released by the OS if the process dies, removed
when the build ends); the release tree is generated into a
staging folder (``m2ad.synth.generate`` publishes it atomically), the shards are written next
to it, and the finished dataset appears under its final name in one ``os.replace``.  A killed
build resumes at the first unfinished stage (a finished release tree is kept); other processes waiting on the lock find the finished dataset and return at once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from m2ad import files, ownership, shard, synth
from m2ad.schema import INFO_FILE

DEFAULT_NAME = "m2ad-synth-default"
DEFAULT_SYNTH_OPTIONS: dict[str, Any] = {
    "categories": ("Cube", "Ring", "Tube"),
    "normal_specimens": 10,
    "ng_specimens": 10,
    "resolution": 128,
    "seed": 0,
}
"""Options of ``m2ad.synth.generate`` for the default dataset: 7,200 images of 128 x 128
(per category 720 train and 1,680 test images); about a minute to build on 2 cores."""


def default_dataset_dir(cache_dir: Path | None = None) -> Path:
    """Where the sharded default dataset is (or will be, once built): an absolute path."""
    return ((Path(cache_dir) if cache_dir is not None else files.cache_dir()) / "datasets" / DEFAULT_NAME).absolute()


def ensure_default_dataset(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Return the sharded default synthetic M2AD, generating and sharding it on first use."""
    final = default_dataset_dir(cache_dir)
    datasets_dir = final.parent
    if (final / INFO_FILE).is_file():
        return final
    datasets_dir.mkdir(parents=True, exist_ok=True)
    with ownership.ExclusiveLock(datasets_dir / f"{DEFAULT_NAME}.lock", f"building {final}", timeout=None):
        if (final / INFO_FILE).is_file():  # another process finished it while we waited
            return final
        staging = datasets_dir / f".{DEFAULT_NAME}.partial"
        release, shards = staging / "release", staging / "shards"
        if not synth.is_synthetic_tree(release):  # generate() publishes the tree atomically
            # under the lock, the staging folder is this process's alone: whatever an earlier,
            # killed build left in it (even without an owner marker) goes
            shutil.rmtree(release.with_name(release.name + ".partial"), ignore_errors=True)
            synth.generate(release, **DEFAULT_SYNTH_OPTIONS, progress=progress, overwrite=True)
        shutil.rmtree(shards, ignore_errors=True)
        shard.shard_tree(release, shards, progress=progress)
        shutil.rmtree(final, ignore_errors=True)  # a leftover without dataset.json
        os.replace(shards, final)
        shutil.rmtree(staging, ignore_errors=True)
    return final
