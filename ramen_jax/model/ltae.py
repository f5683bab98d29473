"""Lightweight Temporal Attention Encoder (L-TAE), applied per token to time-series modalities.

Input ``[B, N, T, D]`` (N time-series tokens, T time slots) -> ``[B, N, D]``:
inconv (Linear -> BatchNorm -> ReLU), GroupNorm(16) over each token's channels-in-group and
time steps, + day-of-year code, master-query attention over time (16 heads of key width 16,
values = the input split into 16 channel groups), then an MLP of three
(Linear -> BatchNorm -> ReLU) layers D -> D -> 2D -> D.

Differences from the original, all behind masks that are all-true on unpadded batches (so the
parity fixtures are unaffected):
- padded time slots and padded tokens are excluded from every statistic and from the softmax
  (the original lets zero-padded dates take part);
- several modalities share one call: BatchNorm batch statistics are computed per modality
  (``groups``), and running statistics are updated once per modality in kept order, exactly as
  the original's one L-TAE call per modality does.
BatchNorm running statistics are ``nnx.BatchStat`` (non-trainable). With the batch sharded over
devices, the statistics reduce over the global batch (the original used SyncBatchNorm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ramen_jax.model.encodings import LTAE_HEADS, ltae_date_code
from ramen_jax.model.layers import Dense, normal_init, param, stats_dtype

KEY_WIDTH = 16
BN_MOMENTUM = 0.1
NORM_EPS = 1e-5


class GroupedBatchNorm(nnx.Module):
    """BatchNorm1d over rows ``[..., D]`` with per-group batch statistics.

    ``row_groups`` ``[..., G]`` is a 0/1 membership of each row in one group (all zeros for
    padded rows). ``update_rank`` ``[G]`` orders the running-statistics updates (groups with
    rank >= G or without rows are not updated).
    """

    def __init__(self, features: int, *, param_dtype=jnp.float32, axis_name="embed"):
        self.scale = nnx.Param(jnp.ones((features,), param_dtype), out_sharding=(axis_name,))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype), out_sharding=(axis_name,))
        self.mean = nnx.BatchStat(jnp.zeros((features,), param_dtype), out_sharding=(axis_name,))
        self.var = nnx.BatchStat(jnp.ones((features,), param_dtype), out_sharding=(axis_name,))
        self.count = nnx.BatchStat(jnp.zeros((), jnp.int32), out_sharding=())

    def __call__(self, x, row_groups, update_rank, *, train: bool):
        out_dtype = x.dtype
        xs = x.astype(stats_dtype(x))
        weights = row_groups.astype(xs.dtype)
        lead = "".join("abcdefgh"[: x.ndim - 1])
        if train:
            count = jnp.einsum(f"{lead}g->g", weights)
            safe = jnp.maximum(count, 1.0)[:, None]
            mean = jnp.einsum(f"{lead}d,{lead}g->gd", xs, weights) / safe
            row_mean = jnp.einsum(f"{lead}g,gd->{lead}d", weights, mean)
            var = jnp.einsum(f"{lead}d,{lead}g->gd", jnp.square(xs - row_mean), weights) / safe
            row_var = jnp.einsum(f"{lead}g,gd->{lead}d", weights, var)
            y = (xs - row_mean) * jax.lax.rsqrt(row_var + NORM_EPS)
            self._update_running(mean, var, count, update_rank)
        else:
            mean = self.mean[...].astype(xs.dtype)
            var = self.var[...].astype(xs.dtype)
            y = (xs - mean) * jax.lax.rsqrt(var + NORM_EPS)
        y = y * self.scale[...].astype(y.dtype) + self.bias[...].astype(y.dtype)
        return y.astype(out_dtype)

    def _update_running(self, mean, var, count, update_rank):
        running_mean = self.mean[...]
        running_var = self.var[...]
        steps = self.count[...]
        dtype = running_mean.dtype
        for rank in range(mean.shape[0]):
            pick = ((update_rank == rank) & (count > 0)).astype(mean.dtype)
            active = jnp.sum(pick) > 0
            n = jnp.sum(pick * count)
            batch_mean = (pick @ mean).astype(dtype)
            unbiased = (pick @ var * n / jnp.maximum(n - 1.0, 1.0)).astype(dtype)
            running_mean = jnp.where(
                active, (1 - BN_MOMENTUM) * running_mean + BN_MOMENTUM * batch_mean, running_mean
            )
            running_var = jnp.where(
                active, (1 - BN_MOMENTUM) * running_var + BN_MOMENTUM * unbiased, running_var
            )
            steps = steps + active.astype(steps.dtype)
        self.mean[...] = running_mean
        self.var[...] = running_var
        self.count[...] = steps


class LinearBatchNormRelu(nnx.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        dtype=None,
        axes=("embed", "mlp"),
    ):
        self.linear = Dense(
            in_features, out_features, rngs=rngs, axes=axes, param_dtype=param_dtype, dtype=dtype
        )
        self.norm = GroupedBatchNorm(out_features, param_dtype=param_dtype, axis_name=axes[1])

    def __call__(self, x, row_groups, update_rank, *, train: bool):
        return jax.nn.relu(self.norm(self.linear(x), row_groups, update_rank, train=train))


class LTAE(nnx.Module):
    def __init__(
        self,
        features: int,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        dtype=None,
        attention_dropout: float = 0.0,
    ):
        if features % LTAE_HEADS:
            raise ValueError(f"L-TAE width {features} must be divisible by {LTAE_HEADS}")
        self.features = features
        self.inconv = LinearBatchNormRelu(
            features,
            features,
            rngs=rngs,
            param_dtype=param_dtype,
            dtype=dtype,
            axes=("embed", "embed_out"),
        )
        self.group_norm_scale = nnx.Param(
            jnp.ones((features,), param_dtype), out_sharding=("embed",)
        )
        self.group_norm_bias = nnx.Param(
            jnp.zeros((features,), param_dtype), out_sharding=("embed",)
        )
        std = (2.0 / KEY_WIDTH) ** 0.5
        self.query = param(
            rngs, normal_init(std), (LTAE_HEADS, KEY_WIDTH), (None, None), param_dtype
        )
        self.key_proj = Dense(
            features,
            LTAE_HEADS * KEY_WIDTH,
            rngs=rngs,
            axes=("embed", None),
            param_dtype=param_dtype,
            dtype=dtype,
            kernel_init=normal_init(std),
        )
        self.mlp1 = LinearBatchNormRelu(
            features,
            features,
            rngs=rngs,
            param_dtype=param_dtype,
            dtype=dtype,
            axes=("embed", "embed_out"),
        )
        self.mlp2 = LinearBatchNormRelu(
            features,
            2 * features,
            rngs=rngs,
            param_dtype=param_dtype,
            dtype=dtype,
            axes=("embed", "mlp"),
        )
        self.mlp3 = LinearBatchNormRelu(
            2 * features,
            features,
            rngs=rngs,
            param_dtype=param_dtype,
            dtype=dtype,
            axes=("mlp", "embed"),
        )
        self.attention_dropout = attention_dropout

    def group_norm(self, x, time_valid):
        """GroupNorm(16) per token: statistics over each group's channels and valid time steps."""
        *lead, steps, width = x.shape
        xs = x.astype(stats_dtype(x)).reshape(*lead, steps, LTAE_HEADS, width // LTAE_HEADS)
        w = time_valid.astype(xs.dtype)[..., None, None]
        n = jnp.maximum(jnp.sum(w, axis=-3, keepdims=True), 1.0) * (width // LTAE_HEADS)
        mean = jnp.sum(xs * w, axis=(-3, -1), keepdims=True) / n
        var = jnp.sum(jnp.square(xs - mean) * w, axis=(-3, -1), keepdims=True) / n
        y = ((xs - mean) * jax.lax.rsqrt(var + NORM_EPS)).reshape(*lead, steps, width)
        y = y * self.group_norm_scale[...].astype(y.dtype) + self.group_norm_bias[...].astype(
            y.dtype
        )
        return y.astype(x.dtype)

    def __call__(
        self,
        x,
        dates,
        time_valid,
        token_groups,
        update_rank,
        *,
        train: bool,
        date_code=None,
        dropout_key=None,
    ):
        """
        Args:
          x: ``[B, N, T, D]`` per-time-step features of N time-series tokens.
          dates: int ``[B, N, T]`` day of year.
          time_valid: bool ``[B, N, T]``; False for padded slots and padded tokens.
          token_groups: 0/1 ``[N, G]`` modality membership of each token (zeros for padding).
          update_rank: int ``[G]`` order of BatchNorm running-statistics updates.
          date_code: optional ``[B, N, T, D]`` replacing the computed day-of-year code (tests).
          dropout_key: PRNG key for the attention dropout (training only).
        Returns:
          ``[B, N, D]``.
        """
        batch, tokens, steps, width = x.shape
        dtype = x.dtype
        rows = token_groups[None, :, None, :] * time_valid[..., None].astype(token_groups.dtype)
        out = self.inconv(x, rows, update_rank, train=train)
        out = self.group_norm(out, time_valid)
        if date_code is None:
            date_code = ltae_date_code(dates, width)
        out = out + date_code.astype(dtype)

        keys = self.key_proj(out).reshape(batch, tokens, steps, LTAE_HEADS, KEY_WIDTH)
        scores = jnp.einsum("bnthk,hk->bnth", keys, self.query[...].astype(dtype))
        scores = scores / jnp.asarray(KEY_WIDTH**0.5, dtype)
        # A fully padded token keeps its first slot so the softmax stays finite.
        attend = time_valid | ((jnp.arange(steps) == 0) & ~jnp.any(time_valid, -1, keepdims=True))
        scores = jnp.where(attend[..., None], scores, -jnp.inf)
        attn = jax.nn.softmax(scores.astype(stats_dtype(scores)), axis=2).astype(dtype)
        if train and self.attention_dropout > 0 and dropout_key is not None:
            keep = jax.random.bernoulli(dropout_key, 1.0 - self.attention_dropout, attn.shape)
            attn = jnp.where(keep, attn / (1.0 - self.attention_dropout), 0).astype(dtype)
        values = out.reshape(batch, tokens, steps, LTAE_HEADS, width // LTAE_HEADS)
        pooled = jnp.einsum("bnth,bnthc->bnhc", attn, values).reshape(batch, tokens, width)

        token_rows = token_groups[None] * jnp.ones((batch, 1, 1), token_groups.dtype)
        for layer in (self.mlp1, self.mlp2, self.mlp3):
            pooled = layer(pooled, token_rows, update_rank, train=train)
        return pooled
