"""The typed batch contract (``ramen_jax.batch``): derived sizes, pytree behaviour under jit,
micro-batch splitting and pickling (Grain workers send batches between processes)."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ramen_jax import sensors
from ramen_jax.batch import Batch, HostBatch, Layout, LayoutError, build_layout

# a 40 px S2 image at 10 m (reference) and a time series at 20 m over the same 400 m
S2 = sensors.modality("s2", "optical", [490, 560, 665, 842], 10.0, 40)
S1 = sensors.modality("s1", "sar", ["asc_vv", "asc_vh"], 20.0, 20, time_series=True)


def make_batch(gsd=40.0, rows=3, steps=5, grid_pad=None, kept=("s2", "s1"), seed=0) -> Batch:
    rng = np.random.default_rng(seed)
    specs = (S2, S1)
    layout = build_layout(specs, list(kept), gsd, grid_pad=grid_pad, token_bucket=256)
    slots = {s.name: steps if s.time_series else 1 for s in specs}
    return Batch(
        pixels={
            s.name: rng.normal(size=(rows, slots[s.name], s.side, s.side, s.num_channels)).astype(
                np.float32
            )
            for s in specs
        },
        dates={s.name: np.ones((rows, slots[s.name]), np.int32) for s in specs},
        time_valid={s.name: np.ones((rows, slots[s.name]), bool) for s in specs},
        layout=layout,
    )


def test_derived_sizes():
    batch = make_batch(gsd=40.0, rows=3, steps=5)
    side = 400 // 40  # the reference modality's extent over the GSD
    assert batch.layout.grid_pad == side
    assert batch.layout.length == 256  # the token bucket, padding included
    assert int(batch.layout.token_valid.sum()) == 2 * side * side
    assert batch.layout.series_length == side * side  # S1's tokens only
    assert batch.batch_size == 3
    assert batch.time_slots == 5
    padded = make_batch(gsd=40.0, grid_pad=16)
    assert padded.layout.grid_pad == 16 and padded.layout.enc_resize["s1"].shape == (16, 20)
    only_s2 = make_batch(kept=("s2",), steps=1)
    assert only_s2.layout.series_length == 0 and only_s2.time_slots == 1


def test_layout_refuses_padding_smaller_than_the_step():
    with pytest.raises(LayoutError, match="smaller than the step"):
        build_layout((S2, S1), ["s2"], 40.0, grid_pad=4)


def test_pytree_round_trip_and_one_trace_when_only_values_change():
    batch = make_batch()
    leaves, tree = jax.tree.flatten(batch)
    back = jax.tree.unflatten(tree, leaves)
    assert isinstance(back, Batch) and isinstance(back.layout, Layout)
    for x, y in zip(jax.tree.leaves(back), leaves, strict=True):
        assert x is y
    traces = []

    @jax.jit
    def summary(b: Batch):
        traces.append(1)
        return jnp.sum(b.pixels["s2"]) * b.layout.effective_gsd + b.layout.grid_pad

    first = summary(batch)
    other = make_batch(seed=1)  # new values, same shapes
    other = other.replace(layout=other.layout.replace(effective_gsd=np.float32(80.0)))
    second = summary(other)
    assert len(traces) == 1
    np.testing.assert_allclose(first, np.sum(batch.pixels["s2"]) * 40.0 + 10, rtol=1e-5)
    np.testing.assert_allclose(second, np.sum(other.pixels["s2"]) * 80.0 + 10, rtol=1e-5)
    summary(make_batch(rows=2))  # a new shape: a new trace
    assert len(traces) == 2


def test_map_samples_splits_rows_and_keeps_the_layout():
    batch = make_batch(rows=4)
    half = batch.map_samples(lambda x: x[:2])
    assert half.batch_size == 2 and half.layout is batch.layout
    np.testing.assert_array_equal(half.dates["s1"], batch.dates["s1"][:2])
    stacked = batch.map_samples(lambda x: x.reshape(2, 2, *x.shape[1:])).replace(layout=None)
    leaves = jax.tree.leaves(stacked)  # the scan's micro-batches: per-sample arrays only
    assert len(leaves) == 6 and all(x.shape[:2] == (2, 2) for x in leaves)


def test_host_batch_pickles_and_stays_out_of_the_pytree():
    host = HostBatch(dataset="demo", batch=make_batch(), step=7)
    back = pickle.loads(pickle.dumps(host))
    assert (back.dataset, back.step) == ("demo", 7)
    jax.tree.map(np.testing.assert_array_equal, back.batch, host.batch)
    assert jax.tree.leaves(host) == [host]  # not a pytree: never a jit argument by accident
