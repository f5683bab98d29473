"""How long a run and its epochs are, in steps, when the config leaves them to the data.

``steps_per_epoch`` 0 (or None): the sum over datasets of their full global batches per epoch
(``len(train split) // global batch``, ``ramen_jax.data.mixing.epoch_batches``), which is
exactly the length of a ``data.mixing="epoch"`` epoch. ``total_steps`` 0 (or None):
``epochs * steps_per_epoch``. The resolved values are written back into the config, so the
schedule, the loop and ``run_config.json`` all see them. Neither belongs to the run identity:
a resume on another device count (another global batch) may change them.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import logging

from ramen_jax.data import mixing


def epoch_steps(datasets: Sequence) -> int:
    """Steps of one epoch of ``pipeline.DatasetPipeline`` datasets (opens their sources)."""
    return sum(mixing.epoch_batches(len(d.source), d.global_batch) for d in datasets)


def resolve(config, datasets: Sequence) -> tuple[int, int]:
    """Fills ``steps_per_epoch`` / ``total_steps`` left at 0; returns both."""
    steps_per_epoch = int(config.get("steps_per_epoch") or 0)
    total_steps = int(config.get("total_steps") or 0)
    if steps_per_epoch <= 0:
        steps_per_epoch = epoch_steps(datasets)
        logging.info("steps_per_epoch from the data: %d", steps_per_epoch)
    if total_steps <= 0:
        epochs = config.get("epochs") or 0
        if epochs <= 0:
            raise ValueError("set total_steps, or epochs to derive it from the epoch length")
        total_steps = int(round(epochs * steps_per_epoch))
        logging.info("total_steps = %s epochs x %d: %d", epochs, steps_per_epoch, total_steps)
    with config.unlocked():
        config.steps_per_epoch, config.total_steps = steps_per_epoch, total_steps
    return steps_per_epoch, total_steps


def for_compiling_only(config) -> None:
    """Tools that only compile the step (no data read): lengths left at 0 become 1, since the
    learning rate's values change nothing that is compiled."""
    with config.unlocked():
        config.steps_per_epoch = config.get("steps_per_epoch") or 1
        config.total_steps = config.get("total_steps") or 1
