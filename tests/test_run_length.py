"""Epoch length from the data, and the learning rate stepped per epoch or per step."""

import math
import types

import ml_collections
import numpy as np
import pytest

from configs import base, demo
from ramen_jax.training import run_length
from ramen_jax.training.optimizer import learning_rate_schedule
from ramen_jax.training.trainer import Trainer


def original_scheduler(base_lr, start, end, warmup, max_epochs, epochs):
    """The original's scheduler as Lightning runs it (``interval: epoch``): the chainable
    update, applied once per epoch from ``start`` (its periodic branch only fires at epoch
    ``max_epochs + 1``, after the run)."""
    lrs = [start]
    for e in range(1, epochs):
        lr = lrs[-1]
        if e == warmup:
            lr = base_lr
        elif e < warmup:
            lr = lr + (base_lr - start) / (warmup - 1)
        else:
            span = max_epochs - warmup
            ratio = (1 + math.cos(math.pi * (e - warmup) / span)) / (
                1 + math.cos(math.pi * (e - warmup - 1) / span)
            )
            lr = ratio * (lr - end) + end
        lrs.append(lr)
    return lrs


def optim(interval, warmup=20):
    return ml_collections.ConfigDict(
        dict(lr=1.5e-4, start_lr=1e-5, end_lr=1e-6, warmup_epochs=warmup)
        | {"schedule_interval": interval}
    )


def test_per_epoch_schedule_is_the_originals_scheduler():
    epochs, steps_per_epoch = 300, 7
    schedule = learning_rate_schedule(optim("epoch"), epochs * steps_per_epoch, steps_per_epoch)
    expected = original_scheduler(1.5e-4, 1e-5, 1e-6, 20, epochs, epochs)
    steps = np.arange(epochs * steps_per_epoch)
    ours = np.asarray(schedule(steps)).reshape(epochs, steps_per_epoch)
    assert np.all(ours == ours[:, :1])  # one value per epoch
    np.testing.assert_allclose(ours[:, 0], expected, rtol=2e-5)  # float32 vs float64
    assert ours[19, 0] == pytest.approx(1.5e-4) and ours[-1, 0] > 1e-6


def test_per_step_schedule_moves_every_step_with_the_same_shape():
    epochs, steps_per_epoch = 30, 5
    schedule = learning_rate_schedule(optim("step", 3), epochs * steps_per_epoch, steps_per_epoch)
    lrs = np.asarray([schedule(s) for s in range(epochs * steps_per_epoch)])
    assert lrs[0] == pytest.approx(1e-5) and lrs[15] == pytest.approx(1.5e-4)
    assert np.all(np.diff(lrs[:16]) > 0) and np.all(np.diff(lrs[15:]) < 0)
    assert lrs[-1] == pytest.approx(1e-6, rel=0.05)
    with pytest.raises(ValueError, match="schedule_interval"):
        learning_rate_schedule(optim("batch"), 10, 5)


def test_epoch_length_and_run_length_come_from_the_data():
    datasets = [
        types.SimpleNamespace(source=range(1000), global_batch=64),  # 15 full batches
        types.SimpleNamespace(source=range(100), global_batch=512),  # smaller than a batch: 1
        types.SimpleNamespace(source=range(96), global_batch=32),  # 3
    ]
    config = ml_collections.ConfigDict(dict(epochs=300, total_steps=0, steps_per_epoch=None))
    assert run_length.resolve(config, datasets) == (19, 5700)
    assert (config.steps_per_epoch, config.total_steps) == (19, 5700)
    config = ml_collections.ConfigDict(dict(epochs=300, total_steps=10, steps_per_epoch=4))
    assert run_length.resolve(config, datasets) == (4, 10)  # explicit values stay
    with pytest.raises(ValueError, match="epochs"):
        run_length.resolve(ml_collections.ConfigDict(dict(total_steps=0)), datasets)


def test_the_paper_config_derives_its_lengths_and_the_trainer_resolves_them():
    paper = base.get_config()
    assert (paper.total_steps, paper.steps_per_epoch, paper.epochs) == (0, 0, 300)
    assert paper.optim.schedule_interval == "epoch" and paper.data.mixing == "epoch"
    config = demo.get_config("tiny")  # six demo patches, global batch 2: three batches
    config.update(total_steps=0, steps_per_epoch=0, epochs=2)
    Trainer(config, "/tmp/unused")
    assert (config.steps_per_epoch, config.total_steps) == (3, 6)
