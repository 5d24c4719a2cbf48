"""Real-IAD: the layout parser of the release (``realiad_<res>/`` image folders, ``realiad_jsons``).

::

    [<root>/]realiad_jsons/realiad_jsons/<category>.json    (or realiad_jsons/<category>.json)
    [<root>/]realiad_<variant>/<category>/OK/S0001/<category>_0001_OK_C1_<timestamp>.jpg
    [<root>/]realiad_<variant>/<category>/NG/<code>/S0064/<category>_0064_NG_<code>_C1_<timestamp>.jpg
                                                            + the mask its JSON record names (.png)

or, as the Hub's per-category zips extract, ``<category>/...`` directly at the root.  The
JSON of the multi-view UIAD setting (``realiad_jsons``; the single-view and FUIAD sets are
not read) is authoritative: ``{"meta": {"prefix", "normal_class"}, "train": [...], "test":
[...]}``, each record ``{category, anomaly_class, image_path, mask_path}``; paths are relative
to ``realiad_<variant>/`` after ``meta.prefix`` (``<category>/`` when absent).  The variant
(``256``, ``512``, ``1024``, ``raw``) picks the image folder.

Fields: ``view`` is the ``C1``..``C5`` token of the file name (never split the category off a
file name: audiojack's defective files have a double underscore, ``audiojack__0064_NG_...``);
``specimen`` is the sample folder under the category (``OK/S0001``, ``NG/HS/S0064``), the
unit of the sample-level protocol; ``object_label`` is 1 for an NG sample; ``label`` follows
the official (UniAD) rule: an NG view is anomalous only with a mask (``mask_path`` null counts
as normal; ADEval then takes the label from the mask's pixels, ADer and INP-Former from
``anomaly_class``: ``object_label`` serves that rule).  Masks come from the JSON paths, never
derived.  The parser notes, per category, NG views without a mask, samples without exactly 5
views, and mask files no record names; none of these is a problem, as the release has them.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from m2ad.datasets.layouts.listing import LISTING_KINDS, Listed, category_problems, empty_folders, hidden, join, without_bad, read_json
from m2ad.datasets.spec import NOT_THIS, SPECIFIC, Layout
from m2ad.schema import SPLITS, ParsedRelease, Problem, TreeSource

JSON_FOLDER = "realiad_jsons"
FIELDS = ("category", "anomaly_class", "image_path", "mask_path")
VIEWS = ("C1", "C2", "C3", "C4", "C5")
_VIEW = re.compile(r"_C([1-5])_")
_SAMPLE = re.compile(r"S\d+")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_RELEASE_IMAGE = re.compile(r"(?:^|/)(?:OK|NG/[^/]+)/S\d+/[^/]+_C[1-5]_\d+\.jpg$")


def _split_files(files: Sequence[str]) -> dict[str, str]:
    """Category -> its JSON file of the multi-view UIAD setting (the nested
    ``realiad_jsons/realiad_jsons/`` copy when the tree has one)."""
    nested: dict[str, str] = {}
    flat: dict[str, str] = {}
    for path in files:
        parts = path.split("/")
        if hidden(path) or not parts[-1].endswith(".json") or len(parts) < 2 or parts[-2] != JSON_FOLDER:
            continue
        category = parts[-1][: -len(".json")]
        if len(parts) >= 3 and parts[-3] == JSON_FOLDER:
            nested.setdefault(category, path)
        elif len(parts) == 2 or parts[-3] != JSON_FOLDER:
            flat.setdefault(category, path)
    return nested or flat


def _root_of(json_path: str) -> str:
    """The release root of a JSON file: what precedes its top ``realiad_jsons/`` folder."""
    return json_path[: json_path.index(JSON_FOLDER + "/")]


class RealIADLayout(Layout):
    """The Real-IAD release layout (see the module docstring)."""

    problem_kinds = ("missing-meta", "bad-meta", "unknown-file", "unknown-category", "empty-category", "missing-category", *LISTING_KINDS)

    def detect(self, files: Sequence[str]) -> int:
        """Its JSON files, or images named as Real-IAD names them (then missing JSONs are a problem)."""
        if _split_files(files) or any(_RELEASE_IMAGE.search(path) for path in files):
            return SPECIFIC
        return NOT_THIS

    def parse(self, source: TreeSource, *, dataset_name: str, categories: Sequence[str] | None = None,
              variant: str | None = None) -> ParsedRelease:
        files = source.list_files()
        jsons = _split_files(files)
        if not jsons:
            return ParsedRelease(dataset_name, [], [Problem("missing-meta", f"{JSON_FOLDER}/{JSON_FOLDER}/<category>.json",
                                                            "the split files are missing; Real-IAD ships them in realiad_jsons.zip")])
        if categories is not None:
            unknown = sorted(set(categories) - set(jsons))
            if unknown:
                raise ValueError(f"categories {unknown} are not in this release; it has {', '.join(sorted(jsons))}")
        selected = sorted(categories if categories is not None else jsons)
        root = _root_of(next(iter(jsons.values())))
        image_root = self._image_root(files, root, variant or "1024")
        problems: list[Problem] = []
        images: dict[str, str] = {}
        masks: dict[str, str] = {}
        unknown_categories: Counter[str] = Counter()
        for path in files:
            if hidden(path) or not path.startswith(image_root):
                continue
            relative = path[len(image_root):]
            parts = relative.split("/")
            if len(parts) == 1 or (not image_root and (parts[0].startswith("realiad_") or parts[0] == JSON_FOLDER)):
                continue
            category = parts[0]
            if category not in jsons:
                unknown_categories[category] += 1
                continue
            if category not in selected:
                continue
            sample = self._sample_folder(parts)
            if sample is not None and parts[-1].lower().endswith(_IMAGE_SUFFIXES):
                (masks if parts[-1].lower().endswith(".png") else images)[path] = image_root + sample
            else:
                problems.append(Problem("unknown-file", path, "file name does not parse; expected <category>/OK/S<NNNN>/<name>.jpg or <category>/NG/<code>/S<NNNN>/<name>.jpg (and .png masks)"))
        for category, count in sorted(unknown_categories.items()):
            problems.append(Problem("unknown-category", image_root + category, f"folder with {count} files, but {category!r} has no file in {JSON_FOLDER}"))
        empty = {folder[len(image_root):] for folder in empty_folders(source) if folder.startswith(image_root)}
        for folder in sorted(name for name in empty if "/" not in name and name not in jsons and not name.startswith("realiad_") and name != JSON_FOLDER):
            problems.append(Problem("empty-category", image_root + folder, f"the folder {folder!r} holds no files"))
        listed: list[Listed] = []
        for category in selected:
            entries, problem = self._read_listing(source, jsons[category], category, image_root, set(files))
            if problem is not None:
                problems.append(problem)
            listed += entries
        with_images = {path[len(image_root):].split("/", 1)[0] for path in images}
        problems += category_problems([entry.category for entry in listed], with_images, empty, JSON_FOLDER)
        listed = [entry for entry in listed if entry.category in with_images]
        records, found = join(dataset_name, JSON_FOLDER, listed, images, masks, unlisted_mask=None)
        problems += found
        return ParsedRelease(dataset_name, without_bad(records, problems), problems, notes=self._notes(listed, masks, image_root))

    @staticmethod
    def _image_root(files: Sequence[str], root: str, variant: str) -> str:
        """Where the category folders are: ``<root>realiad_<variant>/`` if the tree has it,
        else ``<root>`` (a category zip extracts to ``<category>/``)."""
        folder = f"{root}realiad_{variant}/"
        return folder if any(path.startswith(folder) for path in files) else root

    @staticmethod
    def _sample_folder(parts: Sequence[str]) -> str | None:
        """``<category>/OK/S####`` or ``<category>/NG/<code>/S####`` of a file's path parts."""
        if len(parts) == 4 and parts[1] == "OK" and _SAMPLE.fullmatch(parts[2]):
            return "/".join(parts[:3])
        if len(parts) == 5 and parts[1] == "NG" and _SAMPLE.fullmatch(parts[3]):
            return "/".join(parts[:4])
        return None

    def _read_listing(self, source: TreeSource, path: str, category: str, image_root: str,
                      files: set[str]) -> tuple[list[Listed], Problem | None]:
        """The listing entries of one category's JSON, or the problem with the file."""
        data, problem = read_json(source, path, files, "Real-IAD ships it in realiad_jsons.zip")
        if problem is not None:
            return [], problem
        well_formed = isinstance(data, dict) and isinstance(data.get("meta", {}), dict) and all(
            isinstance(data.get(split), list) and all(isinstance(record, dict) for record in data[split]) for split in SPLITS
        )
        if not well_formed:
            return [], Problem("bad-meta", path, 'expected {"meta": {...}, "train": [records], "test": [records]}')
        meta = data.get("meta", {})
        normal = str(meta.get("normal_class", "OK"))
        prefix = str(meta.get("prefix") or f"{category}/")
        return [self._listed(split, record, category, normal, prefix, image_root, path) for split in SPLITS for record in data[split]], None

    def _listed(self, split: str, record: dict[str, Any], category: str, normal: str, prefix: str, image_root: str,
                listing: str) -> Listed:
        """The listing entry of one JSON record (``invalid`` says why it disagrees with its path)."""
        release = prefix + str(record.get("image_path", ""))
        mask = record.get("mask_path")
        parts = release.split("/")
        sample = self._sample_folder(parts)
        anomaly_class = str(record.get("anomaly_class", ""))
        defective = anomaly_class != normal
        view = _VIEW.search(parts[-1])
        disagreements = [f"the record lacks {name}" for name in FIELDS if name not in record]
        if record.get("category", category) != category:
            disagreements.append(f"category={record.get('category')!r} in the file of {category!r}")
        if sample is None or parts[0] != category:
            disagreements.append(f"image_path {release!r} is not <category>/OK/S<NNNN>/... or <category>/NG/<code>/S<NNNN>/...")
        elif defective != (parts[1] == "NG") or (defective and parts[2] != anomaly_class):
            disagreements.append(f"anomaly_class={anomaly_class!r} for an image in {'/'.join(parts[1:-2])}")
        if view is None:
            disagreements.append(f"no camera token _C1_.._C5_ in {parts[-1]!r}")
        mask_path = None if mask is None else image_root + prefix + str(mask)
        specimen = "/".join(sample.split("/")[1:]) if sample else release
        return Listed(
            split=split,
            category=category,
            image_path=image_root + release,
            mask_path=mask_path,
            specimen=specimen,
            specimen_path=image_root + (sample or release),
            label=int(defective and mask is not None),
            object_label=int(defective),
            view=f"C{view[1]}" if view else None,
            defect_types=(anomaly_class,) if defective else (),
            sample_path=release,
            invalid="; ".join(disagreements),
        )

    @staticmethod
    def _notes(listed: Sequence[Listed], masks: dict[str, str], image_root: str) -> list[str]:
        """Facts of the release worth a line on the card, per category."""
        notes = []
        named = {entry.mask_path for entry in listed if entry.mask_path}
        views: dict[tuple[str, str], int] = defaultdict(int)
        for entry in listed:
            views[(entry.category, entry.specimen_path)] += 1
        for category in sorted({entry.category for entry in listed}):
            without = sum(1 for entry in listed if entry.category == category and entry.object_label and entry.mask_path is None)
            if without:
                notes.append(f"{category}: {without} view(s) of defective samples have no mask (mask_path null): label 0 under the official rule")
            odd = sum(1 for (owner, _), count in views.items() if owner == category and count != len(VIEWS))
            if odd:
                notes.append(f"{category}: {odd} sample(s) without exactly {len(VIEWS)} views")
            unnamed = sum(1 for path, owner in masks.items() if path not in named and owner[len(image_root):].split("/")[0] == category)
            if unnamed:
                notes.append(f"{category}: {unnamed} mask file(s) that no record names (not used)")
        return notes
