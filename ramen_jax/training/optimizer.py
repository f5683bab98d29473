"""The original's optimiser step as an Optax transformation: torch-style clip + AdamW.

Matches ``clip_grad_norm_(params, max_norm)`` followed by ``torch.optim.AdamW`` exactly:

- clipping coefficient ``min(1, max_norm / (global_norm + 1e-6))`` (optax's
  ``clip_by_global_norm`` uses ``max_norm / global_norm``);
- decoupled weight decay on every parameter that took part in the step;
- a parameter that did not take part (``participating`` extra argument, see
  ``ramen_jax.model.participation``) is not touched at all: no weight decay, no moment update
  and no step count, like a PyTorch parameter whose ``.grad`` is None. Bias corrections therefore
  use a per-parameter step count, as ``torch.optim.AdamW`` does;
- parameters frozen by config (``trainable`` mask) are never participating.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class TorchAdamWState(NamedTuple):
    step: jnp.ndarray  # global step, drives the learning-rate schedule
    count: optax.Params  # per-parameter AdamW step counts
    mu: optax.Params
    nu: optax.Params


def global_norm(tree) -> jnp.ndarray:
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(
        sum(jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32)))) for x in leaves)
    )


def torch_adamw(
    learning_rate,
    *,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.05,
    max_grad_norm: float | None = 1.0,
    trainable=None,
) -> optax.GradientTransformationExtraArgs:
    """Clip-then-AdamW with PyTorch semantics.

    Args:
      learning_rate: float or schedule of the global step.
      trainable: optional pytree of bools (same structure as params); False = frozen.
    """
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return TorchAdamWState(
            step=jnp.zeros((), jnp.int32),
            count=jax.tree.map(lambda _: jnp.zeros((), jnp.int32), params),
            mu=zeros,
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update(grads, state, params=None, *, participating=None, **unused):
        del unused
        if params is None:
            raise ValueError("torch_adamw needs params (decoupled weight decay)")
        active = (
            participating
            if participating is not None
            else jax.tree.map(lambda _: jnp.asarray(True), params)
        )
        if trainable is not None:
            active = jax.tree.map(lambda a, t: jnp.logical_and(a, t), active, trainable)
        grads = jax.tree.map(lambda g, a: jnp.where(a, g, 0), grads, active)
        if max_grad_norm is not None:
            norm = global_norm(grads)
            coef = jnp.minimum(1.0, max_grad_norm / (norm + 1e-6))
            grads = jax.tree.map(lambda g: (g * coef.astype(g.dtype)).astype(g.dtype), grads)
        lr = schedule(state.step)

        def leaf(g, p, m, v, c, a):
            c_new = c + 1
            m_new = b1 * m + (1 - b1) * g
            v_new = b2 * v + (1 - b2) * jnp.square(g)
            t = c_new.astype(p.dtype)
            step_size = lr / (1 - b1**t)
            denom = jnp.sqrt(v_new) / jnp.sqrt(1 - b2**t) + eps
            new_p = p * (1 - lr * weight_decay) - step_size * m_new / denom
            return (
                jnp.where(a, new_p - p, jnp.zeros_like(p)),
                jnp.where(a, m_new, m),
                jnp.where(a, v_new, v),
                jnp.where(a, c_new, c),
            )

        out = jax.tree.map(leaf, grads, params, state.mu, state.nu, state.count, active)
        pick = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=lambda t: isinstance(t, tuple))  # noqa: E731
        new_state = TorchAdamWState(step=state.step + 1, count=pick(3), mu=pick(1), nu=pick(2))
        return pick(0), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def learning_rate_schedule(optim_config, total_steps: int, steps_per_epoch: int):
    """Linear warmup from ``start_lr`` to ``lr`` over ``warmup_epochs``, then cosine decay to
    ``end_lr`` at ``total_steps``, changed once per epoch (``optim.schedule_interval="epoch"``,
    as the original's scheduler, ``epoch_schedule``) or at every step (``"step"``)."""
    if steps_per_epoch <= 0 or total_steps <= 0:
        raise ValueError(f"total_steps {total_steps} and steps_per_epoch {steps_per_epoch}")
    interval = optim_config.get("schedule_interval", "step")
    if interval == "epoch":
        return epoch_schedule(optim_config, total_steps / steps_per_epoch, steps_per_epoch)
    if interval != "step":
        raise ValueError(f"optim.schedule_interval={interval!r}: use 'epoch' or 'step'")
    warmup = int(round(optim_config.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, max(total_steps - 1, 0))
    cosine = optax.cosine_decay_schedule(
        optim_config.lr, max(total_steps - warmup, 1), alpha=optim_config.end_lr / optim_config.lr
    )
    if warmup == 0:
        return cosine
    ramp = optax.linear_schedule(optim_config.start_lr, optim_config.lr, warmup)
    return optax.join_schedules([ramp, cosine], [warmup])


def epoch_schedule(optim_config, max_epochs: float, steps_per_epoch: int):
    """The original's per-epoch learning rate at epoch ``e = step // steps_per_epoch``: the
    closed form of its linear-warmup cosine scheduler, ``start_lr + e (lr - start_lr) /
    max(1, W - 1)`` for ``e < W`` (``lr`` reached in epoch ``W - 1``), then ``end_lr + (lr -
    end_lr) (1 + cos(pi (e - W) / (max_epochs - W))) / 2`` (``lr`` again in epoch ``W``, and
    ``end_lr`` only at ``max_epochs``, one epoch after the last)."""
    warmup = float(optim_config.warmup_epochs)
    peak, start, end = optim_config.lr, optim_config.start_lr, optim_config.end_lr
    ramp = (peak - start) / max(1.0, warmup - 1)
    decay_epochs = max(max_epochs - warmup, 1e-9)  # never reached when warmup >= max_epochs

    def schedule(step):
        epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
        warming = start + epoch * ramp
        cosine = end + 0.5 * (peak - end) * (1 + jnp.cos(jnp.pi * (epoch - warmup) / decay_epochs))
        return jnp.where(epoch < warmup, warming, cosine)

    return schedule
