"""MAE decoder: visible latent tokens -> per-modality reconstructions at native resolution.

``decoder_embed``, mask tokens, un-shuffle, the decoder's own 2-D position code, ViT blocks and
``norm``; then per modality: for time series, each token is repeated over its dates with a
day-of-year code and a ``temporal_block`` attends over time; finally the scale-gated experts and
the decoder projector map Dd-wide tokens to the modality's C channels.

The original resizes Dd-wide features to every native pixel and only then projects to C channels.
Experts and projection are pointwise affine and the resize is linear with unit row sums, so we
project on the token grid first and resize only C channels: the same function at a
fraction of the cost (``docs/performance.md``). ``reference.py`` keeps the original order.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from ramen_jax import sensors
from ramen_jax.model import tokens as tok
from ramen_jax.model.config import ModelConfig
from ramen_jax.model.encodings import day_of_year_code, grid_position_code
from ramen_jax.model.layers import Block, Dense, LayerNorm, run_blocks, run_per_token_in_chunks
from ramen_jax.model.projectors import build_projectors, projection_matrix
from ramen_jax.model.resampler import ScaleResampler

# Under ``remat`` the attention over dates runs this many tokens at a time: its activations
# are B x N x T x Dd and its scores B x N x heads x T x T, FLAIR-HUB's largest per-chip buffers
# (docs/scaling.md).
TEMPORAL_CHUNK_TOKENS = 256


class Decoder(nnx.Module):
    """The decoder of ``config`` (``decoder_dim``, ``decoder_depth``, ``decoder_heads``, the
    encoder's ``embed_dim`` as input width, ``mlp_ratio``, ``block_norm_eps``,
    ``attention_impl``, ``remat``, ``scan_layers``; projectors for ``kinds``)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        decoder_dim = config.decoder_dim
        self.decoder_dim = decoder_dim
        self.dtype = dtype
        self.remat = config.remat
        self.scan_layers = config.scan_layers
        self.decoder_embed = Dense(
            config.embed_dim,
            decoder_dim,
            rngs=rngs,
            axes=("embed", "dec_embed"),
            param_dtype=param_dtype,
            dtype=dtype,
        )
        self.mask_token = nnx.Param(
            jnp.zeros((1, 1, decoder_dim), param_dtype), out_sharding=(None, None, "dec_embed")
        )
        build_projectors(self, config.kinds, decoder_dim, rngs, param_dtype)
        self.resampler = ScaleResampler(
            decoder_dim, rngs=rngs, param_dtype=param_dtype, dtype=dtype
        )

        def block():
            return Block.of(
                config,
                decoder_dim,
                config.decoder_heads,
                rngs=rngs,
                dtype=dtype,
                param_dtype=param_dtype,
            )

        self.temporal_block = block()
        self.temporal_norm = LayerNorm(
            decoder_dim, epsilon=1e-6, param_dtype=param_dtype, dtype=dtype
        )
        self.blocks = nnx.List([block() for _ in range(config.decoder_depth)])
        self.norm = LayerNorm(decoder_dim, epsilon=1e-6, param_dtype=param_dtype, dtype=dtype)

    def _dtype(self):
        return self.dtype or self.mask_token[...].dtype

    def unshuffle(self, latent, ids_restore, num_keep):
        """``[B, 1 + K, D]`` latent (kept tokens in shuffle order) -> ``[B, 1 + L, Dd]``."""
        x = self.decoder_embed(latent)
        batch, length = ids_restore.shape
        kept = x[:, 1:]
        fill = length - kept.shape[1]
        shuffled = jnp.concatenate([kept, jnp.zeros((batch, fill, x.shape[-1]), x.dtype)], 1)
        is_kept = (jnp.arange(length) < num_keep)[None, :, None]
        shuffled = jnp.where(is_kept, shuffled, self.mask_token[...].astype(x.dtype))
        restored = jnp.take_along_axis(shuffled, ids_restore[..., None], axis=1)
        return jnp.concatenate([x[:, :1], restored], axis=1)

    def transform(self, latent, ids_restore, layout, overrides=None):
        """Returns the decoder tokens after ``norm``, class token included: ``[B, 1 + L, Dd]``."""
        x = self.unshuffle(latent, ids_restore, layout.num_keep)
        if overrides and "dec_pos_code" in overrides:
            pos = overrides["dec_pos_code"]
        else:
            pos = grid_position_code(
                layout.token_row, layout.token_col, layout.effective_gsd, self.decoder_dim
            )
        pos = jnp.concatenate([jnp.zeros((1, self.decoder_dim), pos.dtype), pos], axis=0)
        x = x + pos.astype(x.dtype)[None]
        batch = x.shape[0]
        mask = jnp.concatenate([jnp.ones((1,), bool), layout.token_valid])
        mask = jnp.broadcast_to(mask, (batch, mask.shape[0]))
        x = run_blocks(self.blocks, x, mask, self.remat, self.scan_layers)
        return self.norm(x)

    def temporal(self, tokens, batch, specs, layout, overrides=None):
        """Time-series tokens ``[B, N, T, Dd]``: repeat over dates, add the date code, attend."""
        series = jnp.take(tokens, layout.ts_token, axis=1, mode="clip")
        dates, time_valid = tok.series_dates(batch, specs, layout)
        if overrides and "dec_date_code" in overrides:
            code = overrides["dec_date_code"]
        else:
            code = day_of_year_code(dates, self.decoder_dim)
        x = series[:, :, None, :] + code.astype(series.dtype)
        steps = x.shape[2]
        attend = time_valid | ((jnp.arange(steps) == 0) & ~jnp.any(time_valid, -1, keepdims=True))
        if self.remat:  # recomputed in the backward pass, one chunk of tokens at a time
            x = run_per_token_in_chunks(self.temporal_block, x, attend, TEMPORAL_CHUNK_TOKENS)
        else:
            x = self.temporal_block(x, attend)
        return self.temporal_norm(x)

    def channel_maps(self, specs: Sequence[sensors.ModalitySpec], scales):
        """Per modality, experts folded with the decoder projector: ``[Dd, C]`` and ``[C]``."""
        dtype = self._dtype()
        kernel, bias = self.resampler.folded_affine(
            self.resampler.gate(scales.astype(dtype)), dtype
        )
        maps = []
        for m, spec in enumerate(specs):
            projection = projection_matrix(self, spec, dtype)  # [C, Dd]
            maps.append((kernel[m] @ projection.T, bias[m] @ projection.T))
        return maps

    def __call__(self, latent, ids_restore, batch, specs, *, overrides=None):
        """Returns (decoder tokens ``[B, 1 + L, Dd]``, {modality: recon ``[B, T, H, W, C]``})."""
        layout = batch.layout
        dec_tokens = self.transform(latent, ids_restore, layout, overrides)
        tokens = dec_tokens[:, 1:]
        series = None
        if any(spec.time_series for spec in specs):
            series = self.temporal(tokens, batch, specs, layout, overrides)
        side = layout.grid_pad
        recon = {}
        for spec, (weight, bias) in zip(
            specs, self.channel_maps(specs, layout.dec_scale), strict=True
        ):
            if spec.time_series:
                values = jnp.dot(series, weight) + bias  # [B, N, T, C]
                grid = tok.tokens_to_grid(values, layout.grid_series[spec.name], side)
                grid = grid.transpose(0, 3, 1, 2, 4)[:, : batch.pixels[spec.name].shape[1]]
            else:
                values = jnp.dot(tokens, weight) + bias  # [B, L, C]
                grid = tok.tokens_to_grid(values, layout.grid_token[spec.name], side)[:, None]
            grid = grid.astype(jnp.promote_types(grid.dtype, jnp.float32))
            recon[spec.name] = tok.grid_to_native(grid, layout.dec_resize[spec.name])
        return dec_tokens, recon
