"""The ``points`` modality: a sample's point cloud, N x 3 float32 coordinates with one uint8
label per point (1 = defect), N varying from sample to sample (ragged).

Arrow columns (one row per sample; ``datasets`` features ``Value("large_binary")``):

- ``points``: the raw little-endian bytes of the float32 (N, 3) array, row-major (x0 y0 z0 x1
  ...), so ``len(points) == 12 N``;
- ``point_labels``: the raw bytes of the uint8 (N,) labels, 0 or 1, so ``len(point_labels) ==
  N``; all zeros for a normal cloud.

The manifest records ``num_points`` (int64, N) per sample, which the reader uses to allocate
and the predictions validation to check per-point score arrays.  The sample's ``width`` and
``height`` are 0: a cloud has no image size.  Shards are bounded by bytes, not rows, like every
unit (``m2ad shard``'s ``max_shard_size``, 256 MB by default): ``datasets`` cuts its Arrow files
by size, whatever the clouds' lengths.

Encoding a release file (``m2ad.pointcloud``): a ``.pcd`` (ASCII or binary, fields ``x y z``)
gives the points with all-zero labels; a ``.txt`` of ``x y z label`` lines gives points and
labels (Real3D-AD's ``gt/<stem>.txt``).  Coordinates are stored as the release has them (float32,
not centred or rescaled, whatever the shard resolution: a resolution resizes images only);
what a method does to them (Real3D-AD's loader subtracts the mean) is the method's business.

Reading: :meth:`PointsModality.decode` turns the two columns back into arrays; the reader
(``m2ad.data``) hands them to methods as a list of (N_i, 3) arrays per batch.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import BinaryIO, ClassVar

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from m2ad.modalities.base import Encoded, Modality, Refused, ResizeLimits
from m2ad.pointcloud import PointCloudError, read_labelled_text, read_pcd

POINT_DTYPE = np.dtype("<f4")
LABEL_DTYPE = np.dtype("u1")
PROBLEM_KINDS = ("pcd-fields", "pcd-format", "gt-format", "points-format")
"""Problem kinds the sharder reports for a point-cloud file (besides ``unreadable-points``)."""


def encode_cloud(points: np.ndarray, labels: np.ndarray | None = None) -> dict[str, bytes]:
    """The stored columns of a cloud: float32 (N, 3) points and uint8 (N,) labels (zeros if None)."""
    points = np.ascontiguousarray(points, dtype=POINT_DTYPE).reshape(-1, 3)
    labels = np.zeros(len(points), LABEL_DTYPE) if labels is None else np.ascontiguousarray(labels, dtype=LABEL_DTYPE).reshape(-1)
    if len(labels) != len(points):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    return {"points": points.tobytes(), "point_labels": labels.tobytes()}


class PointsModality(Modality):
    name: ClassVar[str] = "points"
    features: ClassVar[dict] = {"points": datasets.Value("large_binary"), "point_labels": datasets.Value("large_binary")}
    manifest_columns: ClassVar[dict[str, pa.DataType]] = {"num_points": pa.int64()}

    def manifest_values(self, table: pa.Table) -> dict[str, pa.Array]:
        return {"num_points": pc.cast(pc.binary_length(table.column("point_labels")), pa.int64())}

    def row_value(self, data: bytes) -> bytes:
        return data

    def encode(self, stream: BinaryIO, path: str, limits: ResizeLimits, primary: Encoded | None) -> Encoded:
        data = stream.read()
        suffix = PurePosixPath(path).suffix.lower()
        try:
            if suffix == ".pcd":
                points, labels = read_pcd(data), None
            elif suffix == ".txt":
                points, labels = read_labelled_text(data)
            else:
                raise Refused("points-format", f"a point cloud must be a .pcd file or an 'x y z label' .txt file, not {suffix or 'no extension'}")
        except PointCloudError as error:
            raise Refused(error.kind, str(error)) from None
        if len(points) == 0:
            raise Refused("pcd-format", "the cloud holds no points")
        return Encoded(encode_cloud(points, labels), (0, 0), (0, 0))

    def slot(self, height: int, width: int) -> tuple[tuple[int, ...], type]:
        """A cloud's slot is (N, 3) float32, N from the manifest's ``num_points`` (the image
        size does not apply: pass ``height=N``)."""
        return (height, 3), np.float32

    def decode_into(self, data: memoryview | bytes, out: np.ndarray) -> None:
        values = np.frombuffer(data, dtype=POINT_DTYPE)
        if values.size != out.size:
            raise ValueError(f"stored cloud has {values.size // 3} points, the manifest says {len(out)}")
        out[...] = values.reshape(out.shape)

    @staticmethod
    def decode(points: memoryview | bytes, labels: memoryview | bytes | None) -> tuple[np.ndarray, np.ndarray]:
        """Points float32 (N, 3) and labels bool (N,) from the stored columns (copies)."""
        values = np.frombuffer(points, dtype=POINT_DTYPE).reshape(-1, 3).copy()
        flags = np.zeros(len(values), bool) if labels is None else np.frombuffer(labels, dtype=LABEL_DTYPE) != 0
        if len(flags) != len(values):
            raise ValueError(f"stored cloud has {len(values)} points but {len(flags)} labels")
        return values, flags


MODALITY = PointsModality()
