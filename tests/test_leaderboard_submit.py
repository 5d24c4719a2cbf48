"""`m2ad submit` end to end on a small synthetic M2AD: submit -> show -> render -> publish
--dry-run, duplicates and --replace, and malformed predictions files rejected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from leaderboard.store import Store
from m2ad import predictions
from m2ad.data import load_manifest
from m2ad.shard import shard_tree
from m2ad.synth import generate
from m2ad.cli import app
from protocols.evaluate import evaluate

runner = CliRunner()


def said(result) -> str:  # noqa: ANN001 - a click Result
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two categories, 3 normal + 2 defective specimens each, 32 px."""
    base = tmp_path_factory.mktemp("synth")
    generate(base / "tree", categories=["Cube", "Ring"], normal_specimens=3, ng_specimens=2, resolution=32, workers=1, progress=False)
    shard_tree(base / "tree", base / "shards", workers=1, progress=False)
    return base / "shards"


@pytest.fixture(scope="module")
def prediction_file(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scores that separate the labels imperfectly, and random maps, for every test image."""
    test = load_manifest(shards).filter(pl.col("split") == "test")
    rng = np.random.default_rng(7)
    scores = test["label"].to_numpy() + rng.normal(0.0, 0.7, test.height)
    maps = [rng.random((height, width)).astype(np.float32) for height, width in zip(test["height"], test["width"])]
    path = tmp_path_factory.mktemp("pred") / "predictions.parquet"
    predictions.write(path, test["sample_id"].to_list(), scores, maps, metadata={"config_hash": "cafe", "hardware": "2-core CPU"})
    return path


def submit_args(path: Path, shards: Path, store: Path, *extra: str, protocol: str = "synergy") -> list[str]:
    return ["submit", str(path), "--protocol", protocol, "--method", "My <b>Method</b> | v2", "--data", str(shards),
            "--citation", "https://example.org/paper", "--submitter", "tester", "--store", str(store), *extra]


def test_round_trip_submit_show_render_publish(shards: Path, prediction_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "board"
    added = runner.invoke(app, submit_args(prediction_file, shards, store))
    assert added.exit_code == 0, added.output
    assert "added entry submission/synergy/exact/" in said(added)

    everything = Store(store).read()
    assert set(everything["source"]) == {"submission", "paper"}  # a new store comes with the paper tables
    rows = everything.filter(pl.col("source") == "submission")
    reference = evaluate("synergy", shards, prediction_file, progress=False)
    per_category = rows.filter(pl.col("view").is_null() & pl.col("illumination").is_null())
    assert per_category.height == sum(len(metrics) for metrics in reference["categories"].values())
    for row in per_category.iter_rows(named=True):
        assert row["value"] == pytest.approx(reference["categories"][row["category"]][row["metric"]])
    assert set(rows["predictions_sha256"]) == {reference["predictions_sha256"]}
    first = rows.row(0, named=True)
    assert (first["config_hash"], first["hardware"], first["method"]) == ("cafe", "2-core CPU", "My <b>Method</b> | v2")
    views = rows.filter(pl.col("view").is_not_null())
    assert views.height == 2 * 12 and set(views["metric"]) == {"view_auroc"}

    shown = runner.invoke(app, ["leaderboard", "show", "--store", str(store), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    [entry] = [record for record in json.loads(shown.stdout) if record["source"] == "submission"]
    for metric, value in reference["mean"].items():
        assert entry[metric] == pytest.approx(value), metric  # show's mean over categories == evaluate's
        assert entry[f"rank_{metric}"] == 1

    site = tmp_path / "site"
    rendered = runner.invoke(app, ["leaderboard", "render", str(site), "--store", str(store)])
    assert rendered.exit_code == 0, rendered.output
    page = (site / "index.html").read_text()
    assert "My &lt;b&gt;Method&lt;/b&gt; | v2" in page and "<b>Method" not in page

    out = tmp_path / "upload"
    published = runner.invoke(app, ["leaderboard", "publish", "--repo", "me/board", "--dry-run", "--out", str(out), "--store", str(store)])
    assert published.exit_code == 0, published.output
    assert pl.read_parquet(out / "data" / "leaderboard.parquet").height == everything.height
    assert (out / "site" / "index.html").read_text() == page


def test_duplicates_are_refused_unless_replace(shards: Path, prediction_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "board"
    assert runner.invoke(app, submit_args(prediction_file, shards, store)).exit_code == 0
    before = Store(store).read()
    again = runner.invoke(app, submit_args(prediction_file, shards, store))
    assert again.exit_code == 1 and "already on the leaderboard" in said(again) and "--replace" in said(again)
    assert Store(store).read().height == before.height
    replaced = runner.invoke(app, submit_args(prediction_file, shards, store, "--replace", "--variant", "second"))
    assert replaced.exit_code == 0, replaced.output
    assert "replaced" in said(replaced)
    after = Store(store).read()
    assert after.height == before.height and set(after.filter(pl.col("source") == "submission")["variant"]) == {"second"}
    # another protocol is another entry, with the view x illumination breakdown of image AUROC
    other = runner.invoke(app, submit_args(prediction_file, shards, store, protocol="invariant"))
    assert other.exit_code == 0, other.output
    grid = Store(store).read().filter((pl.col("protocol") == "invariant") & pl.col("view").is_not_null() & pl.col("illumination").is_not_null())
    assert grid.height == 2 * 12 * 10 and set(grid["metric"]) == {"image_auroc"}


def _rewrite_without_half(source: Path, target: Path) -> None:
    table = pq.read_table(source)
    pq.write_table(table.slice(0, table.num_rows // 2), target)


def _rewrite_with_duplicate_id(source: Path, target: Path) -> None:
    table = pq.read_table(source)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), target)


def _strip_metadata(source: Path, target: Path) -> None:
    pq.write_table(pq.read_table(source).replace_schema_metadata({}), target)


def _not_parquet(source: Path, target: Path) -> None:
    target.write_text("sample_id,score\nx,1\n")


def _foreign_ids(source: Path, target: Path) -> None:
    table = pq.read_table(source)
    ids = pa.array([f"m2ad-synth/Nope/{index}.png" for index in range(table.num_rows)])
    pq.write_table(table.set_column(0, "sample_id", ids), target)


@pytest.mark.parametrize("corrupt", [_rewrite_without_half, _rewrite_with_duplicate_id, _strip_metadata, _not_parquet, _foreign_ids])
def test_malformed_predictions_are_rejected(shards: Path, prediction_file: Path, tmp_path: Path, corrupt) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.parquet"
    corrupt(prediction_file, bad)
    store = tmp_path / "board"
    result = runner.invoke(app, submit_args(bad, shards, store))
    assert result.exit_code == 1, result.output
    assert "invalid predictions file" in said(result) and "Traceback" not in result.output
    assert Store(store).read().is_empty()


def test_bad_arguments_are_clear_errors(shards: Path, prediction_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "board"
    unknown = runner.invoke(app, submit_args(prediction_file, shards, store, protocol="nonsense"))
    assert unknown.exit_code == 1 and "unknown protocol" in said(unknown)
    missing = runner.invoke(app, submit_args(tmp_path / "absent.parquet", shards, store))
    assert missing.exit_code == 2 and "no such predictions file" in said(missing)
    no_data = runner.invoke(app, submit_args(prediction_file, tmp_path, store))
    assert no_data.exit_code == 1 and "not a sharded m2ad dataset" in said(no_data)
    assert Store(store).read().is_empty()
