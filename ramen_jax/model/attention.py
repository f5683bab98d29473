"""Scaled dot-product attention and which implementation runs it on each platform.

Every implementation takes ``q, k, v`` of shape ``[B, L, heads, head_dim]`` and a boolean key
mask ``[B, L]`` (True = attend; None = all keys) and computes the same function: a query
attends to the valid keys of its sample; a sample without any valid key gets the mean of its
values (what the einsum path's ``where(mask, scores, finfo.min)`` softmax gives: every score
equal, so uniform weights), never NaN. Padded queries are computed like any other and
discarded by the caller.

Implementations (``model.attention_impl``; ``""``/None = ``default_attention`` of the platform
of the mesh's devices):

- ``xla``: ``jax.nn.dot_product_attention`` lowered by XLA (softmax in float32).
- ``cudnn``: the same through cuDNN's fused flash attention, where cuDNN accepts the inputs
  (``cudnn_unsupported``); otherwise ``xla``, said once in the log.
- ``einsum``: two einsums around a softmax in at least float32 (faster than ``xla`` with XLA's
  CPU backend, docs/performance.md).
- ``chunked``: ``einsum`` over blocks of ``ATTENTION_CHUNK`` queries, each recomputed in the
  backward pass: no ``L x L`` score matrix is stored.
- ``splash``: the Pallas TPU splash-attention kernel shipped with jax (fused: scores live in
  VMEM blocks only), key padding as segment ids. ``splash_interpret`` runs the same kernel in
  Pallas interpret mode, on any backend (slow; for tests on CPU). Sequences shorter than one
  kernel block (``SPLASH_LANES``, 128) take the ``einsum`` path instead: the kernel would pad
  them to 128 queries and keys. The decoder's attention over a token's dates (up to a few
  dozen) is such a sequence: through the kernel, its padded copies were most of FLAIR-HUB's
  step memory on TPU (docs/scaling.md).

float64 inputs (the parity tests) take the einsum path unless ``chunked`` is asked for, so the
softmax is not rounded to float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

ATTENTION_CHUNK = 1024  # queries per chunk of the "chunked" implementation

# The platform's default, by the name ``jax.Device.platform`` gives its devices. CPU: einsum
# is faster than XLA's dot_product_attention with XLA's CPU backend, and chunking it keeps long
# sequences within host memory for ~1% of step time (docs/performance.md).
PLATFORM_DEFAULTS = {"tpu": "splash", "gpu": "cudnn", "cpu": "chunked"}

SPLASH_LANES = 128  # splash blocks are multiples of 128 tokens: sequences are padded to it
SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides the padded length is used
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later; 128 holds on every GPU cuDNN runs on


def default_attention(platform: str) -> str:
    """The implementation for devices of ``platform`` (``"tpu"``, ``"gpu"``, ``"cpu"``;
    ``mesh.devices.flat[0].platform``); ``xla`` for any other."""
    return PLATFORM_DEFAULTS.get(platform, "xla")


def resolve(implementation: str | None, platform: str) -> str:
    """An explicit ``implementation`` wins; ``""``/None is the platform's default."""
    if not implementation:
        return default_attention(platform)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; one of {list(IMPLEMENTATIONS)}"
        )
    return implementation


def attention(q, k, v, key_mask, implementation: str | None = None):
    """Attention on ``[B, L, heads, head_dim]`` with key mask ``[B, L]`` (see module doc)."""
    name = implementation or "xla"
    if q.dtype == jnp.float64 and name != "chunked":
        name = "einsum"
    if name.startswith("splash") and q.shape[1] < SPLASH_LANES:
        name = "einsum"  # shorter than one kernel block (module doc)
    return IMPLEMENTATIONS[name](q, k, v, key_mask)


def xla_attention(q, k, v, key_mask):
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def cudnn_or_xla_attention(q, k, v, key_mask):
    why = cudnn_unsupported(q.shape, q.dtype)
    if why is None:
        return cudnn_attention(q, k, v, key_mask)
    _log_once(f"cudnn attention falls back to xla: {why}")
    return xla_attention(q, k, v, key_mask)


@functools.cache
def _log_once(message: str) -> None:
    logging.warning(message)


def einsum_attention(q, k, v, key_mask):
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores.astype(jnp.promote_types(q.dtype, jnp.float32)), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


def chunked_attention(q, k, v, key_mask, chunk: int | None = None):
    """``einsum_attention`` one block of queries at a time (``lax.map``, rematerialised):
    scores take ``B x heads x chunk x L`` at once, forward and backward."""
    batch, length, heads, head_dim = q.shape
    chunk = chunk or ATTENTION_CHUNK
    if length <= chunk:
        return einsum_attention(q, k, v, key_mask)
    blocks = -(-length // chunk)
    q = jnp.pad(q, ((0, 0), (0, blocks * chunk - length), (0, 0), (0, 0)))
    q = q.reshape(batch, blocks, chunk, heads, head_dim).swapaxes(0, 1)
    block = jax.checkpoint(lambda q_block: einsum_attention(q_block, k, v, key_mask))
    out = jax.lax.map(block, q)  # [blocks, B, chunk, heads, head_dim]
    return out.swapaxes(0, 1).reshape(batch, blocks * chunk, heads, head_dim)[:, :length]


def _pad_length(x, length: int):
    return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def _no_valid_key_rows(out, v, key_mask):
    """Samples without a valid key: the mean of their values (the einsum path's output)."""
    if key_mask is None:
        return out
    empty = ~jnp.any(key_mask, axis=1)[:, None, None, None]
    mean = jnp.mean(v.astype(jnp.float32), axis=1, keepdims=True).astype(out.dtype)
    return jnp.where(empty, mean, out)


# --- GPU: cuDNN flash attention -------------------------------------------------------------


def cudnn_unsupported(shape, dtype) -> str | None:
    """Why cuDNN's flash attention cannot take ``q`` of ``shape``/``dtype``, or None.
    Checked from shapes only (no GPU needed): bf16/fp16, head dim a multiple of 8 up to 128.
    An odd length is padded by ``cudnn_attention`` (the masked path needs an even one)."""
    head_dim = shape[-1]
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in CUDNN_DTYPES]:
        return f"dtype {jnp.dtype(dtype).name} (cuDNN takes bfloat16/float16)"
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
        return f"head dim {head_dim} (cuDNN takes a multiple of 8 up to {CUDNN_MAX_HEAD_DIM})"
    return None


def cudnn_attention(q, k, v, key_mask):
    length = q.shape[1]
    padded = length + length % 2
    if key_mask is None and padded != length:
        key_mask = jnp.ones(q.shape[:2], bool)
    q, k, v = (_pad_length(t, padded) for t in (q, k, v))
    mask = None
    if key_mask is not None:
        mask = _pad_length(key_mask, padded)[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    return _no_valid_key_rows(out[:, :length], v[:, :length], key_mask)


# --- TPU: Pallas splash attention -----------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, length: int, block: int, interpret: bool):
    """A splash kernel for one sample ``[heads, length, head_dim]``, all-to-all mask (the key
    padding comes as segment ids)."""
    mask = splash.MultiHeadMask([splash.FullMask((length, length)) for _ in range(heads)])
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    with jax.ensure_compile_time_eval():  # concrete mask arrays, cached across traces
        return splash.make_splash_mha(
            mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )


def splash_attention(q, k, v, key_mask, *, interpret: bool = False):
    """The splash kernel per sample. The length is padded to a multiple of 128 (padded keys
    masked, padded queries dropped); keys take segment id 0 when valid, 1 when masked, queries
    0, so a query sees exactly the valid keys. The kernel does not scale: q is scaled here.

    Under a mesh (``jax.sharding.use_abstract_mesh``, set by the trainer and the encoder
    while tracing) the kernel runs per device under ``shard_map``, the batch split over the
    mesh axes that divide it: XLA cannot partition a Pallas call, it would gather its inputs.
    """
    batch, length, heads, head_dim = q.shape
    padded = -(-length // SPLASH_LANES) * SPLASH_LANES
    block = next(b for b in SPLASH_BLOCKS if padded % b == 0)
    valid = jnp.ones((batch, length), bool) if key_mask is None else key_mask
    valid = _pad_length(valid, padded)
    kernel = _splash_kernel(heads, padded, block, interpret)
    scale = 1.0 / math.sqrt(head_dim)

    def per_device(q, k, v, valid):
        segments = splash.SegmentIds(
            q=jnp.zeros(valid.shape, jnp.int32), kv=jnp.where(valid, 0, 1).astype(jnp.int32)
        )
        q, k, v = (_pad_length(t, padded).swapaxes(1, 2) for t in (q * scale, k, v))
        return jax.vmap(kernel)(q, k, v, segments).swapaxes(1, 2)[:, :length]

    axes = _batch_axes(batch)
    if axes:
        spec = PartitionSpec(axes)
        per_device = jax.shard_map(
            per_device, in_specs=(spec,) * 4, out_specs=spec, check_vma=False
        )
    out = per_device(q, k, v, valid)
    return _no_valid_key_rows(out, v, key_mask)


def _batch_axes(batch: int) -> tuple[str, ...]:
    """The axes of the mesh being traced under (if any) that split ``batch`` evenly, in order."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    axes, size = [], 1
    for name in mesh.axis_names:
        if mesh.shape[name] > 1 and batch % (size * mesh.shape[name]) == 0:
            axes.append(name)
            size *= mesh.shape[name]
    return tuple(axes)


def under_mesh(mesh, fn):
    """``fn`` traced under ``mesh`` (abstract), for ``jax.jit``: attention kernels that XLA
    cannot partition (Pallas) split their batch over it with ``shard_map``."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced


IMPLEMENTATIONS = {
    "xla": xla_attention,
    "cudnn": cudnn_or_xla_attention,
    "einsum": einsum_attention,
    "chunked": chunked_attention,
    "splash": functools.partial(splash_attention, interpret=False),
    "splash_interpret": functools.partial(splash_attention, interpret=True),
}


def platform_of(mesh) -> str:
    """The platform of a mesh's devices (``cpu``, ``gpu``, ``tpu``)."""
    return np.asarray(mesh.devices).flat[0].platform
