"""`m2ad synth OUT`: write a synthetic dataset in its official on-disk layout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from m2ad.cli._common import console, fail, split_names


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to create; it must be missing or empty (see --overwrite).")],
    dataset: Annotated[str, typer.Option(help="Dataset whose layout to write: m2ad, mvtec-ad, visa, real-iad or folder.")] = "m2ad",
    categories: Annotated[
        list[str] | None,
        typer.Option("--categories", "-c", help="Categories to render (repeat or separate with commas); m2ad: Cube, Dice, Ring, Tube "
                                                 "(default: Cube, Ring, Tube); other datasets: see the error message for a wrong one."),
    ] = None,
    normal_specimens: Annotated[int, typer.Option(help="Normal (Good) specimens per category; m2ad: 60 % go to train.")] = 10,
    ng_specimens: Annotated[int, typer.Option(help="Defective (NG) specimens per category; all go to test.")] = 10,
    resolution: Annotated[int, typer.Option(help="Image width and height in pixels (the width for non-square datasets).")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier synthetic tree at OUT.")] = False,
) -> None:
    """Generate a synthetic dataset from rendered 3-D specimens, in the official layout of --dataset
    with its naming quirks. m2ad (the default): 12 views under 10 lights per specimen, with masks and
    the official jsons/meta_unsupervised.json (60 % of normal specimens to train, seed 42).
    The tree is built in OUT.partial, which must not be another command's folder.
    Exit status 2 for bad input."""
    from m2ad.synth import generate

    started = time.perf_counter()
    try:
        root = generate(
            out,
            dataset=dataset,
            categories=split_names(categories),
            normal_specimens=normal_specimens,
            ng_specimens=ng_specimens,
            resolution=resolution,
            seed=seed,
            workers=workers,
            overwrite=overwrite,
        )
    except (ValueError, FileExistsError) as error:  # bad arguments or output folder
        fail(str(error), code=2)
    console.print(f"wrote a synthetic {dataset} tree to {root} in {time.perf_counter() - started:.1f} s", highlight=False)
