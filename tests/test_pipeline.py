"""Input pipeline: step plan, buckets, sample preparation, resume and per-process sharding."""

import math

import jax
import numpy as np
import pytest

from configs import base, demo
from ramen_jax import sensors
from ramen_jax.data import buckets as bk
from ramen_jax.data import pipeline
from ramen_jax.data import plan as plan_lib


def demo_batches(seed=0, process_index=0, process_count=1, batch=4, max_buckets=4):
    config = demo.get_config()
    config.data.datasets = base.demo_datasets(per_device_batch=batch)
    datasets = pipeline.build_datasets(config.data, batch_shards=1, max_buckets=max_buckets)
    return pipeline.StepBatches(
        datasets,
        seed=seed,
        mask_ratio=0.75,
        shards=plan_lib.BatchShards(process_index, process_index + 1, process_count),
    )


def assert_batches_equal(a, b):
    assert a.dataset == b.dataset and a.step == b.step
    assert_trees_equal(a.batch, b.batch)


def assert_trees_equal(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_demo_batch_contents():
    batches = demo_batches()
    batch = batches(0).batch
    draw = batches.draw(0)
    specs = batches.datasets[0].specs
    layout = batch.layout
    for spec in specs:
        x = batch.pixels[spec.name]
        assert x.dtype == np.float32 and x.shape == (4, 1, spec.side, spec.side, spec.num_channels)
        assert np.all(np.isfinite(x))
        assert batch.dates[spec.name].shape == (4, 1)
    kept = [specs[i].name for i in draw.kept]
    side = int(specs[0].side * specs[0].gsd / draw.effective_gsd)
    assert int(layout.token_valid.sum()) == len(kept) * side * side
    assert int(layout.num_keep) == int(len(kept) * side * side * 0.25)
    present = np.unique(layout.token_modality[layout.token_valid])
    assert [specs[i].name for i in present] == sorted(kept, key=[s.name for s in specs].index)
    # normalised with the demo statistics: roughly centred
    stacked = np.concatenate([batch.pixels[s.name].ravel() for s in specs])
    assert abs(stacked.mean()) < 1.0 and 0.2 < stacked.std() < 5.0


def test_same_seed_same_stream_other_seed_differs():
    a, b, c = demo_batches(seed=3), demo_batches(seed=3), demo_batches(seed=4)
    for step in (0, 1, 7):
        assert_batches_equal(a(step), b(step))
    assert any(
        not np.array_equal(a(s).batch.pixels["s2_10m"], c(s).batch.pixels["s2_10m"])
        for s in range(3)
    )


def test_resume_yields_the_exact_next_batches():
    batches = demo_batches()
    uninterrupted = pipeline.make_iterator(batches, 12)
    reference = [next(uninterrupted) for _ in range(8)]
    resumed = pipeline.make_iterator(demo_batches(), 12, start_step=5)  # a fresh process
    for k in range(5, 8):
        assert_batches_equal(next(resumed), reference[k])


def test_processes_read_disjoint_slices_of_the_global_batch():
    whole = demo_batches(batch=4)
    halves = [demo_batches(batch=4, process_index=p, process_count=2) for p in (0, 1)]
    for step in range(3):
        full = whole(step)
        parts = [h(step) for h in halves]
        samples = [p.batch.replace(layout=None) for p in parts]  # per-sample arrays only
        assert all(x.shape[0] == 2 for s in samples for x in jax.tree.leaves(s))
        joined = jax.tree.map(lambda *xs: np.concatenate(xs), *samples)
        assert_trees_equal(joined, full.batch.replace(layout=None))
        for part in parts:  # every process plans the same step
            assert part.dataset == full.dataset and part.step == full.step
            assert_trees_equal(part.batch.layout, full.batch.layout)


def test_step_plan_follows_the_original_distribution():
    draws = [
        plan_lib.DatasetDraws((10.0, 20.0, 40.0), 4, 1.0),
        plan_lib.DatasetDraws((5.0,), 2, 3.0),
    ]
    plan = plan_lib.StepPlan(draws, seed=0)
    steps = [plan(i) for i in range(4000)]
    share = np.mean([s.dataset == 1 for s in steps])
    assert abs(share - 0.75) < 0.03
    first = [s for s in steps if s.dataset == 0]
    sizes = np.bincount([len(s.kept) for s in first], minlength=5)[1:]
    assert np.all(np.abs(sizes / len(first) - 0.25) < 0.04)  # subset size uniform in 1..n
    assert {s.effective_gsd for s in first} == {10.0, 20.0, 40.0}
    assert all(len(set(s.kept)) == len(s.kept) for s in steps)
    # draw counters: the k-th step of a dataset reads its k-th batch
    counts = [0, 0]
    for s in steps:
        assert s.draw == counts[s.dataset]
        counts[s.dataset] += 1
    assert plan(3999) == plan_lib.StepPlan(draws, seed=0)(3999)  # random access, fresh plan
    assert plan(5000).draw == plan_lib.StepPlan(draws, seed=0)(5000).draw


def test_sample_stream_reshuffles_each_epoch_and_covers_everything():
    stream = plan_lib.SampleStream(10, seed=1, dataset_index=0)
    epochs = [[stream[e * 10 + i] for i in range(10)] for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    with pytest.raises(ValueError, match="divisible"):
        plan_lib.BatchShards(0, 1, 2).positions(0, 5)
    assert list(plan_lib.BatchShards(1, 2, 2).positions(3, 8)) == [28, 29, 30, 31]
    # two of four shards (a process with two devices on the batch axis)
    assert list(plan_lib.BatchShards(2, 4, 4).positions(1, 8)) == [12, 13, 14, 15]
    # the whole batch (the batch axis lies within the process, replicated across processes)
    assert list(plan_lib.BatchShards(0, 1, 1).positions(2, 3)) == [6, 7, 8]


def test_buckets_cover_every_step_within_the_budget():
    specs = pipeline.modality_specs(base.paper_datasets().flairhub.modalities)
    gsds = [float(g) for g in range(3, 21)]
    distribution = bk.step_distribution(specs, gsds)
    assert math.isclose(sum(distribution.values()), 1.0)
    buckets = bk.choose_buckets(distribution, 16)
    assert len(buckets) <= 16
    for tokens, series in distribution:
        bucket = bk.pick_bucket(buckets, tokens, series)
        assert bucket.tokens >= tokens and bucket.series >= series
    exact = bk.choose_buckets(distribution, len(distribution))
    assert bk.padding_fraction(distribution, exact) == 0.0
    assert 0 < bk.padding_fraction(distribution, buckets) < 0.15


def test_prepare_sample_checks_normalises_and_pads():
    spec = sensors.modality("s2", "optical", [490, 560, 665], 10, 4, True, 3)
    stats = {"s2": (np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))}
    rng = np.random.default_rng(0)
    x = np.ones((2, 4, 4, 3), np.float32) * 5
    x[0, 0, 0, 0] = np.nan
    out = pipeline.prepare_sample({"s2": x, "s2_dates": np.array([10, 20])}, [spec], stats, rng)
    pixels, dates, valid = out["s2"]
    assert pixels.shape == (3, 4, 4, 3) and list(valid) == [True, True, False]
    assert list(dates) == [10, 20, 1]
    # NaN -> 0 before normalising, as the original: (0 - 1) / 2
    assert pixels[0, 0, 0, 0] == -0.5 and pixels[0, 1, 1, 0] == 2.0 and pixels[1, 0, 0, 2] == 1.0
    assert np.all(pixels[2] == 0)
    missing_band = np.ones((1, 4, 4, 3), np.float32)
    missing_band[..., 1] = 0
    band = pipeline.prepare_sample({"s2": missing_band}, [spec], stats, rng)["s2"][0]
    assert np.all(band[0, ..., 1] == 0) and np.all(band[0, ..., 0] == 0.0)
    zero = pipeline.prepare_sample({"s2": np.zeros((1, 4, 4, 3))}, [spec], stats, rng)
    assert np.all(zero["s2"][0] == 0)  # a missing (all-zero) modality stays zero
    long = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 4, 4, 3))
    cut = pipeline.prepare_sample({"s2": long, "s2_dates": np.arange(5) + 100}, [spec], stats, rng)[
        "s2"
    ]
    assert cut[2].all() and np.all(np.diff(cut[1]) > 0)  # 3 of 5 dates, in order
    with pytest.raises(pipeline.BatchError, match="s2.*4 channels|expected.*3 channels"):
        pipeline.prepare_sample({"s2": np.ones((1, 4, 4, 4))}, [spec], stats, rng)
    with pytest.raises(pipeline.BatchError, match="missing"):
        pipeline.prepare_sample({}, [spec], stats, rng)


def test_original_time_padding_switch():
    """``data.time_padding = "original"``: padded slots are zero frames dated 0 that count."""
    spec = sensors.modality("s2", "optical", [490], 10, 2, True, 3)
    stats = {"s2": (np.zeros(1), np.ones(1))}
    sample = {"s2": np.ones((1, 2, 2, 1)), "s2_dates": np.array([50])}
    rng = np.random.default_rng(0)
    masked = pipeline.prepare_sample(sample, [spec], stats, rng)["s2"]
    original = pipeline.prepare_sample(sample, [spec], stats, rng, mask_time_padding=False)["s2"]
    assert list(masked[2]) == [True, False, False] and list(masked[1]) == [50, 1, 1]
    assert list(original[2]) == [True, True, True] and list(original[1]) == [50, 0, 0]
    np.testing.assert_array_equal(masked[0], original[0])
