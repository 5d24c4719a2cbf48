"""The ``m2ad`` command line: a thin Typer layer over the Python API.

Each command lives in the module of its group and only parses arguments, calls the API and
prints; the work happens in the library so that scripts can do the same without the CLI.
"""

from __future__ import annotations

import typer

from m2ad.cli import download, evaluate, leaderboard, run, shard, synth, weights

app = typer.Typer(
    name="m2ad",
    help="Benchmark harness and dataset toolkit for M2AD (and MVTec-AD, Real3D-AD, ...).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.command("synth")(synth.synth)
app.command("shard")(shard.shard)
app.command("info")(shard.info)
app.command("download")(download.download)
app.command("evaluate")(evaluate.evaluate)
app.command("run")(run.run)
app.command("predict")(run.predict)
app.command("submit")(leaderboard.submit)
app.add_typer(weights.app, name="weights")
app.add_typer(leaderboard.app, name="leaderboard")

__all__ = ["app"]
