"""What a checkpoint's arrays must satisfy: every value finite, and bit-identical to what was saved.

``StateCheck`` runs one jitted program over a state tree that returns, per array, whether all
its values are finite and a 32-bit digest of its bits. The program works on sharded arrays of
a multi-process job (its outputs are replicated, so every process reads the same answer and
takes the same branch) and on host NumPy arrays.

The digest is a wrapping ``uint32`` sum over elements of ``bits(x[i]) * weight(i)``, ``i`` the
element's flat position. Integer addition is associative, so the digest is exact whatever the
sharding, device count or reduction order: a checkpoint saved on 256 chips verifies on one CPU.
``weight(i)`` is odd, so flipping any single bit changes the digest (``2^k * odd != 0 mod 2^32``),
and it depends on ``i``, so swapped or shifted values change it too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# 2^32 / golden ratio: multiplying by it spreads consecutive positions over the 32 bits.
_SPREAD = np.uint32(0x9E3779B1)


def tree_paths(tree) -> list[str]:
    """'/'-joined key paths of the leaves, in ``jax.tree`` order (the digests' names)."""
    return [
        "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _bits(x: jax.Array) -> jax.Array:
    """The element bit patterns as uint32 (8-byte types folded into one word)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 4:
        return lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        return lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)
    if size == 8:
        words = lax.bitcast_convert_type(x, jnp.uint32)  # trailing axis of 2
        return words[..., 0] + words[..., 1] * _SPREAD
    raise TypeError(f"no digest for dtype {x.dtype}")


def _flat_position(shape: tuple) -> jax.Array:
    """Row-major flat index of every element, as wrapping uint32, built per axis so that each
    device computes the positions of its own shard without any communication."""
    position = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        iota = lax.broadcasted_iota(jnp.uint32, shape, axis)
        position = position + iota * np.uint32(stride % 2**32)
        stride *= shape[axis]
    return position


def digest(x: jax.Array) -> jax.Array:
    """uint32 digest of one array (see the module docstring)."""
    spread = _flat_position(x.shape) * _SPREAD
    weight = ((spread ^ (spread >> 16)) << 1) | np.uint32(1)
    return jnp.sum(_bits(x) * weight, dtype=jnp.uint32)


def all_finite(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.all(jnp.isfinite(x))
    return jnp.bool_(True)


def _check(tree):
    leaves = jax.tree.leaves(tree)
    return jnp.stack([all_finite(x) for x in leaves]), jnp.stack([digest(x) for x in leaves])


def _replicated_like(tree):
    """A replicated sharding on the mesh of the tree's sharded arrays, if it has any."""
    for x in jax.tree.leaves(tree):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return None


def _signature(tree) -> tuple:
    leaves, structure = jax.tree.flatten(tree)
    return structure, tuple(
        (np.shape(x), jnp.dtype(x.dtype), getattr(x, "sharding", None)) for x in leaves
    )


class StateCheck:
    """``check(tree) -> (names of non-finite arrays, {name: digest})``, compiled once per tree
    layout; ``prepare(abstract_tree)`` compiles ahead of the first call (``precompile``)."""

    def __init__(self):
        self._compiled = {}

    def _executable(self, tree):
        key = _signature(tree)
        if key not in self._compiled:
            replicated = _replicated_like(tree)
            jitted = jax.jit(_check, out_shardings=(replicated, replicated) if replicated else None)
            self._compiled[key] = jitted.lower(tree).compile()
        return self._compiled[key]

    def prepare(self, abstract_tree) -> None:
        self._executable(abstract_tree)

    def check(self, tree) -> tuple[list[str], dict[str, int]]:
        if not jax.tree.leaves(tree):
            return [], {}
        finite, digests = self._executable(tree)(tree)
        finite, digests = _local_copy(finite), _local_copy(digests)
        names = tree_paths(tree)
        return (
            [n for n, ok in zip(names, finite, strict=True) if not ok],
            {n: int(d) for n, d in zip(names, digests, strict=True)},
        )


def _local_copy(x) -> np.ndarray:
    """This process's copy of a replicated result (``device_get`` refuses arrays that span
    other processes' devices)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_shards[0].data
    return np.asarray(jax.device_get(x))


def mismatches(saved: dict[str, int], current: dict[str, int]) -> list[str]:
    """Names whose digest differs from the saved one, or that the saved list lacks / has extra."""
    names = sorted(set(saved) | set(current))
    return [n for n in names if saved.get(n) != current.get(n)]


def describe(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    count = f"{len(names)} array" + ("s" if len(names) > 1 else "")
    return shown + (f" and {more} more" if more > 0 else "") + f" ({count})"
