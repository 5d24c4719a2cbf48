"""Point-cloud files: a small PCD reader (ASCII and binary, fields ``x y z``) and the
``x y z label`` text files of Real3D-AD's ground truth, plus a PCD writer for fixtures.

PCD (the Point Cloud Library's format, version 0.7) is a text header followed by the points::

    VERSION 0.7
    FIELDS x y z
    SIZE 4 4 4
    TYPE F F F
    COUNT 1 1 1
    WIDTH 1000
    HEIGHT 1
    VIEWPOINT 0 0 0 1 0 0 0
    POINTS 1000
    DATA ascii | binary

This reader takes exactly the fields ``x y z``, each one float (``TYPE F``, ``SIZE`` 4 or 8,
``COUNT`` 1), as Open3D writes a cloud without colours or normals (what Real3D-AD's
``real3d-ad-pcd.zip`` holds); anything else is refused with a :class:`PointCloudError` whose
``kind`` names the problem: ``pcd-fields`` (other fields), ``pcd-format`` (``DATA
binary_compressed``, a malformed header, a body of the wrong size), ``gt-format`` (a ground-truth
text file that is not four numbers per line with labels 0 or 1).  Points come back as float32
(N, 3); NaN points (PCL's marker of "no return" in organised clouds) are refused too
(``pcd-format``), because every consumer would have to agree on dropping them.

We wrote our own rather than depend on Open3D (hundreds of MB, no wheels for every Python) or
``pypcd`` (unmaintained, Python 2 era); the format is small and the tests cover both encodings.
"""

from __future__ import annotations

import numpy as np

PCD_KINDS = ("pcd-fields", "pcd-format", "gt-format")
HEADER_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
MAX_HEADER_BYTES = 64 * 1024


class PointCloudError(ValueError):
    """A point-cloud file this reader refuses; ``kind`` is one of :data:`PCD_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _header(data: bytes) -> tuple[dict[str, list[str]], int]:
    """The header fields of a PCD file and the offset of its body."""
    fields: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0 or end > MAX_HEADER_BYTES:
            raise PointCloudError("pcd-format", "no complete PCD header (it must end with a DATA line)")
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        if key.upper() not in HEADER_KEYS:
            raise PointCloudError("pcd-format", f"unknown PCD header line {line[:60]!r}")
        fields[key.upper()] = values
        if key.upper() == "DATA":
            return fields, offset


def read_pcd(data: bytes) -> np.ndarray:
    """The points of a PCD file (bytes) as float32 (N, 3); :class:`PointCloudError` otherwise."""
    header, body = _header(data)
    names = header.get("FIELDS", [])
    if [name.lower() for name in names] != ["x", "y", "z"]:
        raise PointCloudError("pcd-fields", f"PCD fields {' '.join(names) or '(none)'}; this reader takes exactly 'x y z' "
                                            "(save the cloud without colours or normals)")
    types, sizes = header.get("TYPE", ["F"] * 3), header.get("SIZE", ["4"] * 3)
    counts = header.get("COUNT", ["1"] * 3)
    if types != ["F"] * 3 or counts != ["1"] * 3 or len(set(sizes)) != 1 or sizes[0] not in ("4", "8"):
        raise PointCloudError("pcd-fields", f"PCD fields x y z of TYPE {' '.join(types)}, SIZE {' '.join(sizes)}, COUNT "
                                            f"{' '.join(counts)}; this reader takes floats of 4 or 8 bytes, one value each")
    try:
        count = int(header.get("POINTS", [""])[0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
    except (KeyError, IndexError, ValueError):
        raise PointCloudError("pcd-format", "the PCD header gives no point count (POINTS, or WIDTH and HEIGHT)") from None
    encoding = (header.get("DATA") or [""])[0].lower()
    if encoding == "ascii":
        try:
            values = np.array(data[body:].split(), dtype=np.float64)
        except ValueError:
            raise PointCloudError("pcd-format", "the ASCII PCD body holds something that is not a number") from None
        if values.size != 3 * count:
            raise PointCloudError("pcd-format", f"the ASCII PCD body holds {values.size} numbers, not 3 x {count} points")
        points = values.reshape(count, 3).astype(np.float32)
    elif encoding == "binary":
        dtype = np.dtype("<f4" if sizes[0] == "4" else "<f8")
        expected = 3 * count * dtype.itemsize
        if len(data) - body < expected:
            raise PointCloudError("pcd-format", f"the binary PCD body has {len(data) - body} bytes, fewer than the "
                                                f"{expected} of {count} points")
        points = np.frombuffer(data, dtype=dtype, count=3 * count, offset=body).reshape(count, 3).astype(np.float32)
    else:
        raise PointCloudError("pcd-format", f"PCD DATA {encoding or '(missing)'}; this reader takes ascii or binary "
                                            "(re-save binary_compressed files as binary)")
    if not np.isfinite(points).all():
        raise PointCloudError("pcd-format", "the cloud holds NaN or infinite coordinates; remove those points first")
    return points


def read_labelled_text(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Points float32 (N, 3) and labels uint8 (N,) of a text file of ``x y z label`` lines
    (Real3D-AD's ``gt/<stem>.txt``; the official loader reads it with ``np.genfromtxt(...,
    delimiter=" ")``); :class:`PointCloudError` (``gt-format``) otherwise."""
    lines = [line for line in data.decode("ascii", errors="replace").splitlines() if line.strip()]
    try:
        values = np.array(" ".join(lines).split(), dtype=np.float64)
    except ValueError:
        raise PointCloudError("gt-format", "the ground-truth file holds something that is not a number") from None
    if any(len(line.split()) != 4 for line in lines):
        raise PointCloudError("gt-format", "every ground-truth line must be 'x y z label' (four numbers)")
    if not lines:
        raise PointCloudError("gt-format", "the ground-truth file holds no points")
    table = values.reshape(-1, 4)
    labels = table[:, 3]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise PointCloudError("gt-format", "ground-truth labels must be 0 (normal) or 1 (defect)")
    points = table[:, :3].astype(np.float32)
    if not np.isfinite(points).all():
        raise PointCloudError("gt-format", "the ground truth holds NaN or infinite coordinates")
    return points, labels.astype(np.uint8)


def write_pcd(points: np.ndarray, *, binary: bool = True) -> bytes:
    """A PCD file (bytes) of float32 (N, 3) points, fields ``x y z``, as Open3D writes one."""
    points = np.ascontiguousarray(points, dtype="<f4").reshape(-1, 3)
    count = len(points)
    header = (f"# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\n"
              f"COUNT 1 1 1\nWIDTH {count}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {count}\n"
              f"DATA {'binary' if binary else 'ascii'}\n").encode()
    if binary:
        return header + points.tobytes()
    return header + "".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in points.tolist()).encode()


def write_labelled_text(points: np.ndarray, labels: np.ndarray) -> bytes:
    """A Real3D-AD ground-truth text file (bytes): one ``x y z label`` line per point."""
    return "".join(f"{x:.6f} {y:.6f} {z:.6f} {int(label)}\n"
                   for (x, y, z), label in zip(np.asarray(points, dtype=np.float32).tolist(), np.asarray(labels).tolist())).encode()
