"""The pure MAE training step: forward, loss, gradients, optimiser update.

``train_step(state, batch, ...) -> (state, metrics)`` is a pure function of pytrees
(``TrainState``, ``ramen_jax.batch.Batch``): the training loop jits it once per batch
signature with donated state. The masking noise and the L-TAE dropout key come from
``fold_in(seed, step)``, so a resumed run draws exactly what an uninterrupted run would. With
``grad_accum = A`` the batch is split into A micro-batches scanned in order (BatchNorm running
statistics updated after each, gradients averaged), then one optimiser step is taken.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ramen_jax import sensors
from ramen_jax.batch import Batch
from ramen_jax.model import build as build_lib
from ramen_jax.model.participation import participating


class TrainState(NamedTuple):
    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Static options of the step (part of the jit cache key)."""

    seed: int = 0
    grad_accum: int = 1
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1


def participation_tree(params, specs: Sequence[sensors.ModalitySpec], kept):
    flags = participating(build_lib.flatten_dict(params).keys(), specs, kept)
    return build_lib.unflatten_dict(flags)


def loss_and_grads(
    graphdef,
    params,
    batch_stats,
    batch,
    specs,
    noise,
    *,
    overrides=None,
    dropout_key=None,
    options: StepOptions = StepOptions(),
):
    """Train-mode forward (BatchNorm batch statistics, running stats updated) and gradients of
    the MAE loss (+ the weighted contrastive term). Returns ``(outputs, new_stats, grads)``."""
    contrastive = options.contrastive_weight > 0

    def loss_fn(p):
        model = build_lib.merge_model(graphdef, p, batch_stats)
        out = model(
            batch,
            specs,
            noise,
            train=True,
            overrides=overrides,
            dropout_key=dropout_key,
            contrastive_temperature=options.contrastive_temperature if contrastive else None,
        )
        total = out["loss"]
        if contrastive:
            total = total + options.contrastive_weight * out["contrastive"]
        return total, (out, build_lib.pure_batch_stats(model))

    (_, (out, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return out, new_stats, grads


def step_keys(seed: int, step):
    """Masking-noise and dropout keys of a step: ``fold_in(seed, step)``."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.random.split(key)


def masking_noise(seed: int, step, batch: Batch):
    """The uniform ``[B, L]`` masking noise of ``step`` (the training step's and the preview's
    of the state after it, ``step - 1``)."""
    noise_key, _ = step_keys(seed, step)
    return jax.random.uniform(noise_key, (batch.batch_size, batch.layout.length))


def _micro_batches(batch: Batch, noise, count: int):
    """``count`` micro-batches stacked on a leading axis, for a scan; the layout, shared by
    all, is left out of them (None) and put back in the scan's body."""

    def split(x):
        return x.reshape(count, x.shape[0] // count, *x.shape[1:])

    return batch.map_samples(split).replace(layout=None), split(noise)


def _scalars(out) -> dict:
    metrics = {"loss": out["loss"], **{f"loss/{k}": v for k, v in out["losses"].items()}}
    if "contrastive" in out:
        metrics["contrastive"] = out["contrastive"]
    return metrics


def accumulated_grads(
    graphdef,
    state: TrainState,
    batch,
    specs,
    noise,
    dropout_key,
    options: StepOptions,
    overrides=None,
):
    """Gradients over ``options.grad_accum`` micro-batches; returns (metrics, stats, grads)."""
    if options.grad_accum == 1:
        out, stats, grads = loss_and_grads(
            graphdef,
            state.params,
            state.batch_stats,
            batch,
            specs,
            noise,
            overrides=overrides,
            dropout_key=dropout_key,
            options=options,
        )
        return _scalars(out), stats, grads
    parts, noises = _micro_batches(batch, noise, options.grad_accum)

    def body(carry, xs):
        stats, grad_sum, metric_sum = carry
        part, part_noise, index = xs
        micro = part.replace(layout=batch.layout)
        out, stats, grads = loss_and_grads(
            graphdef,
            state.params,
            stats,
            micro,
            specs,
            part_noise,
            dropout_key=jax.random.fold_in(dropout_key, index),
            options=options,
        )
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
        metric_sum = jax.tree.map(jnp.add, metric_sum, _scalars(out))
        return (stats, grad_sum, metric_sum), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    names = ["loss"] + [f"loss/{spec.name}" for spec in specs]
    names += ["contrastive"] if options.contrastive_weight > 0 else []
    metric_zeros = {name: jnp.zeros((), jnp.float32) for name in names}
    (stats, grad_sum, metric_sum), _ = jax.lax.scan(
        body,
        (state.batch_stats, zeros, metric_zeros),
        (parts, noises, jnp.arange(options.grad_accum)),
    )
    scale = 1.0 / options.grad_accum
    grads = jax.tree.map(lambda g: g * scale, grad_sum)
    metrics = jax.tree.map(lambda m: m * scale, metric_sum)
    return metrics, stats, grads


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    graphdef,
    specs,
    optimizer,
    options: StepOptions = StepOptions(),
    learning_rate: Callable | None = None,
    overrides=None,
    noise=None,
):
    """One optimiser step. ``noise`` may be injected (tests); otherwise drawn from the step key.

    Returns ``(new_state, metrics)``: the total and per-modality losses, the contrastive term if
    enabled, the pre-clip gradient norm and the learning rate of the step.
    """
    _, dropout_key = step_keys(options.seed, state.step)
    if noise is None:
        noise = masking_noise(options.seed, state.step, batch)
    metrics, new_stats, grads = accumulated_grads(
        graphdef, state, batch, specs, noise, dropout_key, options, overrides
    )
    active = participation_tree(state.params, specs, batch.layout.kept)
    updates, opt_state = optimizer.update(
        grads, state.opt_state, state.params, participating=active
    )
    params = optax.apply_updates(state.params, updates)
    metrics["loss_per_modality"] = metrics["loss"] / jnp.sum(batch.layout.kept)
    metrics["grad_norm"] = optax.tree.norm(grads)
    if learning_rate is not None:
        metrics["lr"] = learning_rate(state.step)
    return TrainState(state.step + 1, params, new_stats, opt_state), metrics
