"""The leaderboard store: a folder of Parquet files, one row per
(entry, protocol, dataset, resolution, category, [view, illumination], metric).

Layout::

    STORE/
      data/part-<time>-<uuid>.parquet   one file per append (never rewritten in place)
      data/.part-...parquet.<pid>-<start>@<host>.tmp
                                        a part being written, named after its writer
      .lock                             taken (``fcntl.flock``) by compaction and replacement

Why this shape:

- **Appends never collide.**  Every append writes a *new*, uniquely named file (temp name,
  then ``os.replace``), so any number of concurrent writers lose no row and need no lock.
  The temp name carries its writer (``m2ad.ownership.temp_file_name``): every later write
  and compaction deletes the temp files of writers that died (a killed ``submit``), never
  those of live ones.
- **Rewrites are atomic for readers.**  Compaction and ``--replace`` write one new file whose
  Parquet metadata lists the files it *supersedes*; readers ignore superseded files from the
  moment the new file exists, and the old files are unlinked only afterwards.  A reader that
  loses the race to an unlink simply lists the folder again.
- **A versioned schema.**  Each file carries ``m2ad.leaderboard`` metadata with its
  ``schema_version``; reading checks it and every column, and fails with a clear message.
  Version 2 added the setting of a result (``setting``, ``shots``, ``train_dataset``) and the
  ``protocol_version``.  Version 1 files are read and migrated in memory (:func:`migrate_v1`);
  every rewrite (compaction, ``--replace``) writes version 2, so ``m2ad leaderboard compact``
  migrates a store for good.

Per-category rows have ``view`` and ``illumination`` null; the M2AD breakdowns of
``protocols.evaluate`` are stored as extra rows of the same metric with ``view`` and/or
``illumination`` set.  The mean over categories is not stored: it is computed on read, as the
paper does (see ``leaderboard.aggregate``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import protocols
from m2ad import ownership
from m2ad.settings import SETTINGS

SCHEMA_VERSION = 2
METADATA_KEY = b"m2ad.leaderboard"
SOURCES = ("run", "submission", "paper")
DATA_DIR = "data"
LOCK_FILE = ".lock"
ENV_VAR = "M2AD_LEADERBOARD"
DUPLICATE_KEY = ("predictions_sha256", "protocol", "mode")

SCHEMA = pa.schema(
    [
        pa.field("entry_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("variant", pa.string()),
        pa.field("backbone", pa.string()),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("mode", pa.string()),
        pa.field("mask_rule", pa.string()),
        pa.field("protocol_version", pa.string()),
        pa.field("setting", pa.string()),
        pa.field("shots", pa.int32()),
        pa.field("train_dataset", pa.string()),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("resolution", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("view", pa.string()),
        pa.field("illumination", pa.string()),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("config_hash", pa.string()),
        pa.field("code_version", pa.string()),
        pa.field("predictions_sha256", pa.string()),
        pa.field("hardware", pa.string()),
        pa.field("date", pa.timestamp("us", tz="UTC")),
        pa.field("submitter", pa.string()),
        pa.field("citation", pa.string()),
        pa.field("note", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
REQUIRED = tuple(field.name for field in SCHEMA if not field.nullable)
V2_COLUMNS = ("protocol_version", "setting", "shots", "train_dataset")
V1_COLUMNS = tuple(name for name in COLUMNS if name not in V2_COLUMNS)
V1_SINGLE_CLASS_SOURCES = ("run", "paper")
"""Sources whose version-1 rows were single-class: the runner fitted one model per category
then, and the M2AD paper trains one model per class (reference m2ad.md section 11.1)."""


class StoreError(ValueError):
    """The store or a row is malformed (bad schema, newer version, missing column, bad value)."""


class DuplicateEntryError(StoreError):
    """An entry with the same predictions hash, protocol and mode is already on the leaderboard."""


def _duplicate(entries: list[str]) -> DuplicateEntryError:
    return DuplicateEntryError(
        f"these predictions are already on the leaderboard as entry {', '.join(entries)} "
        "(same predictions sha256, protocol and mode); pass --replace to replace it"
    )


def default_store_dir() -> Path:
    """The store used when neither ``--store`` nor ``$M2AD_LEADERBOARD`` is given:
    ``$XDG_DATA_HOME/m2ad/leaderboard``, else ``~/.local/share/m2ad/leaderboard``."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "m2ad" / "leaderboard"


def resolve_store_dir(store: str | Path | None = None) -> Path:
    """Where the leaderboard lives: ``store`` if given, else ``$M2AD_LEADERBOARD``, else
    :func:`default_store_dir`."""
    if store:
        return Path(store).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return default_store_dir()


def to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Validate rows (dicts keyed by column name) and build an Arrow table in the store schema.

    Unknown keys, missing required values, an unknown ``source`` or ``setting`` or a
    non-numeric value are errors: a bad row must never reach the store, where it would break
    every later read.  A row without ``protocol_version`` gets its known protocol's current one.
    """
    rows = [_with_protocol_version(row) for row in rows]
    for index, row in enumerate(rows):
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise StoreError(f"row {index}: unknown columns {sorted(unknown)}")
        missing = [name for name in REQUIRED if row.get(name) in (None, "")]
        if missing:
            raise StoreError(f"row {index}: missing required values {missing}")
        if row["source"] not in SOURCES:
            raise StoreError(f"row {index}: source must be one of {SOURCES}, not {row['source']!r}")
        if row.get("setting") is not None and row["setting"] not in SETTINGS:
            raise StoreError(f"row {index}: setting must be one of {', '.join(SETTINGS)} (or null), not {row['setting']!r}")
        if row.get("shots") is not None and (not isinstance(row["shots"], int) or row["shots"] < 1):
            raise StoreError(f"row {index}: shots must be a positive integer (or null), not {row['shots']!r}")
    try:
        return pa.Table.from_pylist([{name: row.get(name) for name in COLUMNS} for row in rows], schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise StoreError(f"rows do not fit the leaderboard schema: {error}") from error


def _with_protocol_version(row: Mapping[str, Any]) -> Mapping[str, Any]:
    if row.get("protocol_version") is not None or row.get("protocol") not in protocols.available():
        return row
    return {**row, "protocol_version": protocols.get(row["protocol"]).version}


def _file_metadata(supersedes: list[str]) -> dict[bytes, bytes]:
    return {METADATA_KEY: json.dumps({"schema_version": SCHEMA_VERSION, "supersedes": supersedes}).encode()}


def _read_file_metadata(path: Path) -> dict[str, Any]:
    """The ``m2ad.leaderboard`` metadata of one file, checked against this code's schema."""
    try:
        schema = pq.read_schema(path)
    except pa.ArrowInvalid as error:
        raise StoreError(f"{path}: not a Parquet file ({error})") from error
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise StoreError(f"{path}: not a leaderboard file (no {METADATA_KEY.decode()} metadata)")
    try:
        info = json.loads(raw)
        version = int(info["schema_version"])
    except (ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{path}: unreadable {METADATA_KEY.decode()} metadata") from error
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: leaderboard schema version {version} is newer than this m2ad supports "
            f"({SCHEMA_VERSION}); upgrade m2ad"
        )
    if version < 1:
        raise StoreError(f"{path}: invalid leaderboard schema version {version}")
    missing = [name for name in (V1_COLUMNS if version == 1 else COLUMNS) if name not in schema.names]
    if missing:
        raise StoreError(f"{path}: missing columns {missing}")
    return {**info, "schema_version": version}


def migrate_v1(table: pa.Table) -> pa.Table:
    """Version-1 rows in the version-2 schema: ``protocol_version`` "1" (every protocol's only
    version then), ``setting`` single-class for runs and paper rows and unknown (null) for
    submissions, no shots, and the target dataset as the training data (null)."""
    single = pc.is_in(table["source"], pa.array(V1_SINGLE_CLASS_SOURCES))
    added = {
        "protocol_version": pa.array(["1"] * table.num_rows, pa.string()),
        "setting": pc.if_else(single, pa.scalar("single-class"), pa.scalar(None, pa.string())),
        "shots": pa.nulls(table.num_rows, pa.int32()),
        "train_dataset": pa.nulls(table.num_rows, pa.string()),
    }
    columns = {name: table[name] for name in V1_COLUMNS} | added
    return pa.table({name: columns[name] for name in COLUMNS}).cast(SCHEMA)


def read_part(path: Path) -> pa.Table:
    """One part file's rows in the current schema (version-1 files migrated)."""
    if _read_file_metadata(path)["schema_version"] == 1:
        return migrate_v1(pq.read_table(path, columns=list(V1_COLUMNS)))
    return pq.read_table(path, schema=SCHEMA)


class Store:
    """A leaderboard store rooted at a folder (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.data_dir = self.root / DATA_DIR
        for folder in (self.root, self.data_dir):
            if folder.exists() and not folder.is_dir():
                raise StoreError(f"{folder} is not a folder, so it cannot hold a leaderboard store")

    def exists(self) -> bool:
        """Whether anything was ever written to this store (its data folder exists)."""
        return self.data_dir.is_dir()

    @classmethod
    def open(cls, store: str | Path | None = None) -> Store:
        """The store at ``store``, ``$M2AD_LEADERBOARD`` or the default folder, in that order."""
        return cls(resolve_store_dir(store))

    # -- writing ---------------------------------------------------------------------------

    def _write(self, table: pa.Table, supersedes: list[str]) -> Path:
        """Write ``table`` as a new uniquely named part: temp name, fsync, then ``os.replace``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ownership.remove_dead_temp_files(self.data_dir, "part-*.parquet.*")
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
        final = self.data_dir / name
        temp = ownership.temp_file_name(final)
        table = table.cast(SCHEMA).replace_schema_metadata(_file_metadata(supersedes))
        try:
            with open(temp, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
        return final

    def append(self, rows: pa.Table | Iterable[Mapping[str, Any]]) -> Path:
        """Add rows as a new part file; lock-free and safe under any number of concurrent writers."""
        table = rows if isinstance(rows, pa.Table) else to_table(rows)
        if table.num_rows == 0:
            raise StoreError("nothing to append: no rows")
        return self._write(table, supersedes=[])

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's exclusive lock (for read-modify-write operations)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _rewrite(self, parts: list[Path], drop_entries: set[str], extra: pa.Table | None) -> Path:
        """Replace ``parts`` by one file holding their rows minus ``drop_entries`` plus ``extra``.

        Must be called under :meth:`lock`.  The new file lists ``parts`` as superseded, so
        readers switch over at the ``os.replace``; the old parts are removed afterwards.
        """
        tables = []
        for part in parts:
            table = read_part(part)
            if drop_entries:
                keep = pc.invert(pc.is_in(table["entry_id"], pa.array(sorted(drop_entries))))
                table = table.filter(keep)
            tables.append(table)
        if extra is not None:
            tables.append(extra.cast(SCHEMA))
        merged = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        # Leftovers of an interrupted earlier rewrite are superseded again by the new file, so
        # they stay dead even once the file that superseded them is gone.
        leftovers = self._superseded_parts()
        written = self._write(merged, supersedes=[part.name for part in [*parts, *leftovers]])
        for part in [*parts, *leftovers]:
            part.unlink(missing_ok=True)
        return written

    def compact(self) -> int:
        """Merge every live part into one file (atomically for readers), in the current schema
        version (so an older store is migrated for good); returns the row count."""
        with self.lock():
            if self.data_dir.is_dir():
                ownership.remove_dead_temp_files(self.data_dir, "part-*.parquet.*")
            parts = self._live_parts()
            outdated = any(_read_file_metadata(part)["schema_version"] < SCHEMA_VERSION for part in parts)
            if len(parts) > 1 or self._superseded_parts() or outdated:
                self._rewrite(parts, drop_entries=set(), extra=None)
            return self.read().height

    def add_entry(self, rows: pa.Table | Iterable[Mapping[str, Any]], *, replace: bool = False) -> list[str]:
        """Add one entry's rows unless an entry with the same id, or the same predictions hash,
        protocol and mode, exists: then raise :class:`DuplicateEntryError`, or with ``replace``
        swap the old entry's rows for the new ones in one atomic step.  Returns the replaced ids."""
        table = rows if isinstance(rows, pa.Table) else to_table(rows)
        if table.num_rows == 0:
            raise StoreError("nothing to add: no rows")
        keys = pl.from_arrow(table.select(list(DUPLICATE_KEY))).unique()
        new_ids = set(table["entry_id"].to_pylist())
        with self.lock():
            same_id = set(self.read().filter(pl.col("entry_id").is_in(sorted(new_ids)))["entry_id"].to_list())
            old_entries = sorted(set(self._clashes(keys)) | same_id)
            if old_entries and not replace:
                raise _duplicate(old_entries)
            self._swap(old_entries, table)
            return old_entries

    def check_new(self, predictions_sha256: str, protocol: str, mode: str) -> None:
        """Raise :class:`DuplicateEntryError` if these predictions are already on the board
        under ``protocol`` and ``mode`` (a cheap early check; ``add_entry`` checks again)."""
        keys = pl.DataFrame({"predictions_sha256": [predictions_sha256], "protocol": [protocol], "mode": [mode]})
        old_entries = self._clashes(keys)
        if old_entries:
            raise _duplicate(old_entries)

    def _clashes(self, keys: pl.DataFrame) -> list[str]:
        """Entry ids whose (predictions hash, protocol, mode) is in ``keys``."""
        existing = self.read().select(["entry_id", *DUPLICATE_KEY])
        clashes = existing.join(keys, on=list(DUPLICATE_KEY), how="inner", nulls_equal=False)
        return sorted(set(clashes["entry_id"].to_list()))

    def put_entries(self, rows: pa.Table | Iterable[Mapping[str, Any]]) -> None:
        """Write rows, replacing every earlier row of the same entry ids in one atomic step
        (how re-seeding the paper rows stays idempotent)."""
        table = rows if isinstance(rows, pa.Table) else to_table(rows)
        with self.lock():
            self._swap(sorted(set(table["entry_id"].to_pylist())), table)

    def _swap(self, old_entries: list[str], table: pa.Table) -> None:
        """Under the lock: drop ``old_entries`` and add ``table`` so readers see both at once."""
        holding = [part for part in self._live_parts() if old_entries and self._holds_any(part, old_entries)]
        if holding:
            self._rewrite(holding, drop_entries=set(old_entries), extra=table)
        else:
            self.append(table)

    def remove_entries(self, entry_ids: Iterable[str]) -> int:
        """Delete every row of the given entries atomically; returns how many rows went."""
        targets = set(entry_ids)
        with self.lock():
            before = self.read().height
            holding = [part for part in self._live_parts() if self._holds_any(part, sorted(targets))]
            if holding:
                self._rewrite(holding, drop_entries=targets, extra=None)
            return before - self.read().height

    @staticmethod
    def _holds_any(part: Path, entry_ids: list[str]) -> bool:
        ids = pq.read_table(part, columns=["entry_id"])["entry_id"]
        return bool(pc.any(pc.is_in(ids, pa.array(entry_ids))).as_py())

    # -- reading ---------------------------------------------------------------------------

    def _all_parts(self) -> tuple[list[Path], set[str]]:
        """Every part file on disk (validated) and the names that some part supersedes."""
        if not self.data_dir.is_dir():
            return [], set()
        parts = sorted(self.data_dir.glob("part-*.parquet"))
        superseded: set[str] = set()
        for part in parts:
            superseded.update(_read_file_metadata(part).get("supersedes", []))
        return parts, superseded

    def _live_parts(self) -> list[Path]:
        """Part files not superseded by a compaction or replacement."""
        parts, superseded = self._all_parts()
        return [part for part in parts if part.name not in superseded]

    def _superseded_parts(self) -> list[Path]:
        """Part files still on disk although superseded (an interrupted rewrite's leftovers)."""
        parts, superseded = self._all_parts()
        return [part for part in parts if part.name in superseded]

    def read_arrow(self) -> pa.Table:
        """Every live row as one Arrow table (empty when the store does not exist yet)."""
        for _ in range(20):
            try:
                parts = self._live_parts()
                tables = [read_part(part) for part in parts]
            except FileNotFoundError:
                continue  # a rewrite unlinked a part we listed: its rows are in a newer file
            if not tables:
                return SCHEMA.empty_table()
            return pa.concat_tables(tables)
        raise StoreError(f"{self.root}: the store kept changing while being read; try again")

    def read(self) -> pl.DataFrame:
        """Every live row as a polars frame."""
        return pl.from_arrow(self.read_arrow())  # type: ignore[return-value]

    def parts(self) -> list[Path]:
        """The live part files (for publishing and diagnostics)."""
        return self._live_parts()
