"""M2AD: the layout parser of a release tree (real M2AD-1024 or the synthetic ``m2ad-synth``).

The released layout (reference: m2ad.md sections 5-8)::

    jsons/meta_unsupervised.json              split and labels, one record per image
    <Cat>/Good/<NNN>/A<vvv>_I<ii>.png         normal specimen
    <Cat>/NG/<tokens>_<NNN>/A<vvv>_I<ii>.png  defective specimen, e.g. scratch_1_000
    <Cat>/GT/<NG dir>/A<vvv>_mask.png         mask of one (specimen, view), shared by 10 lights
    <Cat>/GT/<NG dir>/A<vvv>_seg.png          released but unused by the official code: ignored

:meth:`M2ADLayout.parse` checks the tree against the meta JSON (the listing layout,
:mod:`m2ad.datasets.layouts.listing`, plus M2AD's own rules: file names, all 120
configurations per specimen, masks only for NG specimens, record fields against the path) and
reports every disagreement as a :class:`~m2ad.schema.Problem`; it reads no pixels.  Files at
the root (``README.md``, ``SYNTHETIC.json``, ...), under ``jsons/``, and hidden files are not
samples and are ignored.  Every other file must parse as an image, a mask or a ``_seg`` file.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from typing import Any

from m2ad.datasets.layouts.listing import LISTING_KINDS, Listed, category_problems, empty_folders, hidden, join, without_bad, read_json
from m2ad.datasets.spec import NOT_THIS, SPECIFIC, Layout
from m2ad.schema import SPLITS, ParsedRelease, Problem, TreeSource
from m2ad.text import quote

CATEGORIES = ("Bird", "Car", "Cube", "Dice", "Doll", "Holder", "Motor", "Ring", "Teapot", "Tube")
VIEWS = tuple(f"{azimuth:03d}" for azimuth in range(0, 360, 30))
ILLUMINATIONS = tuple(f"{index:02d}" for index in range(1, 11))
CONFIGURATIONS = tuple((view, illumination) for view in VIEWS for illumination in ILLUMINATIONS)
META_PATH = "jsons/meta_unsupervised.json"

_IMAGE_NAME = re.compile(r"A(\d{3})_I(\d{2})\.png")
_MASK_NAME = re.compile(r"A(\d{3})_mask\.png")
_SEG_NAME = re.compile(r"A(\d{3})_seg\.png")
_GOOD_DIR = re.compile(r"\d+")
_NG_DIR = re.compile(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*_\d+")
_DEFECT_TOKEN = re.compile(r"[A-Za-z]+")
_RELEASE_IMAGE = re.compile(r"[^/]+/(?:Good|NG)/[^/]+/A\d{3}_I\d{2}\.png")
_META_FIELDS = ("img_path", "view", "illumination", "object_name", "object_anomaly", "image_anomaly", "cls_name", "mask_path")


def defect_types_from_dirname(dirname: str) -> list[str]:
    """M2AD defect tokens of an NG specimen directory, e.g. ``damage_1_hole_5_scratch_1_046``
    -> ``["damage", "hole", "scratch"]`` (order kept, duplicates dropped)."""
    tokens: list[str] = []
    for token in dirname.split("_"):
        if _DEFECT_TOKEN.fullmatch(token) and token not in tokens:
            tokens.append(token)
    return tokens


def _detectable(value: Any) -> tuple[bool | None, bool]:
    """The release's ``detectable`` value as (True/False/None, valid)."""
    if value is None or value == "":
        return None, True
    if isinstance(value, bool):
        return value, True
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true", True
    return None, False


def _read_meta(source: TreeSource, files: Collection[str]) -> tuple[dict[str, Any] | None, Problem | None]:
    """The meta JSON as ``{"train": {cls: [records]}, "test": {...}}``, or the problem with it."""
    meta, problem = read_json(source, META_PATH, files, "M2AD ships it in jsons.zip")
    if problem is not None:
        return None, problem
    well_formed = (
        isinstance(meta, dict)
        and all(isinstance(meta.get(split), dict) for split in SPLITS)
        and all(isinstance(records, list) and all(isinstance(r, dict) for r in records) for split in SPLITS for records in meta[split].values())
    )
    if not well_formed:
        return None, Problem("bad-meta", META_PATH, 'expected {"train": {class: [records]}, "test": {class: [records]}}')
    return meta, None


class _Tree:
    """The files of an M2AD tree, sorted into images, GT masks and problems."""

    def __init__(self, known: set[str], selected: set[str] | None) -> None:
        self.known, self.selected = known, selected
        self.images: dict[str, str] = {}  # image path -> specimen path
        self.gt_folders: dict[str, list[str]] = defaultdict(list)  # <Cat>/GT/<name> -> mask paths
        self.unknown_categories: Counter[str] = Counter()  # folder -> files
        self.problems: list[Problem] = []

    def add(self, path: str) -> None:
        parts = path.split("/")
        if hidden(path) or len(parts) == 1 or parts[0] == "jsons":
            return
        category = parts[0]
        if self.selected is not None and category not in self.selected:
            return
        if category not in self.known:
            self.unknown_categories[category] += 1
            return
        group, folder, name = (parts[1], parts[2], parts[3]) if len(parts) == 4 else ("", "", "")
        image = _IMAGE_NAME.fullmatch(name)
        configuration_ok = bool(image) and image[1] in VIEWS and image[2] in ILLUMINATIONS
        if group == "Good" and _GOOD_DIR.fullmatch(folder) and configuration_ok:
            self.images[path] = f"{category}/{group}/{folder}"
        elif group == "NG" and _NG_DIR.fullmatch(folder) and defect_types_from_dirname(folder) and configuration_ok:
            self.images[path] = f"{category}/{group}/{folder}"
        elif group == "GT" and (mask := _MASK_NAME.fullmatch(name)) and mask[1] in VIEWS:
            self.gt_folders[f"{category}/GT/{folder}"].append(path)
        elif group == "GT" and _SEG_NAME.fullmatch(name):
            return
        else:
            expected = "<Cat>/Good/<NNN>/A<vvv>_I<ii>.png, <Cat>/NG/<defect_k_NNN>/A<vvv>_I<ii>.png or <Cat>/GT/<NG dir>/A<vvv>_mask.png"
            self.problems.append(Problem("unknown-file", path, f"file name does not parse; expected {expected}"))

    def masks(self) -> dict[str, str]:
        """Mask path -> its NG specimen, for the GT folders of NG specimens; a problem for the
        others (a normal specimen's, or of no specimen)."""
        specimens = set(self.images.values())
        owned: dict[str, str] = {}
        for gt_folder, paths in sorted(self.gt_folders.items()):
            category, _, name = gt_folder.split("/")
            ng_key, good_key = f"{category}/NG/{name}", f"{category}/Good/{name}"
            if ng_key in specimens:
                owned.update({path: ng_key for path in paths})
            elif good_key in specimens:
                self.problems.append(Problem("mask-for-normal", gt_folder, f"normal specimen {good_key} has masks ({quote(sorted(paths))}); only NG specimens may", good_key))
            else:
                self.problems.append(Problem("orphan-mask", gt_folder, f"masks for a specimen that has no NG image folder ({quote(sorted(paths))})"))
        return owned


def _listed(split: str, category: str, record: dict[str, Any]) -> Listed | Problem:
    """The listing entry of one meta record, or the problem when its ``img_path`` names no image."""
    img_path = str(record.get("img_path", ""))
    parts = img_path.split("/")
    image = _IMAGE_NAME.fullmatch(parts[-1])
    if len(parts) != 4 or parts[0] != category or parts[1] not in ("Good", "NG") or not image:
        return Problem("meta-mismatch", META_PATH, f"{split}/{category} record with img_path {img_path!r} names no image of class {category!r}")
    group, name = parts[1], parts[2]
    view, light = image.groups()
    specimen_path = f"{category}/{group}/{name}"
    absent = [field for field in _META_FIELDS if field not in record]
    if absent:
        return Listed(split, category, img_path, None, name, specimen_path, 0, 0, invalid=f"record in {META_PATH} lacks {', '.join(absent)}")
    anomalous = group == "NG"
    mask_path = str(record["mask_path"] or "")
    expected_mask = f"{category}/GT/{name}/A{view}_mask.png"
    detectable, detectable_ok = _detectable(record.get("detectable", ""))
    disagreements = [
        f"{field}={record[field]!r}, but the path says {expected!r}"
        for field, expected in (("cls_name", category), ("object_name", name), ("view", view), ("illumination", light))
        if str(record[field]) != expected
    ]
    if record["object_anomaly"] not in (0, 1) or bool(record["object_anomaly"]) != anomalous:
        disagreements.append(f"object_anomaly={record['object_anomaly']!r} for a {group} specimen")
    if record["image_anomaly"] not in (0, 1) or bool(record["image_anomaly"]) != bool(mask_path):
        disagreements.append(f"image_anomaly={record['image_anomaly']!r} with mask_path {mask_path!r}")
    if mask_path and mask_path != expected_mask:
        disagreements.append(f"mask_path={mask_path!r}, expected {expected_mask!r}")
    if not detectable_ok:
        disagreements.append(f"detectable={record.get('detectable')!r} is not True, False or ''")
    return Listed(
        split=split,
        category=category,
        image_path=img_path,
        mask_path=mask_path or None,
        specimen=name,
        specimen_path=specimen_path,
        label=int(record["image_anomaly"]) if not disagreements else 0,
        object_label=int(anomalous),
        view=view,
        illumination=light,
        defect_types=tuple(defect_types_from_dirname(name)) if anomalous else (),
        extras={"detectable": detectable},
        invalid="; ".join(disagreements),
    )


def _configurations(specimen_path: str, present: Collection[str]) -> Problem | None:
    """``missing-configurations`` when a specimen lacks some of the 120 (view, light) images."""
    names = {path.rsplit("/", 1)[1] for path in present}
    missing = [f"A{view}_I{light}.png" for view, light in CONFIGURATIONS if f"A{view}_I{light}.png" not in names]
    if not missing:
        return None
    return Problem("missing-configurations", specimen_path, f"{len(missing)} of {len(CONFIGURATIONS)} configurations missing: {quote(missing)}", specimen_path)


class M2ADLayout(Layout):
    """The M2AD release layout (see the module docstring)."""

    problem_kinds = (
        "missing-meta", "bad-meta", "unknown-file", "unknown-category", "empty-category", "missing-category",
        "mask-for-normal", "orphan-mask", "missing-configurations",
        *(kind for kind in LISTING_KINDS if kind != "missing-image"),  # a missing image is a missing configuration
    )  # fmt: skip

    def detect(self, files: Sequence[str]) -> int:
        """Its meta JSON, or images named as M2AD names them (then a missing meta JSON is a problem)."""
        if META_PATH in files or any(_RELEASE_IMAGE.fullmatch(path) for path in files):
            return SPECIFIC
        return NOT_THIS

    def parse(self, source: TreeSource, *, dataset_name: str, categories: Sequence[str] | None = None,
              variant: str | None = None) -> ParsedRelease:
        files = source.list_files()
        meta, problem = _read_meta(source, set(files))
        if meta is None:
            return ParsedRelease(dataset_name, [], [problem])
        known = {category for split in SPLITS for category in meta[split]}
        if categories is not None:
            unknown = sorted(set(categories) - known)
            if unknown:
                raise ValueError(f"categories {unknown} are not in this release; it has {', '.join(sorted(known))}")
        selected = set(categories) if categories is not None else None
        tree = _Tree(known, selected)
        for path in files:
            tree.add(path)
        empty = {folder for folder in empty_folders(source) if "/" not in folder and not hidden(folder)}
        for category, count in sorted(tree.unknown_categories.items()):
            tree.problems.append(Problem("unknown-category", category, f"folder with {count} files, but {category!r} is no class of {META_PATH}"))
        for folder in sorted(empty - known - {"jsons"}):
            if selected is None or folder in selected:
                tree.problems.append(Problem("empty-category", folder, f"the folder {folder!r} holds no files"))
        masks = tree.masks()

        listed: list[Listed] = []
        for split in SPLITS:
            for category, records in meta[split].items():
                if selected is not None and category not in selected:
                    continue
                for record in records:
                    entry = _listed(split, category, record)
                    if isinstance(entry, Problem):
                        tree.problems.append(entry)
                    else:
                        listed.append(entry)
        with_images = {path.split("/", 1)[0] for path in tree.images}
        tree.problems += category_problems([entry.category for entry in listed], with_images, empty, META_PATH)
        listed = [entry for entry in listed if entry.category in with_images]
        records, problems = join(dataset_name, META_PATH, listed, tree.images, masks, completeness=_configurations, unlisted_mask="meta-mismatch")
        problems = tree.problems + problems
        return ParsedRelease(dataset_name, without_bad(records, problems), problems)
