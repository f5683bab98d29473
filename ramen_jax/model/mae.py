"""RAMEN masked autoencoder: random masking over all kept modalities' tokens, encode, decode, loss.

Masking follows the original: per sample, ``num_keep = int(L * (1 - mask_ratio))`` tokens with
the smallest uniform noise are kept (joint over modalities; class token excluded; position codes
added before masking). Padded tokens get noise 2 so they sort last and are never kept. The
encoder sees ``[cls, K kept slots]`` with ``K = int(L_bucket * (1 - ratio))``; slots beyond
``num_keep`` are masked out of attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from ramen_jax import sensors
from ramen_jax.model import loss as loss_lib
from ramen_jax.model.decoder import Decoder
from ramen_jax.model.encoder import Encoder


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture. ``kinds`` lists the modality kinds the projectors must cover."""

    kinds: tuple = (sensors.OPTICAL,)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    block_norm_eps: float = 1e-6
    ltae_attention_dropout: float = 0.0
    attention_impl: str | None = None

    def __post_init__(self):
        kinds = tuple(sorted(set(self.kinds)))
        unknown = [k for k in kinds if k not in sensors.KINDS]
        if unknown:
            raise ValueError(f"unknown modality kind(s) {unknown}; expected {sensors.KINDS}")
        object.__setattr__(self, "kinds", kinds)


class RamenMAE(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        self.config = config
        self.encoder = Encoder(
            kinds=config.kinds,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            block_norm_eps=config.block_norm_eps,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            attention_impl=config.attention_impl,
            ltae_attention_dropout=config.ltae_attention_dropout,
        )
        self.decoder = Decoder(
            kinds=config.kinds,
            embed_dim=config.embed_dim,
            decoder_dim=config.decoder_dim,
            depth=config.decoder_depth,
            num_heads=config.decoder_heads,
            mlp_ratio=config.mlp_ratio,
            block_norm_eps=config.block_norm_eps,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            attention_impl=config.attention_impl,
        )

    def kept_slots(self, length: int) -> int:
        return int(length * (1 - self.config.mask_ratio))

    def __call__(
        self,
        batch,
        specs: Sequence[sensors.ModalitySpec],
        noise,
        *,
        train: bool = True,
        overrides=None,
        dropout_key=None,
    ):
        """Masked forward + loss.

        Args:
          batch: ``{"pixels", "dates", "time_valid", "layout"}`` (``ramen_jax.data.layout``).
          specs: the batch's modalities, in the order of the layout's modality index.
          noise: uniform ``[B, L]`` masking noise (padded slots are overridden).
          overrides: test-only fixed tables (``pos_code``, ``dec_pos_code``,
            ``ltae_date_code``, ``dec_date_code``).
        Returns:
          dict with ``loss`` (sum over kept modalities), ``losses`` per modality, ``mask``
          ``[B, L]`` (1 = hidden), ``ids_restore``, ``latent``, ``dec_tokens``, ``recon``.
        """
        layout = batch["layout"]
        encoder = self.encoder
        tokens = encoder.embed(
            batch, specs, train=train, overrides=overrides, dropout_key=dropout_key
        )
        tokens = tokens + encoder.position_code(layout, overrides).astype(tokens.dtype)

        length = tokens.shape[1]
        noise = jnp.where(layout["token_valid"][None], noise, 2.0)
        ids_shuffle = jnp.argsort(noise, axis=1, stable=True)
        ids_restore = jnp.argsort(ids_shuffle, axis=1, stable=True)
        slots = self.kept_slots(length)
        kept = jnp.take_along_axis(tokens, ids_shuffle[:, :slots, None], axis=1)
        kept_valid = jnp.broadcast_to(jnp.arange(slots) < layout["num_keep"], kept.shape[:2])
        latent = encoder.transform(kept, kept_valid)

        dec_tokens, recon = self.decoder(latent, ids_restore, batch, specs, overrides=overrides)
        mask = (ids_restore >= layout["num_keep"]).astype(jnp.float32)

        side = layout["enc_resize"][specs[0].name].shape[0]
        losses = {}
        for m, spec in enumerate(specs):
            weights = loss_lib.pixel_weights(
                mask,
                layout["grid_token"][spec.name],
                layout["mask_index"][spec.name],
                batch["time_valid"][spec.name],
                side,
            )
            value = loss_lib.modality_loss(recon[spec.name], batch["pixels"][spec.name], weights)
            value = jnp.where(layout["kept"][m], value, 0.0)
            losses[spec.name] = value
        return {
            "loss": sum(losses.values()),
            "losses": losses,
            "mask": mask,
            "ids_restore": ids_restore,
            "ids_shuffle": ids_shuffle,
            "latent": latent,
            "dec_tokens": dec_tokens,
            "recon": recon,
        }


def make_model(config: ModelConfig, seed: int = 0, dtype=None, param_dtype=jnp.float32) -> RamenMAE:
    return RamenMAE(config, rngs=nnx.Rngs(params=seed), dtype=dtype, param_dtype=param_dtype)
