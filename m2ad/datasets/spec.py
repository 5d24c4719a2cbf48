"""What a dataset is: its spec (:class:`DatasetSpec`), the files of its release and their
sources, and the contract of its layout parser (:class:`Layout`).

A spec holds everything the rest of m2ad needs to know about a dataset, so nothing downstream
knows datasets by name: where its files come from and how to check them; its license,
citation and categories; its modalities, sample axes (``view``, ``illumination``) and extra
columns (M2AD's ``detectable``); what its masks hold; its evaluation geometry; the protocols
that fit it; names of its categories usable as text prompts; what one few-shot shot is; its
layout parser and its fixture writer.  ``m2ad shard`` writes these facts into
``dataset.json`` (:meth:`DatasetSpec.info_fields`), where protocols and the runner read them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from m2ad import modalities
from m2ad.schema import GEOMETRIES, ParsedRelease, TreeSource, manifest_schema, sample_features

NOT_THIS = 0
GENERIC = 1
SPECIFIC = 2
"""What :meth:`Layout.detect` answers: not this layout; a generic layout that fits any tree of
its shape (``folder``); this dataset's own layout (names, split files)."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a release: an archive (``.zip``, ``.tar``, ``.tar.xz``, ...).

    ``categories`` lists the categories whose samples the file holds; ``None`` means every
    category needs it (M2AD's ``jsons.zip``, MVTec-AD's single tar).  ``url`` is where a
    :class:`UrlSource` fetches it.  ``variant`` is the release variant the file belongs to
    (Real-IAD's resolution folders); ``None``: every variant needs it.  ``md5``: the only
    checksum published for a file that has no known sha256 (MVTec 3D-AD); a weaker check
    that the downloader applies and records as ``md5`` when nothing gives a sha256.
    """

    name: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    categories: tuple[str, ...] | None = None
    url: str | None = None
    variant: str | None = None


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub repository; the pinned checksums hold at ``revision``.  ``gated``:
    the repository needs an accepted access request; ``access`` says how to get one."""

    repo_id: str
    revision: str
    repo_type: str = "dataset"
    gated: bool = False
    access: str = ""


@dataclass(frozen=True)
class UrlSource:
    """Plain HTTP(S) downloads: every file has its ``url`` and a pinned ``sha256``.  The URL
    can be replaced with ``--source`` (a file URL or a mirror's base URL), because some
    official links rotate; the pinned sha256 still applies."""


@dataclass(frozen=True)
class ManualSource:
    """Files the user must fetch by hand (Drive-only, Baidu-only or gated) and then pass
    with ``--source PATH``; ``instructions`` says how."""

    instructions: str


Source = HubSource | UrlSource | ManualSource


@dataclass(frozen=True)
class ExtraColumn:
    """A dataset-specific sample field: its ``datasets`` feature and what it means."""

    feature: Any
    description: str

    @property
    def arrow_type(self) -> pa.DataType:
        return datasets.Features({"column": self.feature}).arrow_schema.field("column").type


class Layout(abc.ABC):
    """A release layout: turns a tree into records and problems, and recognises its trees."""

    problem_kinds: tuple[str, ...] = ()
    """Every problem kind :meth:`parse` may report (the conformance tests provoke each one)."""

    @abc.abstractmethod
    def parse(self, source: TreeSource, *, dataset_name: str, categories: Sequence[str] | None = None,
              variant: str | None = None) -> ParsedRelease:
        """Records (in the release's own order) and every problem of the tree.  ``categories``
        limits the parse to those; naming one the tree does not have raises ``ValueError``.
        A specimen with any problem yields no records."""

    @abc.abstractmethod
    def detect(self, files: Sequence[str]) -> int:
        """:data:`SPECIFIC`, :data:`GENERIC` or :data:`NOT_THIS` for a tree with these files."""


@dataclass(frozen=True)
class Fixture:
    """A dataset's fixture writer: ``write(root, *, categories, normal_specimens, ng_specimens,
    resolution, seed, workers, progress)`` renders a small synthetic tree of the dataset in its
    official layout, naming quirks included, into the existing empty folder ``root`` and
    returns what the synthetic marker should record beyond the common options
    (``m2ad.synth.generate`` wraps it: arguments checked, temporary folder, marker, atomic
    rename).  ``categories`` are the ones it can render.  ``pack(tree, folder)`` writes the
    release files of such a tree into ``folder``, named and shaped as the spec's ``files``
    (archives), and returns their paths: a loopback mirror of them stands for the official
    source in the download tests."""

    write: Callable[..., dict[str, Any]]
    categories: tuple[str, ...]
    default_categories: tuple[str, ...]
    pack: Callable[[Path, Path], list[Path]]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything m2ad knows about one dataset (see the module docstring).

    ``name`` is the registry name and the sample-id prefix; ``image_size`` is the longer side,
    in pixels, of the released images (``None``: unknown or varying), above which ``download``
    refuses a resolution before fetching anything; ``notes`` is advice shown when a file or
    revision cannot be found.  ``class_names`` maps a preset (``verbatim``: the folder names,
    as AdaCLIP, April-GAN and anomalib prompt; ``readable``) to category -> prompt name.
    ``geometry`` is how a shard resolution resizes the images (``m2ad.schema.GEOMETRIES``),
    ``geometry_note`` the conventions of the literature.  ``same_size_within_specimen``: the
    images of one specimen must share their size (else a problem ``image-size``).
    """

    name: str
    display_name: str  # e.g. "MVTec AD"
    title: str
    license: str
    license_id: str  # the Hub's licence id, e.g. "cc-by-nc-sa-4.0"
    citation: str
    homepage: str
    description: str
    categories: tuple[str, ...]  # empty: any (the user's own data)
    files: tuple[FileSpec, ...]
    source: Source
    layout: Layout
    fixture: Fixture
    modalities: tuple[str, ...] = ("image", "mask")
    axes: tuple[str, ...] = ()
    extra_columns: Mapping[str, ExtraColumn] = field(default_factory=dict)
    mask_note: str = ""
    geometry: str = "longer-side"
    geometry_note: str = ""
    protocols: tuple[str, ...] = ("standard",)
    class_names: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    shot_unit: str = "image"
    same_size_within_specimen: bool = False
    variants: tuple[str, ...] = ()
    default_variant: str = ""
    image_size: int | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"{self.name}: geometry {self.geometry!r} is not one of {GEOMETRIES}")
        if self.shot_unit not in ("image", "specimen"):
            raise ValueError(f"{self.name}: shot_unit must be 'image' or 'specimen', not {self.shot_unit!r}")
        for modality in self.modalities:
            modalities.get(modality)
        if not self.modalities or self.modalities[0] not in modalities.PRIMARY_MODALITIES:
            raise ValueError(f"{self.name}: the first modality must be a primary one ({', '.join(modalities.PRIMARY_MODALITIES)})")
        if self.variants and self.default_variant not in self.variants:
            raise ValueError(f"{self.name}: default variant {self.default_variant!r} is not one of {self.variants}")

    def check_variant(self, variant: str | None) -> str:
        """The release variant to use: ``variant``, or the default; an unknown one raises."""
        if not self.variants:
            if variant:
                raise ValueError(f"{self.name} has no release variants; got {variant!r}")
            return ""
        chosen = variant or self.default_variant
        if chosen not in self.variants:
            raise ValueError(f"{self.name} has no variant {chosen!r}; expected one of {', '.join(self.variants)}")
        return chosen

    def files_for(self, category: str, variant: str | None = None) -> list[FileSpec]:
        """The files needed to shard ``category`` (of release ``variant``), in declaration order."""
        if self.categories and category not in self.categories:
            raise ValueError(f"{self.name} has no category {category!r}; expected one of {', '.join(self.categories)}")
        chosen = self.check_variant(variant)
        return [spec for spec in self.files
                if (spec.categories is None or category in spec.categories) and (spec.variant is None or spec.variant == chosen)]

    def file(self, name: str) -> FileSpec:
        """The declared file called ``name``."""
        for spec in self.files:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} declares no file {name!r}")

    def features(self) -> datasets.Features:
        """The Arrow features of this dataset's samples."""
        extra = {name: column.feature for name, column in self.extra_columns.items()}
        return sample_features(extra, modalities.features(self.modalities))

    def manifest_schema(self) -> pa.Schema:
        """The manifest schema of this dataset."""
        extra = {name: column.arrow_type for name, column in self.extra_columns.items()}
        return manifest_schema(extra, modalities.manifest_columns(self.modalities))

    def prompt_names(self, categories: Sequence[str], preset: str = "verbatim") -> dict[str, str]:
        """Category -> prompt name under ``preset``, for ``categories`` (a category without an
        entry keeps its name, as the ``verbatim`` preset does)."""
        names = self.class_names.get(preset, {})
        return {category: names.get(category, category) for category in categories}

    def info_fields(self, categories: Sequence[str]) -> dict[str, Any]:
        """The spec facts ``dataset.json`` records (``m2ad.schema.DatasetInfo``) for a dataset
        of these categories."""
        presets = {preset: self.prompt_names(categories, preset) for preset in dict.fromkeys(("verbatim", *self.class_names))}
        return {
            "spec": self.name,
            "axes": tuple(self.axes),
            "modalities": tuple(self.modalities),
            "extra_columns": tuple(self.extra_columns),
            "shot_unit": self.shot_unit,
            "class_names": presets["verbatim"],
            "class_name_presets": presets,
            "protocols": tuple(self.protocols),
            "geometry": self.geometry,
        }

