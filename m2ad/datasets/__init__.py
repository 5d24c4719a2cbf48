"""Datasets as specs: one package per dataset (``m2ad.datasets.<name>``) holding its spec,
its layout parser and its fixture writer, found through :mod:`m2ad.datasets.registry`.

Reusable layouts live in :mod:`m2ad.datasets.layouts`: the MVTec-style folder layout
(``folder``: MVTec-AD and a user's own data) and the listing layout (a split file that lists
every image: M2AD's and Real-IAD's JSON, VisA's CSV).
"""

from m2ad.datasets.registry import LayoutError, available, detect, get, spec_name
from m2ad.datasets.spec import DatasetSpec, ExtraColumn, FileSpec, HubSource, Layout, ManualSource, UrlSource

__all__ = [
    "DatasetSpec",
    "ExtraColumn",
    "FileSpec",
    "HubSource",
    "Layout",
    "LayoutError",
    "ManualSource",
    "UrlSource",
    "available",
    "detect",
    "get",
    "spec_name",
]
