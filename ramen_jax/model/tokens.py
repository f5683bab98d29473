"""Moving values between per-modality grids and the flat token sequence, on device.

A batch's ``Layout`` (built on the host by ``ramen_jax.batch.build_layout``) says, for every slot of
the flat sequence, which modality and which cell of that modality's (padded) ``s x s`` grid it
holds, and which slots are time series. Time-series tokens also live in a second, shorter
sequence ``[B, N, T, ...]`` (``ts_*`` arrays) so the L-TAE and the decoder's temporal block only
run on them. Sentinel indices (``L`` resp. ``N``) mark padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from ramen_jax import sensors


def nan_to_zero(x, xp=jnp):
    """The original sets NaN/inf inputs to 0 before the model; so do we (``xp=np`` on host)."""
    return xp.where(xp.isfinite(x), x, xp.zeros((), x.dtype))


def resize_2d(x, resize_rows, resize_cols):
    """Applies ``resize_rows`` ``[out_h, h]`` and ``resize_cols`` ``[out_w, w]`` to the spatial
    axes of ``x`` ``[..., h, w, C]``.

    Two explicit contractions (rows, then columns): an einsum with both matrices at once may
    materialise their ``[out, in, out, in]`` outer product, 1 GB for a 512-px image.
    """
    rows = jnp.einsum("ih,...hwc->...iwc", resize_rows, x)
    return jnp.einsum("jw,...iwc->...ijc", resize_cols, rows)


def resize_square(x, resize):
    """``resize_2d`` with the same ``[out, in]`` matrix on both axes."""
    return resize_2d(x, resize, resize)


def resize_to_grid(pixels, resize):
    """``[B, T, H, H, C]`` native pixels -> ``[B, T, S, S, C]`` with the ``[S, H]`` matrix
    (rows and columns). Computed in at least float32 (it is cheap: C channels only)."""
    dtype = jnp.promote_types(pixels.dtype, jnp.float32)
    x = nan_to_zero(pixels.astype(dtype))
    return resize_square(x, resize.astype(dtype))


def grid_to_native(grid, resize):
    """``[B, T, S, S, C]`` -> ``[B, T, H, H, C]`` with the ``[H, S]`` matrix."""
    return resize_square(grid, resize.astype(grid.dtype))


def _flatten_grid(grid):
    b, t, s1, s2, c = grid.shape
    return grid.reshape(b, t, s1 * s2, c)


def gather_flat_tokens(grids, projections, layout, dtype):
    """Single-date features of every flat token: ``[B, L, D]``.

    ``grids[m]`` ``[B, T, S, S, C_m]`` raw channels on the grid; ``projections[m]`` ``[C_m, D]``.
    Time-series tokens get their first time step here; the L-TAE output replaces it later.
    """
    out = None
    for m, (grid, projection) in enumerate(zip(grids, projections, strict=True)):
        raw = jnp.take(_flatten_grid(grid)[:, 0], layout.token_cell, axis=1)
        features = jnp.dot(raw.astype(dtype), projection.astype(dtype))
        here = (layout.token_modality == m)[None, :, None]
        out = jnp.where(here, features, 0 if out is None else out)
    return out


def series_steps(specs: Sequence[sensors.ModalitySpec], pixels) -> int:
    return max(pixels[s.name].shape[1] for s in specs if s.time_series)


def _pad_time(x, steps, axis, value=0):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, steps - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def gather_series_tokens(grids, projections, specs, layout, dtype):
    """Per-time-step features of the time-series tokens: ``[B, N, T, D]``."""
    steps = max(g.shape[1] for g, s in zip(grids, specs, strict=True) if s.time_series)
    out = None
    for m, (grid, projection, spec) in enumerate(zip(grids, projections, specs, strict=True)):
        if not spec.time_series:
            continue
        raw = jnp.take(_flatten_grid(grid), layout.ts_cell, axis=2)  # [B, T_m, N, C]
        raw = _pad_time(raw, steps, axis=1).transpose(0, 2, 1, 3)
        features = jnp.dot(raw.astype(dtype), projection.astype(dtype))
        here = (layout.ts_modality == m)[None, :, None, None]
        out = jnp.where(here, features, 0 if out is None else out)
    return out


def series_dates(batch, specs, layout):
    """Dates ``[B, N, T]`` and validity ``[B, N, T]`` of the time-series tokens."""
    steps = series_steps(specs, batch.pixels)
    dates = valid = None
    for m, spec in enumerate(specs):
        if not spec.time_series:
            continue
        here = (layout.ts_modality == m)[None, :, None]
        d = _pad_time(batch.dates[spec.name], steps, axis=1)[:, None, :]
        v = _pad_time(batch.time_valid[spec.name], steps, axis=1, value=False)[:, None, :]
        dates = jnp.where(here, d, 0 if dates is None else dates)
        valid = jnp.where(here, v, False if valid is None else valid)
    return dates, valid & layout.ts_valid[None, :, None]


def series_groups(specs, layout, dtype):
    """0/1 modality membership ``[N, M]`` of the time-series tokens (zeros for padding)."""
    onehot = layout.ts_modality[:, None] == jnp.arange(len(specs))[None, :]
    return (onehot & layout.ts_valid[:, None]).astype(jnp.promote_types(dtype, jnp.float32))


def tokens_to_grid(values, index, side):
    """Scatter per-token values onto a modality grid by gathering with a sentinel.

    values ``[B, L, ...]``; index ``[S*S]`` into L (``L`` = empty cell) -> ``[B, S, S, ...]``.
    """
    sentinel = jnp.zeros((values.shape[0], 1, *values.shape[2:]), values.dtype)
    padded = jnp.concatenate([values, sentinel], axis=1)  # L may be 0 (no series kept)
    grid = jnp.take(padded, index, axis=1)
    return grid.reshape(values.shape[0], side, side, *values.shape[2:])
