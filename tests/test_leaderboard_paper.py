"""The published M2AD-Synergy tables: transcription checked against the printed averages,
mapped to our metric names as fractions, with the known anomalies noted."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from leaderboard import paper
from leaderboard.aggregate import summarize
from leaderboard.store import Store

METHODS = ("CDO", "RD++", "MSFlow", "Dinomaly", "INP-Former")
CATEGORIES = ("Bird", "Car", "Cube", "Dice", "Doll", "Holder", "Motor", "Ring", "Teapot", "Tube")


def test_every_cell_of_both_tables_is_there() -> None:
    rows = paper.paper_rows()
    cells = {(row["method"], row["resolution"], row["category"], row["metric"]) for row in rows}
    assert len(rows) == len(cells) == 5 * 2 * 10 * 3
    assert {method for method, *_ in cells} == set(METHODS)
    assert {category for _, _, category, _ in cells} == set(CATEGORIES)
    assert {metric for *_, metric in cells} == {"object_auroc", "view_auroc", "view_aupro"}
    assert all(0.0 <= row["value"] <= 1.0 for row in rows)
    assert all(row["source"] == "paper" and row["citation"] == "https://arxiv.org/abs/2505.10996" for row in rows)


@pytest.mark.parametrize("resolution", ["256", "512"])
def test_recomputed_means_match_the_printed_averages(resolution: str) -> None:
    """Mean of the 10 category values (points) vs the printed average: within rounding, 0.1."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in paper.read_table():
        if record["resolution"] == resolution and record["category"] != paper.PRINTED_AVERAGE:
            for metric in paper.PAPER_METRICS:
                sums[(record["method"], metric)].append(float(record[metric]))
    printed = paper.printed_averages()
    for method in METHODS:
        for metric in paper.PAPER_METRICS:
            values = sums[(method, metric)]
            assert len(values) == 10
            assert abs(sum(values) / 10 - printed[(method, resolution)][metric]) <= 0.1 + 1e-9, (method, metric)


def test_spot_values_from_the_paper_tables() -> None:
    """A few cells read off m2ad.md section 14, as fractions (the CSV keeps the printed percent)."""
    value = {(r["method"], r["resolution"], r["category"], r["metric"]): r["value"] for r in paper.paper_rows()}
    assert value[("Dinomaly", "256", "Dice", "object_auroc")] == pytest.approx(0.981)
    assert value[("Dinomaly", "512", "Dice", "object_auroc")] == pytest.approx(0.719)
    assert value[("CDO", "512", "Teapot", "object_auroc")] == pytest.approx(1.0)
    assert value[("MSFlow", "256", "Bird", "view_aupro")] == pytest.approx(0.714)
    assert value[("INP-Former", "512", "Ring", "view_auroc")] == pytest.approx(0.608)


def test_known_anomalies_are_noted() -> None:
    rows = paper.paper_rows()
    rdpp = {(r["resolution"], r["category"], r["metric"]): r for r in rows if r["method"] == "RD++"}
    for category in CATEGORIES:
        same = all(rdpp[("256", category, m)]["value"] == rdpp[("512", category, m)]["value"] for m in paper.PAPER_METRICS)
        assert same == (category in paper.RDPP_COPIED_CATEGORIES), category
        assert ("copy error" in rdpp[("256", category, "object_auroc")]["note"]) == same
    inp = [r for r in rows if r["method"] == "INP-Former"]
    assert all("71.0" in r["note"] for r in inp)
    assert all(r["variant"] == f"input {224 if r['resolution'] == '256' else 448} px" for r in inp)


def test_seeding_is_idempotent_and_shows_the_paper_means(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert paper.seed(store) == 300
    assert paper.seed(store) == 300
    frame = store.read()
    assert frame.height == 300
    summary = summarize(frame)
    dinomaly = summary.filter((summary["method"] == "Dinomaly") & (summary["resolution"] == "512")).row(0, named=True)
    printed = paper.printed_averages()[("Dinomaly", "512")]
    for metric in paper.PAPER_METRICS:
        assert abs(100 * dinomaly[metric] - printed[metric]) <= 0.1
        assert dinomaly[f"rank_{metric}"] == 1  # the paper's best Synergy result


def test_a_new_store_shows_the_paper_tables_and_source_still_filters(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from m2ad.cli import app

    runner = CliRunner()
    store = tmp_path / "fresh"
    shown = runner.invoke(app, ["leaderboard", "show", "--store", str(store), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    entries = {record["entry_id"] for record in json.loads(shown.stdout)}
    assert entries == {paper.entry_id(method, resolution) for method in METHODS for resolution in ("256", "512")}
    table = runner.invoke(app, ["leaderboard", "show", "--store", str(store), "--resolution", "512"], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and all(method in table.stdout for method in METHODS)
    summary = summarize(Store(store).read())
    dinomaly = summary.filter((summary["method"] == "Dinomaly") & (summary["resolution"] == "512")).row(0, named=True)
    assert f"{100 * dinomaly['object_auroc']:.1f}" in table.stdout
    assert json.loads(runner.invoke(app, ["leaderboard", "show", "--store", str(store), "--source", "paper", "--format", "json"]).stdout)
    for other in ("run", "submission"):
        only = runner.invoke(app, ["leaderboard", "show", "--store", str(store), "--source", other, "--format", "json"])
        assert only.exit_code == 0 and json.loads(only.stdout) == []
    # a store that exists keeps what its owner did with it: a removed paper entry stays removed
    removed = runner.invoke(app, ["leaderboard", "remove", paper.entry_id("CDO", "256"), "--store", str(store)])
    assert removed.exit_code == 0, removed.output
    again = runner.invoke(app, ["leaderboard", "show", "--store", str(store), "--format", "json"])
    assert paper.entry_id("CDO", "256") not in {record["entry_id"] for record in json.loads(again.stdout)}
    assert len(json.loads(again.stdout)) == len(entries) - 1
