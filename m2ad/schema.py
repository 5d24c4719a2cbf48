"""The canonical sample schema and the on-disk layout of a sharded dataset.

One record per image.  Every dataset we support is converted to this schema, so protocols,
methods and metrics never see a dataset's own layout.  What differs between datasets (its
axes, extra columns, modalities, mask binarisation, evaluation geometry) is declared by its
spec (``m2ad.datasets.<name>``), never here.

A sharded dataset is a folder::

    ROOT/
      dataset.json        what this is: dataset, resolution, categories, source, and the spec
                          facts protocols and the runner read (:class:`DatasetInfo`)
      README.md           dataset card: YAML front matter (license, ``configs`` so that
                          ``datasets.load_dataset(ROOT, CATEGORY)`` returns train and test),
                          source, counts, checksums, protocols
      manifest.parquet    one row per sample, every field but the pixel bytes, plus the
                          location of the sample (``shard_dir``, ``shard_row``)
      <category>/<split>/ a Hugging Face ``datasets`` Arrow dataset (``load_from_disk``)

Core fields (every dataset)
---------------------------
``sample_id``      stable, unique across datasets: ``<dataset>/<path of the image in the
                   official release>``, e.g. ``m2ad/Bird/NG/scratch_1_000/A060_I01.png``.
``specimen``       the physical object or sample, unique within its category (M2AD: the
                   specimen folder name; Real-IAD: ``OK/S0001``; datasets with one image per
                   object: the image's release path under its category, without extension).
``view``,
``illumination``   the sample axes a dataset has (its spec's ``axes``); ``None`` elsewhere.
``label``          image level: 1 if this image shows a defect.
``object_label``   specimen level: 1 if the specimen is defective.
``defect_types``   defect tokens (M2AD: the non-numeric tokens of the NG folder name).
``width``,
``height``         the stored image size.

Then come the dataset's extra columns (e.g. M2AD's ``detectable``), and the columns of its
modalities (``m2ad.modalities``: ``image``; ``mask`` and ``mask_official``, see
:data:`MASK_RULES`; or, for a point-cloud dataset, ``points`` and ``point_labels``, with
``num_points`` in the manifest and ``width`` = ``height`` = 0).

Format versions: 1 (m2ad 0.1 before datasets were specs) was always an M2AD-layout dataset
and its ``dataset.json`` lacks the spec facts; :meth:`DatasetInfo.read` fills them from the M2AD
spec.  Version 2 writes them, writes resized masks as 1-bit PNGs and gives each dataset only
its own extra columns.

Reading a release
-----------------
A release tree (a folder, or members of zips) is read through a :class:`TreeSource`.  A
dataset's layout parser turns it into a :class:`ParsedRelease`: one :class:`ReleaseRecord`
per image, plus every :class:`Problem` it found.  ``m2ad.shard`` then decodes, resizes and
writes the records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import datasets
import pyarrow as pa

from m2ad.text import printable

FORMAT_NAME = "m2ad-shards"
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.parquet"
INFO_FILE = "dataset.json"
CARD_FILE = "README.md"

SPLITS = ("train", "test")
MASK_RULES = ("exact", "official")
"""The two stored GT masks (``m2ad.modalities.mask``).  ``exact`` (column ``mask``): a pixel is
defective if any source pixel it covers is, so no defect vanishes when downscaling.
``official`` (column ``mask_official``): bilinear resize of the 0/255 mask, then keep pixels
equal to 255, as the official M2AD evaluator does (reference: m2ad.md section 11.6).  At
original resolution both are the released mask file, byte for byte."""

GEOMETRIES = ("longer-side", "square")
"""How a shard resolution N resizes images: ``longer-side`` keeps the aspect ratio (the longer
side becomes N), ``square`` makes every image N x N (the aspect ratio is not kept)."""

CORE_FEATURES = datasets.Features(
    {
        "sample_id": datasets.Value("string"),
        "dataset": datasets.Value("string"),
        "category": datasets.Value("string"),
        "split": datasets.Value("string"),
        "specimen": datasets.Value("string"),
        "view": datasets.Value("string"),
        "illumination": datasets.Value("string"),
        "label": datasets.Value("int8"),
        "object_label": datasets.Value("int8"),
        "defect_types": datasets.Sequence(datasets.Value("string")),
    }
)
"""The fields of every sample, in order; a dataset's extra columns and its modalities' columns
follow, then :data:`SIZE_FEATURES`."""

CORE_MANIFEST_FIELDS = [
    pa.field("sample_id", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("category", pa.string()),
    pa.field("split", pa.string()),
    pa.field("specimen", pa.string()),
    pa.field("view", pa.string()),
    pa.field("illumination", pa.string()),
    pa.field("label", pa.int8()),
    pa.field("object_label", pa.int8()),
    pa.field("defect_types", pa.list_(pa.string())),
]
"""The core fields as manifest columns (the types of format 1's manifests)."""

SIZE_FEATURES = datasets.Features({"width": datasets.Value("int32"), "height": datasets.Value("int32")})

LOCATION_FIELDS = (("shard_dir", pa.string()), ("shard_row", pa.int64()))
"""The manifest's last two columns: the Arrow dataset of a sample (relative to ROOT, e.g.
``Bird/test``) and its row there."""


def sample_features(extra: Mapping[str, Any], modality_features: Mapping[str, Any]) -> datasets.Features:
    """The Arrow features of a dataset's samples: core fields, its extra columns, its
    modalities' columns, then width and height."""
    return datasets.Features({**CORE_FEATURES, **extra, **modality_features, **SIZE_FEATURES})


def manifest_schema(extra: Mapping[str, pa.DataType], modality_columns: Mapping[str, pa.DataType]) -> pa.Schema:
    """The manifest schema of a dataset: core fields, its extra columns, the columns its
    modalities derive (e.g. ``has_mask``), width, height, ``shard_dir`` and ``shard_row``."""
    fields = [*CORE_MANIFEST_FIELDS, *(pa.field(name, kind) for name, kind in extra.items()), *(pa.field(name, kind) for name, kind in modality_columns.items())]
    fields += [pa.field("width", pa.int32()), pa.field("height", pa.int32())]
    fields += [pa.field(name, kind) for name, kind in LOCATION_FIELDS]
    return pa.schema(fields)


CORE_MANIFEST_COLUMNS = (*CORE_FEATURES, "width", "height", *(name for name, _ in LOCATION_FIELDS))
"""The manifest columns every dataset has."""


def make_sample_id(dataset: str, release_path: str) -> str:
    """The global id of a sample: the dataset name, a slash, and its path in the release."""
    release_path = release_path.replace("\\", "/").lstrip("/")
    if not dataset or "/" in dataset:
        raise ValueError(f"dataset name must be non-empty and contain no '/': {dataset!r}")
    return f"{dataset}/{release_path}"


def shard_dir_name(category: str, split: str) -> str:
    """Relative folder of the Arrow dataset that holds one (category, split)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return f"{category}/{split}"


@dataclass(frozen=True)
class DatasetInfo:
    """Contents of ``dataset.json``: what a sharded dataset is and where it came from."""

    dataset: str
    resolution: int | str  # pixels of the longer side (or of both sides, geometry "square"), or "original"
    categories: list[str]
    source: dict[str, Any] = field(default_factory=dict)  # url/revision/checksums/verified
    version: str = ""
    license: str = ""
    mask_rules: tuple[str, ...] = MASK_RULES
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    code_version: str = ""
    created: str = ""
    image_resize: str = ""  # how images were resized (empty at original resolution)
    skipped: list[dict[str, str]] = field(default_factory=list)  # Problem.to_dict() of quarantined input
    # What the dataset's spec says about its samples (``m2ad.datasets``); protocols and the
    # runner read these instead of knowing datasets by name.
    axes: tuple[str, ...] = ()  # sample axes beyond category and specimen, e.g. ("view", "illumination")
    modalities: tuple[str, ...] = ("image", "mask")
    extra_columns: tuple[str, ...] = ()  # dataset-specific manifest columns, e.g. ("detectable",)
    shot_unit: str = "image"  # what one few-shot shot is: "image", or "specimen" (all its images)
    class_names: dict[str, str] = field(default_factory=dict)  # category -> a name usable as a text prompt
    protocols: tuple[str, ...] = ()  # the protocols that fit the dataset
    spec: str = ""  # the registry name of the dataset's spec (e.g. "m2ad" for "m2ad-synth")
    geometry: str = "longer-side"  # how --resolution resized the images (GEOMETRIES)
    class_name_presets: dict[str, dict[str, str]] = field(default_factory=dict)  # preset -> category -> prompt name
    variant: str = ""  # the release variant sharded, e.g. Real-IAD's "1024" (empty: the only one)

    def to_json(self) -> str:
        """The ``dataset.json`` text of this description."""
        data = {key: list(value) if isinstance(value, tuple) else value for key, value in self.__dict__.items()}
        return json.dumps(data, indent=2, sort_keys=True)

    def check_protocol(self, protocol: str) -> None:
        """Refuse, with one clear line, a protocol that does not fit this dataset."""
        if self.protocols and protocol not in self.protocols:
            raise ValueError(
                f"protocol {protocol!r} does not fit the dataset {self.dataset!r} (axes: {', '.join(self.axes) or 'none'}; "
                f"extra columns: {', '.join(self.extra_columns) or 'none'}); it fits: {', '.join(self.protocols)}"
            )

    @classmethod
    def read(cls, root: str | Path) -> DatasetInfo:
        """Read and check ``ROOT/dataset.json``; a clear error if ROOT is not a sharded dataset.

        A format-1 file (written before datasets were specs, always an M2AD-layout dataset)
        gets the spec facts of the M2AD spec from the registry (``m2ad.datasets``)."""
        path = Path(root) / INFO_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{root} is not a sharded m2ad dataset (no {INFO_FILE}); create one with `m2ad shard` or `m2ad download`"
            )
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}: not an {FORMAT_NAME} file (format={data.get('format')!r})")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: format version {data['format_version']} is newer than this m2ad supports ({FORMAT_VERSION}); upgrade m2ad"
            )
        if int(data.get("format_version", 0)) < 2:
            from m2ad.datasets.registry import get  # the registry imports this module: import on use

            data.update(get("m2ad").info_fields(data.get("categories", [])))
        data["mask_rules"] = tuple(data.get("mask_rules", MASK_RULES))
        for key in ("axes", "modalities", "extra_columns", "protocols"):
            if key in data:
                data[key] = tuple(data[key])
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


# --------------------------------------------------------------------------------------------
# Reading a release: the source contract, parsed records and problems
# --------------------------------------------------------------------------------------------


@runtime_checkable
class TreeSource(Protocol):
    """A release tree: relative POSIX file paths and their bytes (a folder, or zip members).

    Implementations must be picklable, because sharding reads images in worker processes.
    They may also offer ``open(path)`` returning a readable binary stream (both
    ``m2ad.shard.FolderSource`` and ``m2ad.archive.ZipSource`` do); sharding then decodes
    images from the stream instead of holding each file's bytes whole.  They may offer
    ``list_folders()`` (every folder, files or not, so that parsers can see empty ones) and
    ``problems()`` (what the source itself refused, e.g. a symlink out of the tree).
    """

    def list_files(self) -> list[str]: ...

    def read_bytes(self, path: str) -> bytes: ...


@dataclass(frozen=True)
class Problem:
    """One defect of a release tree.

    ``kind`` is a stable short name (e.g. ``missing-mask``), ``path`` the release path it is
    about (a file or a specimen folder) and ``specimen`` the specimen folder that a
    ``--skip-bad`` run quarantines because of it, or ``""`` when the problem is a stray file
    that belongs to no specimen (it is then ignored, and listed).
    """

    kind: str
    path: str
    message: str
    specimen: str = ""

    def to_dict(self) -> dict[str, str]:
        """JSON-able form, as stored in ``dataset.json`` under ``skipped``."""
        return {"kind": self.kind, "path": self.path, "message": self.message, "specimen": self.specimen}

    def __str__(self) -> str:
        return printable(f"{self.path}: {self.message} [{self.kind}]")


@dataclass(frozen=True)
class ReleaseRecord:
    """One image of a release, with every schema field but the pixels.

    ``files`` maps each modality the record has to its path in the release tree (``image``
    always; ``mask`` when the image has a GT mask); ``extras`` holds the dataset's extra
    columns; ``specimen_path`` is the release folder (or file) of the specimen, the unit that
    ``--skip-bad`` quarantines.
    """

    sample_id: str
    dataset: str
    category: str
    split: str
    specimen: str
    view: str | None
    illumination: str | None
    label: int
    object_label: int
    defect_types: tuple[str, ...]
    files: Mapping[str, str]
    specimen_path: str
    extras: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_path(self) -> str:
        """Release path of the image."""
        return self.files["image"]

    @property
    def mask_path(self) -> str | None:
        """Release path of the GT mask, or ``None``."""
        return self.files.get("mask")


@dataclass
class ParsedRelease:
    """What a layout parser found in a release tree: its records (in the release's own order),
    every problem, and what the dataset card should say about the source (``notes``: facts of
    the release worth knowing, e.g. defective views without a mask)."""

    dataset: str
    records: list[ReleaseRecord]
    problems: list[Problem]
    license: str = ""
    version: str = ""
    description: str = ""
    notes: list[str] = field(default_factory=list)

