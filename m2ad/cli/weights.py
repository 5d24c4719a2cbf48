"""`m2ad weights` (placeholder until implemented)."""
import typer

from m2ad.cli._common import fail

app = typer.Typer(help="Manage pretrained weights.", no_args_is_help=True)


@app.command("list")
def list_weights() -> None:
    """List known weights."""
    fail("not implemented yet")
