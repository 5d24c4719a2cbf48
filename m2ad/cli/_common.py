"""Helpers shared by the CLI modules: one console and one way to fail with a clear message."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as an error (no traceback) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def split_names(values: list[str] | None) -> list[str] | None:
    """Names from a repeatable option whose values may also be comma-separated
    (``-c Bird -c Car`` or ``-c Bird,Car``); ``None`` when none were given."""
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return names or None
