"""Host-side geometry: token grid sides and the exact resampling matrices of the original.

Everything here is NumPy on static sizes. Resampling is expressed as separable matrices
(``out = R_rows @ x @ R_cols.T``) that reproduce PyTorch's ``F.interpolate`` without
antialiasing:

- ``bilinear_matrix(n_in, n_out, scale)``: ``mode='bilinear', align_corners=False``. With a
  ``scale`` (``scale_factor=``) the source coordinate is ``(i + 0.5) / scale - 0.5`` (not
  ``n_in / n_out``), as PyTorch does when ``recompute_scale_factor`` is unset; without it,
  ``n_in / n_out``. Negative source coordinates clamp to 0, the upper neighbour clamps at the
  border. Weights are computed in the given dtype's arithmetic (float32 mimics a float32 run).
- ``nearest_index(n_in, n_out)``: legacy ``mode='nearest'``: ``min(floor(j * f32(n_in/n_out)),
  n_in - 1)``.

``encoder_resize`` / ``decoder_resize`` compose the original's one or two interpolations (the
resampler's scale-factor resize, then a size-based resize when the side differs) into one matrix
per axis, which is exact because both are linear.
"""

from __future__ import annotations

import math

import numpy as np


def grid_side(reference_side: int, reference_gsd: float, effective_gsd: float) -> int:
    """Token grid side: ``int(side0 * (gsd0 / g))`` in float64, truncating like the original."""
    return int(reference_side * (reference_gsd / effective_gsd))


def scaled_side(n_in: int, scale: float) -> int:
    """Output side of ``F.interpolate(scale_factor=scale)``: ``floor(n_in * scale)``."""
    return int(math.floor(float(n_in * scale)))


def bilinear_matrix(
    n_in: int, n_out: int, scale: float | None = None, dtype=np.float64
) -> np.ndarray:
    """``[n_out, n_in]`` matrix of ``F.interpolate(mode='bilinear', align_corners=False)``."""
    dtype = np.dtype(dtype)
    if scale is not None and scale > 0:
        step = dtype.type(1.0 / scale)
    else:
        step = dtype.type(n_in) / dtype.type(n_out)
    dst = np.arange(n_out, dtype=dtype)
    src = step * (dst + dtype.type(0.5)) - dtype.type(0.5)
    src = np.where(src < 0, dtype.type(0), src).astype(dtype)
    lower = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    frac = np.clip(src - lower.astype(dtype), 0, 1).astype(dtype)
    upper = lower + (lower < n_in - 1)
    matrix = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, lower), (dtype.type(1) - frac).astype(np.float64))
    np.add.at(matrix, (rows, upper), frac.astype(np.float64))
    return matrix


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index per output index of legacy ``F.interpolate(size=n_out, mode='nearest')``."""
    if n_out == n_in:
        return np.arange(n_out)
    if n_out == 2 * n_in:
        return np.arange(n_out) >> 1
    step = np.float32(n_in) / np.float32(n_out)
    src = np.floor(np.arange(n_out, dtype=np.float32) * step).astype(np.int64)
    return np.minimum(src, n_in - 1)


def composed_resize(n_in: int, scale: float, n_target: int, dtype=np.float64) -> np.ndarray:
    """Resize by ``scale`` then, if the result is not ``n_target`` wide, to ``n_target``.

    Returns the composed ``[n_target, n_in]`` matrix (float64).
    """
    n_mid = scaled_side(n_in, scale)
    first = bilinear_matrix(n_in, n_mid, scale, dtype)
    if n_mid == n_target:
        return first
    return bilinear_matrix(n_mid, n_target, None, dtype) @ first


def encoder_resize(
    native_side: int, native_gsd: float, effective_gsd: float, side: int, dtype=np.float64
) -> np.ndarray:
    """``[side, native_side]``: native pixels -> token grid (scale ``native_gsd / g``)."""
    return composed_resize(native_side, native_gsd / effective_gsd, side, dtype)


def decoder_resize(
    side: int, native_gsd: float, effective_gsd: float, native_side: int, dtype=np.float64
) -> np.ndarray:
    """``[native_side, side]``: token grid -> native pixels (scale ``g / native_gsd``)."""
    return composed_resize(side, effective_gsd / native_gsd, native_side, dtype)
