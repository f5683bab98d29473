"""RAMEN encoder: any set of modalities at their native GSD -> tokens on one effective-GSD grid.

Per modality: resize the raw channels to the token grid (exact composition of the original's
bilinear resizes), project channels to width D with the modality kind's projector,
apply the scale-gated expert mixture, run the L-TAE over time for time-series modalities, then
``in_norm``. Tokens of all kept modalities form one flat sequence (``ramen_jax.batch.Layout``
describes it), share the same resolution-scaled 2-D position code (no modality embedding), and
pass through a pre-norm ViT with a class token.

The flat sequence may be padded to a bucketed length; padded tokens are masked out of attention,
statistics and losses, so padding never changes the valid tokens' values.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from ramen_jax import sensors
from ramen_jax.model import tokens as tok
from ramen_jax.model.config import ModelConfig
from ramen_jax.model.encodings import grid_position_code
from ramen_jax.model.layers import Block, LayerNorm, param, run_blocks, trunc_normal_init
from ramen_jax.model.ltae import LTAE
from ramen_jax.model.projectors import build_projectors, projection_matrix
from ramen_jax.model.resampler import ScaleResampler


class Encoder(nnx.Module):
    """The encoder of ``config`` (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
    ``block_norm_eps``, ``ltae_attention_dropout``, ``attention_impl``, ``remat``,
    ``scan_layers``; projectors for ``kinds``)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        embed_dim = config.embed_dim
        self.embed_dim = embed_dim
        self.dtype = dtype
        self.remat = config.remat
        self.scan_layers = config.scan_layers
        self.cls_token = param(
            rngs, trunc_normal_init(0.02), (1, 1, embed_dim), (None, None, "embed"), param_dtype
        )
        build_projectors(self, config.kinds, embed_dim, rngs, param_dtype)
        self.resampler = ScaleResampler(embed_dim, rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.ltae = LTAE(
            embed_dim,
            rngs=rngs,
            param_dtype=param_dtype,
            dtype=dtype,
            attention_dropout=config.ltae_attention_dropout,
        )
        self.in_norm = LayerNorm(embed_dim, epsilon=1e-6, param_dtype=param_dtype, dtype=dtype)
        self.blocks = nnx.List(
            [
                Block.of(
                    config,
                    embed_dim,
                    config.num_heads,
                    rngs=rngs,
                    dtype=dtype,
                    param_dtype=param_dtype,
                )
                for _ in range(config.depth)
            ]
        )
        self.norm = LayerNorm(embed_dim, epsilon=1e-6, param_dtype=param_dtype, dtype=dtype)

    def _dtype(self):
        return self.dtype or self.cls_token[...].dtype

    def projections(self, specs: Sequence[sensors.ModalitySpec]) -> list[jnp.ndarray]:
        return [projection_matrix(self, spec, self._dtype()) for spec in specs]

    def embed(
        self,
        batch,
        specs: Sequence[sensors.ModalitySpec],
        *,
        train: bool,
        overrides=None,
        dropout_key=None,
    ):
        """Modalities -> flat per-token features after ``in_norm``, before the position code.

        Returns ``[B, L, D]``.
        """
        overrides = overrides or {}
        layout = batch.layout
        dtype = self._dtype()
        grids = [
            tok.resize_to_grid(batch.pixels[spec.name], layout.enc_resize[spec.name])
            for spec in specs
        ]
        weights = self.resampler.gate(layout.enc_scale.astype(dtype))
        projections = self.projections(specs)

        flat = tok.gather_flat_tokens(grids, projections, layout, dtype)
        flat = self.resampler.mix_experts(flat, weights[layout.token_modality])

        if any(spec.time_series for spec in specs):
            series = tok.gather_series_tokens(grids, projections, specs, layout, dtype)
            ts_modality = layout.token_modality[layout.ts_token]
            series = self.resampler.mix_experts(series, weights[ts_modality][:, None])
            dates, time_valid = tok.series_dates(batch, specs, layout)
            groups = tok.series_groups(specs, layout, dtype)
            pooled = self.ltae(
                series,
                dates,
                time_valid,
                groups,
                layout.kept_rank,
                train=train,
                date_code=overrides.get("ltae_date_code"),
                dropout_key=dropout_key,
            )
            flat = flat.at[:, layout.ts_token].set(pooled, mode="drop")
        return self.in_norm(flat)

    def position_code(self, layout, overrides=None):
        if overrides and "pos_code" in overrides:
            return overrides["pos_code"]
        return grid_position_code(
            layout.token_row, layout.token_col, layout.effective_gsd, self.embed_dim
        )

    def _with_cls(self, tokens, key_mask):
        batch = tokens.shape[0]
        cls = jnp.broadcast_to(self.cls_token[...].astype(tokens.dtype), (batch, 1, self.embed_dim))
        mask = jnp.concatenate([jnp.ones((batch, 1), bool), key_mask], axis=1)
        return jnp.concatenate([cls, tokens], axis=1), mask

    def transform(self, tokens, key_mask):
        """Class token + ViT blocks + final norm. tokens ``[B, N, D]``, key_mask ``[B, N]``."""
        x, mask = self._with_cls(tokens, key_mask)
        x = run_blocks(self.blocks, x, mask, self.remat, self.scan_layers)
        return self.norm(x)

    def block_outputs(self, batch, specs, blocks: Sequence[int]) -> list:
        """Outputs ``[B, 1 + L, D]`` after each block index in ``blocks`` (0-based), as
        PANGAEA's RAMEN encoder returns them: the final norm only follows the last block."""
        layout = batch.layout
        x = self.embed(batch, specs, train=False)
        x = x + self.position_code(layout).astype(x.dtype)
        x, mask = self._with_cls(x, jnp.broadcast_to(layout.token_valid, x.shape[:2]))
        last = len(self.blocks) - 1
        bad = [b for b in blocks if not 0 <= b <= last]
        if bad:
            raise ValueError(f"block indices {bad} out of range 0..{last}")
        outputs = {}
        for j, block in enumerate(self.blocks):
            x = block(x, mask)
            if j == last:
                x = self.norm(x)
            if j in blocks:
                outputs[j] = x
            if j >= max(blocks):
                break
        return [outputs[b] for b in blocks]

    def __call__(
        self, batch, specs: Sequence[sensors.ModalitySpec], *, train: bool = False, overrides=None
    ):
        """Full encoder without masking: ``[B, 1 + L, D]`` (class token first)."""
        layout = batch.layout
        x = self.embed(batch, specs, train=train, overrides=overrides)
        x = x + self.position_code(layout, overrides).astype(x.dtype)
        valid = jnp.broadcast_to(layout.token_valid, x.shape[:2])
        return self.transform(x, valid)
