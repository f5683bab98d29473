"""RAMEN masked autoencoder: random masking over all kept modalities' tokens, encode, decode, loss.

Masking follows the original: per sample, ``num_keep = int(L * (1 - mask_ratio))`` tokens with
the smallest uniform noise are kept (joint over modalities; class token excluded; position codes
added before masking). Padded tokens get noise 2 so they sort last and are never kept. The
encoder sees ``[cls, K kept slots]`` with ``K = int(L_bucket * (1 - ratio))``; slots beyond
``num_keep`` are masked out of attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ramen_jax import sensors
from ramen_jax.model import loss as loss_lib
from ramen_jax.model.config import ModelConfig
from ramen_jax.model.decoder import Decoder
from ramen_jax.model.encoder import Encoder


class RamenMAE(nnx.Module):
    """The masked autoencoder; build it with ``ramen_jax.model.build`` (attention resolved for
    the devices, Flax's eager variable sharding off)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.decoder = Decoder(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

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
        contrastive_temperature: float | None = None,
    ):
        """Masked forward + loss.

        Args:
          batch: a ``ramen_jax.batch.Batch``.
          specs: the batch's modalities, in the order of the layout's modality index.
          noise: uniform ``[B, L]`` masking noise (padded slots are overridden).
          overrides: test-only fixed tables (``pos_code``, ``dec_pos_code``,
            ``ltae_date_code``, ``dec_date_code``).
          contrastive_temperature: if set, also returns ``contrastive``, the cross-modal InfoNCE
            term (``contrastive_loss``).
        Returns:
          dict with ``loss`` (sum over kept modalities), ``losses`` per modality, ``mask``
          ``[B, L]`` (1 = hidden), ``ids_restore``, ``latent``, ``dec_tokens``, ``recon``.
        """
        layout = batch.layout
        encoder = self.encoder
        tokens = encoder.embed(
            batch, specs, train=train, overrides=overrides, dropout_key=dropout_key
        )
        tokens = tokens + encoder.position_code(layout, overrides).astype(tokens.dtype)

        length = tokens.shape[1]
        noise = jnp.where(layout.token_valid[None], noise, 2.0)
        ids_shuffle = jnp.argsort(noise, axis=1, stable=True)
        ids_restore = jnp.argsort(ids_shuffle, axis=1, stable=True)
        slots = self.kept_slots(length)
        kept = jnp.take_along_axis(tokens, ids_shuffle[:, :slots, None], axis=1)
        kept_valid = jnp.broadcast_to(jnp.arange(slots) < layout.num_keep, kept.shape[:2])
        latent = encoder.transform(kept, kept_valid)

        extra = {}
        if contrastive_temperature is not None:
            kept_modality = layout.token_modality[ids_shuffle[:, :slots]]
            extra["contrastive"] = self.contrastive_loss(
                kept, kept_valid, layout.kept_rank[kept_modality], contrastive_temperature
            )
        dec_tokens, recon = self.decoder(latent, ids_restore, batch, specs, overrides=overrides)
        mask = (ids_restore >= layout.num_keep).astype(jnp.float32)

        losses = {}
        for m, spec in enumerate(specs):
            weights = loss_lib.pixel_weights(mask, layout, spec.name, batch.time_valid[spec.name])
            value = loss_lib.modality_loss(recon[spec.name], batch.pixels[spec.name], weights)
            value = jnp.where(layout.kept[m], value, 0.0)
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
            **extra,
        }

    def contrastive_loss(self, kept, kept_valid, kept_rank, temperature):
        """Cross-modal InfoNCE between two disjoint modality groups of the same samples.

        The visible tokens are split by the kept rank of their modality (even ranks vs odd
        ranks: two disjoint, non-empty subsets whenever two or more modalities are kept); each
        group is encoded on its own, mean-pooled and L2-normalised, and the symmetric InfoNCE
        (CLIP-style) aligns the two views of each sample against the other samples of the
        global batch. Samples with an empty group are left out; with fewer than two kept
        modalities the term is 0.
        """
        groups = [kept_valid & (kept_rank % 2 == g) for g in (0, 1)]
        pooled = []
        for mask in groups:
            x = self.encoder.transform(kept, mask)[:, 1:].astype(jnp.float32)
            w = mask[..., None].astype(jnp.float32)
            mean = jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
            pooled.append(mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-6))
        valid = jnp.any(groups[0], axis=1) & jnp.any(groups[1], axis=1)
        logits = pooled[0] @ pooled[1].T / temperature
        pair = valid[:, None] & valid[None, :]
        logits = jnp.where(pair, logits, -1e9)

        def cross_entropy(lg):
            return -jnp.diagonal(jax.nn.log_softmax(lg, axis=-1))

        per_sample = 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))
        count = jnp.sum(valid)
        return jnp.where(count > 1, jnp.sum(per_sample * valid) / jnp.maximum(count, 1), 0.0)
