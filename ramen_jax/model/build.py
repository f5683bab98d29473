"""The one way to make a RAMEN model, and moving its state in and out as flat
``{path: array}`` dicts or plain nested dicts.

``build`` / ``abstract`` (shapes only) resolve ``attention_impl`` ``""`` for the platform the
model will run on (``ModelConfig.for_platform``; default: JAX's default backend) and create
the variables with Flax's eager sharding off: parameters carry their logical axis names as
metadata only, and callers place them explicitly (training: ``jax.eval_shape`` -> shardings ->
``jit(init, out_shardings=...)``; encode: replicated). Eager sharding would need a mesh at
construction time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ramen_jax.model.config import ModelConfig
from ramen_jax.model.mae import RamenMAE


def build(
    config: ModelConfig,
    *,
    seed: int = 0,
    dtype=None,
    param_dtype=jnp.float32,
    platform: str | None = None,
) -> RamenMAE:
    """A model with freshly initialised parameters (from ``seed``), unsharded; inside
    ``jax.jit(..., out_shardings=...)`` the parameters are created sharded (training).
    ``dtype``: the compute dtype (None: the parameters')."""
    config = config.for_platform(platform or jax.default_backend())
    with nnx.use_eager_sharding(False):
        return RamenMAE(config, rngs=nnx.Rngs(params=seed), dtype=dtype, param_dtype=param_dtype)


def abstract(
    config: ModelConfig, *, dtype=None, param_dtype=jnp.float32, platform: str | None = None
) -> RamenMAE:
    """Shapes only, no memory: ``nnx.eval_shape`` of ``build``."""
    return nnx.eval_shape(
        lambda: build(config, dtype=dtype, param_dtype=param_dtype, platform=platform)
    )


def model_from_flat(config: ModelConfig, flat: dict, dtype=jnp.float32) -> RamenMAE:
    """A model whose state is ``flat`` (``{path: array}``), without initialising parameters."""
    model = abstract(config, param_dtype=dtype)
    load_flat_state(model, flat, dtype)
    return model


def flat_state(model_or_state, filter_=nnx.Variable) -> dict:
    """``{path tuple: array}`` of a model's (or a state's) variables."""
    state = (
        model_or_state
        if isinstance(model_or_state, nnx.State)
        else nnx.state(model_or_state, filter_)
    )
    return {
        path: var.get_value() if hasattr(var, "get_value") else var
        for path, var in nnx.to_flat_state(state)
    }


def flat_shapes(model) -> dict:
    return {path: tuple(v.shape) for path, v in flat_state(model).items()}


def load_flat_state(model, flat: dict, dtype=None) -> None:
    """Writes ``flat`` into ``model`` in place; every variable must be present."""
    state = nnx.state(model, nnx.Variable)
    current = dict(nnx.to_flat_state(state))
    missing = [p for p in current if p not in flat]
    extra = [p for p in flat if p not in current]
    if missing or extra:
        raise KeyError(f"state mismatch: missing {missing}, unexpected {extra}")
    for path, var in current.items():
        target = jnp.dtype(var.get_value().dtype)
        if dtype is not None and jnp.issubdtype(target, jnp.floating):
            target = dtype
        var.set_value(jnp.asarray(np.asarray(flat[path]), target))
    nnx.update(model, state)


def split_model(model):
    """``(graphdef, params, batch_stats)`` with plain nested dicts of arrays as state.

    Plain dicts (not ``nnx.State`` of Variables) can be traced, differentiated, sharded and
    checkpointed freely; ``merge_model`` rebuilds a module inside a transformed function.
    """
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def merge_model(graphdef, params, batch_stats):
    return nnx.merge(graphdef, nnx.State(params), nnx.State(batch_stats))


def pure_batch_stats(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))


def flatten_dict(tree: dict, prefix: tuple = ()) -> dict:
    """Nested dict -> ``{path tuple: leaf}`` (integer keys of lists kept as ints)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten_dict(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def unflatten_dict(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out
