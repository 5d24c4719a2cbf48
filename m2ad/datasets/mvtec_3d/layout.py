"""The MVTec 3D-AD release layout::

    [<wrapper>/]<category>/train/good/{rgb,xyz}/NNN.{png,tiff}
    [<wrapper>/]<category>/validation/good/{rgb,xyz}/NNN.{png,tiff}
    [<wrapper>/]<category>/test/<good|defect>/{rgb,xyz,gt}/NNN.{png,tiff,png}
    [<wrapper>/]<category>/calibration/camera_parameters.json, <category>/{class_ids.json,license.txt,readme.txt}

A sample is one scan: its RGB image, its organised point cloud (``xyz``, H x W x 3 float32
TIFF) and, in the test split, its ground-truth mask (``gt``, 0/255 PNG; ``test/good`` has
all-zero masks).  The three are paired by stem (``rgb/000.png`` <-> ``xyz/000.tiff`` <->
``gt/000.png``), as anomalib's ``make_mvtec_3d_dataset`` pairs them
(``src/anomalib/data/datasets/depth/mvtec_3d.py``); 3D-ADS pairs them by sorted position
(``eliahuhorwitz/3D-ADS:data/mvtec3d.py``, 612eb7b), which is the same on the release.

Splits: ``train`` is the training split and ``test`` the test split.  ``validation`` (normal
scans the authors set aside for model selection) is not sharded: the literature (3D-ADS,
BTF, M3DM) trains on ``train`` only; the card notes how many scans were left out.  A ``gt``
file in ``train`` or ``validation`` is accepted and ignored.

Problems: ``unknown-file`` (a path outside the layout), ``unknown-category``,
``empty-category``, ``missing-image`` (an ``xyz`` or ``gt`` without its RGB image),
``missing-xyz`` (an image without its point cloud), ``missing-mask`` (a test image without its
``gt``).  Each scan is its own specimen: ``<split>/<defect>/<stem>``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from m2ad.datasets.layouts.listing import category_folders, hidden
from m2ad.datasets.spec import NOT_THIS, SPECIFIC, Layout
from m2ad.schema import ParsedRelease, Problem, ReleaseRecord, TreeSource, make_sample_id

SPLITS = {"train": "train", "validation": None, "test": "test"}
"""Release split -> m2ad split (None: not sharded)."""
KINDS = {"rgb": ".png", "xyz": ".tiff", "gt": ".png"}
"""The folders of a sample and the ending of their files."""
IGNORED_FOLDERS = ("calibration",)


def _is_sample_path(parts: Sequence[str]) -> bool:
    return len(parts) == 5 and parts[1] in SPLITS and parts[3] in KINDS and parts[4].endswith(KINDS[parts[3]]) and len(parts[4]) > len(KINDS[parts[3]])


def _wrapper(files: Sequence[str]) -> str | None:
    """``""`` when the categories sit at the root, ``"<folder>/"`` one level down, ``None``
    when no file is laid out as a sample."""
    depths: Counter[str] = Counter()
    for path in files:
        parts = path.split("/")
        if hidden(path):
            continue
        if _is_sample_path(parts):
            depths[""] += 1
        elif _is_sample_path(parts[1:]):
            depths[parts[0] + "/"] += 1
    return depths.most_common(1)[0][0] if depths else None


@dataclass(frozen=True)
class MVTec3DLayout(Layout):
    """The layout above, for the ``categories`` of the release."""

    categories: tuple[str, ...]
    problem_kinds: tuple[str, ...] = ("unknown-file", "unknown-category", "empty-category", "missing-image", "missing-xyz", "missing-mask")

    def detect(self, files: Sequence[str]) -> int:
        wrapper = _wrapper(files)
        if wrapper is None:
            return NOT_THIS
        named = {path[len(wrapper):].split("/")[0] for path in files if path.startswith(wrapper) and _is_sample_path(path[len(wrapper):].split("/"))}
        return SPECIFIC if named and named <= set(self.categories) else NOT_THIS

    def parse(self, source: TreeSource, *, dataset_name: str, categories: Sequence[str] | None = None,
              variant: str | None = None) -> ParsedRelease:
        files = source.list_files()
        wrapper = _wrapper(files) or ""
        problems: list[Problem] = []
        samples: dict[tuple[str, str, str, str], dict[str, str]] = defaultdict(dict)  # (category, split, defect, stem) -> kind -> path
        unknown_categories: Counter[str] = Counter()
        relative_files = [path[len(wrapper):] for path in files if path.startswith(wrapper) and not hidden(path)]
        present = category_folders(source, files, wrapper, categories)
        for relative in relative_files:
            parts = relative.split("/")
            if len(parts) < 2 or (categories is not None and parts[0] not in categories):
                continue
            category = parts[0]
            if len(parts) == 2 or parts[1] in IGNORED_FOLDERS:  # readme.txt, class_ids.json, calibration/
                continue
            if category not in self.categories:
                unknown_categories[category] += 1
                continue
            if not _is_sample_path(parts) or (parts[1] != "test" and parts[2] != "good"):
                problems.append(Problem("unknown-file", wrapper + relative,
                                        "file name does not parse; expected <category>/{train,validation}/good/{rgb,xyz}/NNN.{png,tiff} "
                                        "or <category>/test/<good|defect>/{rgb,xyz,gt}/NNN.{png,tiff,png}"))
                continue
            stem = parts[4][: -len(KINDS[parts[3]])]
            samples[(category, parts[1], parts[2], stem)][parts[3]] = wrapper + relative
        for category, count in sorted(unknown_categories.items()):
            problems.append(Problem("unknown-category", f"{wrapper}{category}",
                                    f"folder with {count} files, but {category!r} is no category of {dataset_name} ({', '.join(self.categories)})"))
        with_samples = {key[0] for key in samples}
        for category in sorted(present - with_samples - set(unknown_categories)):
            if categories is not None and category not in categories:
                continue
            problems.append(Problem("empty-category", f"{wrapper}{category}", f"the category folder {category!r} holds no scans"))
        records, left_out = self._records(dataset_name, wrapper, samples, problems)
        notes = [f"`validation`: {count} normal scans of {category} not sharded (the literature trains on `train` only)"
                 for category, count in sorted(left_out.items())]
        return ParsedRelease(dataset_name, records, problems, notes=notes)

    def _records(self, dataset: str, wrapper: str, samples: dict[tuple[str, str, str, str], dict[str, str]],
                 problems: list[Problem]) -> tuple[list[ReleaseRecord], Counter[str]]:
        records: list[ReleaseRecord] = []
        left_out: Counter[str] = Counter()
        order = {"train": 0, "validation": 1, "test": 2}
        for key in sorted(samples, key=lambda item: (item[0], order[item[1]], item[2] != "good", item[2], item[3])):
            category, split, defect, stem = key
            found = samples[key]
            folder = f"{wrapper}{category}/{split}/{defect}"
            if "rgb" not in found:
                problems.append(Problem("missing-image", f"{folder}/rgb/{stem}.png", f"{', '.join(sorted(found.values()))} without its RGB image"))
                continue
            image = found["rgb"]
            if "xyz" not in found:
                problems.append(Problem("missing-xyz", f"{folder}/xyz/{stem}.tiff", f"the image {image} has no point cloud", image))
                continue
            if SPLITS[split] is None:
                left_out[category] += 1
                continue
            if split == "test" and "gt" not in found:
                problems.append(Problem("missing-mask", f"{folder}/gt/{stem}.png", f"the test image {image} has no ground-truth mask", image))
                continue
            files = {"image": image, "xyz": found["xyz"]}
            if split == "test":
                files["mask"] = found["gt"]
            anomalous = defect != "good"
            relative = image[len(wrapper):]
            records.append(ReleaseRecord(
                sample_id=make_sample_id(dataset, relative),
                dataset=dataset,
                category=category,
                split=SPLITS[split],
                specimen=f"{split}/{defect}/{stem}",
                view=None,
                illumination=None,
                label=int(anomalous),
                object_label=int(anomalous),
                defect_types=(defect,) if anomalous else (),
                files=files,
                specimen_path=image,
            ))
        return records, left_out
