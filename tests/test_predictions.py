"""The predictions file: round trips, atomic streaming writes, and every validation case.

Bad files are written with plain pyarrow (the m2ad writer refuses to produce them), exactly as a
researcher's own code base might.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m2ad import predictions as P

H, W = 6, 5


def raw_file(path: Path, ids: list, scores: list, maps: list | None = None, *, meta: dict | str | None = None,
             types: dict | None = None, heights: list | None = None, widths: list | None = None,
             map_dtype: str = "<f2") -> Path:
    """A predictions file written with pyarrow only, with every field under the test's control."""
    types = {"sample_id": pa.string(), "score": pa.float64(), "map": pa.binary(), "map_height": pa.int32(),
             "map_width": pa.int32(), **(types or {})}
    if maps is None:
        encoded = [None] * len(ids)
        heights = heights or [None] * len(ids)
        widths = widths or [None] * len(ids)
    else:
        encoded = [None if m is None else np.asarray(m, map_dtype).tobytes() for m in maps]
        heights = heights or [None if m is None else np.shape(m)[0] for m in maps]
        widths = widths or [None if m is None else np.shape(m)[1] for m in maps]
    columns = {"sample_id": ids, "score": scores, "map": encoded, "map_height": heights, "map_width": widths}
    table = pa.table({name: pa.array(values, types[name]) for name, values in columns.items() if types[name] is not None})
    if meta is None:
        meta = {"format_version": 1, "map_dtype": "float16"}
    if meta != "absent":
        table = table.replace_schema_metadata({"m2ad.predictions": meta if isinstance(meta, str) else json.dumps(meta)})
    pq.write_table(table, path)
    return path


def maps_for(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, H, W)).astype(np.float32)


def expected_for(ids: list[str]) -> dict[str, tuple[int, int]]:
    return {sample_id: (H, W) for sample_id in ids}


def problems(path: Path, expected: dict, **kwargs) -> dict[str, list[str]]:
    with pytest.raises(P.PredictionsError) as caught:
        P.validate(path, expected, **kwargs)
    return caught.value.problems


IDS = [f"d/img{index:02d}.png" for index in range(12)]


@pytest.mark.parametrize("map_dtype", ["float16", "float32"])
def test_round_trip(tmp_path: Path, map_dtype: str) -> None:
    maps = maps_for(len(IDS)) * 100
    scores = np.random.default_rng(1).normal(size=len(IDS))
    path = P.write(tmp_path / "p.parquet", IDS, scores, maps, map_dtype=map_dtype, metadata={"method": "m", "format_version": 9})
    info = P.validate(path, expected_for(IDS))
    assert (info.format_version, info.map_dtype, info.num_rows, info.has_maps, info.map_kind) == (2, map_dtype, len(IDS), True, "pixel")
    assert info.metadata == {"method": "m"}  # provenance kept, reserved keys not overridable
    handle = P.read(path)
    batches = list(handle.iter_batches(batch_size=5))
    assert [len(batch) for batch in batches] == [5, 5, 2]
    assert sum((batch.sample_ids for batch in batches), []) == IDS
    assert np.array_equal(np.concatenate([batch.scores for batch in batches]), scores)
    stored = np.stack(sum((batch.maps for batch in batches), []))
    assert stored.dtype == np.float32
    assert np.array_equal(stored, maps.astype(map_dtype).astype(np.float32))
    looked_up = handle.lookup([IDS[7], IDS[2]])
    assert looked_up.sample_ids == [IDS[7], IDS[2]] and list(looked_up.scores) == [scores[7], scores[2]]
    assert np.array_equal(looked_up.maps[0], stored[7])
    with pytest.raises(KeyError, match="no predictions for nope"):
        handle.lookup(["nope"])


def test_scores_only(tmp_path: Path) -> None:
    path = P.write(tmp_path / "p.parquet", IDS, np.arange(len(IDS)))
    info = P.validate(path, dict.fromkeys(IDS))
    assert not info.has_maps
    batch = next(P.read(path).iter_batches(batch_size=100))
    assert batch.maps is None and list(batch.scores) == list(range(len(IDS)))
    assert "missing maps" in problems(path, dict.fromkeys(IDS), require_maps=True)


def test_streaming_writer_bounds_row_groups_and_reads_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    maps = maps_for(len(IDS))
    with P.PredictionsWriter(path, map_dtype="float32", row_group_bytes=3 * H * W * 4) as writer:
        for start in range(0, len(IDS), 2):
            writer.write_batch(IDS[start:start + 2], np.arange(start, start + 2), maps[start:start + 2])
        assert not path.exists()  # nothing visible before close
    handle = P.read(path)
    assert handle.num_row_groups > 1 and sum(handle.row_group_row_counts()) == len(IDS)
    assert handle.ids_and_scores()[0] == IDS
    assert np.array_equal(handle.lookup([IDS[-1]]).maps[0], maps[-1])
    assert [path.name] == [item.name for item in tmp_path.iterdir()]  # no temporary left behind


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_writer_keeps_no_reference_to_the_callers_maps(tmp_path: Path, dtype: str) -> None:
    """A method may reuse its output array for the next batch: small batches (held until the row
    group fills) and large ones (written at once) both store the values given at write time."""
    path = tmp_path / "p.parquet"
    buffer = np.zeros((2, H, W), dtype=dtype)
    with P.PredictionsWriter(path, map_dtype=dtype, row_group_bytes=3 * H * W * np.dtype(dtype).itemsize) as writer:
        for start in range(0, 6, 2):  # held, then a row group, then held until close
            buffer[...] = start
            writer.write_batch(IDS[start:start + 2], [start, start + 1], buffer)
        big = np.full((4, H, W), 7.0, dtype=dtype)  # one batch over the row-group size: written at once
        writer.write_batch(IDS[6:10], [7.0] * 4, big)
        buffer[...] = -1.0
        big[...] = -1.0
    stored = P.read(path).lookup(IDS[:10]).maps
    assert [float(m.mean()) for m in stored] == [0.0, 0.0, 2.0, 2.0, 4.0, 4.0, 7.0, 7.0, 7.0, 7.0]


def test_writer_publishes_nothing_on_error_or_kill(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    with pytest.raises(RuntimeError):
        with P.PredictionsWriter(path) as writer:
            writer.write_batch(IDS[:2], [0.1, 0.2], maps_for(2))
            raise RuntimeError("method crashed")
    assert list(tmp_path.iterdir()) == []
    P.write(path, IDS[:1], [1.0])
    script = (
        "import os, signal, numpy as np\n"
        "from m2ad.predictions import PredictionsWriter\n"
        f"writer = PredictionsWriter({str(path)!r}, row_group_bytes=1)\n"
        "writer.write_batch(['a', 'b'], [0.1, 0.2], np.zeros((2, 4, 4)))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], check=False)
    assert P.read(path).ids_and_scores()[0] == IDS[:1]  # the earlier complete file is untouched


def test_writer_refuses_bad_batches(tmp_path: Path) -> None:
    maps = maps_for(3)
    cases = [
        ((["a", "a", "b"], [1, 2, 3], maps), "duplicate ids"),
        ((["a", "b", "c"], [1, float("nan"), 3], maps), "NaN or inf scores"),
        ((["a", "b", "c"], [1, 2, 3], np.where(np.arange(H * W).reshape(H, W) == 3, np.inf, maps)), "NaN or inf in maps"),
        ((["a", "b", "c"], [1, 2, 3], maps * 1e6), "map values overflow float16"),
        ((["a", "b", "c"], [1, 2, 3], maps[:, :, :, None]), "wrong map shapes"),
        ((["a", "b", "c"], [1, 2], maps), "length mismatch"),
        ((["a", "b", "c"], [1, 2, 3], maps[:2]), "length mismatch"),
    ]
    for arguments, kind in cases:
        with P.PredictionsWriter(tmp_path / "p.parquet") as writer:
            with pytest.raises(P.PredictionsError) as caught:
                writer.write_batch(*arguments)
            assert kind in caught.value.problems, kind
    with P.PredictionsWriter(tmp_path / "q.parquet") as writer:
        writer.write_batch(["a"], [1.0], maps[:1])
        with pytest.raises(P.PredictionsError, match="duplicate ids"):
            writer.write_batch(["a"], [1.0], maps[:1])
        with pytest.raises(P.PredictionsError, match="some rows only"):
            writer.write_batch(["b"], [1.0])
    P.write(tmp_path / "r.parquet", ["a"], [1.0], maps[:1] * 1e6, map_dtype="float32")  # float32 holds it
    with pytest.raises(ValueError, match="map_dtype"):
        P.PredictionsWriter(tmp_path / "s.parquet", map_dtype="uint8")
    with pytest.raises(ValueError, match="plain JSON"):
        P.PredictionsWriter(tmp_path / "s.parquet", metadata={"bad": object()})


def test_validate_ids(tmp_path: Path) -> None:
    ids = [f"x/{index}" for index in range(9)]
    path = raw_file(tmp_path / "p.parquet", ids + ["x/0", "train/1", None], list(range(12)))
    expected = dict.fromkeys(ids[:-1] + ["x/missing"] + [f"y/{index}" for index in range(7)])
    found = problems(path, expected, optional=["x/8"])
    assert found["duplicate ids"] == ["x/0"]
    assert found["unknown ids"] == ["train/1"]
    assert found["null ids"]
    assert found["missing ids"] == ["x/missing", "y/0", "y/1", "y/2", "y/3"]  # the first five
    with pytest.raises(P.PredictionsError) as caught:
        P.validate(path, expected, optional=["x/8"])
    message = str(caught.value)
    assert "missing ids [8]: x/missing, y/0, y/1, y/2, y/3 (and 3 more)" in message
    assert "unknown ids [1]: train/1" in message


def test_validate_maps(tmp_path: Path) -> None:
    ids = ["a", "b", "c", "d", "e"]
    maps: list = list(maps_for(5))
    maps[1] = np.zeros((H + 1, W))  # right bytes for its declared shape, wrong shape for the image
    maps[2] = maps[2].copy()
    maps[2][0, 0] = np.nan
    path = raw_file(tmp_path / "p.parquet", ids, [0.0, 1.0, 2.0, float("inf"), 4.0], maps)
    found = problems(path, expected_for(ids))
    assert found["wrong map shapes"] == [f"b: {H + 1} x {W}, expected {H} x {W}"]
    assert found["NaN or inf in maps"] == ["c"]
    assert found["NaN or inf scores"] == ["d (inf)"]
    # bytes that do not match the declared height x width (float32 bytes under a float16 header)
    path = raw_file(tmp_path / "q.parquet", ids, [0.0] * 5, list(maps_for(5)), map_dtype="<f4")
    assert len(problems(path, expected_for(ids))["wrong map shapes"]) == 5
    # float32 maps: non-finite values found there too
    float32_maps = list(maps_for(5))
    float32_maps[4][H - 1, W - 1] = -np.inf
    path = raw_file(tmp_path / "f.parquet", ids, [0.0] * 5, float32_maps, map_dtype="<f4",
                    meta={"format_version": 1, "map_dtype": "float32"})
    assert problems(path, expected_for(ids)) == {"NaN or inf in maps": ["e"]}
    # maps for some rows only
    path = raw_file(tmp_path / "r.parquet", ids, [0.0] * 5, [*maps_for(3), None, None])
    assert problems(path, expected_for(ids))["maps present for some rows only"] == ["3 rows with a map, 2 without"]


def test_validate_header_and_columns(tmp_path: Path) -> None:
    ids = ["a", "b"]
    expected = expected_for(ids)
    maps = list(maps_for(2))
    for meta, kind in [
        ({"format_version": 3, "map_dtype": "float16"}, "unsupported format_version"),
        ({"format_version": True, "map_dtype": "float16"}, "unsupported format_version"),
        ({"format_version": 1, "map_dtype": "float16", "map_kind": "point"}, "bad metadata"),
        ({"format_version": 2, "map_dtype": "float16", "map_kind": "voxel"}, "bad metadata"),
        ({"map_dtype": "float16"}, "unsupported format_version"),
        ({"format_version": 1, "map_dtype": "float64"}, "wrong dtypes"),
        ("{not json", "bad metadata"),
        ("[1, 2]", "bad metadata"),
        ("absent", "missing metadata"),
    ]:
        path = raw_file(tmp_path / "p.parquet", ids, [0.0, 1.0], maps, meta=meta)
        assert kind in problems(path, expected), kind
    for types, wrong in [({"score": pa.float32()}, "column 'score' is float"),
                         ({"map_height": pa.int64()}, "column 'map_height' is int64, expected int32"),
                         ({"map_width": None}, "column 'map_width' is missing"),
                         ({"sample_id": pa.int64()}, "column 'sample_id' is int64")]:
        path = raw_file(tmp_path / "p.parquet", [1, 2] if types.get("sample_id") else ids, [0.0, 1.0], maps, types=types)
        assert problems(path, expected)["wrong column types"][0].startswith(wrong)
    (tmp_path / "junk.parquet").write_bytes(b"this is not parquet at all")
    assert "not a Parquet file" in problems(tmp_path / "junk.parquet", expected)
    with pytest.raises(FileNotFoundError):
        P.validate(tmp_path / "absent.parquet", expected)
    # extra columns are ignored, large_string / large_binary accepted
    path = raw_file(tmp_path / "p.parquet", ids, [0.0, 1.0], maps, types={"sample_id": pa.large_string(), "map": pa.large_binary()})
    table = pq.read_table(path)
    pq.write_table(table.append_column("note", pa.array(["x", "y"])), path)
    assert P.validate(path, expected).has_maps


def test_validate_refuses_oversized_files(tmp_path: Path) -> None:
    ids = [f"a/{index}" for index in range(4)]
    big = np.random.default_rng(0).random((4, 600, 600)).astype(np.float32)  # incompressible, beyond the slack
    path = raw_file(tmp_path / "p.parquet", ids, [0.0] * 4, list(big), map_dtype="<f4",
                    meta={"format_version": 1, "map_dtype": "float32"})
    found = problems(path, expected_for(ids))
    assert list(found) == ["oversized file"]  # refused before reading anything else
    assert P.size_cap(expected_for(ids)) < path.stat().st_size
    # optional rows (other categories, ignored images) count towards the cap like expected ones
    assert P.size_cap({ids[0]: (600, 600)}, optional_rows=3) == P.size_cap(dict.fromkeys(ids, (600, 600)))
    assert P.validate(path, {ids[0]: (600, 600)}, optional=ids[1:]).num_rows == 4
    assert problems(P.write(tmp_path / "q.parquet", ids, [0.0] * 4, maps_for(4)), expected_for(ids), max_bytes=100) == {
        "oversized file": [f"{(tmp_path / 'q.parquet').stat().st_size:,} bytes, more than the 100 allowed for 4 expected maps"]}


def test_documented_pyarrow_example_is_a_valid_file(tmp_path: Path) -> None:
    """The 10-line pyarrow snippet of docs/predictions.md, run as documented."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "predictions.md").read_text()
    snippet = doc.split("## Writing one without m2ad (pyarrow)")[1].split("```python")[1].split("```")[0]
    maps = list(maps_for(3))
    namespace = {"my_predictions": lambda: (IDS[:3], [0.5, 1.5, 2.5], maps)}
    exec(compile(snippet.replace('"predictions.parquet"', repr(str(tmp_path / "doc.parquet"))), "doc", "exec"), namespace)
    info = P.validate(tmp_path / "doc.parquet", expected_for(IDS[:3]))
    assert info.metadata == {"method": "mine"} and info.map_dtype == "float16"
    assert np.array_equal(P.read(tmp_path / "doc.parquet").lookup([IDS[1]]).maps[0], maps[1].astype(np.float16).astype(np.float32))
