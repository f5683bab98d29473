"""MAE reconstruction loss at native resolution, per modality.

Target: the input pixels normalised per pixel across channels, ``(x - mean) / sqrt(var + 1e-6)``
with the unbiased variance (the original's ``torch.var``). For a single-channel modality that
variance is undefined (the original's loss is NaN); we use the raw pixel as target instead
(documented in docs/model.md). Error: squared difference averaged over channels; weights: the
token mask (1 = hidden) upsampled to native pixels by PyTorch-legacy nearest neighbour, times
the time-slot validity. ``loss = sum(err * w) / sum(w)``; a modality with no weight gives 0.
"""

from __future__ import annotations

import jax.numpy as jnp

from ramen_jax.batch import Layout
from ramen_jax.model import tokens as tok

TARGET_EPS = 1e-6


def normalised_target(pixels, xp=jnp):
    """Per-pixel standardised target over channels; ``xp=np`` computes it on the host."""
    x = tok.nan_to_zero(pixels, xp)
    channels = x.shape[-1]
    if channels == 1:
        return x
    mean = xp.mean(x, axis=-1, keepdims=True)
    var = xp.sum(xp.square(x - mean), axis=-1, keepdims=True) / (channels - 1)
    return (x - mean) / xp.sqrt(var + TARGET_EPS)


def pixel_weights(token_mask, layout: Layout, name: str, time_valid):
    """Hidden-token mask ``[B, L]`` -> modality ``name``'s native weights ``[B, T, H, H]``
    (the layout's grid of tokens, upsampled by its nearest-neighbour index), times
    ``time_valid`` ``[B, T]``. The loss and the training previews both use it."""
    grid = tok.tokens_to_grid(token_mask, layout.grid_token[name], layout.grid_pad)  # [B, S, S]
    nearest = layout.mask_index[name]
    native = jnp.take(jnp.take(grid, nearest, axis=1), nearest, axis=2)
    return native[:, None] * time_valid[:, :, None, None].astype(native.dtype)


def modality_loss(recon, pixels, weights):
    dtype = jnp.promote_types(recon.dtype, jnp.float32)
    target = normalised_target(pixels.astype(dtype))
    err = jnp.mean(jnp.square(recon.astype(dtype) - target), axis=-1)
    weights = weights.astype(dtype)
    total = jnp.sum(weights)
    return jnp.where(total > 0, jnp.sum(err * weights) / jnp.maximum(total, 1e-12), 0.0)
