"""The dataset registry: one package per dataset, found by name or by the shape of a tree.

Each dataset is a package ``m2ad.datasets.<name>`` whose ``SPEC`` is its
:class:`~m2ad.datasets.spec.DatasetSpec` (files, sources, checksums, license, layout parser,
fixture writer, ...).  Adding a dataset means adding that package and one line to
:data:`DATASET_PACKAGES`; the CLI, the sharder, the downloader, the card and the conformance
tests take everything from the spec.

Checksums are pinned only where they are known.  A file without a pinned checksum is verified
against the Hub's LFS metadata (its sha256) or a mirror's ``SHA256SUMS``; a file that nothing
can verify is refused unless the user accepts it unverified (and the dataset card says so).

A synthetic tree written by ``m2ad synth --dataset NAME`` is the dataset ``NAME-synth``,
which uses the spec of ``NAME``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from m2ad.datasets.spec import NOT_THIS, DatasetSpec

DATASET_PACKAGES: dict[str, str] = {
    "m2ad": "m2ad.datasets.m2ad",
    "mvtec-ad": "m2ad.datasets.mvtec_ad",
    "visa": "m2ad.datasets.visa",
    "real-iad": "m2ad.datasets.real_iad",
    "folder": "m2ad.datasets.folder",
    "real3d-ad": "m2ad.datasets.real3d_ad",
    "mvtec-3d": "m2ad.datasets.mvtec_3d",
    "eyecandies": "m2ad.datasets.eyecandies",
}
"""Registry name -> package holding its ``SPEC``."""

SYNTHETIC_SUFFIX = "-synth"


class LayoutError(ValueError):
    """No registered layout, or more than one equally, fits a tree; ``candidates`` names them."""

    def __init__(self, message: str, candidates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.candidates = list(candidates)


def available() -> list[str]:
    """Names of the registered datasets."""
    return sorted(DATASET_PACKAGES)


def spec_name(dataset: str) -> str:
    """The registry name behind a dataset name: itself, or ``NAME`` for ``NAME-synth``
    (case-insensitive); raises ``KeyError`` for a name no spec serves."""
    key = dataset.lower()
    if key not in DATASET_PACKAGES and key.endswith(SYNTHETIC_SUFFIX):
        key = key[: -len(SYNTHETIC_SUFFIX)]
    if key not in DATASET_PACKAGES:
        raise KeyError(f"unknown dataset {dataset!r}; available: {', '.join(available())}")
    return key


def get(name: str) -> DatasetSpec:
    """The spec of dataset ``name`` (case-insensitive; ``NAME-synth`` gives ``NAME``'s)."""
    key = spec_name(name)
    spec = importlib.import_module(DATASET_PACKAGES[key]).SPEC
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"{DATASET_PACKAGES[key]}.SPEC is not a DatasetSpec")
    return spec


def detect(files: Sequence[str]) -> DatasetSpec:
    """The dataset whose layout fits a tree with these files best; :class:`LayoutError`
    (naming the candidates) when none fits or several fit equally well."""
    scores = {name: get(name).layout.detect(files) for name in available()}
    best = max(scores.values())
    candidates = sorted(name for name, score in scores.items() if score == best and best > NOT_THIS)
    if not candidates:
        raise LayoutError(f"the tree is in no known layout ({', '.join(available())}); pass --dataset NAME")
    if len(candidates) > 1:
        raise LayoutError(f"the tree fits several layouts: {', '.join(candidates)}; pass --dataset with one of them", candidates)
    return get(candidates[0])
