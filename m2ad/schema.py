"""The canonical sample schema and the on-disk layout of a sharded dataset.

One record per image (or per point cloud).  Every dataset we support is converted to this
schema, so protocols, methods and metrics never see a dataset's own layout.

A sharded dataset is a folder::

    ROOT/
      dataset.json        what this is: dataset, resolution, categories, source, mask rules
      README.md           dataset card (source, version, license, resolution, mask rule)
      manifest.parquet    one row per sample, every field but the pixel bytes, plus the
                          location of the sample (``shard_dir``, ``shard_row``)
      <category>/<split>/ a Hugging Face ``datasets`` Arrow dataset (``load_from_disk``)

Field semantics
---------------
``sample_id``      stable, unique across datasets: ``<dataset>/<path of the image in the
                   official release>``, e.g. ``m2ad/Bird/NG/scratch_1_000/A060_I01.png``.
``specimen``       the physical object (M2AD: the specimen directory name); for datasets with
                   one image per object it equals the image stem.
``view``,
``illumination``   M2AD: ``"000"``..``"330"`` and ``"01"``..``"10"``; ``None`` for datasets
                   without views or lights (MVTec-AD).
``label``          image level: 1 if this image shows a defect (M2AD ``image_anomaly``).
``object_label``   specimen level: 1 if the specimen is defective (M2AD ``object_anomaly``).
``defect_types``   defect tokens (M2AD: the non-numeric tokens of the NG directory name).
``detectable``     M2AD only: ``False`` when the defect is in view but judged undetectable
                   under this light; ``None`` where the release leaves it empty.
``mask``           binary GT mask (PNG, 0/255) under the *exact* rule: a pixel is defective if
                   any source pixel it covers is (no defect vanishes when downscaling).
``mask_official``  binary GT mask under the *official M2AD evaluator* rule: bilinear resize of
                   the 0/255 mask, then keep pixels that are exactly 255 (erodes tiny defects).
                   At original resolution both masks are the released mask bytes, unchanged.
``points``,
``point_labels``   reserved for point clouds (Real3D-AD): float32 xyz and per-point labels; the
                   image fields are then null.

Reading a release
-----------------
A release tree (a folder, or members of zips) is read through a :class:`TreeSource`.  A
dataset's layout parser (``m2ad.datasets.<name>.parse``) turns it into a
:class:`ParsedRelease`: one :class:`ReleaseRecord` per image, plus every :class:`Problem` it
found.  ``m2ad.shard`` then decodes, resizes and writes the records.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import datasets
import pyarrow as pa

from m2ad.text import printable

FORMAT_NAME = "m2ad-shards"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.parquet"
INFO_FILE = "dataset.json"
CARD_FILE = "README.md"

SPLITS = ("train", "test")
MASK_RULES = ("exact", "official")
"""``exact``: any positive source pixel survives downscaling.  ``official``: bilinear then
floor, as the official M2AD evaluator does (reference: m2ad.md section 11.6)."""

M2AD_CATEGORIES = ("Bird", "Car", "Cube", "Dice", "Doll", "Holder", "Motor", "Ring", "Teapot", "Tube")
M2AD_VIEWS = tuple(f"{azimuth:03d}" for azimuth in range(0, 360, 30))
M2AD_ILLUMINATIONS = tuple(f"{index:02d}" for index in range(1, 11))

# Fields shared by every sample, in order.  Image datasets fill image/mask, point-cloud
# datasets fill points/point_labels; the other pair stays null.
IMAGE_FEATURES = datasets.Features(
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
        "detectable": datasets.Value("bool"),
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "mask_official": datasets.Image(),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
    }
)

POINT_CLOUD_FEATURES = datasets.Features(
    {
        **{name: feature for name, feature in IMAGE_FEATURES.items() if name not in ("image", "mask", "mask_official")},
        "points": datasets.Array2D(shape=(None, 3), dtype="float32"),
        "point_labels": datasets.Sequence(datasets.Value("uint8")),
    }
)

PIXEL_COLUMNS = ("image", "mask", "mask_official", "points", "point_labels")

MANIFEST_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("dataset", pa.string()),
        ("category", pa.string()),
        ("split", pa.string()),
        ("specimen", pa.string()),
        ("view", pa.string()),
        ("illumination", pa.string()),
        ("label", pa.int8()),
        ("object_label", pa.int8()),
        ("defect_types", pa.list_(pa.string())),
        ("detectable", pa.bool_()),
        ("has_mask", pa.bool_()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("shard_dir", pa.string()),  # relative to ROOT, e.g. "Bird/test"
        ("shard_row", pa.int64()),  # row index inside that dataset
    ]
)


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


_DEFECT_TOKEN = re.compile(r"[A-Za-z]+")


def defect_types_from_dirname(dirname: str) -> list[str]:
    """M2AD defect tokens of an NG specimen directory, e.g. ``damage_1_hole_5_scratch_1_046``
    -> ``["damage", "hole", "scratch"]`` (order kept, duplicates dropped)."""
    tokens: list[str] = []
    for token in dirname.split("_"):
        if _DEFECT_TOKEN.fullmatch(token) and token not in tokens:
            tokens.append(token)
    return tokens


@dataclass(frozen=True)
class DatasetInfo:
    """Contents of ``dataset.json``: what a sharded dataset is and where it came from."""

    dataset: str
    resolution: int | str  # pixels of the longer side, or "original"
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

    def to_json(self) -> str:
        """The ``dataset.json`` text of this description."""
        data = {key: list(value) if isinstance(value, tuple) else value for key, value in self.__dict__.items()}
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def read(cls, root: str | Path) -> DatasetInfo:
        """Read and check ``ROOT/dataset.json``; a clear error if ROOT is not a sharded dataset."""
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
    images from the stream instead of holding each file's bytes whole.
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

    ``image_path`` and ``mask_path`` are paths in the release tree (``mask_path`` is ``None``
    when the image has no mask); ``specimen_path`` is the release folder of the specimen, the
    unit that ``--skip-bad`` quarantines.
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
    detectable: bool | None
    image_path: str
    mask_path: str | None
    specimen_path: str


@dataclass
class ParsedRelease:
    """What a layout parser found in a release tree: its records (in the release's own order),
    every problem, and what the dataset card should say about the source."""

    dataset: str
    records: list[ReleaseRecord]
    problems: list[Problem]
    license: str = ""
    version: str = ""
    description: str = ""
