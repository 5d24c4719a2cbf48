"""Small file helpers every part of m2ad shares: the cache folder, atomic writes, sha256, JSON.

- :func:`cache_dir` is the one place that resolves where m2ad keeps downloads, datasets and
  weights: ``$M2AD_CACHE``, else ``$XDG_CACHE_HOME/m2ad``, else ``~/.cache/m2ad``.
- The ``write_*_atomic`` functions write through a temporary file named after its writer
  (:func:`m2ad.ownership.temp_file_name`) and ``os.replace`` it, so a reader never sees half a
  file and a killed writer's leftover can be told from a live one's.
- :func:`jsonable` turns dataclass dicts, tuples, paths and numpy values into plain JSON types,
  NaN and inf into ``None`` (JSON has neither).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from m2ad.ownership import temp_file_name

HASH_BLOCK = 2**20


def cache_dir() -> Path:
    """The m2ad cache folder: ``$M2AD_CACHE``, else ``$XDG_CACHE_HOME/m2ad``, else ``~/.cache/m2ad``."""
    if os.environ.get("M2AD_CACHE"):
        return Path(os.environ["M2AD_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "m2ad"
    return Path.home() / ".cache" / "m2ad"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temp_file_name(path)
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented, key-sorted JSON (after :func:`jsonable`) through a temporary file."""
    write_text_atomic(path, json.dumps(jsonable(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


def jsonable(value: Any) -> Any:
    """Plain JSON types for dicts, sequences, paths and numpy values; NaN and inf become ``None``."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
