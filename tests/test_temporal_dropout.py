"""Temporal dropout: how many dates a series keeps, which, and that a step reproduces them."""

import ml_collections
import numpy as np
import pytest

from configs import base
from ramen_jax.data import pipeline
from ramen_jax.data import temporal_dropout as td
from ramen_jax.training import run_identity

DATES = 10  # kept: int(10 * 0.7) = 7


def test_kept_counts_follow_the_originals_arithmetic():
    assert [td.kept_count(n, 0.3) for n in (2, 3, 4, 10, 16, 20)] == [1, 2, 2, 7, 11, 14]
    assert td.kept_count(1, 0.3) == 1 and td.kept_count(3, 0.9) == 1
    with pytest.raises(ValueError, match="outside"):
        td.fractions_of({"s2": {"temporal_dropout": 1.0}})


def test_drop_dates_keeps_a_random_ordered_subset_and_leaves_the_rest():
    pixels = np.arange(DATES, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 3))
    sample = {
        "s2": pixels,
        "s2_dates": np.arange(100, 100 + DATES),
        "one": pixels[:1],
        "one_dates": np.array([5]),
        "aerial": np.ones((1, 4, 4, 3)),
    }
    fractions = {"s2": 0.3, "one": 0.3, "absent": 0.3}
    out = td.drop_dates(sample, fractions, np.random.default_rng(0))
    assert out["s2"].shape == (7, 2, 2, 3) and len(out["s2_dates"]) == 7
    assert np.all(np.diff(out["s2_dates"]) > 0)  # temporal order kept
    np.testing.assert_array_equal(out["s2"][:, 0, 0, 0] + 100, out["s2_dates"])  # same dates
    assert out["one"] is sample["one"] and out["aerial"] is sample["aerial"]
    assert sample["s2"].shape[0] == DATES  # the input is not changed
    again = td.drop_dates(sample, fractions, np.random.default_rng(0))
    np.testing.assert_array_equal(again["s2_dates"], out["s2_dates"])
    subsets = {
        tuple(td.drop_dates(sample, fractions, np.random.default_rng(s))["s2_dates"])
        for s in range(40)
    }
    assert len(subsets) > 20  # drawn afresh, not a fixed subset


class SeriesSource:
    """Eight samples of one 10-date series whose pixel values are their dates."""

    def __len__(self):
        return 8

    def load(self, index, rng):
        dates = np.arange(1, DATES + 1) * 10 + index
        pixels = dates[:, None, None, None] * np.ones((1, 4, 4, 2), np.float32)
        return {"s2": pixels, "s2_dates": dates}

    def stats(self, sample):
        return {"s2": (np.zeros(2), np.ones(2))}


def series_batches(fraction):
    data = ml_collections.ConfigDict()
    data.datasets = {
        "series": {
            "source": {"type": "demo"},
            "per_device_batch": 4,
            "effective_gsds": [10.0],
            "modalities": {
                "s2": base.modality("optical", [490, 560], 10, 4, True, 16, fraction),
            },
        }
    }
    cfg = data.datasets.series
    datasets = [pipeline.dataset_pipeline("series", cfg, SeriesSource(), 1, 1, 1)]
    return pipeline.StepBatches(datasets, seed=3, mask_ratio=0.75, mixing="epoch")


def test_the_pipeline_drops_dates_per_load_reproducibly():
    batches = series_batches(0.3)
    first = batches(5)
    valid = first.batch.time_valid["s2"]
    assert valid.shape == (4, 7) and np.all(valid.sum(axis=1) == 7)  # time bucket: 7 dates
    dates = first.batch.dates["s2"][:, :7]
    assert np.all(np.diff(dates, axis=1) > 0)
    np.testing.assert_array_equal(dates, first.batch.pixels["s2"][:, :7, 0, 0, 0])
    np.testing.assert_array_equal(series_batches(0.3)(5).batch.dates["s2"], first.batch.dates["s2"])
    subsets = {}  # sample -> the date subsets its loads kept (10 epochs: 10 loads each)
    for step in range(20):
        for row in batches(step).batch.dates["s2"][:, :7]:
            subsets.setdefault(int(row[0] % 10), set()).add(tuple(row // 10))
    assert len(subsets) == 8 and all(len(kept) > 1 for kept in subsets.values())
    assert np.all(series_batches(0.0)(5).batch.time_valid["s2"].sum(axis=1) == DATES)


def test_the_paper_config_drops_flairhub_sentinel_dates_only():
    datasets = base.get_config().data.datasets
    fractions = {name: td.fractions_of(d.modalities) for name, d in datasets.items()}
    assert fractions == {"flairhub": {"s2": 0.3, "s1_des": 0.3}, "mmearth": {}, "worldstrat": {}}


def test_dropout_is_part_of_the_run_identity_and_older_runs_had_none():
    config = base.get_config()
    current = run_identity.identity(run_identity.config_json(config), None)
    key = "data.datasets.flairhub.modalities.s2.temporal_dropout"
    assert current[key] == 0.3
    older = {k: v for k, v in current.items() if not k.endswith(".temporal_dropout")}
    with pytest.raises(run_identity.RunMismatch, match=f"{key} 0.0 -> 0.3"):
        run_identity.check({"identity": older}, current, "ckpt/5")
    for modality in ("s2", "s1_des"):
        config.data.datasets.flairhub.modalities[modality].temporal_dropout = 0.0
    current = run_identity.identity(run_identity.config_json(config), None)
    run_identity.check({"identity": older}, current, "ckpt/5")  # the same run: resumes
