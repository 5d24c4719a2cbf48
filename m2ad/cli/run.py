"""`m2ad run` (placeholder until implemented)."""
from m2ad.cli._common import fail


def run() -> None:
    """Run methods over categories and seeds."""
    fail("not implemented yet")
