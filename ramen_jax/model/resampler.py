"""Scale resampler: bilinear resampling plus a scale-gated mixture of 1x1-conv experts.

The original computes ``y = up(x) + sum_i w_i(r) * expert_i(up(x))`` on D-wide feature maps,
where ``up`` is a bilinear resize by scale ``r`` and ``w = softmax(mlp(sincos(log r)) / T)``.
Because ``up`` is linear with weights summing to one per output pixel and the experts are
pointwise affine, the two commute: we apply the experts on the token grid and move the
resizing onto the few raw channels (``ramen_jax.geometry``). This module therefore exposes the
gate and the expert mixture separately; ``resample_features`` keeps the original order for the
reference path and its tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ramen_jax.model.encodings import sincos_1d
from ramen_jax.model.layers import Dense, gelu, uniform_init
from ramen_jax.model.tokens import resize_2d

NUM_EXPERTS = 4


class ScaleResampler(nnx.Module):
    def __init__(self, features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=None):
        self.features = features
        self.temperature = nnx.Param(jnp.asarray(0.7, param_dtype), out_sharding=())
        bound = 1.0 / features**0.5
        # Experts stacked: kernel [E, D_in, D_out], bias [E, D] (PyTorch: experts.i.weight
        # [D_out, D_in, 1, 1] and experts.i.bias [D]).
        self.expert_kernel = nnx.Param(
            uniform_init(bound)(rngs.params(), (NUM_EXPERTS, features, features), param_dtype),
            out_sharding=(None, "embed", "mlp"),
        )
        self.expert_bias = nnx.Param(
            uniform_init(bound)(rngs.params(), (NUM_EXPERTS, features), param_dtype),
            out_sharding=(None, "mlp"),
        )
        self.gate_fc1 = Dense(
            features, features // 4, rngs=rngs, axes=("embed", None), param_dtype=param_dtype
        )
        self.gate_fc2 = Dense(
            features // 4, NUM_EXPERTS, rngs=rngs, axes=(None, None), param_dtype=param_dtype
        )
        self.dtype = dtype

    def gate(self, scales: jnp.ndarray) -> jnp.ndarray:
        """Expert weights ``[..., E]`` for resampling scales ``[...]`` (> 0)."""
        code = sincos_1d(jnp.log(scales), self.features)
        logits = self.gate_fc2(gelu(self.gate_fc1(code)))
        temperature = jnp.maximum(self.temperature[...].astype(logits.dtype), 1e-3)
        return jax.nn.softmax(logits / temperature, axis=-1)

    def mix_experts(self, x: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
        """``x + sum_i w_i (x W_i + b_i)``; x ``[..., D]``, weights broadcastable to ``[..., E]``.

        Accumulates in the original's order (expert 0 first, then the residual).
        """
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        kernel = self.expert_kernel[...].astype(dtype)
        bias = self.expert_bias[...].astype(dtype)
        weights = weights.astype(dtype)
        mixed = None
        for i in range(NUM_EXPERTS):
            term = weights[..., i : i + 1] * (jnp.dot(x, kernel[i]) + bias[i])
            mixed = term if mixed is None else mixed + term
        return x + mixed

    def folded_affine(self, weights: jnp.ndarray, dtype):
        """The expert mixture as one affine map per gate: ``(I + sum w_i W_i, sum w_i b_i)``.

        weights ``[M, E]`` -> kernel ``[M, D, D]``, bias ``[M, D]``.
        """
        kernel = self.expert_kernel[...].astype(dtype)
        bias = self.expert_bias[...].astype(dtype)
        weights = weights.astype(dtype)
        eye = jnp.eye(self.features, dtype=dtype)
        return eye + jnp.einsum("me,eio->mio", weights, kernel), weights @ bias

    def resample_features(
        self, x: jnp.ndarray, resize_rows: jnp.ndarray, resize_cols: jnp.ndarray, scale: float
    ) -> jnp.ndarray:
        """Original order: bilinear resize of D-wide maps, then the expert mixture.

        x ``[N, H, W, D]``; resize matrices ``[h, H]`` and ``[w, W]`` (``ramen_jax.geometry``).
        """
        up = resize_2d(x, resize_rows.astype(x.dtype), resize_cols.astype(x.dtype))
        weights = self.gate(jnp.asarray(scale, x.dtype))
        return self.mix_experts(up, weights)
