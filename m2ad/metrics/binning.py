"""Order-preserving bin codes: the shared primitive of the exact and streaming modes."""

from __future__ import annotations

import numpy as np


def bin_scale(low: float, high: float, bins: int, dtype: np.dtype) -> np.floating:
    """The factor that maps ``[low, high]`` onto ``[0, bins]`` in ``dtype``, finite and >= 0."""
    span = float(high) - float(low)
    if not span > 0:
        return dtype.type(0)
    return dtype.type(min(bins / span, float(np.finfo(dtype).max)))


def bin_codes(
    values: np.ndarray, low: np.floating, scale: np.floating, bins: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Bin index in ``[0, bins)`` of every value: ``floor((v - low) * scale)``, clipped.

    The result is a non-decreasing function of the value: each step (subtraction, scaling by a
    non-negative factor, clipping, truncation) is monotone under IEEE rounding, so equal values
    get equal codes and a larger code always means a larger value.  Both modes rely on this,
    not on where exactly the bin edges fall.  ``low`` and ``scale`` must have ``values``' dtype.
    ``out``: an ``intp`` array of ``values``' size to write the codes into (reused buffers
    avoid fresh page faults on large inputs).
    """
    with np.errstate(over="ignore"):  # an overflow to +-inf is clipped like any far-out value
        work = np.subtract(values, low)
        np.multiply(work, scale, out=work)
    np.clip(work, 0, bins - 1, out=work)
    if out is None:
        return work.astype(np.intp)
    np.copyto(out, work, casting="unsafe")
    return out
