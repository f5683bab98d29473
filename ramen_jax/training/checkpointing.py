"""Orbax checkpoints of a training run: everything needed to resume exactly.

Each checkpoint (``WORKDIR/checkpoints/<step>``) holds two items:

- ``state``: the ``TrainState`` (step, params, BatchNorm statistics, optimiser state) as a
  plain nested dict, restored straight into the current mesh's shardings, so a run resumes on a
  different device count, process count or on CPU;
- ``meta`` (JSON): the data pipeline's position (``next_step``: the pipeline is a pure
  function of the step index, so this *is* the Grain iterator state of the step dataset), the
  RNG seed (per-step keys are ``fold_in(seed, step)``), the model config and the run config.

Saves are asynchronous (``async_save``), every ``every_steps`` and on demand (SIGTERM, end);
the last ``keep`` are kept. A save interrupted by a crash never becomes the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp

from ramen_jax.training.optimizer import TorchAdamWState
from ramen_jax.training.step import TrainState


def state_to_tree(state: TrainState) -> dict:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state._asdict(),
    }


def tree_to_state(tree: dict) -> TrainState:
    return TrainState(
        tree["step"], tree["params"], tree["batch_stats"], TorchAdamWState(**tree["opt_state"])
    )


def abstract_tree(state_abstract: TrainState, shardings: TrainState) -> dict:
    """ShapeDtypeStructs carrying the target shardings, for restoring."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        state_to_tree(state_abstract),
        state_to_tree(shardings),
    )


class Checkpointer:
    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
        self.directory = os.path.join(
            os.path.abspath(workdir) if "://" not in workdir else workdir, "checkpoints"
        )
        self.every_steps = max(int(every_steps), 1)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(self, step: int, state: TrainState, meta: dict, *, wait: bool = False) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state_to_tree(state)), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        if wait:
            self.manager.wait_until_finished()

    def restore(self, step: int, target: dict) -> tuple[TrainState, dict]:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return tree_to_state(restored["state"]), dict(restored["meta"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def run_meta(next_step: int, seed: int, model_config, config) -> dict:
    return {
        "next_step": int(next_step),
        "seed": int(seed),
        "model_config": dataclasses.asdict(model_config),
        "config": json.loads(config.to_json_best_effort()),
    }
