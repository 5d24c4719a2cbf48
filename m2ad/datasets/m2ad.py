"""M2AD: the layout parser of a release tree (real M2AD-1024 or the synthetic ``m2ad-synth``).

The released layout (reference: m2ad.md sections 5-8)::

    jsons/meta_unsupervised.json              split and labels, one record per image
    <Cat>/Good/<NNN>/A<vvv>_I<ii>.png         normal specimen
    <Cat>/NG/<tokens>_<NNN>/A<vvv>_I<ii>.png  defective specimen, e.g. scratch_1_000
    <Cat>/GT/<NG dir>/A<vvv>_mask.png         mask of one (specimen, view), shared by 10 lights
    <Cat>/GT/<NG dir>/A<vvv>_seg.png          released but unused by the official code: ignored

:func:`parse` checks the tree against the meta JSON and reports every disagreement as a
:class:`~m2ad.schema.Problem`; it reads no pixels (decoding is the sharder's job).  Files at
the root (``README.md``, ``SYNTHETIC.json``, ...), under ``jsons/``, and hidden files are not
samples and are ignored.  Every other file must parse as an image, a mask or a ``_seg`` file.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from m2ad.schema import (
    M2AD_ILLUMINATIONS,
    M2AD_VIEWS,
    SPLITS,
    ParsedRelease,
    Problem,
    ReleaseRecord,
    TreeSource,
    defect_types_from_dirname,
    make_sample_id,
)

DATASET_NAME = "m2ad"
META_PATH = "jsons/meta_unsupervised.json"
SYNTHETIC_MARKER = "SYNTHETIC.json"
LICENSE = "Apache-2.0 (tag of the Hugging Face dataset card ChengYuQi99/M2AD; the paper states none)"
DESCRIPTION = (
    "M2AD (Cao, Cheng et al., arXiv 2505.10996): multi-view, multi-illumination visual anomaly "
    "detection; 12 views x 10 illuminations per specimen."
)
CONFIGURATIONS = tuple((view, illumination) for view in M2AD_VIEWS for illumination in M2AD_ILLUMINATIONS)

_IMAGE_NAME = re.compile(r"A(\d{3})_I(\d{2})\.png")
_MASK_NAME = re.compile(r"A(\d{3})_mask\.png")
_SEG_NAME = re.compile(r"A(\d{3})_seg\.png")
_GOOD_DIR = re.compile(r"\d+")
_NG_DIR = re.compile(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*_\d+")
_META_FIELDS = ("img_path", "view", "illumination", "object_name", "object_anomaly", "image_anomaly", "cls_name", "mask_path")
_LISTED = 6  # file names quoted in one aggregated problem message


def detect_dataset_name(source: TreeSource) -> str:
    """``m2ad-synth`` (or whatever its marker says) for a synthetic tree, ``m2ad`` otherwise."""
    if SYNTHETIC_MARKER not in set(source.list_files()):
        return DATASET_NAME
    try:
        marker = json.loads(source.read_bytes(SYNTHETIC_MARKER))
        return str(marker["dataset"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{SYNTHETIC_MARKER} is unreadable ({error}); regenerate the tree or pass a dataset name") from error


def _quote(names: Sequence[str]) -> str:
    """A short list of names for a message: the first few, then how many more."""
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _detectable(value: Any) -> tuple[bool | None, bool]:
    """The release's ``detectable`` value as (True/False/None, valid)."""
    if value is None or value == "":
        return None, True
    if isinstance(value, bool):
        return value, True
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true", True
    return None, False


@dataclass
class _Specimen:
    """What the files and the meta JSON say about one specimen folder."""

    category: str
    group: str  # "Good" or "NG"
    name: str
    images: dict[tuple[str, str], str] = field(default_factory=dict)  # (view, light) -> path
    masks: dict[str, str] = field(default_factory=dict)  # view -> path
    meta: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # img_path -> (split, record)

    @property
    def path(self) -> str:
        return f"{self.category}/{self.group}/{self.name}"


class _Parser:
    """One pass over a release tree; collects specimens and problems."""

    def __init__(self, dataset: str, categories: Sequence[str] | None) -> None:
        self.dataset = dataset
        self.selected = set(categories) if categories is not None else None
        self.specimens: dict[str, _Specimen] = {}
        self.problems: list[Problem] = []
        self.orphan_masks: dict[str, list[str]] = defaultdict(list)  # GT folder -> mask paths
        self.missing_masks: set[str] = set()
        self.unknown_categories: Counter[str] = Counter()  # folder -> files

    def problem(self, kind: str, path: str, message: str, specimen: str = "") -> None:
        self.problems.append(Problem(kind, path, message, specimen))

    def specimen(self, category: str, group: str, name: str) -> _Specimen:
        key = f"{category}/{group}/{name}"
        if key not in self.specimens:
            self.specimens[key] = _Specimen(category, group, name)
        return self.specimens[key]

    def add_file(self, path: str, known_categories: set[str]) -> None:
        parts = path.split("/")
        if any(part.startswith(".") or part == "__MACOSX" for part in parts):
            return
        if len(parts) == 1 or parts[0] == "jsons":
            return
        category = parts[0]
        if self.selected is not None and category not in self.selected:
            return
        if category not in known_categories:
            self.unknown_categories[category] += 1
            return
        group, folder, name = (parts[1], parts[2], parts[3]) if len(parts) == 4 else ("", "", "")
        image = _IMAGE_NAME.fullmatch(name)
        if group == "Good" and _GOOD_DIR.fullmatch(folder) and image and self._configuration_ok(image):
            self.specimen(category, group, folder).images[(image[1], image[2])] = path
        elif group == "NG" and _NG_DIR.fullmatch(folder) and defect_types_from_dirname(folder) and image and self._configuration_ok(image):
            self.specimen(category, group, folder).images[(image[1], image[2])] = path
        elif group == "GT" and (mask := _MASK_NAME.fullmatch(name)) and mask[1] in M2AD_VIEWS:
            self.orphan_masks[f"{category}/GT/{folder}"].append(path)
        elif group == "GT" and _SEG_NAME.fullmatch(name):
            return
        else:
            expected = "<Cat>/Good/<NNN>/A<vvv>_I<ii>.png, <Cat>/NG/<defect_k_NNN>/A<vvv>_I<ii>.png or <Cat>/GT/<NG dir>/A<vvv>_mask.png"
            self.problem("unknown-file", path, f"file name does not parse; expected {expected}")

    @staticmethod
    def _configuration_ok(match: re.Match[str]) -> bool:
        return match[1] in M2AD_VIEWS and match[2] in M2AD_ILLUMINATIONS

    def report_unknown_categories(self) -> None:
        """One problem per top-level folder that is no class of the meta JSON."""
        for category, files in sorted(self.unknown_categories.items()):
            self.problem("unknown-category", category, f"folder with {files} files, but {category!r} is no class of {META_PATH}")

    def attach_masks(self) -> None:
        """Move each GT folder's masks to its NG specimen; report masks of no NG specimen."""
        for gt_folder, paths in sorted(self.orphan_masks.items()):
            category, _, name = gt_folder.split("/")
            ng_key, good_key = f"{category}/NG/{name}", f"{category}/Good/{name}"
            if ng_key in self.specimens:
                for path in paths:
                    self.specimens[ng_key].masks[_MASK_NAME.fullmatch(path.rsplit("/", 1)[1])[1]] = path
            elif good_key in self.specimens:
                self.problem("mask-for-normal", gt_folder, f"normal specimen {good_key} has masks ({_quote(sorted(paths))}); only NG specimens may", good_key)
            else:
                self.problem("orphan-mask", gt_folder, f"masks for a specimen that has no NG image folder ({_quote(sorted(paths))})")
        self.orphan_masks.clear()

    def add_meta(self, meta: dict[str, Any]) -> None:
        """Attach each meta record to the specimen its ``img_path`` names."""
        for split in SPLITS:
            for category, records in meta[split].items():
                if self.selected is not None and category not in self.selected:
                    continue
                for record in records:
                    self._add_meta_record(split, category, record)

    def _add_meta_record(self, split: str, category: str, record: dict[str, Any]) -> None:
        img_path = str(record.get("img_path", ""))
        parts = img_path.split("/")
        image = _IMAGE_NAME.fullmatch(parts[-1])
        if len(parts) != 4 or parts[0] != category or parts[1] not in ("Good", "NG") or not image:
            self.problem("meta-mismatch", META_PATH, f"{split}/{category} record with img_path {img_path!r} names no image of class {category!r}")
            return
        specimen = self.specimen(parts[0], parts[1], parts[2])
        if img_path in specimen.meta:
            self.problem("meta-mismatch", img_path, f"listed twice in {META_PATH}", specimen.path)
            return
        specimen.meta[img_path] = (split, record)

    def check_specimen(self, specimen: _Specimen) -> list[ReleaseRecord]:
        """Records of a specimen whose files and meta records agree; problems otherwise."""
        key = specimen.path
        if not specimen.images:
            self.problem("missing-specimen", key, f"listed in {META_PATH} with {len(specimen.meta)} images, but there are no image files", key)
            return []
        missing = [f"A{view}_I{light}.png" for view, light in CONFIGURATIONS if (view, light) not in specimen.images]
        if missing:
            self.problem("missing-configurations", key, f"{len(missing)} of {len(CONFIGURATIONS)} configurations missing: {_quote(missing)}", key)
        unlisted = sorted(path.rsplit("/", 1)[1] for path in specimen.images.values() if path not in specimen.meta)
        if unlisted:
            self.problem("not-in-meta", key, f"{len(unlisted)} images not listed in {META_PATH}: {_quote(unlisted)}", key)
        splits = {split for split, _ in specimen.meta.values()}
        if len(splits) > 1:
            self.problem("meta-mismatch", key, f"images of one specimen are in both splits of {META_PATH}", key)
        if specimen.group == "NG" and "train" in splits:
            self.problem("meta-mismatch", key, "a defective specimen is in the train split", key)

        records: list[ReleaseRecord] = []
        referenced_masks: set[str] = set()
        for img_path, (split, record) in specimen.meta.items():
            view, light = _IMAGE_NAME.fullmatch(img_path.rsplit("/", 1)[1]).groups()
            if (view, light) not in specimen.images:
                if not missing:
                    self.problem("missing-image", img_path, f"listed in {META_PATH} but not in the tree", key)
                continue
            built = self._record(specimen, split, record, img_path, view, light)
            if built is not None:
                records.append(built)
                if built.mask_path:
                    referenced_masks.add(built.mask_path)
        for view, mask_path in sorted(specimen.masks.items()):
            if mask_path not in referenced_masks:
                self.problem("meta-mismatch", mask_path, f"a mask exists for view {view} but no image of it has mask_path in {META_PATH}", key)
        return records

    def _record(self, specimen: _Specimen, split: str, record: dict[str, Any], img_path: str, view: str, light: str) -> ReleaseRecord | None:
        """The schema record of one meta record, or ``None`` (and a problem) if they disagree."""
        key = specimen.path
        absent = [name for name in _META_FIELDS if name not in record]
        if absent:
            self.problem("meta-mismatch", img_path, f"record in {META_PATH} lacks {', '.join(absent)}", key)
            return None
        anomalous = specimen.group == "NG"
        mask_path = str(record["mask_path"] or "")
        expected_mask = f"{specimen.category}/GT/{specimen.name}/A{view}_mask.png"
        detectable, detectable_ok = _detectable(record.get("detectable", ""))
        disagreements = [
            f"{name}={record[name]!r}, but the path says {expected!r}"
            for name, expected in (("cls_name", specimen.category), ("object_name", specimen.name), ("view", view), ("illumination", light))
            if str(record[name]) != expected
        ]
        if record["object_anomaly"] not in (0, 1) or bool(record["object_anomaly"]) != anomalous:
            disagreements.append(f"object_anomaly={record['object_anomaly']!r} for a {specimen.group} specimen")
        if record["image_anomaly"] not in (0, 1) or bool(record["image_anomaly"]) != bool(mask_path):
            disagreements.append(f"image_anomaly={record['image_anomaly']!r} with mask_path {mask_path!r}")
        if mask_path and mask_path != expected_mask:
            disagreements.append(f"mask_path={mask_path!r}, expected {expected_mask!r}")
        if not detectable_ok:
            disagreements.append(f"detectable={record.get('detectable')!r} is not True, False or ''")
        if disagreements:
            self.problem("meta-mismatch", img_path, "; ".join(disagreements), key)
            return None
        if mask_path and view not in specimen.masks:
            if mask_path not in self.missing_masks:
                self.missing_masks.add(mask_path)
                self.problem("missing-mask", mask_path, f"{META_PATH} gives this mask for {img_path} and the other lights of its view, but the file is missing", key)
            return None
        return ReleaseRecord(
            sample_id=make_sample_id(self.dataset, img_path),
            dataset=self.dataset,
            category=specimen.category,
            split=split,
            specimen=specimen.name,
            view=view,
            illumination=light,
            label=int(record["image_anomaly"]),
            object_label=int(record["object_anomaly"]),
            defect_types=tuple(defect_types_from_dirname(specimen.name)) if anomalous else (),
            detectable=detectable,
            image_path=img_path,
            mask_path=mask_path or None,
            specimen_path=key,
        )


def _read_meta(source: TreeSource, files: set[str]) -> tuple[dict[str, Any] | None, Problem | None]:
    """The meta JSON as ``{"train": {cls: [records]}, "test": {...}}``, or the problem with it."""
    if META_PATH not in files:
        return None, Problem("missing-meta", META_PATH, "the split file is missing; M2AD ships it in jsons.zip")
    try:
        meta = json.loads(source.read_bytes(META_PATH))
    except (OSError, ValueError) as error:
        return None, Problem("bad-meta", META_PATH, f"not readable JSON ({error})")
    well_formed = (
        isinstance(meta, dict)
        and all(isinstance(meta.get(split), dict) for split in SPLITS)
        and all(isinstance(records, list) and all(isinstance(r, dict) for r in records) for split in SPLITS for records in meta[split].values())
    )
    if not well_formed:
        return None, Problem("bad-meta", META_PATH, 'expected {"train": {class: [records]}, "test": {class: [records]}}')
    return meta, None


def _card_facts(source: TreeSource, files: set[str]) -> tuple[str, str, str]:
    """(license, version, description) for the dataset card: the real release's, or the
    generator's for a synthetic tree (read from its marker)."""
    if SYNTHETIC_MARKER not in files:
        return LICENSE, "", DESCRIPTION
    marker = json.loads(source.read_bytes(SYNTHETIC_MARKER))
    version = f"{marker.get('generator', 'm2ad-synth')} {marker.get('generator_version', '?')}, seed {marker.get('seed', '?')}"
    description = (
        f"Synthetic M2AD written by `m2ad synth` ({marker.get('resolution', '?')} px renders, "
        f"{marker.get('normal_specimens', '?')} normal + {marker.get('ng_specimens', '?')} NG specimens per class)."
    )
    return "Apache-2.0 (generated by m2ad)", version, description


def parse(source: TreeSource, *, dataset_name: str, categories: Sequence[str] | None = None) -> ParsedRelease:
    """Parse an M2AD release tree into schema records and the list of its problems.

    ``categories`` limits the parse (and its checks) to those classes; naming a class the
    meta JSON does not have raises ``ValueError``.  Records come in the meta JSON's order
    (train, then test; classes and records as listed).  A specimen with any problem yields no
    records, so a caller that skips bad input simply drops the specimens named in problems.
    """
    files = source.list_files()
    license, version, description = _card_facts(source, set(files))
    meta, meta_problem = _read_meta(source, set(files))
    if meta is None:
        return ParsedRelease(dataset_name, [], [meta_problem], license, version, description)
    known = {category for split in SPLITS for category in meta[split]}
    if categories is not None:
        unknown = sorted(set(categories) - known)
        if unknown:
            raise ValueError(f"categories {unknown} are not in this release; it has {', '.join(sorted(known))}")
    parser = _Parser(dataset_name, categories)
    for path in files:
        parser.add_file(path, known)
    parser.report_unknown_categories()
    parser.attach_masks()
    parser.add_meta(meta)
    with_files = {specimen.category for specimen in parser.specimens.values() if specimen.images}
    for category in sorted({specimen.category for specimen in parser.specimens.values()} - with_files):
        parser.problem("missing-category", category, f"class {category!r} is in {META_PATH} but the tree has none of its images; select the classes present")
    by_image: dict[str, ReleaseRecord] = {}
    for specimen in parser.specimens.values():
        if specimen.category not in with_files:
            continue
        for record in parser.check_specimen(specimen):
            by_image[record.image_path] = record
    bad = {problem.specimen for problem in parser.problems if problem.specimen}
    ordered = [
        by_image[record["img_path"]]
        for split in SPLITS
        for category, records in meta[split].items()
        if categories is None or category in categories
        for record in records
        if record.get("img_path") in by_image and by_image[record["img_path"]].specimen_path not in bad
    ]
    return ParsedRelease(dataset_name, ordered, parser.problems, license, version, description)


# ---------------------------------------------------------------------------------------------
# Download spec (owned by the download engineer; see m2ad.datasets.registry and m2ad.download).
# Only what is known is pinned (reference m2ad.md section 10): the revision 72d6620 is the only
# Hub commit whose content was recorded, and only jsons.zip's LFS sha256 and size at that commit
# are known.  The category zips (13.9-16.4 GB each, about 153 GB in all) are verified against
# the Hub's LFS sha256 (X-Linked-Etag) at download time; the dataset card then records the full
# commit hash and every file's sha256, which pins what was actually used.
# ---------------------------------------------------------------------------------------------
from m2ad.datasets.registry import DatasetSpec, FileSpec, HubSource  # noqa: E402
from m2ad.schema import M2AD_CATEGORIES  # noqa: E402

DOWNLOAD_SPEC = DatasetSpec(
    name=DATASET_NAME,
    title="M2AD-1024: multi-view, multi-illumination visual anomaly detection",
    license=LICENSE,
    citation=(
        "Yunkang Cao, Yuqi Cheng, Xiaohao Xu, Yiheng Zhang, Yihan Sun, Yuxiang Tan, Yuxin Zhang, "
        "Xiaonan Huang, Weiming Shen. Visual Anomaly Detection under Complex View-Illumination "
        "Interplay: A Large-Scale Benchmark. arXiv:2505.10996, 2025."
    ),
    homepage="https://hustcyq.github.io/M2AD/",
    categories=M2AD_CATEGORIES,
    files=(
        FileSpec(
            "jsons.zip",
            sha256="13bbf10e5f6d6f5debf4d048ec50ddc278e6bad2a05fdd793ce3e1d228686c67",
            size=2_544_806,
        ),
        *(FileSpec(f"{category}.zip", categories=(category,)) for category in M2AD_CATEGORIES),
    ),
    source=HubSource("ChengYuQi99/M2AD", revision="72d6620"),
    layout_module=__name__,
    image_size=1024,
    notes=(
        "jsons.zip was re-uploaded later (1,100,022 B in 2026, sha256 not recorded); "
        "use --revision main for the current files, verified against the Hub's LFS sha256."
    ),
)
