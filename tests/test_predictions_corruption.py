"""Damaged predictions files: a campaign of seeded bit flips over small valid files, each
damaged copy either read exactly as the original or refused with one line (never a traceback,
never other numbers); page checksums and the header's sha256 are what make that hold."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from m2ad import predictions
from m2ad.cli import app
from m2ad.data import load_manifest
from m2ad.predictions import PredictionsError, PredictionsFile
from m2ad.shard import shard_tree
from m2ad.synth import generate

TRIALS = 500


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("corrupt")
    generate(base / "tree", categories=["Cube"], normal_specimens=2, ng_specimens=1, resolution=16, workers=1, progress=False)
    shard_tree(base / "tree", base / "shards", workers=1, progress=False)
    return base / "shards"


@pytest.fixture(scope="module")
def expected(shards: Path) -> dict[str, tuple[int, int]]:
    test = load_manifest(shards).filter(pl.col("split") == "test")
    return {row["sample_id"]: (row["height"], row["width"]) for row in test.iter_rows(named=True)}


def _write(path: Path, expected: dict[str, tuple[int, int]], variant: str) -> Path:
    """A small valid file: float16 maps in several row groups, float32 maps, or scores only."""
    rng = np.random.default_rng(len(variant))
    ids = list(expected)
    maps = None if variant == "scores" else [rng.random(shape).astype(np.float32) for shape in expected.values()]
    with predictions.PredictionsWriter(path, map_dtype="float32" if variant == "float32" else "float16",
                                       metadata={"method": "probe", "seed": 3}, row_group_bytes=2**14) as writer:
        for start in range(0, len(ids), 48):
            writer.write_batch(ids[start:start + 48], rng.random(len(ids[start:start + 48])), None if maps is None else maps[start:start + 48])
    return path


def _contents(path: Path, expected: dict[str, tuple[int, int]]) -> tuple:
    """Everything a reader gets from the file (after ``validate``, as ``m2ad evaluate`` does)."""
    predictions.validate(path, expected)
    handle = PredictionsFile(path)
    ids, scores, maps = [], [], []
    for batch in handle.iter_batches(batch_size=40):
        ids += batch.sample_ids
        scores += batch.scores.tolist()
        maps += [item.tobytes() for item in batch.maps or []]
    by_group = [handle.read_row_group(index).sample_ids for index in range(handle.num_row_groups)]
    return json.dumps(handle.header, sort_keys=True), ids, scores, maps, by_group, handle.ids_and_scores()[0]


@pytest.mark.parametrize("variant", ["float16", "float32", "scores"])
def test_every_damaged_copy_reads_as_the_original_or_is_refused_in_one_line(variant: str, expected: dict, tmp_path: Path) -> None:
    original = _write(tmp_path / "good.parquet", expected, variant)
    reference = _contents(original, expected)
    data = original.read_bytes()
    outcomes = {"identical": 0, "refused": 0}
    for trial in range(TRIALS):
        chooser = random.Random(f"{variant}-{trial}")
        damaged = bytearray(data)
        for _ in range(chooser.choice([1, 1, 2, 3, 8])):
            damaged[chooser.randrange(len(damaged))] ^= 1 << chooser.randrange(8)
        path = tmp_path / f"damaged-{trial}.parquet"
        path.write_bytes(bytes(damaged))
        try:
            got = _contents(path, expected)
        except PredictionsError as error:
            assert "\n" not in str(error) and str(error).startswith(f"{path}: invalid predictions: "), (trial, str(error))
            outcomes["refused"] += 1
        else:
            assert got == reference, f"trial {trial}: a damaged file was read as other data"
            outcomes["identical"] += 1
        path.unlink()
    assert outcomes["refused"] > TRIALS // 2, outcomes  # most flips land in data pages, which the checksums catch


def _flip_inside_the_maps(source: Path, target: Path) -> None:
    """One flipped bit in the middle of the first row group's map data page (incompressible
    random maps are stored as they are, so zstd alone would not notice)."""
    column = pq.ParquetFile(source).metadata.row_group(0).column(2)
    start = column.data_page_offset
    data = bytearray(source.read_bytes())
    data[start + column.total_compressed_size // 2] ^= 0x10
    target.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_maps_is_refused_by_the_page_checksum(expected: dict, tmp_path: Path) -> None:
    original = _write(tmp_path / "good.parquet", expected, "float32")
    _flip_inside_the_maps(original, tmp_path / "flipped.parquet")
    with pytest.raises(PredictionsError) as refused:
        _contents(tmp_path / "flipped.parquet", expected)
    assert refused.value.problems.keys() == {"corrupt file"}


def test_a_changed_header_is_refused_by_its_sha256(expected: dict, tmp_path: Path) -> None:
    original = _write(tmp_path / "good.parquet", expected, "scores")
    table = pq.read_table(original)
    metadata = dict(table.schema.metadata)
    metadata[predictions.METADATA_KEY.encode()] = metadata[predictions.METADATA_KEY.encode()].replace(b'"seed": 3', b'"seed": 4')
    pq.write_table(table.replace_schema_metadata(metadata), tmp_path / "edited.parquet")
    with pytest.raises(PredictionsError, match="does not match its sha256"):
        PredictionsFile(tmp_path / "edited.parquet")


def test_files_of_other_writers_without_checksums_still_read(expected: dict, tmp_path: Path) -> None:
    ids = list(expected)
    table = pa.table({"sample_id": pa.array(ids), "score": pa.array(np.linspace(0, 1, len(ids))),
                      "map": pa.nulls(len(ids), pa.binary()), "map_height": pa.nulls(len(ids), pa.int32()),
                      "map_width": pa.nulls(len(ids), pa.int32())})
    table = table.replace_schema_metadata({predictions.METADATA_KEY: json.dumps({"format_version": 1, "map_dtype": "float16"})})
    pq.write_table(table, tmp_path / "plain.parquet")
    assert predictions.validate(tmp_path / "plain.parquet", expected).num_rows == len(ids)


def test_a_damaged_file_is_one_line_in_evaluate_and_submit(shards: Path, expected: dict, tmp_path: Path) -> None:
    original = _write(tmp_path / "good.parquet", expected, "float16")
    _flip_inside_the_maps(original, tmp_path / "flipped.parquet")
    runner = CliRunner()
    for arguments in (["evaluate", str(tmp_path / "flipped.parquet"), "--protocol", "invariant", "--data", str(shards)],
                      ["submit", str(tmp_path / "flipped.parquet"), "--protocol", "invariant", "--data", str(shards), "--method", "m",
                       "--store", str(tmp_path / "board")]):
        result = runner.invoke(app, arguments, env={"COLUMNS": "400"})
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.strip().count("\n") == 0 and "corrupt file" in result.output, result.output
