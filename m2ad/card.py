"""The dataset card (``README.md`` of a sharded dataset), generated from the dataset's spec.

YAML front matter that the Hub and ``datasets`` read: the licence, a pretty name, tags and
``configs``: one per category plus ``all`` (the default), each with explicit ``data_files``
globs ending in ``.arrow`` (a ``data_dir`` would hand ``datasets`` our JSON markers too), so
that ``datasets.load_dataset(ROOT, CATEGORY)`` returns the category's train and test splits
and ``datasets.load_dataset(ROOT)`` every category's.  No ``dataset_info``: ``datasets``
checks its sizes, and the counts live in the body instead.  The body: what the data is, how
to load it (``load_dataset``, streaming, ``load_from_disk``, a torch ``DataLoader``), the
protocols that fit, axes and extra columns, mask rules, evaluation geometry, prompt class
names, counts per category and split, source checksums, notes on the release, anything
skipped, and the citation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import polars as pl

from m2ad.datasets.spec import DatasetSpec
from m2ad.schema import SPLITS, DatasetInfo
from m2ad.text import printable

DEFAULT_CONFIG = "all"

LOADER_RECIPE = '''import datasets, numpy as np, torch
def tensors(batch):  # image uint8 (3, H, W); mask bool (H, W), all False where a sample has none; label
    masks = [np.zeros((h, w), bool) if m is None else np.asarray(m) != 0 for m, h, w in zip(batch["mask"], batch["height"], batch["width"])]
    return {{"image": [torch.from_numpy(np.array(i.convert("RGB"))).permute(2, 0, 1) for i in batch["image"]], "mask": [torch.from_numpy(m) for m in masks], "label": batch["label"]}}
test = datasets.load_dataset("{root}", "{category}", split="test").with_transform(tensors)  # or split="train"; no name: every category
loader = torch.utils.data.DataLoader(test, batch_size=32)  # batches of image (B, 3, H, W), mask (B, H, W), label (B,)'''
"""A torch ``DataLoader`` over a category's test split (README and cards show it; the tests run it)."""

POINTS_RECIPE = '''import datasets, numpy as np
test = datasets.load_dataset("{root}", "{category}", split="test")  # or split="train"; no name: every category
sample = test[0]
points = np.frombuffer(sample["points"], dtype="<f4").reshape(-1, 3)  # float32 (N, 3), as released (not centred)
labels = np.frombuffer(sample["point_labels"], dtype=np.uint8)  # (N,), 1 = defect; all 0 for a normal cloud'''
"""How to read one point cloud of a ``points`` dataset (its card shows it; the tests run it)."""


def _quoted(text: str) -> str:
    """A YAML scalar: JSON strings are valid YAML double-quoted scalars."""
    return json.dumps(text)


def front_matter(info: DatasetInfo, spec: DatasetSpec, units: Sequence[tuple[str, str]]) -> list[str]:
    """The YAML front matter: licence, name, tags and one config per category plus ``all``."""
    splits = [split for split in SPLITS if any(unit_split == split for _, unit_split in units)]
    lines = [
        "---",
        f"license: {spec.license_id or 'other'}",
        f"pretty_name: {_quoted(f'{spec.title} (m2ad shards, {info.resolution})')}",
        "tags:",
        "- anomaly-detection",
        "- m2ad-shards",
        "configs:",
        f"- config_name: {DEFAULT_CONFIG}",
        "  default: true",
        "  data_files:",
    ]
    lines += [line for split in splits for line in (f"  - split: {split}", f"    path: {_quoted(f'*/{split}/data-*.arrow')}")]
    for category in dict.fromkeys(category for category, _ in units):
        lines += [f"- config_name: {_quoted(category)}", "  data_files:"]
        for split in SPLITS:
            if (category, split) in units:
                lines += [f"  - split: {split}", f"    path: {_quoted(f'{category}/{split}/data-*.arrow')}"]
    return [*lines, "---"]


def dataset_card(info: DatasetInfo, spec: DatasetSpec, manifest: pl.DataFrame, description: str, notes: Sequence[str] = ()) -> str:
    """The whole card of a sharded dataset."""
    units = [tuple(key) for key in manifest.select("category", "split").unique(maintain_order=True).iter_rows()]
    example = info.categories[0] if info.categories else "<category>"
    clouds = "points" in info.modalities
    unit = "cloud" if clouds else "image"
    if clouds:
        resolution = "points as released (point clouds are never resampled)"
    elif info.resolution == "original":
        resolution = "original (released bytes, unchanged)"
    else:
        side = f"{info.resolution} x {info.resolution}" if info.geometry == "square" else f"{info.resolution} px on the longer side"
        resolution = f"{side} ({info.image_resize})"
    source = ", ".join(f"{key}: {value}" for key, value in sorted(info.source.items()) if key not in ("checksums", "files", "citation"))
    lines = [
        *front_matter(info, spec, units),
        "",
        f"# {spec.display_name}: `{printable(info.dataset)}`, m2ad shards",
        "",
        description,
        "",
        "| | |",
        "|---|---|",
        f"| dataset | `{printable(info.dataset)}` (spec `{spec.name}`{f', variant {info.variant}' if info.variant else ''}) |",
        f"| version | {printable(info.version) or 'not stated'} |",
        f"| license | {printable(info.license) or 'not stated'} |",
        f"| homepage | {spec.homepage} |",
        f"| source | {printable(source) or 'not stated'} |",
        f"| resolution | {resolution} |",
        f"| samples | {manifest.height} |",
        f"| created | {info.created} by m2ad {info.code_version} |",
        "",
        "## Loading",
        "",
        "Each category is a config (`all`, the default, is every category), with `train` and `test` splits:",
        "",
        "```python",
        "import datasets",
        f"splits = datasets.load_dataset('<this folder>', '{example}')  # DatasetDict: train, test",
        f"test = datasets.load_dataset('<this folder>', '{example}', split='test', streaming=True)  # reads in place",
        f"test = datasets.load_from_disk('<this folder>/{example}/test')  # one Arrow dataset, memory-mapped, no copy",
        "```",
        "",
        "`load_dataset` copies the data into its cache (twice the disk); streaming and `load_from_disk` do not.",
        "One point cloud as NumPy arrays:" if clouds else "A torch `DataLoader`:",
        "",
        "```python",
        (POINTS_RECIPE if clouds else LOADER_RECIPE).format(root="<this folder>", category=example),
        "```",
        "",
        "m2ad reads the shards faster with `m2ad.data` (`load_manifest`, `iter_batches`); `manifest.parquet` has every field but the pixels.",
        "",
        "## Protocols",
        "",
        f"Protocols that fit: {', '.join(f'`{name}`' for name in info.protocols) or 'none declared'}. Shot unit (few-shot): {info.shot_unit}.",
        "",
        "## Fields",
        "",
        f"Axes: {', '.join(f'`{axis}`' for axis in info.axes) or f'none (one {unit} per specimen)'}. "
        f"Modalities: {', '.join(f'`{name}`' for name in info.modalities)}.",
    ]
    lines += [f"- `{name}`: {column.description}" for name, column in spec.extra_columns.items()]
    if clouds:
        lines += [
            "",
            "## Point clouds",
            "",
            spec.mask_note,
            "",
            "- `points`: the raw little-endian float32 bytes of the (N, 3) coordinates, row-major; `point_labels`: N uint8 labels.",
            "- `manifest.parquet` records `num_points` (N) per sample; `width` and `height` are 0 (a cloud has no image size).",
            "",
        ]
    else:
        lines += [
            "",
            "## Masks",
            "",
            f"{spec.mask_note} A pixel is a defect where its stored value is not 0 (palette indices for palette masks).",
            "",
            "- `mask` (**exact**): a pixel is defective if any source pixel it covers is; no defect vanishes when downscaling.",
            "- `mask_official` (**official**): bilinear resize of the 0/255 mask, keep pixels equal to 255, as the official",
            "  M2AD evaluator does; tiny defects are eroded or erased.",
            "",
            "At original resolution both are the released mask file, byte for byte; resized masks are 1-bit PNGs, which decode to (H, W) {0, 1}.",
            "",
        ]
    lines += [
        "## Evaluation geometry",
        "",
        spec.geometry_note if clouds else f"Resolutions resize with the **{info.geometry}** rule. {spec.geometry_note}",
        "",
        "## Class names (text prompts)",
        "",
        "| category | " + " | ".join(info.class_name_presets) + " |",
        "|---|" + "---|" * len(info.class_name_presets),
    ]
    lines += [f"| {printable(category)} | " + " | ".join(printable(names.get(category, category)) for names in info.class_name_presets.values()) + " |"
              for category in info.categories]
    flags = [name for name, column in spec.extra_columns.items() if str(getattr(column.feature, "dtype", "")) == "bool"]
    lines += [
        "",
        "## Counts",
        "",
        f"| category | split | {'clouds' if clouds else 'images'} | anomalous | specimens |" + "".join(f" {name}=False |" for name in flags),
        "|---|---|---:|---:|---:|" + "---:|" * len(flags),
    ]
    if manifest.height:
        counts = manifest.group_by(["category", "split"], maintain_order=True).agg(
            pl.len().alias("images"),
            pl.col("label").sum().alias("anomalous"),
            pl.col("specimen").n_unique().alias("specimens"),
            *((pl.col(name) == False).sum().alias(name) for name in flags),  # noqa: E712 (polars expression)
        )
        for row in counts.iter_rows(named=True):
            lines.append(f"| {printable(row['category'])} | {row['split']} | {row['images']} | {row['anomalous']} | {row['specimens']} |"
                         + "".join(f" {row[name]} |" for name in flags))
    checksums = {name: (str(value), "") for name, value in dict(info.source.get("checksums") or {}).items()}
    checksums |= {name: (str(entry.get("sha256", "")), str(entry.get("verified", ""))) for name, entry in dict(info.source.get("files") or {}).items()}
    if checksums:
        lines += ["", "## Source checksums", "", f"All verified: {info.source.get('verified', 'not stated')}", "",
                  "| file | sha256 | verified by |", "|---|---|---|"]
        lines += [f"| {printable(name)} | `{printable(value)}` | {printable(how) or '-'} |" for name, (value, how) in sorted(checksums.items())]
    if notes:
        lines += ["", "## Notes on the release", ""]
        lines += [f"- {printable(note)}" for note in notes]
    lines += ["", "## Skipped input", ""]
    if info.skipped:
        lines.append(f"{len(info.skipped)} problem(s); their specimens were quarantined (`--skip-bad`):")
        lines.append("")
        lines += [f"- `{printable(item['path'])}`: {printable(item['message'])} [{item['kind']}]" for item in info.skipped]
    else:
        lines.append("None: every file of the source is in these shards.")
    lines += ["", "## Citation", "", spec.citation, ""]
    return "\n".join(lines)
