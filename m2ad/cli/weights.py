"""`m2ad weights list|fetch|import`: the pretrained weights the baselines use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from m2ad.cli._common import console, fail

app = typer.Typer(help="Manage pretrained weights (list, fetch, import into the local cache).", no_args_is_help=True)


@app.command("list")
def list_weights() -> None:
    """List the known weights: license, size, how they are verified, and whether they are cached."""
    from baselines import weights
    from m2ad.cli import listing

    listing.print_table(listing.weights(), f"weights (cache: {weights.weights_dir()})")


@app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="Registry name, see `m2ad weights list`.")],
    url: Annotated[str | None, typer.Option(help="Download from this URL (a mirror) instead of the official one.")] = None,
    timeout: Annotated[float, typer.Option(help="Network timeout in seconds.", min=1.0)] = 15.0,
) -> None:
    """Download weights into the cache and verify their sha256."""
    from baselines import weights

    try:
        path = weights.fetch(name, url=url, timeout=timeout)
    except weights.WeightsError as error:
        fail(str(error))
    console.print(f"{name}: {path}")


@app.command("import")
def import_weights(
    name: Annotated[str, typer.Argument(help="Registry name, see `m2ad weights list`.")],
    path: Annotated[Path, typer.Argument(help="A downloaded copy of the weights file.")],
) -> None:
    """Copy a local weights file into the cache after verifying its sha256 (where known)."""
    from baselines import weights

    try:
        target = weights.import_file(name, path)
    except weights.WeightsError as error:
        fail(str(error))
    if weights.entry(name).verification == "none":
        console.print(f"[yellow]note:[/] no published checksum for {name}; the file was not verified")
    console.print(f"{name}: {target}")
