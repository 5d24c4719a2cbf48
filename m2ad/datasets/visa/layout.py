"""VisA: the layout parser of the raw release (``VisA_20220922.tar``), driven by its 1cls split.

::

    [<wrapper>/]split_csv/1cls.csv                       object,split,label,image,mask
    [<wrapper>/]<object>/Data/Images/Normal/<name>.JPG
    [<wrapper>/]<object>/Data/Images/Anomaly/<name>.JPG
    [<wrapper>/]<object>/Data/Masks/Anomaly/<name>.png   defect-class ids (0 = background)
    [<wrapper>/]<object>/image_anno.csv                  per-image annotations: not used

The split file is authoritative: its ``image`` and ``mask`` columns give the paths (relative
to the tree's root, below an optional wrapper folder), ``label`` is ``normal`` or
``anomaly``, ``split`` is ``train`` or ``test``.  Traps handled: names are zero-padded to 4
digits for the normal images of some categories and to 3 for the others and for every
anomaly, so ``Normal/000.JPG`` and ``Anomaly/000.JPG`` both exist in five categories: the
sample id keeps the folder (``visa/<object>/Data/Images/Normal/000.JPG``) and masks are
paired through the CSV, never by stem; the extension is upper-case ``.JPG``; masks hold class
ids (binarised ``!= 0`` by ``m2ad.modalities.mask``, never ``> 127``).  Checks are those of
the listing layout (:mod:`m2ad.datasets.layouts.listing`).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Sequence

from m2ad.datasets.layouts.listing import LISTING_KINDS, Listed, category_problems, empty_folders, hidden, join, without_bad
from m2ad.datasets.spec import NOT_THIS, SPECIFIC, Layout
from m2ad.schema import SPLITS, ParsedRelease, Problem, TreeSource

SPLIT_CSV = "split_csv/1cls.csv"
COLUMNS = ["object", "split", "label", "image", "mask"]
LABELS = {"normal": 0, "anomaly": 1}
_IMAGE = re.compile(r"([^/]+)/Data/Images/(Normal|Anomaly)/([^/]+)\.(JPG|jpg|png|PNG)")
_MASK = re.compile(r"([^/]+)/Data/Masks/Anomaly/([^/]+)\.png")


def _wrapper(files: Sequence[str]) -> str | None:
    """``""`` or ``"<wrapper>/"``: where ``split_csv/1cls.csv`` is; ``None`` without one."""
    for path in files:
        if path == SPLIT_CSV:
            return ""
    for path in files:
        if path.count("/") == 2 and path.endswith("/" + SPLIT_CSV):
            return path[: -len(SPLIT_CSV)]
    return None


class VisALayout(Layout):
    """The raw VisA layout (see the module docstring)."""

    problem_kinds = ("missing-meta", "bad-meta", "unknown-file", "unknown-category", "empty-category", "missing-category",
                     "orphan-mask", *(kind for kind in LISTING_KINDS if kind != "missing-specimen"))  # a specimen is one image

    def detect(self, files: Sequence[str]) -> int:
        """Its split CSV, or images where VisA keeps them (then a missing CSV is a problem)."""
        if _wrapper(files) is not None or any("/Data/Images/" in path and _IMAGE.search(path) for path in files):
            return SPECIFIC
        return NOT_THIS

    def parse(self, source: TreeSource, *, dataset_name: str, categories: Sequence[str] | None = None,
              variant: str | None = None) -> ParsedRelease:
        files = source.list_files()
        wrapper = _wrapper(files)
        if wrapper is None:
            return ParsedRelease(dataset_name, [], [Problem("missing-meta", SPLIT_CSV, "the split file is missing; VisA ships it in split_csv/")])
        rows, problem = _read_split(source, wrapper + SPLIT_CSV)
        if problem is not None:
            return ParsedRelease(dataset_name, [], [problem])
        known = {row["object"] for row in rows}
        if categories is not None:
            unknown = sorted(set(categories) - known)
            if unknown:
                raise ValueError(f"categories {unknown} are not in this release; it has {', '.join(sorted(known))}")
        selected = set(categories) if categories is not None else known
        problems: list[Problem] = []
        images: dict[str, str] = {}
        masks: dict[str, str] = {}
        unknown_categories: Counter[str] = Counter()
        for path in files:
            relative = path[len(wrapper):] if path.startswith(wrapper) else None
            if relative is None or hidden(path) or "/" not in relative or relative.startswith("split_csv/"):
                continue
            category = relative.split("/", 1)[0]
            if category not in known:
                unknown_categories[category] += 1
                continue
            if category not in selected or relative == f"{category}/image_anno.csv":
                continue
            if _IMAGE.fullmatch(relative):
                images[path] = path
            elif _MASK.fullmatch(relative) is not None:
                masks[path] = ""
            else:
                problems.append(Problem("unknown-file", path, "file name does not parse; expected <object>/Data/Images/(Normal|Anomaly)/<name>.JPG or <object>/Data/Masks/Anomaly/<name>.png"))
        for category, count in sorted(unknown_categories.items()):
            problems.append(Problem("unknown-category", f"{wrapper}{category}", f"folder with {count} files, but {category!r} is no object of {SPLIT_CSV}"))
        empty = {folder[len(wrapper):] for folder in empty_folders(source) if folder.startswith(wrapper)}
        for folder in sorted(name for name in empty if "/" not in name and name not in known):
            problems.append(Problem("empty-category", f"{wrapper}{folder}", f"the folder {folder!r} holds no files"))
        listed = [_listed(row, wrapper) for row in rows if row["object"] in selected]
        with_images = {path[len(wrapper):].split("/", 1)[0] for path in images}
        problems += category_problems([entry.category for entry in listed], with_images, empty, SPLIT_CSV)
        listed = [entry for entry in listed if entry.category in with_images]
        owners = {entry.mask_path: entry.image_path for entry in listed if entry.mask_path is not None}
        masks = {path: owners.get(path, "") for path in masks}
        records, found = join(dataset_name, SPLIT_CSV, listed, images, masks)
        problems += found
        return ParsedRelease(dataset_name, without_bad(records, problems), problems)


def _read_split(source: TreeSource, path: str) -> tuple[list[dict[str, str]], Problem | None]:
    """The rows of the split CSV, or the problem with it."""
    try:
        text = source.read_bytes(path).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        return [], Problem("bad-meta", path, f"not a readable CSV ({error})")
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != COLUMNS:
        return [], Problem("bad-meta", path, f"columns {reader.fieldnames}, expected {COLUMNS}")
    rows = [dict(row) for row in reader]
    if any(None in row.values() or None in row for row in rows):
        return [], Problem("bad-meta", path, "a row has more or fewer fields than the header")
    return rows, None


def _listed(row: dict[str, str], wrapper: str) -> Listed:
    """The listing entry of one CSV row (``invalid`` says why it disagrees with its path)."""
    image, mask = row["image"].strip(), row["mask"].strip()
    category = row["object"]
    label = LABELS.get(row["label"])
    match = _IMAGE.fullmatch(image)
    disagreements = []
    if row["split"] not in SPLITS:
        disagreements.append(f"split={row['split']!r} is not train or test")
    if label is None:
        disagreements.append(f"label={row['label']!r} is not normal or anomaly")
    if match is None or match[1] != category:
        disagreements.append(f"image {image!r} is not an image of object {category!r}")
    elif label is not None and match[2] != ("Anomaly" if label else "Normal"):
        disagreements.append(f"a {row['label']} image in the {match[2]} folder")
    if label == 1 and not mask:
        disagreements.append("an anomaly without a mask")
    if label == 0 and mask:
        disagreements.append(f"a normal image with the mask {mask!r}")
    return Listed(
        split=row["split"],
        category=category,
        image_path=wrapper + image,
        mask_path=wrapper + mask if mask else None,
        specimen=image.split("/", 1)[-1].rsplit(".", 1)[0],
        specimen_path=wrapper + image,
        label=label or 0,
        object_label=label or 0,
        sample_path=image,
        invalid="; ".join(disagreements),
    )
