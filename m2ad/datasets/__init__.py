"""One module per dataset: its layout parser (release tree -> schema records and problems).

``m2ad.datasets.m2ad.parse(source, dataset_name=...)`` reads an M2AD release (real or
synthetic) through a :class:`m2ad.schema.TreeSource` and returns a
:class:`m2ad.schema.ParsedRelease`; ``m2ad.shard`` writes the records as Arrow shards.
"""

# The dataset registry (sources, checksums, license) lives in m2ad.datasets.registry.
from m2ad.datasets.registry import (  # noqa: E402
    DatasetSpec,
    FileSpec,
    HubSource,
    ManualSource,
    UrlSource,
    available,
    get,
)

__all__ = ["DatasetSpec", "FileSpec", "HubSource", "ManualSource", "UrlSource", "available", "get"]
