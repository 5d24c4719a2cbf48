"""`m2ad evaluate` (placeholder until implemented)."""
from m2ad.cli._common import fail


def evaluate() -> None:
    """Score a predictions file under a protocol."""
    fail("not implemented yet")
