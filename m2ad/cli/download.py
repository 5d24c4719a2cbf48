"""`m2ad download` (placeholder until implemented)."""
from m2ad.cli._common import fail


def download() -> None:
    """Download a dataset and shard it."""
    fail("not implemented yet")
