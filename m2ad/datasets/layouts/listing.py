"""The listing layout: a release whose split file lists every image (M2AD's and Real-IAD's
JSON, VisA's CSV), checked against the files of the tree.

A dataset module reads its split file into :class:`Listed` entries (one per listed image, with
every schema field, and ``invalid`` set when the entry disagrees with its own path) and sorts
the tree's files into images (with the specimen each belongs to) and masks; :func:`join` then
applies the checks every such release needs, in one place:

``meta-mismatch``   an image listed twice; an entry that disagrees with its path; a specimen
                    split across train and test; a defective specimen in train; a mask in the
                    tree that no entry lists (kind chosen by the dataset, see ``unlisted_mask``)
``missing-specimen`` a listed specimen of several images with none of them in the tree
``missing-image``   a listed image that is not in the tree
``missing-mask``    a listed mask that is not in the tree (once per mask)
``not-in-meta``     images of the tree that the split file does not list (once per specimen)

plus a dataset's own completeness rule (M2AD: all 120 configurations).  A specimen with any
problem yields no records (:func:`without_bad`); records come in the split file's order.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from m2ad.schema import Problem, ReleaseRecord, TreeSource, make_sample_id
from m2ad.text import quote

LISTING_KINDS = ("meta-mismatch", "missing-specimen", "missing-image", "missing-mask", "not-in-meta")


def hidden(path: str) -> bool:
    """A path no release means as data: a hidden file or folder, or macOS archive metadata."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))


def read_json(source: TreeSource, path: str, files: Collection[str], missing_hint: str) -> tuple[Any, Problem | None]:
    """The parsed JSON file at ``path``, or the problem with it (``missing-meta``, ``bad-meta``)."""
    if path not in files:
        return None, Problem("missing-meta", path, f"the split file is missing; {missing_hint}")
    try:
        return json.loads(source.read_bytes(path)), None
    except (OSError, ValueError) as error:
        return None, Problem("bad-meta", path, f"not readable JSON ({error})")


@dataclass(frozen=True)
class Listed:
    """One image as the split file lists it (see the module docstring)."""

    split: str
    category: str
    image_path: str
    mask_path: str | None
    specimen: str
    specimen_path: str
    label: int
    object_label: int
    view: str | None = None
    illumination: str | None = None
    defect_types: tuple[str, ...] = ()
    extras: Mapping[str, Any] = field(default_factory=dict)
    invalid: str = ""
    sample_path: str = ""  # the image's path in the official release, for its sample id (default: image_path)


def join(
    dataset: str,
    listing: str,
    listed: Sequence[Listed],
    images: Mapping[str, str],
    masks: Mapping[str, str],
    *,
    completeness: Callable[[str, Collection[str]], Problem | None] | None = None,
    unlisted_mask: str | None = "orphan-mask",
    anomalies_in_train: bool = False,
) -> tuple[list[ReleaseRecord], list[Problem]]:
    """Records and problems of a tree whose split file ``listing`` lists ``listed``.

    ``images`` maps each image file of the tree to its specimen path, ``masks`` each mask file
    to the specimen path it belongs to (``""``: none); ``completeness(specimen_path, images
    present)`` may report what a specimen lacks (then its missing images are not reported one
    by one); ``unlisted_mask`` is the problem kind of a mask that no entry lists (``None``:
    not a problem; the caller may note it).  Records come in the listing's order, also those
    of specimens with problems: the caller drops them with :func:`without_bad` once it has
    every problem of the tree.
    """
    problems: list[Problem] = []
    by_specimen: dict[str, list[Listed]] = defaultdict(list)
    seen: set[str] = set()
    unique: list[Listed] = []
    for entry in listed:
        if entry.image_path in seen:
            problems.append(Problem("meta-mismatch", entry.image_path, f"listed twice in {listing}", entry.specimen_path))
            continue
        seen.add(entry.image_path)
        unique.append(entry)
        by_specimen[entry.specimen_path].append(entry)
    present: dict[str, list[str]] = defaultdict(list)
    for path, specimen_path in images.items():
        present[specimen_path].append(path)

    records: dict[str, ReleaseRecord] = {}
    reported_masks: set[str] = set()
    for specimen_path in [*by_specimen, *(key for key in present if key not in by_specimen)]:
        entries, files = by_specimen.get(specimen_path, []), present.get(specimen_path, [])
        if not files and len(entries) == 1:  # a specimen of one image (MVTec-like): the image is missing
            problems.append(Problem("missing-image", entries[0].image_path, f"listed in {listing} but not in the tree", specimen_path))
            continue
        if not files:
            problems.append(Problem("missing-specimen", specimen_path,
                                    f"listed in {listing} with {len(entries)} images, but there are no image files", specimen_path))
            continue
        incomplete = completeness(specimen_path, files) if completeness is not None else None
        if incomplete is not None:
            problems.append(incomplete)
        unlisted = sorted(path.rsplit("/", 1)[-1] for path in files if path not in seen)
        if unlisted:
            problems.append(Problem("not-in-meta", specimen_path, f"{len(unlisted)} images not listed in {listing}: {quote(unlisted)}", specimen_path))
        splits = {entry.split for entry in entries}
        if len(splits) > 1:
            problems.append(Problem("meta-mismatch", specimen_path, f"images of one specimen are in both splits of {listing}", specimen_path))
        if not anomalies_in_train and "train" in splits and any(entry.object_label for entry in entries):
            problems.append(Problem("meta-mismatch", specimen_path, "a defective specimen is in the train split", specimen_path))
        available = set(files)
        for entry in entries:
            if entry.image_path not in available:
                if incomplete is None:
                    problems.append(Problem("missing-image", entry.image_path, f"listed in {listing} but not in the tree", specimen_path))
                continue
            if entry.invalid:
                problems.append(Problem("meta-mismatch", entry.image_path, entry.invalid, specimen_path))
                continue
            if entry.mask_path is not None and entry.mask_path not in masks:
                if entry.mask_path not in reported_masks:
                    reported_masks.add(entry.mask_path)
                    problems.append(Problem("missing-mask", entry.mask_path,
                                            f"{listing} gives this mask for {entry.image_path}, but the file is missing", specimen_path))
                continue
            records[entry.image_path] = _record(dataset, entry)

    listed_masks = {entry.mask_path for entry in listed if entry.mask_path is not None}
    for mask_path, owner in sorted(masks.items()):
        if unlisted_mask is not None and mask_path not in listed_masks:
            problems.append(Problem(unlisted_mask, mask_path, f"a mask in the tree that no image of {listing} lists", owner))
    return [records[entry.image_path] for entry in unique if entry.image_path in records], problems


def without_bad(records: Sequence[ReleaseRecord], problems: Sequence[Problem]) -> list[ReleaseRecord]:
    """The records whose specimen no problem names (a specimen with any problem yields none)."""
    bad = {problem.specimen for problem in problems if problem.specimen}
    return [record for record in records if record.specimen_path not in bad]


def _record(dataset: str, entry: Listed) -> ReleaseRecord:
    files = {"image": entry.image_path} if entry.mask_path is None else {"image": entry.image_path, "mask": entry.mask_path}
    return ReleaseRecord(
        sample_id=make_sample_id(dataset, entry.sample_path or entry.image_path),
        dataset=dataset,
        category=entry.category,
        split=entry.split,
        specimen=entry.specimen,
        view=entry.view,
        illumination=entry.illumination,
        label=entry.label,
        object_label=entry.object_label,
        defect_types=entry.defect_types,
        files=files,
        specimen_path=entry.specimen_path,
        extras=dict(entry.extras),
    )


def empty_folders(source: TreeSource) -> set[str]:
    """Folders of the tree that hold no file at any depth (seen only where the source lists
    folders, ``empty_folders()``: a folder on disk, zip folder entries)."""
    lister = getattr(source, "empty_folders", None)
    return set(lister()) if lister is not None else set()


def category_folders(source: TreeSource, files: Sequence[str], wrapper: str, categories: Sequence[str] | None) -> set[str]:
    """The category folders under ``wrapper`` (``""`` or ``"<folder>/"``): those holding a
    non-hidden file and the empty ones; asking for ``categories`` the tree lacks is one clear error."""
    empty = {folder[len(wrapper):] for folder in empty_folders(source) if folder.startswith(wrapper) and "/" not in folder[len(wrapper):]}
    empty.discard("")
    present = empty | {path[len(wrapper):].split("/")[0] for path in files
                       if path.startswith(wrapper) and "/" in path[len(wrapper):] and not hidden(path)}
    if categories is not None:
        absent = sorted(set(categories) - present)
        if absent:
            raise ValueError(f"categories {absent} are not in this tree; it has {', '.join(sorted(present))}")
    return present


def category_problems(listed_categories: Sequence[str], with_images: Collection[str], empty: Collection[str],
                      listing: str) -> list[Problem]:
    """For each listed category without images: ``empty-category`` when its folder is empty,
    ``missing-category`` otherwise."""
    problems = []
    for category in dict.fromkeys(listed_categories):
        if category in with_images:
            continue
        if category in empty:
            problems.append(Problem("empty-category", category, f"the folder of category {category!r} holds no files"))
        else:
            problems.append(Problem("missing-category", category,
                                    f"class {category!r} is in {listing} but the tree has none of its images; select the classes present"))
    return problems

