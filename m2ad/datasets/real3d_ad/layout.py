"""The Real3D-AD release layout (``real3d-ad-pcd.zip``), as the official loader reads it.

::

    [<wrapper>/]<category>/train/<name>.pcd     normal training clouds: names with ``template``
                                                (the loader's glob, ``dataset_pc.py:18``) or
                                                ``prototype`` (the README's tree)
    [<wrapper>/]<category>/test/<name>.pcd      test clouds: ``good`` in the name is normal,
                                                anything else anomalous (``bulge``, ``sink``)
    [<wrapper>/]<category>/gt/<stem>.txt        an anomalous cloud's points and labels, one
                                                ``x y z label`` line per point

Official code: M-3LAB/Real3D-AD, ``dataset_pc.py`` at commit 9a9cd04.  Its test loader
(lines 46-96) globs ``test/*.pcd``, drops names containing ``temp`` (line 52), and for a name
without ``good`` reads the points *and* the labels from ``gt/<stem>.txt``, never from the test
PCD (lines 80-90); a ``good`` cloud is read from its PCD with all-zero labels (lines 70-79).
We do the same: an anomalous sample's stored points are those of its GT file, and the sample
id is its test PCD's release path.  The loader tests ``'good' in`` the whole path; we test the
file name only (a folder name containing ``good`` would otherwise make every cloud normal).

Each cloud is its own specimen (``specimen`` = the path under the category without extension,
``test/1_bulge``).  Defect types are the name's non-numeric tokens (``1_bulge`` -> ``bulge``).
Files directly in the root, a wrapper or a category folder are ignored, as are hidden files;
test files with ``temp`` in their name are skipped as the official loader does (listed in the
card's notes).  A GT file of a ``good`` cloud is ignored (its labels are zero by definition).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from m2ad.datasets.layouts.listing import category_folders, hidden
from m2ad.datasets.spec import NOT_THIS, SPECIFIC, Layout
from m2ad.schema import (
    ParsedRelease,
    Problem,
    ReleaseRecord,
    TreeSource,
    make_sample_id,
)

SPLIT_FOLDERS = ("train", "test", "gt")
TRAIN_MARKERS = ("template", "prototype")
NORMAL_MARKER = "good"
SKIPPED_MARKER = "temp"
"""The official loader drops test clouds whose path contains this (``dataset_pc.py:52``)."""


def _wrapper(files: Sequence[str]) -> str | None:
    """``""`` when the categories sit at the root, ``"<wrapper>/"`` one level down, ``None``
    when the tree has no ``<category>/(train|test)/*.pcd``."""
    depths: Counter[str] = Counter()
    for path in files:
        parts = path.split("/")
        if hidden(path) or not path.lower().endswith(".pcd"):
            continue
        if len(parts) == 3 and parts[1] in ("train", "test"):
            depths[""] += 1
        elif len(parts) == 4 and parts[2] in ("train", "test"):
            depths[parts[0] + "/"] += 1
    return depths.most_common(1)[0][0] if depths else None


def defect_tokens(stem: str) -> tuple[str, ...]:
    """The defect types in a test cloud's stem: its tokens that are not numbers."""
    return tuple(token for token in re.split(r"[_\-\s]+", stem) if token and not token.isdigit())


@dataclass(frozen=True)
class Real3DLayout(Layout):
    """The layout above; ``categories`` are the release's twelve."""

    categories: tuple[str, ...] = ()
    problem_kinds: tuple[str, ...] = ("unknown-file", "unknown-category", "empty-category", "missing-gt")

    def detect(self, files: Sequence[str]) -> int:
        wrapper = _wrapper(files)
        if wrapper is None:
            return NOT_THIS
        named = {path[len(wrapper):].split("/")[0] for path in files
                 if path.startswith(wrapper) and path.lower().endswith(".pcd") and not hidden(path)}
        return SPECIFIC if named and named <= set(self.categories) else NOT_THIS

    def parse(self, source: TreeSource, *, dataset_name: str, categories: Sequence[str] | None = None,
              variant: str | None = None) -> ParsedRelease:
        files = source.list_files()
        wrapper = _wrapper(files) or ""
        problems: list[Problem] = []
        clouds: dict[str, list[tuple[str, str]]] = defaultdict(list)  # category -> (split, path)
        gts: dict[tuple[str, str], str] = {}  # (category, stem) -> gt path
        skipped: list[str] = []
        unknown_categories: Counter[str] = Counter()
        present = category_folders(source, files, wrapper, categories)
        for path in files:
            relative = path[len(wrapper):] if path.startswith(wrapper) else None
            if relative is None or hidden(path) or "/" not in relative:
                continue
            parts = relative.split("/")
            category = parts[0]
            if (categories is not None and category not in categories) or len(parts) == 2:
                continue
            if category not in self.categories:
                unknown_categories[category] += 1
                continue
            name = parts[-1]
            if len(parts) == 3 and parts[1] == "train" and name.lower().endswith(".pcd") and any(marker in name for marker in TRAIN_MARKERS):
                clouds[category].append(("train", path))
            elif len(parts) == 3 and parts[1] == "test" and name.lower().endswith(".pcd"):
                if SKIPPED_MARKER in name:
                    skipped.append(path)
                else:
                    clouds[category].append(("test", path))
            elif len(parts) == 3 and parts[1] == "gt" and name.endswith(".txt") and len(name) > 4:
                gts[(category, name[:-4])] = path
            else:
                problems.append(Problem("unknown-file", path, "file name does not parse; expected <category>/train/<name with "
                                        "template or prototype>.pcd, <category>/test/<name>.pcd or <category>/gt/<stem>.txt"))
        for category, count in sorted(unknown_categories.items()):
            problems.append(Problem("unknown-category", f"{wrapper}{category}",
                                    f"folder with {count} files, but {category!r} is no category of {dataset_name} ({', '.join(self.categories)})"))
        for category in sorted(present - set(clouds) - set(unknown_categories)):
            if categories is None or category in categories:
                problems.append(Problem("empty-category", f"{wrapper}{category}", f"the category folder {category!r} holds no point clouds"))
        records = []
        for category in sorted(clouds):
            for split, path in sorted(clouds[category], key=lambda item: (item[0] != "train", item[1])):
                relative = path[len(wrapper):]
                stem = relative.rsplit("/", 1)[1][:-4]
                anomalous = split == "test" and NORMAL_MARKER not in stem
                points_path = path
                if anomalous:
                    gt = gts.get((category, stem))
                    if gt is None:
                        problems.append(Problem("missing-gt", f"{wrapper}{category}/gt/{stem}.txt",
                                                f"the anomalous cloud {path} has no ground-truth file (its points and labels)", path))
                        continue
                    points_path = gt
                records.append(ReleaseRecord(
                    sample_id=make_sample_id(dataset_name, relative), dataset=dataset_name, category=category, split=split,
                    specimen=relative.split("/", 1)[1][:-4], view=None, illumination=None, label=int(anomalous),
                    object_label=int(anomalous), defect_types=defect_tokens(stem) if anomalous else (),
                    files={"points": points_path}, specimen_path=path,
                ))
        notes = [f"{len(skipped)} test file(s) with '{SKIPPED_MARKER}' in their name skipped, as the official loader does: "
                 + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")] if skipped else []
        return ParsedRelease(dataset_name, records, problems, notes=notes)
