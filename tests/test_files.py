"""The shared file helpers: atomic writes leave no temporary file, JSON conversion, sha256."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from m2ad import files


def test_atomic_writes_create_the_folder_and_leave_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    files.write_json_atomic(target, {"b": 1, "a": [1.5, float("nan")], "p": Path("x")})
    assert json.loads(target.read_text()) == {"a": [1.5, None], "b": 1, "p": "x"}
    files.write_text_atomic(target, "replaced")
    assert target.read_text() == "replaced"
    assert [path.name for path in target.parent.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        files.write_json_atomic(target, {"value": object()})
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["out.json"]


def test_jsonable_converts_numpy_values_and_non_finite_floats() -> None:
    converted = files.jsonable({1: np.float32(0.5), "n": np.int64(3), "arr": np.array([1.0, np.inf]), "t": (np.nan,)})
    assert converted == {"1": 0.5, "n": 3, "arr": [1.0, None], "t": [None]}
    assert isinstance(converted["n"], int) and not any(isinstance(v, float) and math.isnan(v) for v in converted["t"])


def test_sha256_file_matches_hashlib_across_blocks(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, files.HASH_BLOCK * 2 + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()
