"""Helpers shared by the CLI modules: one console and one way to fail with a clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as an error (no traceback) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def split_names(values: list[str] | None) -> list[str] | None:
    """Names from a repeatable option whose values may also be comma-separated
    (``-c Bird -c Car`` or ``-c Bird,Car``); ``None`` when none were given."""
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return names or None


PredictionsArgument = Annotated[
    Path | None, typer.Argument(metavar="PREDICTIONS", help="Predictions file (Parquet, see docs/predictions.md); or give it as --predictions.",
                                show_default=False)
]
PredictionsOption = Annotated[
    Path | None, typer.Option("--predictions", help="The predictions file, as an option (the same as the PREDICTIONS argument).", show_default=False)
]


def predictions_path(argument: Path | None, option: Path | None, command: str) -> Path:
    """The predictions file of ``submit`` and ``evaluate``, which both take it as the
    PREDICTIONS argument or as ``--predictions``; exit 2 when it is missing, given twice
    differently, or not a file."""
    if argument is not None and option is not None and argument != option:
        fail(f"two predictions files ({argument} and --predictions {option}): give one", code=2)
    path = argument or option
    if path is None:
        fail(f"missing the predictions file: m2ad {command} PREDICTIONS ... (or --predictions PREDICTIONS)", code=2)
    if not path.is_file():
        fail(f"{path}: no such predictions file", code=2)
    return path
