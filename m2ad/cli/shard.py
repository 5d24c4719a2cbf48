"""`m2ad shard` and `m2ad info` (placeholders until implemented)."""
from m2ad.cli._common import fail


def shard() -> None:
    """Validate an M2AD tree and write Arrow shards."""
    fail("not implemented yet")


def info() -> None:
    """Summarise a sharded dataset."""
    fail("not implemented yet")
