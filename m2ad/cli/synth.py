"""`m2ad synth` (owned by the synthetic-data work; placeholder until implemented)."""
from m2ad.cli._common import fail


def synth() -> None:
    """Generate a synthetic M2AD in the official layout."""
    fail("not implemented yet")
