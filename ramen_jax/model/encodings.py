"""Fixed (non-learned) sin-cos codes: channel wavelengths, scales, grid positions and dates.

Four of these tables are computed in float32 by the original whatever the model dtype
(position grids, the L-TAE day-of-year table and the decoder day-of-year table); we do the same,
so a float32 run reproduces the original's rounding and a float64 run keeps the same float32
islands. Wavelength and scale codes follow the model dtype, as in the original.
"""

from __future__ import annotations

import jax.numpy as jnp

# Period of the L-TAE day-of-year code and its heads (fixed by the original class code).
LTAE_PERIOD = 367.0
LTAE_HEADS = 16


def sincos_1d(positions: jnp.ndarray, width: int, dtype=None) -> jnp.ndarray:
    """MAE-style 1-D code: ``concat(sin(p * w), cos(p * w))``, ``w_k = 10000^(-k / (width/2))``.

    Args:
      positions: any shape ``[...]``; raw values (wavelength in nm, log-scale, metres, days).
      width: even output width.
      dtype: computation dtype (defaults to the dtype of ``positions``).
    Returns:
      ``[..., width]``.
    """
    if width % 2:
        raise ValueError(f"sin-cos width must be even, got {width}")
    dtype = dtype or positions.dtype
    half = width // 2
    omega = jnp.arange(half, dtype=dtype) / jnp.asarray(half, dtype)
    omega = 1.0 / jnp.asarray(10000.0, dtype) ** omega
    phase = positions.astype(dtype)[..., None] * omega
    return jnp.concatenate([jnp.sin(phase), jnp.cos(phase)], axis=-1)


def grid_position_code(
    rows: jnp.ndarray, cols: jnp.ndarray, effective_gsd: jnp.ndarray, width: int
) -> jnp.ndarray:
    """Resolution-scaled 2-D code of token grid positions, float32 like the original.

    The first half encodes the column (x) position ``col * gsd``, the second half the row.

    Args:
      rows, cols: integer grid indices ``[L]``.
      effective_gsd: scalar, metres per token.
      width: code width (model width).
    Returns:
      float32 ``[L, width]``.
    """
    gsd = jnp.asarray(effective_gsd, jnp.float32)
    x = cols.astype(jnp.float32) * gsd
    y = rows.astype(jnp.float32) * gsd
    return jnp.concatenate(
        [sincos_1d(x, width // 2, jnp.float32), sincos_1d(y, width // 2, jnp.float32)], axis=-1
    )


def ltae_date_code(dates: jnp.ndarray, width: int) -> jnp.ndarray:
    """L-TAE day-of-year code, float32 like the original.

    ``d = width / 16``; ``value_k = date / 367^(2 floor(k/2) / d)``; sin on even k, cos on odd k
    (interleaved), the d-vector tiled 16 times to ``width``.

    Args:
      dates: integer day-of-year ``[..., T]``.
    Returns:
      float32 ``[..., T, width]``.
    """
    d = width // LTAE_HEADS
    k = jnp.arange(d, dtype=jnp.float32)
    denom = jnp.asarray(LTAE_PERIOD, jnp.float32) ** (2.0 * jnp.floor(k / 2.0) / d)
    table = dates.astype(jnp.float32)[..., None] / denom
    table = jnp.where(jnp.arange(d) % 2 == 0, jnp.sin(table), jnp.cos(table))
    return jnp.tile(table, (1,) * (table.ndim - 1) + (LTAE_HEADS,))


def day_of_year_code(dates: jnp.ndarray, width: int) -> jnp.ndarray:
    """Decoder date code: ``sincos_1d`` of the raw day of year, float32 like the original."""
    return sincos_1d(dates.astype(jnp.float32), width, jnp.float32)
