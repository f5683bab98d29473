"""The pure MAE training step: forward, loss, gradients, optimiser update.

``train_step(state, batch, ...) -> (state, metrics)`` is a pure function of plain pytrees
(``TrainState``): the training loop jits it once per batch signature with donated state. The
masking noise and the L-TAE dropout key come from ``fold_in(seed, step)``, so a resumed run
draws exactly what an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ramen_jax import sensors
from ramen_jax.model import state as state_lib
from ramen_jax.model.participation import participating


class TrainState(NamedTuple):
    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any


def participation_tree(params, specs: Sequence[sensors.ModalitySpec], kept):
    flags = participating(state_lib.flatten_dict(params).keys(), specs, kept)
    return state_lib.unflatten_dict(flags)


def loss_and_grads(
    graphdef, params, batch_stats, batch, specs, noise, *, overrides=None, dropout_key=None
):
    """Train-mode forward (BatchNorm batch statistics, running stats updated) and gradients.

    Returns ``(outputs, new_batch_stats, grads)``.
    """

    def loss_fn(p):
        model = state_lib.merge_model(graphdef, p, batch_stats)
        out = model(batch, specs, noise, train=True, overrides=overrides, dropout_key=dropout_key)
        return out["loss"], (out, state_lib.pure_batch_stats(model))

    (_, (out, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return out, new_stats, grads


def step_keys(seed: int, step):
    """Masking-noise and dropout keys of a step: ``fold_in(seed, step)``."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.random.split(key)


def train_step(
    state: TrainState, batch, *, graphdef, specs, optimizer, seed: int, overrides=None, noise=None
):
    """One optimiser step. ``noise`` may be injected (tests); otherwise drawn from the step key.

    Returns ``(new_state, metrics)``; metrics hold the total and per-modality losses, the
    pre-clip gradient norm and the learning-rate step.
    """
    noise_key, dropout_key = step_keys(seed, state.step)
    if noise is None:
        batch_size = next(iter(batch["pixels"].values())).shape[0]
        length = batch["layout"]["token_valid"].shape[0]
        noise = jax.random.uniform(noise_key, (batch_size, length))
    out, new_stats, grads = loss_and_grads(
        graphdef,
        state.params,
        state.batch_stats,
        batch,
        specs,
        noise,
        overrides=overrides,
        dropout_key=dropout_key,
    )
    active = participation_tree(state.params, specs, batch["layout"]["kept"])
    updates, opt_state = optimizer.update(
        grads, state.opt_state, state.params, participating=active
    )
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": out["loss"],
        "grad_norm": optax.tree.norm(grads),
        **{f"loss/{k}": v for k, v in out["losses"].items()},
    }
    return TrainState(state.step + 1, params, new_stats, opt_state), metrics
