"""The decoder's reconstruction head in the original's order, for tests and benchmarks.

The product computes reconstructions on the token grid and resizes only the C output channels
(``Decoder.__call__``). The original resizes the Dd-wide decoder features to every
native pixel (bilinear by ``g / gsd``, then a size-based resize to the native side when needed),
applies the expert mixture there, and projects to C channels last. ``original_order_recon``
does exactly that, so tests can show both orders compute the same function and
``python -m ramen_jax.perf.step_bench`` can measure what the refactor saves.
"""

from __future__ import annotations

import jax.numpy as jnp

from ramen_jax import geometry
from ramen_jax.model import tokens as tok
from ramen_jax.model.projectors import projection_matrix


def resize_stages(side: int, native_gsd: float, effective_gsd: float, native_side: int):
    """The original's one or two bilinear matrices from the token grid to native pixels."""
    scale = effective_gsd / native_gsd
    middle = geometry.scaled_side(side, scale)
    stages = [geometry.bilinear_matrix(side, middle, scale)]
    if middle != native_side:
        stages.append(geometry.bilinear_matrix(middle, native_side))
    return scale, stages


def original_order_recon(
    decoder, dec_tokens, series, batch, specs, effective_gsd: float, side: int
) -> dict:
    """Reconstructions ``{m: [B, T, H, H, C]}`` from decoder tokens ``[B, 1 + L, Dd]`` (and the
    temporal block's output ``[B, N, T, Dd]`` for time series), in the original's order."""
    layout = batch.layout
    tokens = dec_tokens[:, 1:]
    pad = layout.grid_pad
    dtype = tokens.dtype
    out = {}
    for spec in specs:
        if spec.time_series:
            grid = tok.tokens_to_grid(series, layout.grid_series[spec.name], pad)
            grid = grid.transpose(0, 3, 1, 2, 4)[:, : batch.pixels[spec.name].shape[1]]
        else:
            grid = tok.tokens_to_grid(tokens, layout.grid_token[spec.name], pad)[:, None]
        b, t = grid.shape[:2]
        features = grid[:, :, :side, :side].reshape(b * t, side, side, grid.shape[-1])
        scale, stages = resize_stages(side, spec.gsd, effective_gsd, spec.side)
        first = jnp.asarray(stages[0], dtype)
        features = decoder.resampler.resample_features(features, first, first, scale)
        if len(stages) > 1:
            second = jnp.asarray(stages[1], dtype)
            features = tok.resize_square(features, second)
        projection = projection_matrix(decoder, spec, dtype)
        recon = features @ projection.T
        out[spec.name] = recon.reshape(b, t, *recon.shape[1:])
    return out
