"""Synthetic datasets in their official on-disk layouts, from one renderer (``m2ad.render``).

``generate(OUT, dataset="m2ad")`` writes a synthetic M2AD (12 views x 10 lights per specimen,
``jsons/meta_unsupervised.json``; :mod:`m2ad.datasets.m2ad.fixture`), the embedded default
dataset of ``m2ad run`` and ``make demo``.  Any registered dataset can be rendered the same way
(``dataset="mvtec-ad"``, ``"visa"``, ``"real-iad"``, ``"folder"``): its spec's fixture writer
decides the layout, names and quirks.  The tree gets a marker, ``SYNTHETIC.json`` (see
:mod:`m2ad.datasets.synthetic`), and shards as the dataset ``<name>-synth``.

Determinism: each specimen draws from its own random stream seeded by (seed, shape, kind,
index), so the bytes depend on the seed only, never on ``workers``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from m2ad import ownership
from m2ad.datasets import registry
from m2ad.datasets.synthetic import GENERATOR_NAME, GENERATOR_VERSION, MARKER_FILE
from m2ad.files import write_text_atomic

__all__ = ["GENERATOR_NAME", "GENERATOR_VERSION", "MARKER_FILE", "generate", "is_synthetic_tree"]


def _check_arguments(dataset: str, categories: Sequence[str], normal_specimens: int, ng_specimens: int, resolution: int, seed: int,
                     workers: int | None) -> None:
    """Raise ``ValueError`` with a clear message for any unusable argument."""
    if isinstance(categories, str):
        raise ValueError("categories must be a sequence of names, not one string")
    if not categories:
        raise ValueError("at least one category is needed")
    supported = registry.get(dataset).fixture.categories
    unknown = [c for c in categories if c not in supported]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown} for {dataset}; choose from {', '.join(supported)}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"categories repeat: {list(categories)}")
    if not 1 <= normal_specimens <= 1000:
        raise ValueError(f"normal_specimens must be in 1..1000, got {normal_specimens}")
    if not 0 <= ng_specimens <= 1000:
        raise ValueError(f"ng_specimens must be in 0..1000, got {ng_specimens}")
    if not 16 <= resolution <= 4096:
        raise ValueError(f"resolution must be in 16..4096 pixels, got {resolution}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")


def is_synthetic_tree(path: str | Path) -> bool:
    """True if ``path`` holds a complete tree written by this generator (its marker is written last)."""
    return (Path(path) / MARKER_FILE).is_file()


def generate(
    out: str | Path,
    *,
    dataset: str = "m2ad",
    categories: Sequence[str] | None = None,
    normal_specimens: int = 10,
    ng_specimens: int = 10,
    resolution: int = 128,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic tree of ``dataset`` in its official layout to ``out`` and return its path.

    ``categories`` default to the fixture writer's defaults (M2AD: Cube, Ring, Tube);
    ``normal_specimens`` and ``ng_specimens`` are per category; ``resolution`` is the render
    size in pixels (the longer side for non-square datasets).  The tree is built in
    ``<out>.partial`` and renamed into place at the end, so an interrupted run never leaves a
    tree that looks complete.  ``out`` must be missing or empty; with ``overwrite`` an earlier
    synthetic tree there (one with ``SYNTHETIC.json``) is replaced, but never any other
    folder.  ``<out>.partial`` is owned (``m2ad.ownership``): an existing folder of that name
    that another command made is an error naming it, never deleted; a killed run's is taken over.
    """
    try:
        spec = registry.get(dataset)
    except KeyError as error:
        raise ValueError(str(error.args[0])) from None
    chosen = spec.fixture.default_categories if categories is None else categories
    _check_arguments(spec.name, chosen, normal_specimens, ng_specimens, resolution, seed, workers)
    chosen = tuple(chosen)
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another folder, or pass overwrite=True (CLI: --overwrite) to replace an earlier synthetic tree")
        if not (out / MARKER_FILE).is_file():
            raise FileExistsError(f"refusing to overwrite {out}: it is not a synthetic tree (no {MARKER_FILE})")
    partial = ownership.claim_temp_dir(out.with_name(out.name + ".partial"), out)
    extras = spec.fixture.write(partial, categories=chosen, normal_specimens=normal_specimens, ng_specimens=ng_specimens,
                                resolution=resolution, seed=seed, workers=workers, progress=progress)
    marker = {
        "dataset": f"{spec.name}{registry.SYNTHETIC_SUFFIX}",
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "resolution": resolution,
        "categories": list(chosen),
        "normal_specimens": normal_specimens,
        "ng_specimens": ng_specimens,
        **extras,
    }
    write_text_atomic(partial / MARKER_FILE, json.dumps(marker, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    ownership.unmark(partial)
    os.replace(partial, out)
    return out
