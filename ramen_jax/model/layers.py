"""Basic layers shared by the encoder and decoder: Dense, LayerNorm, MLP and the pre-norm ViT block.

Parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ...) in their
``out_sharding`` metadata; the training config maps them to mesh axes. Initialisers follow the
original PyTorch modules (``nn.Linear`` default: U(+-1/sqrt(fan_in)) for weight and bias), so a
model trained from scratch starts from the same distribution as the original.

Compute dtype: every layer casts its parameters to ``dtype`` (``None`` = the input dtype), and
normalisation statistics are always computed in at least float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ramen_jax.model import attention as attention_lib


def uniform_init(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def normal_init(std: float):
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)

    return init


def trunc_normal_init(std: float):
    """timm's ``trunc_normal_(std)``: N(0, std) truncated at +-2 (absolute, not in stds)."""

    def init(key, shape, dtype=jnp.float32):
        lower, upper = -2.0 / std, 2.0 / std
        return std * jax.random.truncated_normal(key, lower, upper, shape, dtype)

    return init


def param(rngs: nnx.Rngs, init, shape, axes, dtype=jnp.float32) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=tuple(axes))


def compute_dtype(dtype, x):
    return dtype if dtype is not None else x.dtype


def stats_dtype(x):
    return jnp.promote_types(x.dtype, jnp.float32)


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` with kernel ``[in, out]`` (PyTorch stores ``[out, in]``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        axes=("embed", "mlp"),
        use_bias: bool = True,
        dtype=None,
        param_dtype=jnp.float32,
        kernel_init=None,
    ):
        bound = 1.0 / math.sqrt(in_features)
        self.kernel = param(
            rngs, kernel_init or uniform_init(bound), (in_features, out_features), axes, param_dtype
        )
        self.bias = (
            param(rngs, uniform_init(bound), (out_features,), axes[1:], param_dtype)
            if use_bias
            else None
        )
        self.dtype = dtype

    def __call__(self, x):
        dtype = compute_dtype(self.dtype, x)
        y = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, biased variance (two-pass), affine."""

    def __init__(
        self,
        features: int,
        *,
        epsilon: float,
        rngs: nnx.Rngs | None = None,
        axis_name: str = "embed",
        param_dtype=jnp.float32,
        dtype=None,
    ):
        del rngs
        self.scale = nnx.Param(jnp.ones((features,), param_dtype), out_sharding=(axis_name,))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype), out_sharding=(axis_name,))
        self.epsilon = epsilon
        self.dtype = dtype

    def __call__(self, x):
        out_dtype = compute_dtype(self.dtype, x)
        xs = x.astype(stats_dtype(x))
        mean = jnp.mean(xs, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xs - mean), axis=-1, keepdims=True)
        y = (xs - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = y * self.scale[...].astype(y.dtype) + self.bias[...].astype(y.dtype)
        return y.astype(out_dtype)


def gelu(x):
    return jax.nn.gelu(x, approximate=False)


class Mlp(nnx.Module):
    """timm ``Mlp``: fc1 -> exact GELU -> fc2."""

    def __init__(
        self, features: int, hidden: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32
    ):
        self.fc1 = Dense(
            features, hidden, rngs=rngs, axes=("embed", "mlp"), dtype=dtype, param_dtype=param_dtype
        )
        self.fc2 = Dense(
            hidden, features, rngs=rngs, axes=("mlp", "embed"), dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, x):
        return self.fc2(gelu(self.fc1(x)))


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (timm ``Attention``).

    ``implementation``: a name of ``ramen_jax.model.attention`` (the trainer and the encoder
    resolve ``""`` to the default of their mesh's platform; None here is ``xla``).
    """

    def __init__(
        self,
        features: int,
        num_heads: int,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        param_dtype=jnp.float32,
        implementation: str | None = None,
    ):
        if features % num_heads:
            raise ValueError(f"width {features} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = Dense(
            features,
            3 * features,
            rngs=rngs,
            axes=("embed", "qkv"),
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.proj = Dense(
            features,
            features,
            rngs=rngs,
            axes=("heads", "embed"),
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.implementation = implementation

    def __call__(self, x, key_mask=None):
        """x: ``[..., L, D]``; key_mask: bool ``[..., L]`` (True = attend) or None."""
        *lead, length, width = x.shape
        head_dim = width // self.num_heads
        qkv = self.qkv(x).reshape(*lead, length, 3, self.num_heads, head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        batch = math.prod(lead)
        q, k, v = (t.reshape(batch, length, self.num_heads, head_dim) for t in (q, k, v))
        if key_mask is not None:
            key_mask = key_mask.reshape(batch, length)
        out = attention_lib.attention(q, k, v, key_mask, self.implementation)
        return self.proj(out.reshape(*lead, length, width))


class Block(nnx.Module):
    """Pre-norm transformer block (timm ``Block``): ``x + attn(norm1 x)``, ``x + mlp(norm2 x)``."""

    def __init__(
        self,
        features: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        rngs: nnx.Rngs,
        dtype=None,
        param_dtype=jnp.float32,
        attention_impl: str | None = None,
    ):
        self.norm1 = LayerNorm(features, epsilon=norm_eps, param_dtype=param_dtype, dtype=dtype)
        self.attn = Attention(
            features,
            num_heads,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            implementation=attention_impl,
        )
        self.norm2 = LayerNorm(features, epsilon=norm_eps, param_dtype=param_dtype, dtype=dtype)
        self.mlp = Mlp(
            features, int(features * mlp_ratio), rngs=rngs, dtype=dtype, param_dtype=param_dtype
        )

    @classmethod
    def of(cls, config, features: int, num_heads: int, *, rngs, dtype, param_dtype) -> Block:
        """A block with ``config``'s (a ``ModelConfig``) MLP ratio, norm eps and attention."""
        return cls(
            features,
            num_heads,
            mlp_ratio=config.mlp_ratio,
            norm_eps=config.block_norm_eps,
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            attention_impl=config.attention_impl,
        )

    def __call__(self, x, key_mask=None):
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class ProjectorMlp(nnx.Module):
    """The channel projectors' MLP: Linear(D, 2D) -> GELU -> Linear(2D, D) -> LayerNorm(1e-5)."""

    def __init__(self, features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=None):
        self.fc1 = Dense(
            features,
            2 * features,
            rngs=rngs,
            axes=("embed", "mlp"),
            param_dtype=param_dtype,
            dtype=dtype,
        )
        self.fc2 = Dense(
            2 * features,
            features,
            rngs=rngs,
            axes=("mlp", "embed"),
            param_dtype=param_dtype,
            dtype=dtype,
        )
        self.norm = LayerNorm(features, epsilon=1e-5, param_dtype=param_dtype, dtype=dtype)

    def __call__(self, x):
        return self.norm(self.fc2(gelu(self.fc1(x))))


def run_blocks(blocks, x, key_mask, remat: bool = False, scan: bool = False):
    """Applies ``blocks`` in order.

    ``remat``: each block's activations are recomputed in the backward pass instead of stored.
    ``scan``: the blocks run as one ``jax.lax.scan`` over their parameters stacked on the fly,
    so XLA compiles one block body instead of ``len(blocks)`` copies (shorter compiles for deep
    models). The parameters keep their per-block layout (checkpoints and conversion are
    unchanged); the stack is a copy of the block weights made inside the step.
    """
    if scan and len(blocks) > 1:
        graphdef, first = nnx.split(blocks[0])
        stacked = jax.tree.map(
            lambda *leaves: jnp.stack(leaves), first, *(nnx.state(b) for b in blocks[1:])
        )

        def body(y, block_state):
            return nnx.merge(graphdef, block_state)(y, key_mask), None

        x, _ = jax.lax.scan(jax.checkpoint(body) if remat else body, x, stacked)
        return x
    call = nnx.remat(lambda block, y, m: block(y, m)) if remat else (lambda b, y, m: b(y, m))
    for block in blocks:
        x = call(block, x, key_mask)
    return x


def run_per_token_in_chunks(block, x, key_mask, chunk: int):
    """``block`` on ``[B, N, T, D]`` (attention over the T axis only, so every token's series
    is independent) ``chunk`` tokens at a time under ``jax.checkpoint``: the backward pass
    recomputes one chunk at a time, so the block's ``B x N x T`` activations and ``T x T``
    scores are held for one chunk, not all N tokens. The same function as ``block(x,
    key_mask)``; padding tokens added to fill the last chunk are dropped."""
    batch, tokens = x.shape[:2]
    if tokens <= chunk:
        return run_blocks([block], x, key_mask, remat=True)
    count = -(-tokens // chunk)
    fill = count * chunk - tokens
    x = jnp.pad(x, [(0, 0), (0, fill)] + [(0, 0)] * (x.ndim - 2))
    key_mask = jnp.pad(key_mask, [(0, 0), (0, fill), (0, 0)], constant_values=True)
    graphdef, state = nnx.split(block)

    def body(pair):
        return nnx.merge(graphdef, state)(*pair)

    def split(a):  # [B, count * chunk, ...] -> [count, B, chunk, ...]
        return a.reshape(batch, count, chunk, *a.shape[2:]).swapaxes(0, 1)

    out = jax.lax.map(jax.checkpoint(body), (split(x), split(key_mask)))
    return out.swapaxes(0, 1).reshape(batch, count * chunk, *x.shape[2:])[:, :tokens]
