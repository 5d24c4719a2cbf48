"""The leaderboard store: schema validation, atomic appends under 16 concurrent writers,
compaction and replacement that readers never see half-done, and the location precedence."""

from __future__ import annotations

import json
import multiprocessing
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from leaderboard.store import (
    METADATA_KEY,
    SCHEMA,
    SCHEMA_VERSION,
    DuplicateEntryError,
    Store,
    StoreError,
    default_store_dir,
    resolve_store_dir,
    to_table,
)

CATEGORIES = ("Bird", "Car", "Cube")
METRICS = ("object_auroc", "view_auroc", "view_aupro")


def entry_rows(entry_id: str, *, sha: str | None = None, protocol: str = "synergy", mode: str = "exact", value: float = 0.5) -> list[dict]:
    """One entry: every (category, metric), with distinct values."""
    return [
        {
            "entry_id": entry_id,
            "source": "submission",
            "method": f"method {entry_id}",
            "protocol": protocol,
            "mode": mode,
            "dataset": "m2ad",
            "resolution": "256",
            "category": category,
            "metric": metric,
            "value": value + 0.01 * index,
            "predictions_sha256": sha,
            "date": datetime(2026, 1, 1, tzinfo=timezone.utc),
        }
        for index, (category, metric) in enumerate((c, m) for c in CATEGORIES for m in METRICS)
    ]


def _append_after(store_dir: str, writer: int, start_at: float, appends: int) -> None:
    """Child process: wait for the common start time, then add ``appends`` entries: even writers
    through the lock-free ``append``, odd ones through ``add_entry`` (locked, duplicate check)."""
    store = Store(store_dir)
    while time.time() < start_at:
        time.sleep(0.001)
    for number in range(appends):
        rows = entry_rows(f"w{writer:02d}-{number}", sha=f"{writer:02d}{number:062d}")
        if writer % 2:
            store.add_entry(rows)
        else:
            store.append(rows)


def _compact_repeatedly(store_dir: str, start_at: float, rounds: int) -> None:
    """Child process: from the common start time, compact again and again while others write."""
    store = Store(store_dir)
    while time.time() < start_at:
        time.sleep(0.001)
    for _ in range(rounds):
        store.compact()
        time.sleep(0.01)


def test_round_trip_keeps_every_value_and_type(tmp_path: Path) -> None:
    store = Store(tmp_path / "board")
    assert store.read().is_empty()
    rows = entry_rows("a", sha="f" * 64)
    rows[0]["value"] = None  # NaN/None metric values are stored as null
    store.append(rows)
    frame = store.read()
    assert frame.columns == list(SCHEMA.names)
    assert frame.height == len(rows)
    expected = {(row["category"], row["metric"]): row["value"] for row in rows}
    assert dict(zip(zip(frame["category"], frame["metric"]), frame["value"])) == expected
    assert frame["date"].dtype == pl.Datetime("us", "UTC")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": "email"}, "source must be one of"),
        ({"method": ""}, "missing required values"),
        ({"metric": None}, "missing required values"),
        ({"value": "high"}, "do not fit the leaderboard schema"),
        ({"colour": "red"}, "unknown columns"),
    ],
)
def test_bad_rows_never_reach_the_store(tmp_path: Path, change: dict, message: str) -> None:
    rows = entry_rows("a")
    rows[1].update(change)
    with pytest.raises(StoreError, match=message):
        to_table(rows)
    store = Store(tmp_path)
    with pytest.raises(StoreError):
        store.append(rows)
    assert store.read().is_empty()


def _write_part(store: Store, table: pa.Table, metadata: dict | None) -> None:
    store.data_dir.mkdir(parents=True, exist_ok=True)
    if metadata is not None:
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    pq.write_table(table, store.data_dir / "part-9-foreign.parquet")


def test_newer_schema_version_is_refused_with_upgrade_hint(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _write_part(store, to_table(entry_rows("a")), {"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(StoreError, match="newer than this m2ad supports.*upgrade"):
        store.read()


def test_missing_columns_and_foreign_files_are_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "one")
    _write_part(store, to_table(entry_rows("a")).drop_columns(["metric"]), {"schema_version": SCHEMA_VERSION})
    with pytest.raises(StoreError, match=r"missing columns \['metric'\]"):
        store.read()
    other = Store(tmp_path / "two")
    _write_part(other, pa.table({"x": [1]}), None)
    with pytest.raises(StoreError, match="not a leaderboard file"):
        other.read()
    garbage = Store(tmp_path / "three")
    garbage.data_dir.mkdir(parents=True)
    (garbage.data_dir / "part-0-x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(StoreError, match="not a Parquet file"):
        garbage.read()


def test_duplicates_are_refused_and_replace_swaps_atomically(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append(entry_rows("other", sha="0" * 64))
    store.add_entry(entry_rows("first", sha="a" * 64, value=0.1))
    with pytest.raises(DuplicateEntryError, match="first.*--replace"):
        store.add_entry(entry_rows("second", sha="a" * 64, value=0.2))
    with pytest.raises(DuplicateEntryError):
        store.check_new("a" * 64, "synergy", "exact")
    # the same file under another protocol or mode is a different entry
    store.add_entry(entry_rows("third", sha="a" * 64, mode="compat"))
    store.check_new("a" * 64, "invariant", "exact")
    with pytest.raises(DuplicateEntryError, match="other"):  # an existing entry id, other file
        store.add_entry(entry_rows("other", sha="9" * 64))
    replaced = store.add_entry(entry_rows("second", sha="a" * 64, value=0.2), replace=True)
    assert replaced == ["first"]
    frame = store.read()
    assert sorted(frame["entry_id"].unique()) == ["other", "second", "third"]
    assert frame.filter(pl.col("entry_id") == "second")["value"].min() == pytest.approx(0.2)
    assert frame.height == 3 * len(entry_rows("x"))


def test_remove_and_put_entries(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append(entry_rows("a"))
    store.append(entry_rows("b"))
    store.put_entries(to_table(entry_rows("a", value=0.9)))
    store.put_entries(to_table(entry_rows("a", value=0.9)))  # idempotent
    frame = store.read()
    assert frame.height == 2 * len(entry_rows("x"))
    assert frame.filter(pl.col("entry_id") == "a")["value"].min() == pytest.approx(0.9)
    assert store.remove_entries(["a"]) == len(entry_rows("x"))
    assert store.read()["entry_id"].unique().to_list() == ["b"]


@pytest.mark.slow
def test_sixteen_concurrent_writers_and_a_compactor_lose_no_row(tmp_path: Path) -> None:
    """16 processes append at the same instant while another compacts; the main process keeps
    reading and must never see a duplicate or lose a row that was already visible."""
    store_dir = tmp_path / "board"
    Store(store_dir).append(entry_rows("seed"))
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 4.0  # after every child has imported its modules
    writers = [context.Process(target=_append_after, args=(str(store_dir), index, start_at, 1)) for index in range(16)]
    compactor = context.Process(target=_compact_repeatedly, args=(str(store_dir), start_at, 6))
    for process in [*writers, compactor]:
        process.start()
    store = Store(store_dir)
    seen = 0
    while any(process.is_alive() for process in [*writers, compactor]):
        frame = store.read()
        keys = frame.select(["entry_id", "category", "metric"])
        assert keys.is_duplicated().sum() == 0, "a reader saw a row twice"
        assert frame.height >= seen, "a reader saw rows disappear"
        seen = frame.height
        time.sleep(0.1)
    for process in [*writers, compactor]:
        process.join(timeout=120)
        assert process.exitcode == 0
    expected = {"seed"} | {f"w{writer:02d}-0" for writer in range(16)}
    frame = store.read()
    assert set(frame["entry_id"].unique()) == expected
    assert frame.height == len(expected) * len(entry_rows("x"))
    assert store.compact() == frame.height
    assert len(store.parts()) == 1
    assert store.read().sort(["entry_id", "category", "metric"]).equals(frame.sort(["entry_id", "category", "metric"]))
    assert not list(store.data_dir.glob(".*.tmp")), "temporary files were left behind"


def test_location_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2AD_LEADERBOARD", str(tmp_path / "from-env"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_store_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_store_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv("M2AD_LEADERBOARD")
    assert resolve_store_dir(None) == tmp_path / "xdg" / "m2ad" / "leaderboard"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_dir() == tmp_path / "home" / ".local" / "share" / "m2ad" / "leaderboard"


def test_compaction_interrupted_before_cleanup_shows_no_duplicates(tmp_path: Path) -> None:
    """A compaction killed after its merged file is in place but before the old parts are gone
    (simulated by putting the old parts back) must not double any row."""
    store = Store(tmp_path)
    for name in "abc":
        store.append(entry_rows(name))
    old_parts = {part.name: part.read_bytes() for part in store.parts()}
    before = store.read().sort(["entry_id", "category", "metric"])
    assert store.compact() == before.height
    for name, data in old_parts.items():
        (store.data_dir / name).write_bytes(data)
    after = store.read().sort(["entry_id", "category", "metric"])
    assert after.equals(before)
    store.append(entry_rows("d"))
    assert store.compact() == before.height + len(entry_rows("x"))
    assert store.read().select(["entry_id", "category", "metric"]).is_duplicated().sum() == 0
