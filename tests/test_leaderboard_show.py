"""`m2ad leaderboard show`: polars aggregation checked against a brute-force mean and rank,
markdown that stays a table whatever the names, and the CLI formats."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path

import polars as pl
import pytest
from markdown_it import MarkdownIt
from typer.testing import CliRunner

from leaderboard.aggregate import escape_markdown, summarize, to_markdown
from leaderboard.store import Store, to_table
from m2ad.cli import app

EVIL_NAMES = [
    "a | b",
    "<script>alert(1)</script>",
    "[click](https://evil.example)",
    "two\nlines",
    "`code` **bold** _it_ ~~x~~",
    "back\\slash|",
    "&lt;img src=x&gt;",
]


def random_rows(seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for entry in range(7):
        protocol = rng.choice(["synergy", "invariant"])
        resolution = rng.choice(["256", "512"])
        for category in rng.sample(["Bird", "Car", "Cube", "Dice"], rng.randint(1, 4)):
            for metric in rng.sample(["image_auroc", "aupro", "object_auroc"], rng.randint(1, 3)):
                value = None if rng.random() < 0.15 else rng.choice([0.5, 0.75, rng.random()])  # ties and nulls
                rows.append({
                    "entry_id": f"e{entry}", "source": "run", "method": EVIL_NAMES[entry % len(EVIL_NAMES)],
                    "protocol": protocol, "mode": "exact", "dataset": "m2ad", "resolution": resolution,
                    "category": category, "metric": metric, "value": value,
                })
                rows.append({**rows[-1], "view": "000", "value": 0.0})  # breakdown rows must not count
    return rows


def brute_force(rows: list[dict], by: str) -> dict[tuple, tuple[float | None, int | None]]:
    """{(entry, group, metric): (mean of non-null values, rank within its table and group)};
    group is None for ``by="entry"`` and the category for ``by="category"``."""
    values: dict[tuple, list] = {}
    table_of = {}
    for row in rows:
        if row.get("view") is not None:
            continue
        group = row["category"] if by == "category" else None
        values.setdefault((row["entry_id"], group, row["metric"]), []).append(row["value"])
        table_of[row["entry_id"]] = (row["protocol"], row["resolution"])
    means = {}
    for key, items in values.items():
        present = [value for value in items if value is not None]
        means[key] = sum(present) / len(present) if present else None
    result = {}
    for (entry, group, metric), mean in means.items():
        rivals = [m for (other, g, met), m in means.items()
                  if met == metric and g == group and table_of[other] == table_of[entry] and m is not None]
        rank = None if mean is None else 1 + sum(1 for other in rivals if other > mean + 1e-12)
        result[(entry, group, metric)] = (mean, rank)
    return result


@pytest.mark.parametrize("by", ["entry", "category"])
@pytest.mark.parametrize("seed", range(4))
def test_summary_matches_brute_force(seed: int, by: str) -> None:
    rows = random_rows(seed)
    summary = summarize(pl.from_arrow(to_table(rows)), by=by)
    expected = brute_force(rows, by)
    groups = {(entry, group) for entry, group, _ in expected}
    assert summary.height == len(groups)
    for row in summary.iter_rows(named=True):
        group = row["category"] if by == "category" else None
        for (entry, expected_group, metric), (mean, rank) in expected.items():
            if (entry, expected_group) != (row["entry_id"], group):
                continue
            assert row[metric] == pytest.approx(mean) if mean is not None else row[metric] is None
            assert row[f"rank_{metric}"] == rank, (entry, group, metric)


def _markdown_cells(line: str) -> list[str]:
    """Split a markdown table row on unescaped pipes."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


def test_markdown_stays_a_table_and_inert_whatever_the_names() -> None:
    text = to_markdown(summarize(pl.from_arrow(to_table(random_rows(0)))))
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if not lines:
            continue
        width = len(_markdown_cells(lines[0]))
        assert all(len(_markdown_cells(line)) == width for line in lines), block
    # Render with a CommonMark parser that allows raw HTML (as GitHub does): every table line
    # must come out as one table row, with no HTML, link, image or code span anywhere.
    parser = MarkdownIt("commonmark", {"html": True}).enable("table")
    tokens = parser.parse(text)
    kinds = {token.type for token in tokens} | {child.type for token in tokens for child in token.children or []}
    assert not kinds & {"html_inline", "html_block", "link_open", "image", "code_inline"}
    table_lines = [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]
    assert sum(token.type == "tr_open" for token in tokens) == len(table_lines)
    assert "<script" not in parser.render(text) and "<img" not in parser.render(text)
    for name in EVIL_NAMES:
        escaped = escape_markdown(name)
        assert "\n" not in escaped
        assert re.search(r"(?<!\\)[|<>\[\]`*_]", escaped) is None, escaped


def test_show_formats_through_the_cli(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append(random_rows(1))
    runner = CliRunner()
    expected = summarize(store.read())
    as_json = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path), "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    records = json.loads(as_json.stdout)
    assert [r["entry_id"] for r in records] == expected["entry_id"].to_list()
    as_csv = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path), "--format", "csv", "--protocol", "synergy"])
    assert as_csv.exit_code == 0
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {r["protocol"] for r in parsed} <= {"synergy"}
    assert len(parsed) == expected.filter(pl.col("protocol") == "synergy").height
    table = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path), "--by", "category", "--metric", "aupro,image_auroc"])
    assert table.exit_code == 0 and "object_auroc" not in table.stdout
    bad = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path), "--by", "specimen"])
    assert bad.exit_code == 2 and "--by must be one of" in " ".join(bad.output.split()) and "Traceback" not in bad.output


def test_remove_and_compact_through_the_cli(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append(random_rows(2))
    store.append(random_rows(3))  # the same entry ids again: removal takes every row of an entry
    runner = CliRunner()
    missing = runner.invoke(app, ["leaderboard", "remove", "nope", "--store", str(tmp_path)])
    assert missing.exit_code == 1 and "no such entries: nope" in missing.output
    removed = runner.invoke(app, ["leaderboard", "remove", "e0", "e3", "--store", str(tmp_path)])
    assert removed.exit_code == 0, removed.output
    assert set(store.read()["entry_id"]) == {"e1", "e2", "e4", "e5", "e6"}
    compacted = runner.invoke(app, ["leaderboard", "compact", "--store", str(tmp_path)])
    assert compacted.exit_code == 0 and len(store.parts()) == 1
    assert set(store.read()["entry_id"]) == {"e1", "e2", "e4", "e5", "e6"}


def test_by_view_and_illumination_average_the_breakdown_rows_over_categories() -> None:
    base = {"entry_id": "e", "source": "run", "method": "m", "protocol": "invariant", "dataset": "m2ad",
            "resolution": "256", "metric": "image_auroc"}
    rows = [
        {**base, "category": "Bird", "value": 0.9},
        {**base, "category": "Bird", "view": "000", "value": 0.6},
        {**base, "category": "Car", "view": "000", "value": 0.8},
        {**base, "category": "Car", "view": "030", "value": 0.5},
        {**base, "category": "Bird", "illumination": "01", "value": 0.7},
        {**base, "category": "Bird", "view": "000", "illumination": "01", "value": 0.1},  # grid cell: neither
    ]
    frame = pl.from_arrow(to_table(rows))
    by_view = summarize(frame, by="view")
    assert dict(zip(by_view["view"], by_view["image_auroc"])) == pytest.approx({"000": 0.7, "030": 0.5})
    assert dict(zip(by_view["view"], by_view["categories"])) == {"000": 2, "030": 1}
    by_light = summarize(frame, by="illumination")
    assert by_light["illumination"].to_list() == ["01"] and by_light["image_auroc"].to_list() == pytest.approx([0.7])
    assert summarize(frame)["image_auroc"].to_list() == pytest.approx([0.9])


def test_the_metric_registry_orders_and_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Columns follow the registry's order (sample level before image level), a metric the
    registry marks lower-is-better ranks its smallest value first and is the one in bold, and
    a registered metric no row holds is still a known name."""
    from dataclasses import replace

    from leaderboard.aggregate import best_per_column, check_names
    from m2ad.metrics import registry

    lower = replace(registry.get("image_f1max"), name="image_error", higher_is_better=False, label="I-Error")
    monkeypatch.setitem(registry._BY_NAME, "image_error", lower)
    monkeypatch.setattr(registry, "METRICS", (*registry.METRICS, lower))
    rows = []
    for entry, (auroc, sample, error) in enumerate([(0.9, 0.6, 0.30), (0.8, 0.7, 0.10), (0.7, 0.8, 0.20)]):
        for metric, value in (("image_auroc", auroc), ("image_error", error), ("sample_auroc", sample)):
            rows.append({"entry_id": f"e{entry}", "source": "run", "method": f"m{entry}", "protocol": "realiad-sample",
                         "protocol_version": "1", "mode": "exact", "dataset": "real-iad", "resolution": "256",
                         "category": "toy", "metric": metric, "value": value})
    summary = summarize(pl.from_arrow(to_table(rows)))
    metric_columns = [name for name in summary.columns if name in ("image_auroc", "image_error", "sample_auroc")]
    assert metric_columns == ["sample_auroc", "image_auroc", "image_error"]
    ranks = dict(zip(summary["method"], summary["rank_image_error"]))
    assert ranks == {"m1": 1, "m2": 2, "m0": 3}
    assert dict(zip(summary["method"], summary["rank_image_auroc"])) == {"m0": 1, "m1": 2, "m2": 3}
    assert best_per_column(summary)["image_error"] == 0.10 and best_per_column(summary)["image_auroc"] == 0.9
    assert "**10.0**" in to_markdown(summary)
    check_names(pl.from_arrow(to_table(rows)), metrics=["point_auroc"])  # registered, even if no row holds it
