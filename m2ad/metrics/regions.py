"""Defect regions for AUPRO: 8-connected components of one ground-truth mask."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def region_weights(defect: np.ndarray) -> tuple[np.ndarray, int]:
    """PRO weight ``1 / |region|`` of every defect pixel of one 2-D boolean mask, and the region count.

    Regions are 8-connected (``scipy.ndimage.label`` with a 3x3 structure), as in the MVTec AD
    evaluator.  The weights come in row-major order, matching ``values[defect]``.  Only the
    bounding box of the defect pixels is labelled, so normal images cost one ``any`` pass.
    """
    rows = np.flatnonzero(defect.any(axis=1))
    if rows.size == 0:
        return np.zeros(0, dtype=np.float64), 0
    columns = np.flatnonzero(defect[rows[0] : rows[-1] + 1].any(axis=0))
    crop = defect[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    labels, count = ndimage.label(crop, structure=EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel())
    return 1.0 / sizes[labels[crop]], int(count)
