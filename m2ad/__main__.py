"""``python -m m2ad``: the ``m2ad`` command."""

from m2ad.cli import app

if __name__ == "__main__":
    app(prog_name="m2ad")
