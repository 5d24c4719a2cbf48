"""The Eyecandies release layout (pipelime "underfolder"s, one per split)::

    [<wrapper>/]<Category>/{train,val,test_public,test_private}/data/<index>_<item>.<ext>

Items of a sample (``eyecan-ai/eyecandies`` at adacefe, ``docs/download.md`` and
``eyecandies/stages/depth.py``): ``image_0`` .. ``image_5`` (RGB PNGs under six lighting
set-ups: 0 all spotlights, 1 bottom, 2 right, 3 top, 4 left, 5 global), ``depth`` (16-bit PNG,
normalised per sample), ``info_depth`` (YAML, ``normalization.min`` / ``max`` in metres),
``normals`` (RGB PNG), ``pose`` (TXT), ``obj_params`` (YAML), ``metadata`` (YAML with the
``anomalous`` flag, 0/1) and the masks ``mask``, ``bumps_mask``, ``dents_mask``,
``colors_mask``, ``normals_mask`` (8-bit PNGs).  The index is zero-padded to the split's size
(``000_`` in train, ``00_`` in test_public), so names are parsed with ``^(\\d+)_(.+)\\.(\\w+)$``.

Splits: ``train`` (1,000 normal samples per category) is the training split and
``test_public`` (25 normal + 25 anomalous, labelled) the test split.  ``val`` (100 normal) and
``test_private`` (400, labels withheld: the benchmark's leaderboard is by e-mail) are not
sharded; the card says how many samples were left out.

Records: one per (sample, light), six per sample, sharing its ``depth``, ``normals`` and
``mask``; the sample is the specimen (``<split>/<index>``) and the light its ``illumination``
(``image_0`` .. ``image_5``).  The label comes from ``metadata.anomalous`` in the test split
(as the eyecandies ``to_anomalib`` DAG splits test_public by ```metadata.anomalous` == 0``), 0
in train.  Extra columns ``depth_min`` and ``depth_max`` carry ``info_depth``'s range, so
metric depth is ``depth * (depth_max - depth_min) + depth_min``.

Problems: ``unknown-file``, ``unknown-category``, ``empty-category``, ``missing-image`` (a
sample without all six images), ``missing-depth``, ``missing-normals``, ``missing-meta`` (no
``info_depth``, or no ``metadata`` in the test split), ``bad-meta`` (a YAML that does not give
the numbers), ``missing-mask`` (a test sample without ``mask``).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from m2ad.datasets.layouts.listing import category_folders, hidden
from m2ad.datasets.spec import NOT_THIS, SPECIFIC, Layout
from m2ad.schema import ParsedRelease, Problem, ReleaseRecord, TreeSource, make_sample_id

SPLITS = {"train": "train", "val": None, "test_public": "test", "test_private": None}
"""Release split -> m2ad split (None: not sharded)."""
LIGHTS = tuple(f"image_{index}" for index in range(6))
ITEM = re.compile(r"^(\d+)_(.+)\.(\w+)$")
USED = {**{light: "png" for light in LIGHTS}, "depth": "png", "normals": "png", "mask": "png", "info_depth": "yaml", "metadata": "yaml"}
"""The items m2ad reads, and their extension; every other item is accepted and ignored."""


def _is_data_path(parts: Sequence[str]) -> bool:
    return len(parts) == 4 and parts[1] in SPLITS and parts[2] == "data" and ITEM.match(parts[3]) is not None


def _wrapper(files: Sequence[str]) -> str | None:
    depths: Counter[str] = Counter()
    for path in files:
        parts = path.split("/")
        if hidden(path):
            continue
        if _is_data_path(parts) and ITEM.match(parts[3]).group(2) in LIGHTS:  # type: ignore[union-attr]
            depths[""] += 1
        elif _is_data_path(parts[1:]) and ITEM.match(parts[4]).group(2) in LIGHTS:  # type: ignore[union-attr]
            depths[parts[0] + "/"] += 1
    return depths.most_common(1)[0][0] if depths else None


def _yaml(source: TreeSource, path: str) -> Any:
    try:
        return yaml.safe_load(source.read_bytes(path))
    except yaml.YAMLError:
        return None


def _number(data: Any, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return float(data) if isinstance(data, int | float) and not isinstance(data, bool) else None


@dataclass(frozen=True)
class EyecandiesLayout(Layout):
    """The layout above, for the ``categories`` (release folder names) of the release."""

    categories: tuple[str, ...]
    problem_kinds: tuple[str, ...] = ("unknown-file", "unknown-category", "empty-category", "missing-image", "missing-depth",
                                      "missing-normals", "missing-meta", "bad-meta", "missing-mask")

    def detect(self, files: Sequence[str]) -> int:
        wrapper = _wrapper(files)
        if wrapper is None:
            return NOT_THIS
        named = {path[len(wrapper):].split("/")[0] for path in files if path.startswith(wrapper) and _is_data_path(path[len(wrapper):].split("/"))}
        return SPECIFIC if named and named <= set(self.categories) else NOT_THIS

    def parse(self, source: TreeSource, *, dataset_name: str, categories: Sequence[str] | None = None,
              variant: str | None = None) -> ParsedRelease:
        files = source.list_files()
        wrapper = _wrapper(files) or ""
        problems: list[Problem] = []
        samples: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)  # (category, split, index) -> item -> path
        unknown_categories: Counter[str] = Counter()
        relative_files = [path[len(wrapper):] for path in files if path.startswith(wrapper) and not hidden(path)]
        present = category_folders(source, files, wrapper, categories)
        for relative in relative_files:
            parts = relative.split("/")
            if len(parts) < 2 or (categories is not None and parts[0] not in categories):
                continue
            category = parts[0]
            if len(parts) == 2 or (len(parts) == 3 and parts[1] in SPLITS):  # files of a category or of a split (shared items)
                continue
            if category not in self.categories:
                unknown_categories[category] += 1
                continue
            if not _is_data_path(parts):
                problems.append(Problem("unknown-file", wrapper + relative,
                                        "file name does not parse; expected <Category>/{train,val,test_public,test_private}/data/<index>_<item>.<ext>"))
                continue
            index, item, extension = ITEM.match(parts[3]).groups()  # type: ignore[union-attr]
            if item in USED and extension != USED[item]:
                problems.append(Problem("unknown-file", wrapper + relative, f"the item {item!r} must be a .{USED[item]} file"))
                continue
            samples[(category, parts[1], index)][item] = wrapper + relative
        for category, count in sorted(unknown_categories.items()):
            problems.append(Problem("unknown-category", f"{wrapper}{category}",
                                    f"folder with {count} files, but {category!r} is no category of {dataset_name} ({', '.join(self.categories)})"))
        for category in sorted(present - {key[0] for key in samples} - set(unknown_categories)):
            if categories is not None and category not in categories:
                continue
            problems.append(Problem("empty-category", f"{wrapper}{category}", f"the category folder {category!r} holds no samples"))
        records, left_out = self._records(source, dataset_name, wrapper, samples, problems)
        notes = [f"`{split}`: {count} samples of {category} not sharded" + (" (labels withheld)" if split == "test_private" else "")
                 for (category, split), count in sorted(left_out.items())]
        return ParsedRelease(dataset_name, records, problems, notes=notes)

    def _records(self, source: TreeSource, dataset: str, wrapper: str, samples: dict[tuple[str, str, str], dict[str, str]],
                 problems: list[Problem]) -> tuple[list[ReleaseRecord], Counter[tuple[str, str]]]:
        records: list[ReleaseRecord] = []
        left_out: Counter[tuple[str, str]] = Counter()
        order = {split: position for position, split in enumerate(SPLITS)}
        for key in sorted(samples, key=lambda item: (item[0], order[item[1]], int(item[2]), item[2])):
            category, split, index = key
            found = samples[key]
            if SPLITS[split] is None:
                left_out[(category, split)] += 1
                continue
            folder = f"{wrapper}{category}/{split}/data/{index}"
            anchor = found.get("image_0") or min(found.values())
            missing = [light for light in LIGHTS if light not in found]
            if missing:
                problems.append(Problem("missing-image", f"{folder}_{missing[0]}.png", f"sample {index} of {category}/{split} lacks {', '.join(missing)}", anchor))
                continue
            needed = [("depth", "missing-depth", "png"), ("normals", "missing-normals", "png"), ("info_depth", "missing-meta", "yaml")]
            if split == "test_public":
                needed += [("metadata", "missing-meta", "yaml"), ("mask", "missing-mask", "png")]
            absent = next(((item, kind, extension) for item, kind, extension in needed if item not in found), None)
            if absent is not None:
                item, kind, extension = absent
                problems.append(Problem(kind, f"{folder}_{item}.{extension}", f"sample {index} of {category}/{split} has no {item}", anchor))
                continue
            info = _yaml(source, found["info_depth"])
            depth_min, depth_max = _number(info, "normalization", "min"), _number(info, "normalization", "max")
            if depth_min is None or depth_max is None:
                problems.append(Problem("bad-meta", found["info_depth"], "info_depth gives no normalization.min and .max numbers", anchor))
                continue
            anomalous = 0
            if split == "test_public":
                flag = _number(_yaml(source, found["metadata"]), "anomalous")
                if flag not in (0.0, 1.0):
                    problems.append(Problem("bad-meta", found["metadata"], "metadata gives no 'anomalous' flag of 0 or 1", anchor))
                    continue
                anomalous = int(flag)  # type: ignore[arg-type]
            for light in LIGHTS:
                files = {"image": found[light], "depth": found["depth"], "normals": found["normals"]}
                if split == "test_public":
                    files["mask"] = found["mask"]
                records.append(ReleaseRecord(
                    sample_id=make_sample_id(dataset, found[light][len(wrapper):]),
                    dataset=dataset,
                    category=category,
                    split=SPLITS[split],  # type: ignore[arg-type]
                    specimen=f"{split}/{index}",
                    view=None,
                    illumination=light,
                    label=anomalous,
                    object_label=anomalous,
                    defect_types=("anomalous",) if anomalous else (),
                    files=files,
                    specimen_path=f"{folder}_",
                    extras={"depth_min": depth_min, "depth_max": depth_max},
                ))
        return records, left_out
