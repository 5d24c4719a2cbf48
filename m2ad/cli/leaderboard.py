"""`m2ad submit` and `m2ad leaderboard show|render|publish|seed-paper|remove|compact`.

Every command takes ``--store DIR``; without it the store is ``$M2AD_LEADERBOARD``, else
``$XDG_DATA_HOME/m2ad/leaderboard`` (``~/.local/share/m2ad/leaderboard``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from m2ad.cli._common import PredictionsArgument, PredictionsOption, console, fail, predictions_path

if TYPE_CHECKING:  # imported lazily at run time, to keep `m2ad --help` fast
    import polars as pl

    from leaderboard.store import Store

app = typer.Typer(help="Show, render and publish the leaderboard.", no_args_is_help=True)

StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Leaderboard folder (default: $M2AD_LEADERBOARD, else ~/.local/share/m2ad/leaderboard).",
        show_default=False,
    ),
]
FORMATS = ("table", "markdown", "csv", "json")
ProtocolFilter = Annotated[str | None, typer.Option("--protocol", help="Only this protocol (invariant, synergy, realiad-sample, standard).")]
DatasetFilter = Annotated[str | None, typer.Option("--dataset", help="Only this dataset (e.g. m2ad, m2ad-synth).")]
SourceFilter = Annotated[str | None, typer.Option("--source", help="Only entries from: run, submission or paper.")]
SettingFilter = Annotated[str | None, typer.Option("--setting", help="Only this setting: single-class, multi-class, few-shot or zero-shot.")]
SyntheticFilter = Annotated[
    bool, typer.Option("--synthetic/--no-synthetic", help="Keep (default) or leave out the entries on synthetic datasets (NAME-synth).")
]


def _open_store(store: Path | None) -> Store:
    """The leaderboard store at ``--store``, ``$M2AD_LEADERBOARD`` or the default folder, or a
    clear error (exit 2) when that path cannot be a store."""
    from leaderboard.store import Store, StoreError

    try:
        return Store.open(store)
    except StoreError as error:
        fail(str(error), code=2)


def _read_rows(store: Path | None) -> pl.DataFrame:
    """Every row of the store (a new store first gets the paper rows), or a clear error when the
    store is malformed."""
    from leaderboard.store import StoreError

    board = _open_store(store)
    try:
        _seed_if_new(board)
        return board.read()
    except StoreError as error:
        fail(str(error))


def _seed_if_new(board: Store) -> None:
    """The published M2AD tables in a store that was never written (``leaderboard.paper.seed_if_new``)."""
    from leaderboard.paper import seed_if_new

    try:
        seed_if_new(board)
    except OSError as error:
        fail(f"cannot write the paper rows into the new leaderboard store {board.root}: {error.strerror or error}", code=2)


def submit(
    protocol: Annotated[str, typer.Option(help="Protocol to evaluate under: invariant, synergy (M2AD), realiad-sample (Real-IAD), real3d-ad, mvtec-3d, eyecandies or standard (docs/protocols.md).")],
    method: Annotated[str, typer.Option(help="Method name shown on the leaderboard.")],
    data: Annotated[Path, typer.Option(help="Sharded dataset folder (from `m2ad shard` or `m2ad download`).")],
    predictions_file: PredictionsArgument = None,
    predictions: PredictionsOption = None,
    citation: Annotated[str | None, typer.Option(help="Paper or code URL (or a citation) for the method.")] = None,
    submitter: Annotated[str | None, typer.Option(help="Who submits (name or handle).")] = None,
    variant: Annotated[str | None, typer.Option(help="Preset or variant of the method, e.g. 'wrn50-layer2+3'.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone network, e.g. 'wide_resnet50_2'.")] = None,
    hardware: Annotated[str | None, typer.Option(help="Hardware the predictions were made on.")] = None,
    note: Annotated[str | None, typer.Option(help="Free note shown with the entry.")] = None,
    mode: Annotated[str, typer.Option(help="Metric mode: exact, streaming, compat or compat-float32 (the official evaluation).")] = "exact",
    mask_rule: Annotated[str | None, typer.Option(help="GT mask rule: exact or official (eroded, as the M2AD code). Default: official in the compat modes, else exact.")] = None,
    setting: Annotated[
        str | None,
        typer.Option(help="Setting the predictions were made in: single-class, multi-class, few-shot or zero-shot "
                          "(default: what the predictions file declares; `m2ad run` files declare it)."),
    ] = None,
    shots: Annotated[int | None, typer.Option(help="Shots per category (few-shot; default: from the file).")] = None,
    train_dataset: Annotated[
        str | None, typer.Option(help="Dataset the method was trained on, when not the evaluated one (zero-shot).")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace an earlier submission of the same predictions file.")] = False,
    store: StoreOption = None,
) -> None:
    """Evaluate a predictions file and add it to the leaderboard."""
    from m2ad.predictions import PredictionsError

    from leaderboard.store import StoreError
    from leaderboard.submit import submit as submit_predictions

    predictions = predictions_path(predictions_file, predictions, "submit")
    board = _open_store(store)  # before the evaluation: a bad --store fails at once
    new_store = not board.exists()
    try:
        submission = submit_predictions(
            predictions,
            protocol=protocol,
            data=data,
            method=method,
            store=board,
            variant=variant,
            backbone=backbone,
            submitter=submitter,
            citation=citation,
            note=note,
            hardware=hardware,
            mode=mode,
            mask_rule=mask_rule,
            setting=setting,
            shots=shots,
            train_dataset=train_dataset,
            replace=replace,
        )
    except PredictionsError as error:
        fail(f"invalid predictions file: {error}")
    except (StoreError, ValueError, FileNotFoundError) as error:
        fail(str(error))
    if new_store:  # the first write of this store: it comes with the published tables too
        from leaderboard.paper import seed

        seed(board)
    mean = submission.result.get("mean") or {}
    summary = ", ".join(f"{name} {100 * value:.1f}" for name, value in mean.items() if value is not None)
    verb = "replaced " + ", ".join(submission.replaced) + " with" if submission.replaced else "added"
    console.print(f"{verb} entry {submission.entry_id} ({len(submission.rows)} rows) — mean: {summary}", highlight=False)


def _selected_rows(store: Path | None, *, protocol: str | None = None, dataset: str | None = None, source: str | None = None,
                   setting: str | None = None, synthetic: bool = True, resolution: str | None = None,
                   metrics: list[str] | None = None) -> pl.DataFrame:
    """The store's rows that the filters of show, render and publish keep; exit 2 for a bad filter."""
    from leaderboard import aggregate
    from leaderboard.store import SOURCES
    from m2ad.settings import SETTINGS

    if source is not None and source not in SOURCES:
        fail(f"--source must be one of {', '.join(SOURCES)}, not {source!r}", code=2)
    if setting is not None and setting not in SETTINGS:
        fail(f"--setting must be one of {', '.join(SETTINGS)}, not {setting!r}", code=2)
    every_row = _read_rows(store)
    try:
        aggregate.check_names(every_row, protocol=protocol, metrics=metrics)
    except ValueError as error:
        fail(str(error), code=2)
    return aggregate.filter_rows(every_row, protocol=protocol, dataset=dataset, resolution=resolution, metrics=metrics, source=source,
                                 setting=setting, synthetic=synthetic)


@app.command("show")
def show(
    protocol: ProtocolFilter = None,
    dataset: DatasetFilter = None,
    resolution: Annotated[str | None, typer.Option(help="Only this resolution (e.g. 256, 512).")] = None,
    metric: Annotated[
        list[str] | None, typer.Option(help="Only these metrics (repeat the option, or comma-separate).")
    ] = None,
    by: Annotated[str, typer.Option(help="One row per: entry (mean over categories), category, view or illumination.")] = "entry",
    source: SourceFilter = None,
    setting: SettingFilter = None,
    synthetic: SyntheticFilter = True,
    format: Annotated[str, typer.Option("--format", help="Output: table, markdown, csv or json.")] = "table",  # noqa: A002
    store: StoreOption = None,
) -> None:
    """Show the leaderboard: mean over categories per entry (as the paper reports) and ranks, one
    table per (protocol and its version, dataset, resolution, setting and shots)."""
    from leaderboard import aggregate

    if format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {format!r}", code=2)
    if by not in aggregate.BY_CHOICES:
        fail(f"--by must be one of {', '.join(aggregate.BY_CHOICES)}, not {by!r}", code=2)
    metrics = [name.strip() for item in metric or [] for name in item.split(",") if name.strip()]
    rows = _selected_rows(store, protocol=protocol, dataset=dataset, source=source, setting=setting, synthetic=synthetic,
                          resolution=resolution, metrics=metrics)
    summary = aggregate.summarize(rows, by=by)
    if format == "markdown":
        typer.echo(aggregate.to_markdown(summary), nl=False)
    elif format == "csv":
        typer.echo(aggregate.to_csv(summary), nl=False)
    elif format == "json":
        typer.echo(aggregate.to_json(summary))
    elif summary.is_empty():
        console.print("No leaderboard rows match. Add some with `m2ad submit` (`m2ad leaderboard seed-paper` restores the paper rows).")
    else:
        _print_rich_tables(summary)


def _print_rich_tables(summary: pl.DataFrame) -> None:
    """One rich table per (protocol, dataset, resolution, setting); the best value per column in bold green."""
    from rich.markup import escape
    from rich.table import Table

    from leaderboard import aggregate
    from m2ad.text import printable

    for key, part in aggregate.split_tables(summary):
        columns = aggregate.display_columns(part)
        metrics = aggregate.metric_columns(part)
        best = aggregate.best_per_column(part)
        table = Table(title=escape(aggregate.table_title(key)))
        numeric = {*metrics, "categories", "mean_rank"}
        for name in columns:
            table.add_column(escape(printable(name)), justify="right" if name in numeric else "left")
        for row in part.iter_rows(named=True):
            cells = []
            for name in columns:
                text = escape(aggregate.display_cell(name, row[name], metrics))
                if name in metrics and row[name] is not None and row[name] == best[name]:
                    text = f"[bold green]{text}[/]"
                cells.append(text)
            table.add_row(*cells)
        console.print(table)


@app.command("render")
def render(
    out: Annotated[Path, typer.Argument(help="Folder to write the site into (index.html, leaderboard.md, figures/).")],
    protocol: ProtocolFilter = None,
    dataset: DatasetFilter = None,
    source: SourceFilter = None,
    setting: SettingFilter = None,
    synthetic: SyntheticFilter = True,
    store: StoreOption = None,
) -> None:
    """Render the leaderboard (or the entries the filters keep, e.g. --no-synthetic) as a static,
    offline site with sortable tables and figures."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from leaderboard.render import render_site

    rows = _selected_rows(store, protocol=protocol, dataset=dataset, source=source, setting=setting, synthetic=synthetic)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as progress:
        progress.add_task("rendering tables and figures", total=None)
        try:
            index = render_site(rows, out)
        except OSError as error:
            fail(f"cannot write the site to {out}: {error}")
    console.print(f"wrote {index} ({len(rows)} rows)", highlight=False)


@app.command("publish")
def publish(
    repo: Annotated[str, typer.Option(help="Hugging Face dataset repository, ORG/NAME.")],
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Write the folder that would be uploaded instead of uploading.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="With --dry-run: where to write the folder (default: a new temporary folder).")
    ] = None,
    license_id: Annotated[
        str | None, typer.Option("--license", help="Licence of the published leaderboard, a Hub licence id (default: apache-2.0, m2ad's and M2AD's).")
    ] = None,
    protocol: ProtocolFilter = None,
    dataset: DatasetFilter = None,
    source: SourceFilter = None,
    setting: SettingFilter = None,
    synthetic: SyntheticFilter = True,
    store: StoreOption = None,
) -> None:
    """Push the leaderboard (or the entries the filters keep, e.g. --no-synthetic: Parquet, rendered
    site, dataset card with its licence) to a Hugging Face dataset repository."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from leaderboard.publish import DEFAULT_LICENSE, PublishError, build_folder, check_license, check_repo_id
    from leaderboard.publish import publish as publish_rows

    license_id = license_id or DEFAULT_LICENSE
    try:
        check_repo_id(repo)
        check_license(license_id)
    except PublishError as error:
        fail(str(error))
    rows = _selected_rows(store, protocol=protocol, dataset=dataset, source=source, setting=setting, synthetic=synthetic)
    if rows.is_empty():
        fail("the leaderboard is empty (or no entry passes the filters): nothing to publish")
    if out is not None and not dry_run:
        fail("--out only goes with --dry-run")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as progress:
        try:
            if dry_run:
                progress.add_task("writing the upload folder", total=None)
                folder = build_folder(rows, out or Path(tempfile.mkdtemp(prefix="m2ad-publish-")), license_id)
            else:
                progress.add_task(f"uploading to {repo}", total=None)
                url = publish_rows(rows, repo, private=private, license_id=license_id)
        except PublishError as error:
            fail(str(error))
    if dry_run:
        console.print(f"dry run: the folder that would be uploaded to {repo} is {folder}", highlight=False)
    else:
        console.print(f"published {len(rows)} rows to {repo}: {url}", highlight=False)


@app.command("seed-paper")
def seed_paper(store: StoreOption = None) -> None:
    """Add (or refresh) the published M2AD-Synergy tables at 256 and 512 as source=paper rows (a new
    store gets them by itself: this restores them after a removal, or updates them)."""
    from leaderboard.paper import seed

    count = seed(_open_store(store))
    console.print(f"wrote {count} paper rows (M2AD-Synergy, Tables 2 and 3)")


@app.command("remove")
def remove(
    entry_ids: Annotated[list[str], typer.Argument(help="Entry ids to delete (see `show --format json`).")],
    store: StoreOption = None,
) -> None:
    """Delete entries (every row of each) from the leaderboard, atomically."""
    from leaderboard.store import StoreError

    board = _open_store(store)
    try:
        known = set(board.read()["entry_id"].to_list())
        unknown = [entry for entry in entry_ids if entry not in known]
        if unknown:
            fail(f"no such entries: {', '.join(unknown)}")
        removed = board.remove_entries(entry_ids)
    except StoreError as error:
        fail(str(error))
    console.print(f"removed {removed} rows of {len(entry_ids)} entries", highlight=False)


@app.command("compact")
def compact(store: StoreOption = None) -> None:
    """Merge the store's part files into one (safe while others submit)."""
    from leaderboard.store import StoreError

    board = _open_store(store)
    try:
        rows = board.compact()
    except StoreError as error:
        fail(str(error))
    console.print(f"compacted {board.root}: {rows} rows in {len(board.parts())} file(s)", highlight=False)
