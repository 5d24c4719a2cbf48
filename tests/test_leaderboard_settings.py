"""Leaderboard schema v2: every row carries its setting, shots, training dataset and protocol
version; version-1 stores are read and migrated; show and render group by setting; paper rows
say single-class; submissions take the setting from the predictions file or the submitter."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from leaderboard import aggregate, paper
from leaderboard.render import render_site
from leaderboard.store import METADATA_KEY, SCHEMA_VERSION, V1_COLUMNS, Store, StoreError, to_table
from leaderboard.submit import submit
from m2ad import predictions
from m2ad.cli import app
from m2ad.data import load_manifest
from m2ad.shard import shard_tree
from m2ad.synth import generate

runner = CliRunner()


def rows(entry_id: str, *, source: str = "submission", setting: str | None = "single-class", shots: int | None = None,
         value: float = 0.5, train_dataset: str | None = None) -> list[dict]:
    return [
        {"entry_id": entry_id, "source": source, "method": entry_id, "protocol": "synergy", "mode": "exact", "dataset": "m2ad",
         "resolution": "256", "setting": setting, "shots": shots, "train_dataset": train_dataset, "category": category,
         "metric": "view_auroc", "value": value + 0.01 * index, "date": datetime(2026, 1, 1, tzinfo=timezone.utc)}
        for index, category in enumerate(("Bird", "Car"))
    ]


def _write_v1_part(store: Store, entries: list[dict], name: str = "part-00000000000000000001-v1.parquet") -> Path:
    """A part file as m2ad wrote it before schema v2: the version-1 columns and metadata."""
    table = to_table(entries).select(list(V1_COLUMNS))
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps({"schema_version": 1, "supersedes": []}).encode()})
    store.data_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, store.data_dir / name)
    return store.data_dir / name


def test_version_1_stores_are_read_migrated_and_compacted_to_version_2(tmp_path: Path) -> None:
    store = Store(tmp_path)
    old = [*rows("run-a", source="run"), *rows("sub-b"), *rows("paper-c", source="paper")]
    part = _write_v1_part(store, old)
    assert pq.read_schema(part).names == list(V1_COLUMNS)
    read = store.read().sort(["entry_id", "category"])
    assert read.height == len(old)
    settings = dict(zip(read["entry_id"], read["setting"]))
    assert settings == {"run-a": "single-class", "sub-b": None, "paper-c": "single-class"}  # submissions: unknown
    assert set(read["protocol_version"]) == {"1"} and read["shots"].null_count() == read.height
    assert read["train_dataset"].null_count() == read.height
    store.append(to_table(rows("new-d", setting="few-shot", shots=2)))  # a v2 part next to the v1 one
    assert store.read().height == len(old) + 2
    store.compact()
    (live,) = store.parts()
    assert json.loads(pq.read_schema(live).metadata[METADATA_KEY])["schema_version"] == SCHEMA_VERSION == 2
    assert not part.exists()
    after = store.read().sort(["entry_id", "category"])
    assert after.filter(pl.col("entry_id") != "new-d").equals(read)
    assert after.filter(pl.col("entry_id") == "new-d")["shots"].to_list() == [2, 2]


def test_rows_with_an_unknown_setting_or_bad_shots_never_reach_the_store() -> None:
    with pytest.raises(StoreError, match="setting must be one of"):
        to_table(rows("a", setting="semi-supervised"))
    with pytest.raises(StoreError, match="shots must be a positive integer"):
        to_table(rows("a", setting="few-shot", shots=0))
    assert to_table(rows("a"))["protocol_version"].to_pylist() == ["1", "1"]  # filled from the protocol


def test_show_and_render_rank_each_setting_apart(tmp_path: Path) -> None:
    store = Store(tmp_path / "board")
    store.append(to_table([*rows("full-a", value=0.9), *rows("full-b", value=0.8), *rows("two-shot", setting="few-shot", shots=2, value=0.95),
                           *rows("four-shot", setting="few-shot", shots=4, value=0.6), *rows("zero", setting="zero-shot", value=0.7,
                                                                                            train_dataset="visa"),
                           *rows("old", setting=None, value=0.99)]))
    summary = aggregate.summarize(store.read())
    tables = {aggregate.table_title(key): part for key, part in aggregate.split_tables(summary)}
    assert sorted(tables) == sorted([
        "synergy · m2ad · 256 · single-class", "synergy · m2ad · 256 · few-shot, 2 shots", "synergy · m2ad · 256 · few-shot, 4 shots",
        "synergy · m2ad · 256 · zero-shot", "synergy · m2ad · 256 · setting not given",
    ])
    full = tables["synergy · m2ad · 256 · single-class"]
    assert full["entry_id"].to_list() == ["full-a", "full-b"] and full["rank_view_auroc"].to_list() == [1, 2]
    for title in ("synergy · m2ad · 256 · few-shot, 2 shots", "synergy · m2ad · 256 · setting not given"):
        assert tables[title]["rank_view_auroc"].to_list() == [1], "ranked only against its own setting"
    assert "train_dataset" in aggregate.display_columns(tables["synergy · m2ad · 256 · zero-shot"])
    assert "train_dataset" not in aggregate.display_columns(full)

    shown = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path / "board"), "--setting", "few-shot", "--format", "json"])
    assert shown.exit_code == 0, shown.output
    assert sorted((entry["entry_id"], entry["shots"]) for entry in json.loads(shown.output)) == [("four-shot", 4), ("two-shot", 2)]
    table = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path / "board")], env={"COLUMNS": "300"})
    assert "few-shot, 2 shots" in table.output and "setting not given" in table.output
    bad = runner.invoke(app, ["leaderboard", "show", "--store", str(tmp_path / "board"), "--setting", "full"])
    assert bad.exit_code == 2 and "--setting must be one of" in bad.output

    page = render_site(store.read(), tmp_path / "site").read_text()
    assert page.count("<section") == 5 and 'data-setting="few-shot"' in page and "few-shot, 4 shots" in page


def test_paper_rows_carry_the_setting_of_the_official_code() -> None:
    paper_rows = paper.paper_rows()
    assert {row["setting"] for row in paper_rows} == {"single-class"}
    assert {row["protocol_version"] for row in paper_rows} == {"1"}
    assert all(row.get("shots") is None and row.get("train_dataset") is None for row in paper_rows)
    assert all("one model per class" in row["note"] for row in paper_rows)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("synth")
    generate(base / "tree", categories=["Cube"], normal_specimens=2, ng_specimens=1, resolution=16, workers=1, progress=False)
    shard_tree(base / "tree", base / "shards", workers=1, progress=False)
    return base / "shards"


def _predictions(shards: Path, path: Path, metadata: dict) -> Path:
    test = load_manifest(shards).filter(pl.col("split") == "test")
    rng = np.random.default_rng(0)
    maps = [rng.random((16, 16)).astype(np.float32) for _ in range(test.height)]
    predictions.write(path, test["sample_id"].to_list(), rng.random(test.height), maps, metadata=metadata)
    return path


def test_a_submission_takes_its_setting_from_the_file_or_the_submitter(shards: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "board")
    declared = _predictions(shards, tmp_path / "declared.parquet", {"setting": "few-shot", "shots": 2, "protocol_version": "1"})
    added = submit(declared, protocol="invariant", data=shards, method="m", store=store, progress=False)
    assert {(row["setting"], row["shots"], row["protocol_version"]) for row in added.rows} == {("few-shot", 2, "1")}
    with pytest.raises(ValueError, match="--shots 4 contradicts the predictions file, which declares shots 2"):
        submit(declared, protocol="invariant", data=shards, method="m", store=store, shots=4, replace=True, progress=False)
    plain = _predictions(shards, tmp_path / "plain.parquet", {})
    given = submit(plain, protocol="invariant", data=shards, method="m", store=store, setting="zero-shot", train_dataset="visa", progress=False)
    assert {(row["setting"], row["train_dataset"]) for row in given.rows} == {("zero-shot", "visa")}
    with pytest.raises(ValueError, match="--setting must be one of"):
        submit(plain, protocol="invariant", data=shards, method="m", store=store, setting="full", replace=True, progress=False)
    read = store.read()
    assert sorted(read.unique("entry_id")["setting"].to_list()) == ["few-shot", "zero-shot"]
