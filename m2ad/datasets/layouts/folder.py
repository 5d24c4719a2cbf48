"""The MVTec-style folder layout, parametrised: MVTec AD, and a user's own data (``folder``).

::

    [<wrapper>/]<category>/train/good/<name>.<ext>            normal training images
    [<wrapper>/]<category>/test/good/<name>.<ext>             normal test images
    [<wrapper>/]<category>/test/<defect>/<name>.<ext>         defective test images
    [<wrapper>/]<category>/ground_truth/<defect>/<name><mask suffix>   their masks (MVTec: ``_mask.png``)

The folder names are the labels: ``good`` is normal, any other test folder is a defect type.
Masks are paired with images by stem (``000.png`` <-> ``000_mask.png``), never by sorted
position.  Category folders may sit at the root or inside one wrapper folder (an archive
extracted into a folder of its own); sample ids use the path below the wrapper, i.e. the path
in the official release.  Files directly in the root, in the wrapper or in a category folder
(``license.txt``, ``readme.txt``) are not samples and are ignored; hidden files too.  Each
image is its own specimen: ``specimen`` is its path under the category without extension
(``test/broken_large/000``), since stems repeat across folders.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from m2ad.datasets.layouts.listing import category_folders, hidden
from m2ad.datasets.spec import GENERIC, NOT_THIS, SPECIFIC, Layout
from m2ad.schema import ParsedRelease, Problem, ReleaseRecord, TreeSource, make_sample_id
from m2ad.text import quote

SPLIT_FOLDERS = ("train", "test", "ground_truth")
CATEGORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Category names a user's data may use: they become dataset-card config names and file globs."""
RESERVED_NAMES = ("all",)


def _wrapper(files: Sequence[str]) -> str | None:
    """The folder the categories sit in: ``""`` for the root, ``"<wrapper>/"`` one level
    down, ``None`` when the tree has no ``<category>/(train|test|ground_truth)/`` folders."""
    depths: Counter[str] = Counter()
    for path in files:
        parts = path.split("/")
        if hidden(path):
            continue
        if len(parts) >= 4 and parts[1] in SPLIT_FOLDERS:
            depths[""] += 1
        elif len(parts) >= 5 and parts[2] in SPLIT_FOLDERS:
            depths[parts[0] + "/"] += 1
    return depths.most_common(1)[0][0] if depths else None


@dataclass(frozen=True)
class FolderLayout(Layout):
    """The layout above.  ``categories``: the only category names allowed (empty: any name
    matching :data:`CATEGORY_NAME`); ``image_suffixes``: accepted image endings (compared in
    lower case unless ``exact_suffix``); ``mask_suffix``: what follows the stem in a mask's
    name; ``masks_required``: every defective image must have a mask."""

    categories: tuple[str, ...] = ()
    image_suffixes: tuple[str, ...] = (".png",)
    mask_suffix: str = "_mask.png"
    exact_suffix: bool = True
    masks_required: bool = True

    @property
    def problem_kinds(self) -> tuple[str, ...]:  # type: ignore[override]
        """The kinds this parametrisation can report."""
        kinds = ["unknown-file", "empty-category", "mask-for-normal", "orphan-mask"]
        kinds.append("unknown-category" if self.categories else "category-name")
        if self.masks_required:
            kinds.append("missing-mask")
        return tuple(kinds)

    def _is_image(self, name: str) -> bool:
        ending = name if self.exact_suffix else name.lower()
        return not name.endswith(self.mask_suffix) and any(ending.endswith(suffix) and len(name) > len(suffix) for suffix in self.image_suffixes)

    def detect(self, files: Sequence[str]) -> int:
        wrapper = _wrapper(files)
        if wrapper is None:
            return NOT_THIS
        images = [path[len(wrapper):] for path in files if path.startswith(wrapper) and self._is_image(path.rsplit("/", 1)[-1])]
        named = {path.split("/")[0] for path in images if path.split("/")[1:2] in (["train"], ["test"])}
        if not named:
            return NOT_THIS
        if not self.categories:
            return GENERIC
        return SPECIFIC if named <= set(self.categories) else NOT_THIS

    def parse(self, source: TreeSource, *, dataset_name: str, categories: Sequence[str] | None = None,
              variant: str | None = None) -> ParsedRelease:
        files = source.list_files()
        wrapper = _wrapper(files) or ""
        problems: list[Problem] = []
        images: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # category -> (split, defect, path)
        masks: dict[tuple[str, str, str], str] = {}  # (category, defect, stem) -> mask path
        unknown_categories: Counter[str] = Counter()
        present = category_folders(source, files, wrapper, categories)
        for path in files:
            relative = path[len(wrapper):] if path.startswith(wrapper) else None
            if relative is None or hidden(path) or "/" not in relative:
                continue
            parts = relative.split("/")
            category = parts[0]
            if categories is not None and category not in categories:
                continue
            if len(parts) == 2:  # license.txt, readme.txt of a category
                continue
            if self.categories and category not in self.categories:
                unknown_categories[category] += 1
                continue
            if len(parts) == 4 and parts[1] in ("train", "test") and self._is_image(parts[3]) and (parts[1] == "test" or parts[2] == "good"):
                images[category].append((parts[1], parts[2], path))
            elif len(parts) == 4 and parts[1] == "ground_truth" and parts[3].endswith(self.mask_suffix) and len(parts[3]) > len(self.mask_suffix):
                masks[(category, parts[2], parts[3][: -len(self.mask_suffix)])] = path
            else:
                expected = f"<category>/train/good/<image>, <category>/test/<good|defect>/<image> or <category>/ground_truth/<defect>/<stem>{self.mask_suffix}"
                problems.append(Problem("unknown-file", path, f"file name does not parse; expected {expected}"))
        for category, count in sorted(unknown_categories.items()):
            problems.append(Problem("unknown-category", f"{wrapper}{category}",
                                    f"folder with {count} files, but {category!r} is no category of {dataset_name} ({', '.join(self.categories)})"))
        for category in sorted(present - set(images) - set(unknown_categories)):
            if categories is None or category in categories:
                what = "images" if any(path.startswith(f"{wrapper}{category}/") for path in files) else "files"
                problems.append(Problem("empty-category", f"{wrapper}{category}", f"the category folder {category!r} holds no {what}"))
        if not self.categories:
            for category in sorted(images):
                if not CATEGORY_NAME.fullmatch(category) or category in RESERVED_NAMES:
                    problems.append(Problem("category-name", f"{wrapper}{category}",
                                            f"category name {category!r}: use letters, digits, '_', '.' or '-' (not starting with one of the last three), and not {', '.join(RESERVED_NAMES)}"))
        records = self._records(dataset_name, wrapper, images, masks, problems)
        return ParsedRelease(dataset_name, records, problems)

    def _records(self, dataset: str, wrapper: str, images: dict[str, list[tuple[str, str, str]]],
                 masks: dict[tuple[str, str, str], str], problems: list[Problem]) -> list[ReleaseRecord]:
        """One record per image, in category, split (train first), defect and name order;
        masks paired by stem, problems for masks without an image and images without a mask."""
        used: set[str] = set()
        records: list[ReleaseRecord] = []
        bad_names = {problem.path for problem in problems if problem.kind == "category-name"}
        for category in sorted(images):
            order = {"train": 0, "test": 1}
            for split, defect, path in sorted(images[category], key=lambda item: (order[item[0]], item[1] != "good", item[1], item[2])):
                name = path.rsplit("/", 1)[1]
                stem = name.rsplit(".", 1)[0]
                mask = masks.get((category, defect, stem))
                anomalous = defect != "good"
                if mask is not None:
                    used.add(mask)
                    if not anomalous:
                        problems.append(Problem("mask-for-normal", mask, f"a mask for the normal image {path}; only defective images have masks", path))
                        continue
                elif anomalous and self.masks_required:
                    expected = f"{wrapper}{category}/ground_truth/{defect}/{stem}{self.mask_suffix}"
                    problems.append(Problem("missing-mask", expected, f"the defective image {path} has no mask", path))
                    continue
                if f"{wrapper}{category}" in bad_names:
                    continue
                relative = path[len(wrapper):]
                records.append(ReleaseRecord(
                    sample_id=make_sample_id(dataset, relative),
                    dataset=dataset,
                    category=category,
                    split=split,
                    specimen=relative.split("/", 1)[1].rsplit(".", 1)[0],
                    view=None,
                    illumination=None,
                    label=int(anomalous),
                    object_label=int(anomalous),
                    defect_types=(defect,) if anomalous else (),
                    files={"image": path, "mask": mask} if mask is not None else {"image": path},
                    specimen_path=path,
                ))
        orphans = defaultdict(list)
        for key, mask in sorted(masks.items()):
            if mask not in used:
                orphans[f"{wrapper}{key[0]}/ground_truth/{key[1]}"].append(mask.rsplit("/", 1)[1])
        for folder, names in sorted(orphans.items()):
            problems.append(Problem("orphan-mask", folder, f"masks of no image in the matching test folder: {quote(sorted(names))}"))
        return records
