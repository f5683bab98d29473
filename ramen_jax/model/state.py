"""Building models and moving their state in and out as flat ``{path: array}`` dicts."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ramen_jax.model.mae import ModelConfig, RamenMAE


def build_model(
    config: ModelConfig, seed: int = 0, dtype=None, param_dtype=jnp.float32
) -> RamenMAE:
    """A model with freshly initialised parameters (unsharded; see training for sharded)."""
    return RamenMAE(config, rngs=nnx.Rngs(params=seed), dtype=dtype, param_dtype=param_dtype)


def abstract_model(config: ModelConfig, dtype=None, param_dtype=jnp.float32) -> RamenMAE:
    """Shapes only, no memory: ``nnx.eval_shape`` of ``build_model``."""
    return nnx.eval_shape(
        lambda: RamenMAE(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    )


def model_from_flat(config: ModelConfig, flat: dict, dtype=jnp.float32) -> RamenMAE:
    """A model whose state is ``flat`` (``{path: array}``), without initialising parameters."""
    model = abstract_model(config, param_dtype=dtype)
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
