"""`m2ad submit` and `m2ad leaderboard` (placeholders until implemented)."""
import typer

from m2ad.cli._common import fail

app = typer.Typer(help="Show, render and publish the leaderboard.", no_args_is_help=True)


def submit() -> None:
    """Evaluate a predictions file and add it to the leaderboard."""
    fail("not implemented yet")


@app.command("show")
def show() -> None:
    """Show the leaderboard."""
    fail("not implemented yet")
