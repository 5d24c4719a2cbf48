"""`m2ad download`: fetch a registered dataset, verify it and shard it into Arrow."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from m2ad.cli._common import console, fail, split_names


def _resolution(value: str) -> int | str:
    if value == "original":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    fail(f"--resolution must be 'original' or a positive number of pixels, not {value!r}")


def download(
    dataset: Annotated[str, typer.Argument(help="Dataset to fetch: m2ad, mvtec-ad, visa or real-iad.")],
    categories: Annotated[
        list[str] | None,
        typer.Option("--categories", "-c", help="Categories to fetch (repeat the option or separate with commas); default: all."),
    ] = None,
    resolution: Annotated[
        str, typer.Option(help="Shard resolution: 'original' or the pixels of the longer side, e.g. 256.")
    ] = "256",
    out: Annotated[Path | None, typer.Option(help="Folder for the sharded dataset; default: ./<dataset>-<resolution>.")] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Mirror to fetch from instead of the registry's source: a base URL or a local folder "
            "holding the same files (optionally with a SHA256SUMS file), or a local archive."
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="Hub revision (branch, tag or commit); default: the pinned one.")
    ] = None,
    insecure_skip_verify: Annotated[
        bool,
        typer.Option(
            "--insecure-skip-verify",
            help="Accept files that no checksum can verify; the dataset card then marks them unverified.",
        ),
    ] = False,
    keep_archives: Annotated[
        bool,
        typer.Option(
            "--keep-archives/--no-keep-archives",
            help="Keep downloaded archives after sharding (--no-keep-archives bounds disk use to about one category).",
        ),
    ] = True,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where archives are downloaded; default: $M2AD_CACHE or ~/.cache/m2ad.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Sharding processes; default: all cores.")] = None,
    allow_upsample: Annotated[
        bool, typer.Option("--allow-upsample", help="Accept a --resolution above the images' size (upsampling); still bounded by memory.")
    ] = False,
    variant: Annotated[
        str | None, typer.Option(help="Release variant, where a dataset has several (Real-IAD: 256, 512, 1024 (default) or raw).")
    ] = None,
) -> None:
    """Download a dataset, verify its checksums and shard it into Arrow, one category at a time.

    Downloads resume where they stopped after an interruption: run the same command again.
    Gated datasets (Real-IAD) use your Hugging Face login (`hf auth login` or HF_TOKEN); the
    token is never printed. MVTec AD's official link rotates: pass the current one with --source.
    """
    from m2ad.archive import UnsafeArchiveError
    from m2ad.datasets.registry import available
    from m2ad.download import DownloadError, download_dataset

    if dataset.lower() not in available():
        fail(f"unknown dataset {dataset!r}; available: {', '.join(available())}")
    chosen = _resolution(resolution)
    categories = split_names(categories)
    target = out if out is not None else Path(f"{dataset.lower()}-{chosen}")
    try:
        report = download_dataset(
            dataset,
            target,
            categories=categories,
            resolution=chosen,
            source=source,
            revision=revision,
            cache_dir=cache_dir,
            insecure_skip_verify=insecure_skip_verify,
            keep_archives=keep_archives,
            workers=workers,
            console=console,
            allow_upsample=allow_upsample,
            variant=variant,
        )
    except (DownloadError, UnsafeArchiveError, zipfile.BadZipFile, FileNotFoundError, FileExistsError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to continue where it stopped", code=130)
    if report.skipped:
        console.print(f"already sharded in {report.out}, skipped: {', '.join(report.skipped)}")
    table = Table(title=f"{report.dataset}: {', '.join(report.categories) or 'nothing new'} -> {report.out}")
    for column in ("file", "bytes", "transferred", "status", "verified", "sha256"):
        table.add_column(column, justify="right" if column in ("bytes", "transferred") else "left")
    for item in report.files:
        table.add_row(
            item.name, f"{item.size:,}", f"{item.bytes_transferred:,}", item.status, item.verified, item.sha256[:16] + "…"
        )
    console.print(table)
    unverified = [item.name for item in report.files if item.verified == "unverified"]
    if unverified:
        console.print(f"[yellow]unverified (recorded in the dataset card):[/] {', '.join(unverified)}")
