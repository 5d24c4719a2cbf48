"""The settings: which training samples each fit gets, and what a few-shot shot is.

The harness, not the method, selects the training samples, so that every method of a run sees
the same ones:

- ``single-class``: one fit per category, on the training samples the protocol selects for it;
- ``multi-class``: one fit on the training samples of every category of the run;
- ``few-shot``: one fit per category, on ``shots`` shots drawn from them;
- ``multi-class`` with ``shots``: one fit on ``shots`` shots of every category;
- ``zero-shot``: no fit on the target data; with ``train_data``, one fit on the training samples
  of every category of that other dataset.

A shot is one unit of the dataset's ``shot_unit`` (``m2ad.schema.DatasetInfo``): an image, or a
specimen with all its images (M2AD: 120 images, every view under every light, because a
method of M2AD must see every configuration; a single image would leave 119 of them unseen).
A dataset whose spec fields are not filled yet (no ``axes``, no ``protocols``) gets
``specimen`` when its manifest has views, else ``image``.

Shots are drawn per (seed, category) from the sorted training units with a generator seeded by
``sha256(seed, category)``: the same for every method and machine, independent of the
manifest's row order, and nested (the first K of one permutation, so the 1-shot draw is part
of the 2-shot draw at the same seed).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from m2ad.run.config import RunError
from m2ad.schema import DatasetInfo

SHOT_UNITS = ("image", "specimen")
_UNIT_COLUMN = {"image": "sample_id", "specimen": "specimen"}


@dataclass(frozen=True)
class TrainingSelection:
    """The training samples of one fit: ``scope`` names it (a category, ``all-categories`` or
    ``from-<dataset>``), ``serves`` lists the target categories whose cells use it, ``frame`` is
    the manifest rows of the training data, and ``shots`` the drawn units per category."""

    scope: str
    serves: tuple[str, ...]
    frame: pl.DataFrame
    shots: dict[str, list[str]] | None = None
    shot_unit: str | None = None


def shot_unit(info: DatasetInfo) -> str:
    """What one shot of this dataset is, as its spec says (``dataset.json``)."""
    unit = info.shot_unit
    if unit not in SHOT_UNITS:
        raise RunError(f"{info.dataset}: shot_unit must be one of {', '.join(SHOT_UNITS)}, got {unit!r}")
    return unit


def class_name(info: DatasetInfo, category: str) -> str:
    """The category's name for text prompts: the dataset's ``class_names`` entry, else the category."""
    return info.class_names.get(category) or category


def draw_shots(units: list[str], shots: int, seed: int, category: str) -> list[str]:
    """``shots`` of the distinct ``units``, in draw order (see the module docstring)."""
    ordered = sorted(set(units))
    if shots > len(ordered):
        raise RunError(f"few-shot with {shots} shots: category {category!r} has only {len(ordered)} training units")
    digest = hashlib.sha256(f"{seed}\0{category}".encode()).digest()
    generator = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
    return [ordered[index] for index in generator.permutation(len(ordered))[:shots]]


def select_training(
    setting: str,
    shots: int | None,
    seed: int,
    train_rows: dict[str, pl.DataFrame],
    unit: str,
    targets: list[str],
) -> list[TrainingSelection]:
    """The fits of one seed.  ``train_rows`` maps each training category to its training rows
    (the protocol's ``train_samples``; of ``train_data`` for zero-shot) and ``targets`` are the
    run's categories.  Zero-shot without training rows gives no fit."""
    empty = [category for category, rows in train_rows.items() if rows.height == 0]
    if empty:
        raise RunError(f"the protocol selects no training samples for {', '.join(empty)}")
    if setting == "zero-shot":
        if not train_rows:
            return []
        dataset = next(iter(train_rows.values()))["dataset"][0]
        frame = pl.concat(list(train_rows.values()))
        return [TrainingSelection(scope=f"from-{dataset}", serves=tuple(targets), frame=frame)]
    drawn = None
    if shots is not None:
        column = _UNIT_COLUMN[unit]
        drawn = {category: draw_shots(rows[column].to_list(), shots, seed, category) for category, rows in train_rows.items()}
        train_rows = {category: rows.filter(pl.col(column).is_in(drawn[category])) for category, rows in train_rows.items()}
    if setting == "multi-class":
        return [TrainingSelection("all-categories", tuple(targets), pl.concat(list(train_rows.values())), drawn, unit if drawn else None)]
    return [
        TrainingSelection(category, (category,), train_rows[category], {category: drawn[category]} if drawn else None, unit if drawn else None)
        for category in targets
    ]
