"""The dataset-mixing rules against a direct simulation of the original's training loop."""

import random

import numpy as np
import pytest

from configs import base
from ramen_jax.data import mixing as mixing_lib
from ramen_jax.data import plan as plan_lib
from ramen_jax.training import run_identity

BATCHES = (2, 5, 1)  # small epochs: every position's dataset frequency is measurable
EPOCHS = 3000


def original_epoch(batches, weights, rng: random.Random) -> list[int]:
    """One epoch of the original's ``MultiBatchDataLoader(cycle=False)``: draw a dataset among
    those not marked exhausted (integer weights repeat it); an empty one is marked exhausted
    and the draw repeated; the epoch ends when all are exhausted."""
    left = list(batches)
    exhausted: set = set()
    order = []
    while len(exhausted) < len(batches):
        available = [d for d in range(len(batches)) if d not in exhausted]
        name = rng.choice([d for d in available for _ in range(weights[d])])
        if left[name] == 0:
            exhausted.add(name)
            continue
        left[name] -= 1
        order.append(name)
    return order


def frequencies(orders) -> np.ndarray:
    """[position, dataset] share of epochs that drew ``dataset`` at ``position``."""
    orders = np.asarray(orders)
    return np.stack([(orders == d).mean(axis=0) for d in range(len(BATCHES))], axis=1)


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 3, 2)])
def test_epoch_mixing_matches_the_original_loop(weights):
    rng = random.Random(0)
    original = [original_epoch(BATCHES, weights, rng) for _ in range(EPOCHS)]
    rule = mixing_lib.EpochMixing(weights, seed=0, batches_per_epoch=BATCHES)
    ours = [rule.epoch_order(e)[0].tolist() for e in range(EPOCHS)]
    # every batch once per epoch, in both
    for order in original + ours:
        assert np.bincount(order, minlength=3).tolist() == list(BATCHES)
    # the dataset at every position of the epoch: 4 standard errors of the difference
    # (p(1-p)/n summed over both samples, p <= 1/2)
    gap = np.abs(frequencies(ours) - frequencies(original))
    assert gap.max() < 4 * np.sqrt(2 * 0.25 / EPOCHS)
    # uniform draws among the datasets left make the first step 1/3 each, unlike a shuffled
    # list of batches (2/8, 5/8, 1/8): the statistic above can tell them apart
    if weights == (1, 1, 1):
        np.testing.assert_allclose(frequencies(ours)[0], [1 / 3] * 3, atol=0.03)


def test_epoch_mixing_is_reproducible_and_random_access_equals_sequential():
    rule = mixing_lib.EpochMixing((1, 1, 1), seed=7, batches_per_epoch=(3, 40, 2))
    assert rule.steps_per_epoch == 45
    steps = 4 * rule.steps_per_epoch
    sequential = [rule(s) for s in range(steps)]
    counts = [0, 0, 0]
    for dataset, draw in sequential:  # the k-th step of a dataset reads its k-th batch
        assert draw == counts[dataset]
        counts[dataset] += 1
    assert counts == [12, 160, 8]  # four epochs, every batch once each
    fresh = mixing_lib.EpochMixing((1, 1, 1), seed=7, batches_per_epoch=(3, 40, 2))
    for step in (179, 0, 93, 46):  # any order, nothing computed before
        assert fresh(step) == sequential[step]
    other = mixing_lib.EpochMixing((1, 1, 1), seed=8, batches_per_epoch=(3, 40, 2))
    assert [other(s) for s in range(steps)] != sequential
    first, second = (rule.epoch_order(e)[0].tolist() for e in (0, 1))
    assert first != second  # reshuffled every epoch


def test_mixing_settings_are_checked():
    with pytest.raises(ValueError, match="weights must be > 0"):
        mixing_lib.EpochMixing((1, 0), seed=0, batches_per_epoch=(1, 1))
    with pytest.raises(ValueError, match="use one of"):
        mixing_lib.make_mixing("cycle", (1,), 0, (1,))
    assert mixing_lib.epoch_batches(100, 32) == 3  # the last partial batch is dropped
    assert mixing_lib.epoch_batches(16, 32) == 1  # smaller than a batch: an endless stream


def test_epoch_plan_reads_each_sample_at_most_once_per_epoch():
    """Stream positions of one epoch's batches fall in one permutation, its first
    ``batches * B`` items (drop_last), a fresh permutation the next epoch."""
    global_batch, num_samples = 4, 11  # 2 full batches, 3 samples dropped per epoch
    draws = [plan_lib.DatasetDraws((10.0,), 2, 1.0, 2), plan_lib.DatasetDraws((5.0,), 1, 1.0, 3)]
    plan = plan_lib.StepPlan(draws, seed=3, mixing="epoch")
    stream = plan_lib.SampleStream(num_samples, 3, 0, samples_per_epoch=8)
    for epoch in range(3):
        rows = [
            stream[p]
            for s in range(epoch * 5, epoch * 5 + 5)
            if plan(s).dataset == 0
            for p in plan_lib.BatchShards().positions(plan(s).draw, global_batch)
        ]
        assert len(rows) == len(set(rows)) == 8
        assert rows == [int(i) for i in stream._permutation(epoch)[:8]]


def test_mixing_is_part_of_the_run_identity_and_older_runs_mixed_by_weights():
    config = base.get_config("debug")
    assert config.data.mixing == "epoch"
    current = run_identity.identity(run_identity.config_json(config), None)
    older = {k: v for k, v in current.items() if k != "data.mixing"}  # saved before the field
    with pytest.raises(run_identity.RunMismatch, match="data.mixing weights -> epoch"):
        run_identity.check({"identity": older}, current, "ckpt/5")
    config.data.mixing = "weights"
    current = run_identity.identity(run_identity.config_json(config), None)
    run_identity.check({"identity": older}, current, "ckpt/5")  # the same run: resumes


def test_expected_step_shares():
    epoch = mixing_lib.EpochMixing((1, 1, 1), seed=0, batches_per_epoch=(3, 40, 2))
    np.testing.assert_allclose(epoch.step_shares(), [3 / 45, 40 / 45, 2 / 45])
    measured = np.bincount([epoch(s)[0] for s in range(90)], minlength=3) / 90  # two epochs
    np.testing.assert_allclose(measured, epoch.step_shares())
    weights = mixing_lib.WeightedMixing((1, 3), seed=0)
    np.testing.assert_allclose(weights.step_shares(), [0.25, 0.75])
