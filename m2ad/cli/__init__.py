"""The ``m2ad`` command line: a thin Typer layer over the Python API.

Each command lives in the module of its group and only parses arguments, calls the API and
prints; the work happens in the library so that scripts can do the same without the CLI.
A usage error (an unknown option, a missing argument, a bad value) is one line on stderr
naming the command and its ``--help``, with exit status 2 (:class:`OneLineErrors`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import m2ad
from m2ad.cli import download, evaluate, leaderboard, listing, run, shard, synth, weights
from m2ad.cli._common import err_console


class OneLineErrors(TyperGroup):
    """The root command group: click's usage errors (framed boxes with the usage text) become
    one line, ``error: m2ad evaluate: No such option: --protcol ...; see 'm2ad evaluate --help'``."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as error:  # click's ClickException, as Typer vendors it
            if type(error).__name__ == "NoArgsIsHelpError":  # the help was printed as the error was made
                sys.exit(error.exit_code)
            context = getattr(error, "ctx", None)
            where = f"{context.command_path}: " if context is not None else ""
            hint = f"; see '{context.command_path} --help'" if context is not None else ""
            message = " ".join(error.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
            err_console.print(f"[bold red]error:[/] {where}{message}{hint}", markup=True, highlight=False, soft_wrap=True)
            sys.exit(error.exit_code)  # type: ignore[attr-defined]
        except typer.Abort:
            err_console.print("[bold red]aborted[/]", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"m2ad {m2ad.__version__} ({m2ad.INSTALL_ROOT})")
        raise typer.Exit()


app = typer.Typer(
    name="m2ad",
    cls=OneLineErrors,
    help="Benchmark harness and dataset toolkit for M2AD (and MVTec AD, VisA, Real-IAD and your own images).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version (and where m2ad is installed) and exit.")
    ] = False,
) -> None:
    """Benchmark harness and dataset toolkit for M2AD (and MVTec AD, VisA, Real-IAD and your own images)."""


app.command("synth")(synth.synth)
app.command("shard")(shard.shard)
app.command("info")(shard.info)
app.command("download")(download.download)
app.command("evaluate")(evaluate.evaluate)
app.command("run")(run.run)
app.command("predict")(run.predict)
app.command("submit")(leaderboard.submit)
app.command("list")(listing.list_registry)
app.add_typer(weights.app, name="weights")
app.add_typer(leaderboard.app, name="leaderboard")

__all__ = ["OneLineErrors", "app"]
