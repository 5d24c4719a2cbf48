"""The dataset registry: where each dataset comes from and how to check it.

Each dataset is one module ``m2ad.datasets.<name>`` that holds its layout parser and a
``DOWNLOAD_SPEC`` (:class:`DatasetSpec`): its files with pinned checksums where known, where to
fetch them (:class:`HubSource`, :class:`UrlSource` or :class:`ManualSource`), its license and
citation.  Adding a dataset means adding that module and one line to :data:`DATASET_MODULES`.

Checksums are pinned only where they are known.  A file without a pinned checksum is verified
against the Hub's LFS metadata (its sha256) or a mirror's ``SHA256SUMS``; a file that nothing
can verify is refused unless the user accepts it unverified (and the dataset card says so).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

DATASET_MODULES: dict[str, str] = {
    "m2ad": "m2ad.datasets.m2ad",
}
"""Registry name -> module holding its ``DOWNLOAD_SPEC`` (MVTec-AD and Real3D-AD come later)."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a release: an archive (``.zip``, ``.tar``, ``.tar.xz``, ...).

    ``categories`` lists the categories whose samples the file holds; ``None`` means every
    category needs it (M2AD's ``jsons.zip``, MVTec-AD's single tar).  ``url`` is where a
    :class:`UrlSource` fetches it.
    """

    name: str
    sha256: str | None = None
    size: int | None = None
    categories: tuple[str, ...] | None = None
    url: str | None = None


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub repository; the pinned checksums hold at ``revision``."""

    repo_id: str
    revision: str
    repo_type: str = "dataset"


@dataclass(frozen=True)
class UrlSource:
    """Plain HTTP(S) downloads: every file has its ``url`` and a pinned ``sha256``."""


@dataclass(frozen=True)
class ManualSource:
    """Files the user must fetch by hand (Drive-only, Baidu-only or gated) and then pass
    with ``--source PATH``; ``instructions`` says how."""

    instructions: str


Source = HubSource | UrlSource | ManualSource


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to fetch and check a dataset's release.

    ``name`` is the registry name and the sample-id prefix given to the sharder;
    ``layout_module`` names the module with the layout parser; ``notes`` is advice shown when
    a file or revision cannot be found (e.g. which revision to try instead); ``image_size`` is
    the longer side, in pixels, of the released images (``None``: unknown or varying), above
    which ``download`` refuses a resolution before fetching anything.
    """

    name: str
    title: str
    license: str
    citation: str
    homepage: str
    categories: tuple[str, ...]
    files: tuple[FileSpec, ...]
    source: Source
    layout_module: str
    notes: str = ""
    image_size: int | None = None

    def files_for(self, category: str) -> list[FileSpec]:
        """The files needed to shard ``category``, in declaration order."""
        if category not in self.categories:
            raise ValueError(f"{self.name} has no category {category!r}; expected one of {', '.join(self.categories)}")
        return [spec for spec in self.files if spec.categories is None or category in spec.categories]

    def file(self, name: str) -> FileSpec:
        """The declared file called ``name``."""
        for spec in self.files:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} declares no file {name!r}")


def available() -> list[str]:
    """Names of the registered datasets."""
    return sorted(DATASET_MODULES)


def get(name: str) -> DatasetSpec:
    """The download spec of dataset ``name`` (case-insensitive)."""
    key = name.lower()
    if key not in DATASET_MODULES:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    spec = importlib.import_module(DATASET_MODULES[key]).DOWNLOAD_SPEC
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"{DATASET_MODULES[key]}.DOWNLOAD_SPEC is not a DatasetSpec")
    return spec
