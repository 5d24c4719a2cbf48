"""Leaderboard aggregation with polars: the mean over categories (as the paper reports it) and
ranks, one table per (protocol, protocol version, dataset, resolution, setting, shots), plus the
exports of ``show``.  Results of different settings are never ranked together: a few-shot or
zero-shot number is not comparable with a full-data one, nor a 1-shot with a 4-shot one.

A summary frame has the entry columns (:data:`ENTRY_COLUMNS`), the grouping column of the
view (``category``, ``view`` or ``illumination`` when ``by`` asks for it), ``categories`` (how
many categories the mean covers), one column per metric (fractions), ``rank_<metric>`` (1 =
best, ties share the best rank) and ``mean_rank``.  Metric columns follow the order of the
metric registry (``m2ad.metrics.registry``), which also says whether higher or lower is better.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator

import polars as pl

import protocols
from m2ad.datasets.registry import SYNTHETIC_SUFFIX
from m2ad.metrics import registry as metric_registry
from m2ad.text import printable

ENTRY_COLUMNS = (
    "protocol", "protocol_version", "dataset", "resolution", "setting", "shots", "train_dataset",
    "source", "entry_id", "method", "variant", "backbone", "mode", "mask_rule",
)  # fmt: skip
TABLE_KEYS = ("protocol", "protocol_version", "dataset", "resolution", "setting", "shots")
BY_CHOICES = ("entry", "category", "view", "illumination")


def order_metrics(names: list[str]) -> list[str]:
    """Metric names in the metric registry's order (object, view, sample, image, pixel, point),
    names not registered last."""
    return metric_registry.display_order(names)


def check_names(frame: pl.DataFrame, *, protocol: str | None = None, metrics: list[str] | None = None) -> None:
    """Raise ``ValueError`` for a protocol or metric name that is not registered and no row
    of ``frame`` holds (a typo would otherwise just match no row)."""
    known_protocols = sorted(set(protocols.available()) | set(frame["protocol"].unique().to_list()))
    if protocol is not None and protocol not in known_protocols:
        raise ValueError(f"unknown protocol {printable(protocol)!r}; known: {', '.join(known_protocols)}")
    known_metrics = order_metrics(sorted(set(metric_registry.available()) | set(frame["metric"].unique().to_list())))
    unknown = [name for name in metrics or [] if name not in known_metrics]
    if unknown:
        names = ", ".join(repr(printable(name)) for name in unknown)
        raise ValueError(f"unknown metric {names}; known: {', '.join(printable(name) for name in known_metrics)}")


def filter_rows(
    frame: pl.DataFrame,
    *,
    protocol: str | None = None,
    dataset: str | None = None,
    resolution: str | None = None,
    metrics: list[str] | None = None,
    source: str | None = None,
    setting: str | None = None,
    synthetic: bool = True,
) -> pl.DataFrame:
    """The store rows matching every given filter (``None`` keeps everything); ``synthetic=False``
    drops the rows of synthetic datasets (``m2ad-synth`` and the other ``NAME-synth`` twins)."""
    for column, wanted in (("protocol", protocol), ("dataset", dataset), ("resolution", resolution), ("source", source),
                           ("setting", setting)):
        if wanted is not None:
            frame = frame.filter(pl.col(column) == wanted)
    if not synthetic:
        frame = frame.filter(~pl.col("dataset").str.ends_with(SYNTHETIC_SUFFIX))
    if metrics:
        frame = frame.filter(pl.col("metric").is_in(metrics))
    return frame


def summarize(frame: pl.DataFrame, by: str = "entry") -> pl.DataFrame:
    """Aggregate store rows into one row per entry (mean over categories) or per entry and
    ``category`` / ``view`` / ``illumination``, with ranks per metric within each
    (protocol, dataset, resolution[, group]) and the mean rank.  Rank 1 is the best value: the
    highest, or the lowest for a metric the registry marks lower-is-better."""
    if by not in BY_CHOICES:
        raise ValueError(f"--by must be one of {', '.join(BY_CHOICES)}, not {by!r}")
    if by == "view":
        rows = frame.filter(pl.col("view").is_not_null() & pl.col("illumination").is_null())
    elif by == "illumination":
        rows = frame.filter(pl.col("view").is_null() & pl.col("illumination").is_not_null())
    else:
        rows = frame.filter(pl.col("view").is_null() & pl.col("illumination").is_null())
    group = [] if by == "entry" else [by]
    keys = [*ENTRY_COLUMNS, *group]
    if rows.is_empty():
        types = {key: pl.Int32 if key == "shots" else pl.String for key in keys}
        return pl.DataFrame(schema={**types, "categories": pl.UInt32, "mean_rank": pl.Float64})
    long = rows.group_by([*keys, "metric"]).agg(
        pl.col("value").mean().alias("value"), pl.col("value").is_not_null().sum().alias("categories")
    )
    metrics = order_metrics(long["metric"].unique().to_list())
    counts = long.group_by(keys).agg(pl.col("categories").max())
    wide = long.pivot(on="metric", index=keys, values="value").join(counts, on=keys, how="left", nulls_equal=True)
    for metric in metrics:
        if metric not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(metric))
    scope = [*TABLE_KEYS, *group]
    wide = wide.with_columns(
        [pl.col(metric).rank("min", descending=metric_registry.higher_is_better(metric)).over(scope).alias(f"rank_{metric}")
         for metric in metrics]
    )
    wide = wide.with_columns(pl.mean_horizontal([f"rank_{metric}" for metric in metrics]).alias("mean_rank"))
    ordered = [*keys, "categories", *metrics, *(f"rank_{metric}" for metric in metrics), "mean_rank"]
    return wide.select(ordered).sort([*scope, "mean_rank", "method"], nulls_last=True)


def metric_columns(summary: pl.DataFrame) -> list[str]:
    """The metric value columns of a summary frame, in display order."""
    return [name for name in summary.columns if f"rank_{name}" in summary.columns]


def split_tables(summary: pl.DataFrame) -> Iterator[tuple[dict[str, str | None], pl.DataFrame]]:
    """One ``(key, frame)`` per (protocol, protocol version, dataset, resolution, setting,
    shots), metrics without any value in that table dropped; key values are text or None."""
    for key, part in summary.group_by(list(TABLE_KEYS), maintain_order=True):
        metrics = [name for name in metric_columns(part) if part[name].null_count() < part.height]
        dropped = [name for name in metric_columns(part) if name not in metrics]
        part = part.drop([*dropped, *(f"rank_{name}" for name in dropped)])
        yield dict(zip(TABLE_KEYS, (None if value is None else str(value) for value in key))), part


def setting_label(setting: str | None, shots: str | int | None) -> str:
    """``single-class``, ``few-shot, 2 shots``, or ``setting not given`` (older submissions)."""
    if setting is None:
        return "setting not given"
    return f"{setting}, {shots} shot{'' if str(shots) == '1' else 's'}" if shots is not None else setting


def table_title(key: dict[str, str | None]) -> str:
    """A human title for one table: ``synergy · m2ad · 256 · single-class`` (the protocol's
    version follows its name when it is not the first, e.g. ``synergy v2``)."""
    protocol = key["protocol"] if key.get("protocol_version") in (None, "1") else f"{key['protocol']} v{key['protocol_version']}"
    return printable(f"{protocol} · {key['dataset']} · {key['resolution']} · {setting_label(key.get('setting'), key.get('shots'))}")


def format_value(value: float | None) -> str:
    """A fraction as the paper prints it: percent with one decimal; missing values as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100.0 * value:.1f}"


def best_per_column(frame: pl.DataFrame) -> dict[str, float | None]:
    """The best value of every metric column (the largest, or the smallest for a metric the
    registry marks lower-is-better), to highlight it."""
    return {name: frame[name].max() if metric_registry.higher_is_better(name) else frame[name].min()  # type: ignore[misc]
            for name in metric_columns(frame)}


def display_columns(frame: pl.DataFrame) -> list[str]:
    """Columns a human table shows, in order: who, how, the grouping column, metrics, rank."""
    leading = ["method", "variant", "source", "mode"]
    if "train_dataset" in frame.columns and frame["train_dataset"].null_count() < frame.height:
        leading.append("train_dataset")  # zero-shot entries trained on other datasets
    group = [name for name in ("category", "view", "illumination") if name in frame.columns]
    return [*leading, *group, "categories", *metric_columns(frame), "mean_rank"]


def display_cell(column: str, value: object, metrics: list[str]) -> str:
    """One cell as text: metric values as percent, ranks with one decimal, others verbatim
    but with control characters escaped (:func:`m2ad.text.printable`)."""
    if column in metrics:
        return format_value(value)  # type: ignore[arg-type]
    if column == "mean_rank":
        return "—" if value is None else f"{value:.1f}"
    return "" if value is None else printable(value)


_MARKDOWN_SPECIAL = str.maketrans({char: f"\\{char}" for char in "\\`*_[]<>|~&"})


def escape_markdown(text: str) -> str:
    """Make user text inert in a markdown table cell: backslash-escape markdown syntax, HTML
    brackets and pipes, turn newlines into spaces so the row cannot break, and escape the other
    control characters (:func:`m2ad.text.printable`)."""
    return printable(" ".join(text.splitlines())).translate(_MARKDOWN_SPECIAL)


def to_markdown(summary: pl.DataFrame, *, heading_level: int = 2) -> str:
    """Markdown tables, one section per (protocol, dataset, resolution); best values in bold."""
    sections = []
    for key, part in split_tables(summary):
        columns = display_columns(part)
        metrics = metric_columns(part)
        best = best_per_column(part)
        lines = [
            f"{'#' * heading_level} {escape_markdown(table_title(key))}",
            "",
            "| " + " | ".join(escape_markdown(name) for name in columns) + " |",
            "|" + "|".join("---:" if name in metrics or name in ("categories", "mean_rank") else "---" for name in columns) + "|",
        ]
        for row in part.iter_rows(named=True):
            cells = []
            for name in columns:
                text = escape_markdown(display_cell(name, row[name], metrics))
                if name in metrics and row[name] is not None and row[name] == best[name]:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n" if sections else "No leaderboard rows match.\n"


def to_csv(summary: pl.DataFrame) -> str:
    """The summary as CSV (fractions, all columns; control characters in text escaped)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([printable(name) for name in summary.columns])
    writer.writerows([printable(value) if isinstance(value, str) else value for value in row] for row in summary.iter_rows())
    return buffer.getvalue()


def to_json(summary: pl.DataFrame) -> str:
    """The summary as a JSON list of records (fractions; NaN as null)."""
    records = [
        {key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in row.items()}
        for row in summary.iter_rows(named=True)
    ]
    return json.dumps(records, indent=2)
