"""`m2ad shard SRC OUT` (validate a release tree, write Arrow shards) and `m2ad info PATH`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from m2ad.cli._common import console, err_console, fail, split_names

if TYPE_CHECKING:
    import polars as pl

    from m2ad.schema import Problem

_SHOWN_PROBLEMS = 30


def _print_problems(problems: Sequence[Problem], title: str) -> None:
    """Per-kind counts and the first problems, on stderr."""
    kinds = Counter(problem.kind for problem in problems)
    err_console.print(f"[bold]{title}[/]: " + ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())), highlight=False)
    for problem in problems[:_SHOWN_PROBLEMS]:
        err_console.print(f"  {problem}", highlight=False, markup=False)
    if len(problems) > _SHOWN_PROBLEMS:
        err_console.print(f"  ... and {len(problems) - _SHOWN_PROBLEMS} more", highlight=False)


def shard(
    src: Annotated[Path, typer.Argument(help="A release tree in its official layout (real or from `m2ad synth`).")],
    out: Annotated[Path, typer.Argument(help="Folder for the shards; a rerun on the same folder resumes.")],
    resolution: Annotated[
        str, typer.Option(help="'original' (released bytes, unchanged) or the pixels of the longer side, e.g. 256 or 512.")
    ] = "original",
    categories: Annotated[
        list[str] | None,
        typer.Option("--categories", "-c", help="Categories to shard (repeat the option or separate by commas); default: all."),
    ] = None,
    skip_bad: Annotated[
        bool,
        typer.Option("--skip-bad", help="Quarantine the specimens of bad files and list them, instead of failing."),
    ] = False,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Registered dataset whose layout the tree has (m2ad, mvtec-ad, visa, real-iad, folder for your own data "
                          "in the MVTec layout, or NAME-synth); also the sample-id prefix. Default: detected from the tree."),
    ] = None,
    variant: Annotated[
        str | None, typer.Option(help="Release variant, where a dataset has several (Real-IAD: 256, 512, 1024 or raw image folders).")
    ] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest Arrow shard file, e.g. 256MB or 1GB.")] = "256MB",
    allow_upsample: Annotated[
        bool, typer.Option("--allow-upsample", help="Accept a --resolution above the images' size (upsampling); still bounded by memory.")
    ] = False,
) -> None:
    """Validate a release tree (file names, its split file against the files, completeness, masks only
    for defective images, decodable images and masks of the right size and mode) and write Arrow shards,
    a Parquet manifest and a dataset card. The layout is the --dataset's, or the one detected from the
    files (a tree that fits several is refused, naming them). Interrupted runs resume. A --resolution
    above the images' size is refused (see --allow-upsample), and so is one whose resizing would not fit
    in memory. Exit status 2 for bad input, 1 for problems in the tree."""
    from m2ad.shard import ShardError, shard_tree

    if not src.is_dir():
        fail(f"{src} is not a folder holding a release tree", code=2)
    try:
        report = shard_tree(
            src,
            out,
            resolution=resolution,
            dataset=dataset,
            categories=split_names(categories),
            strict=not skip_bad,
            workers=workers,
            max_shard_size=max_shard_size,
            allow_upsample=allow_upsample,
            variant=variant,
        )
    except ShardError as error:
        _print_problems(error.problems, "problems")
        fail(str(error))
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad arguments or output folder
        fail(str(error), code=2)
    reused = f" ({len(report.reused_units)} reused from an earlier run)" if report.reused_units else ""
    console.print(
        f"wrote {report.samples:,} samples of {', '.join(report.categories)} ({report.dataset}, resolution "
        f"{report.resolution}) to {report.out} in {report.seconds:.1f} s; {len(report.written_units) + len(report.reused_units)} "
        f"units{reused}",
        highlight=False,
    )
    if report.skipped:
        _print_problems(report.skipped, "skipped (quarantined, listed in the dataset card)")
    console.print(f"summary: m2ad info {report.out}", highlight=False)


def _size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def _human(size: int) -> str:
    """``size`` bytes in a short human form."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def info(
    path: Annotated[
        Path | None,
        typer.Argument(help="Sharded dataset folder (written by `m2ad shard` or `m2ad download`); default: the embedded dataset.",
                       show_default=False),
    ] = None,
) -> None:
    """Summarise a sharded dataset (its absolute path first): counts per category, split and label;
    its extra columns (M2AD: detectability); view x illumination completeness where it has both
    axes; size on disk.  Without PATH: the embedded synthetic M2AD that `m2ad run` uses by default."""
    import polars as pl

    from m2ad.data import load_manifest
    from m2ad.embedded import default_dataset_dir
    from m2ad.schema import INFO_FILE, DatasetInfo

    if path is None:
        path = default_dataset_dir()
        if not (path / INFO_FILE).is_file():
            fail(f"the embedded dataset is not built yet; it will be at {path} (set $M2AD_CACHE to move it): "
                 "`m2ad run --protocol invariant` (or `make demo`) builds it on first use", code=2)
    path = path.absolute()
    try:
        described = DatasetInfo.read(path)
        manifest = load_manifest(path)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error), code=2)

    console.print(f"[bold]{described.dataset}[/] at {path}", highlight=False)
    console.print(
        f"resolution {described.resolution}, version {described.version or 'not stated'}, license {described.license or 'not stated'}, "
        f"created {described.created or '?'}, {manifest.height:,} samples, {_human(_size(path))} on disk",
        highlight=False,
    )
    if described.source:
        console.print("source: " + ", ".join(f"{k}={v}" for k, v in sorted(described.source.items()) if k not in ("checksums", "files", "citation")), highlight=False)
    console.print(
        f"spec {described.spec or described.dataset}, axes {', '.join(described.axes) or 'none'}, protocols {', '.join(described.protocols) or 'none'}, "
        f"geometry {described.geometry}, shot unit {described.shot_unit}",
        highlight=False,
    )
    flags = [name for name in described.extra_columns if manifest.schema.get(name) == pl.Boolean]

    clouds = "num_points" in manifest.columns  # a point-cloud dataset: points instead of masks
    dense = ("points", pl.col("num_points").sum()) if clouds else ("masks", pl.col("has_mask").sum())
    counts = Table(title="samples per category and split")
    for column in ("category", "split", "clouds" if clouds else "images", "normal", "anomalous", "specimens (NG)",
                   *(f"{name} yes/no" for name in flags), dense[0], "size"):
        counts.add_column(column, justify="left" if column in ("category", "split") else "right")
    per_unit = manifest.group_by(["category", "split"], maintain_order=True).agg(
        pl.len().alias("images"),
        (pl.col("label") == 0).sum().alias("normal"),
        (pl.col("label") == 1).sum().alias("anomalous"),
        pl.col("specimen").n_unique().alias("specimens"),
        pl.col("specimen").filter(pl.col("object_label") == 1).n_unique().alias("ng"),
        *((pl.col(name) == True).sum().alias(f"{name}:yes") for name in flags),  # noqa: E712 (polars expression)
        *((pl.col(name) == False).sum().alias(f"{name}:no") for name in flags),  # noqa: E712 (polars expression)
        dense[1].alias("dense"),
        pl.col("shard_dir").first().alias("shard_dir"),
    )
    for row in per_unit.iter_rows(named=True):
        counts.add_row(
            row["category"],
            row["split"],
            f"{row['images']:,}",
            f"{row['normal']:,}",
            f"{row['anomalous']:,}",
            f"{row['specimens']} ({row['ng']})",
            *(f"{row[f'{name}:yes']:,}/{row[f'{name}:no']:,}" for name in flags),
            f"{row['dense']:,}",
            _human(_size(path / row["shard_dir"])),
        )
    console.print(counts)

    with_views = manifest.filter(pl.col("view").is_not_null() & pl.col("illumination").is_not_null())
    if with_views.height:
        _print_completeness(with_views)
    if described.skipped:
        console.print(f"[yellow]{len(described.skipped)} problem(s) in the source were quarantined[/] (see README.md in {path})", highlight=False)


def _print_completeness(frame: pl.DataFrame) -> None:
    """Per category: specimens with all view x illumination configurations; then the grid of
    image counts per (view, illumination), marking cells below the most common count."""
    import polars as pl

    views = sorted(frame["view"].unique().to_list())
    lights = sorted(frame["illumination"].unique().to_list())
    configurations = len(views) * len(lights)
    per_specimen = frame.group_by(["category", "specimen"]).agg(pl.struct("view", "illumination").n_unique().alias("configs"))
    summary = Table(title=f"completeness ({len(views)} views x {len(lights)} illuminations)")
    for column in ("category", "specimens", "complete", "incomplete"):
        summary.add_column(column, justify="left" if column == "category" else "right")
    for (category,), group in per_specimen.sort("category").group_by("category", maintain_order=True):
        complete = int((group["configs"] == configurations).sum())
        incomplete = group.height - complete
        summary.add_row(category, str(group.height), str(complete), f"[red]{incomplete}[/]" if incomplete else "0")
    console.print(summary)

    cells = frame.group_by(["view", "illumination"]).agg(pl.len().alias("images"))
    lookup = {(row["view"], row["illumination"]): row["images"] for row in cells.iter_rows(named=True)}
    expected = Counter(lookup.values()).most_common(1)[0][0]
    grid = Table(title="images per view (rows) x illumination (columns)")
    grid.add_column("view")
    for light in lights:
        grid.add_column(light, justify="right")
    for view in views:
        values = [lookup.get((view, light), 0) for light in lights]
        grid.add_row(view, *(str(value) if value == expected else f"[red]{value}[/]" for value in values))
    console.print(grid)
