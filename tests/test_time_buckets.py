"""Time buckets: no cap on dates; a series is padded to the bucket of its global batch's longest."""

import itertools

import jax
import ml_collections
import numpy as np
import pytest

from configs import base
from data_prep import common
from ramen_jax.data import buckets as bk
from ramen_jax.data import pipeline
from ramen_jax.data import plan as plan_lib
from ramen_jax.data.sources import RecordSource, SourceConfigError
from ramen_jax.training import precompile
from tests.test_data_prep_common import Toy, ToySource

LENGTHS = [3, 40, 7, 12, 25, 9, 18, 5, 31, 14, 22, 6]  # dates per sample, several above 16


class ScannedSource:
    """Samples whose series have ``LENGTHS`` dates; pixel values are the dates. No date index:
    the pipeline loads every sample once to count them."""

    def __len__(self):
        return len(LENGTHS)

    def load(self, index, rng):
        dates = np.arange(1, LENGTHS[index] + 1) + 100 * index
        pixels = dates[:, None, None, None] * np.ones((1, 4, 4, 2), np.float32)
        return {"s2": pixels, "s2_dates": dates, "dem": np.ones((1, 4, 4, 1), np.float32)}

    def stats(self, sample):
        return {"s2": (np.zeros(2), np.ones(2)), "dem": (np.zeros(1), np.ones(1))}


class VariableSource(ScannedSource):
    """The same with the date index a records source reads from ``time_steps.json``."""

    def time_steps(self, names):
        return {name: np.array(LENGTHS) for name in names}


def dataset_config(cap=0, dropout=0.0):
    return ml_collections.ConfigDict(
        {
            "source": {"type": "demo"},
            "per_device_batch": 2,
            "effective_gsds": [10.0, 20.0],
            "modalities": {
                "s2": base.modality("optical", [490, 560], 10, 4, True, cap, dropout),
                "dem": base.modality("dem", ["dsm"], 10, 4),
            },
        }
    )


def batches(cap=0, shards=None, batch_shards=2, source=None, dropout=0.0):
    dataset = pipeline.dataset_pipeline(
        "var", dataset_config(cap, dropout), source or VariableSource(), batch_shards, 8, 3
    )
    return pipeline.StepBatches([dataset], seed=5, mask_ratio=0.75, shards=shards, mixing="epoch")


def test_time_buckets_minimise_the_expected_slots_of_a_batch_maximum():
    steps = [1, 2, 2, 3, 5, 8, 8, 9, 13]
    distribution = bk.batch_max_distribution(steps, 3)
    values = np.array(sorted(set(steps)))
    below = np.array([np.mean(np.array(steps) <= v) for v in values])
    np.testing.assert_allclose(
        [distribution.get(int(v), 0.0) for v in values],
        np.diff(np.concatenate([[0], below**3])),
        rtol=1e-12,
    )
    for k in (1, 2, 3):
        chosen = bk.choose_time_buckets(steps, 3, k)

        def expected(buckets):
            return sum(p * bk.pick_time_bucket(buckets, v) for v, p in distribution.items())

        best = min(
            expected(c + (13,)) for n in range(k) for c in itertools.combinations(values[:-1], n)
        )
        assert len(chosen) <= k and chosen[-1] == 13
        assert expected(chosen) == best


def test_series_are_never_cut_and_pad_to_the_global_batchs_bucket():
    step_batches = batches()
    dataset = step_batches.datasets[0]
    assert dataset.time_buckets[-1] == 40 and len(dataset.time_buckets) <= 3
    assert len(dataset.buckets) * len(dataset.time_buckets) <= 8
    for step in range(12):
        batch = step_batches(step)
        draw = step_batches.draw(step)
        stream = step_batches.stream(0)
        rows = [stream[p] for p in range(draw.draw * 4, draw.draw * 4 + 4)]
        valid = batch.batch.time_valid["s2"]
        longest = max(LENGTHS[i] for i in rows)
        assert valid.shape[1] == bk.pick_time_bucket(dataset.time_buckets, longest)
        assert valid.sum(axis=1).tolist() == [LENGTHS[i] for i in rows]  # every date kept
        first_dates = batch.batch.dates["s2"][:, 0]
        assert [int(d) // 100 for d in first_dates] == rows
        assert batch.batch.pixels["dem"].shape[1] == 1


def test_processes_agree_on_the_time_bucket_and_split_the_batch():
    whole = batches()
    halves = [batches(shards=plan_lib.BatchShards(i, i + 1, 2)) for i in range(2)]
    for step in range(12):
        full = whole(step)
        parts = [half(step) for half in halves]
        samples = [p.batch.replace(layout=None) for p in parts]  # per-sample arrays only
        joined = jax.tree.map(lambda *xs: np.concatenate(xs), *samples)
        jax.tree.map(np.testing.assert_array_equal, joined, full.batch.replace(layout=None))


def test_a_source_without_an_index_is_scanned_and_a_cap_still_applies():
    assert not hasattr(ScannedSource(), "time_steps")
    scanned = batches(source=ScannedSource())
    np.testing.assert_array_equal(scanned.datasets[0].series_steps, LENGTHS)
    capped = batches(cap=16)
    assert capped.datasets[0].time_buckets[-1] == 16
    for step in range(6):
        assert capped(step).batch.time_valid["s2"].sum(axis=1).max() <= 16
    dropped = batches(dropout=0.3)  # the bucket counts the dates the dropout keeps
    kept = [max(1, int(n * 0.7)) for n in LENGTHS]
    np.testing.assert_array_equal(dropped.datasets[0].series_steps, kept)
    assert dropped(0).batch.time_valid["s2"].shape[1] in dropped.datasets[0].time_buckets


def test_a_records_source_reads_its_date_index(tmp_path):
    common.convert(Toy, ToySource(), tmp_path, ["train"])
    source = RecordSource(str(tmp_path))
    counts = [len(source.load(i, None)["ts_dates"]) for i in range(len(source))]
    np.testing.assert_array_equal(source.time_steps(["ts"])["ts"], counts)
    (tmp_path / common.TIME_STEPS_FILE).unlink()  # converted before the index existed: scanned
    np.testing.assert_array_equal(RecordSource(str(tmp_path)).time_steps(["ts"])["ts"], counts)


def test_a_partition_reads_a_fixed_share_of_the_split(tmp_path):
    common.convert(Toy, ToySource(), tmp_path, ["train"])
    whole = RecordSource(str(tmp_path))
    ids = [whole.load(i, None)["id"] for i in range(len(whole))]
    half = RecordSource(str(tmp_path), partition=0.5)
    kept = [half.load(i, None)["id"] for i in range(len(half))]
    assert len(kept) == 3 and set(kept) < set(ids)
    again = RecordSource(str(tmp_path), partition=0.5)
    assert [again.load(i, None)["id"] for i in range(len(again))] == kept
    counts = [len(half.load(i, None)["ts_dates"]) for i in range(len(half))]
    np.testing.assert_array_equal(half.time_steps(["ts"])["ts"], counts)
    with pytest.raises(SourceConfigError, match="partition"):
        RecordSource(str(tmp_path), partition=0.0)


def test_precompile_lists_every_token_and_time_bucket():
    step_batches = batches()
    dataset = step_batches.datasets[0]
    shapes = precompile.step_shapes(step_batches)
    assert len(shapes) == len(dataset.buckets) * len(dataset.time_buckets)
    listed = {pipeline.signature(shape) for shape in shapes}
    for step in range(12):
        batch = step_batches(step)
        assert pipeline.signature(batch) in listed
