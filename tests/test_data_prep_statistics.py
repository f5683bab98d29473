"""data_prep.statistics: the original's per-sample statistics and its NORM_<key>_patch.json files.

Hand computations with numpy on small arrays; tolerance rtol 1e-12 (float64 throughout).
"""

import json

import numpy as np
import pytest

from data_prep import common, statistics
from ramen_jax.data.sources import RecordSource, SourceConfigError
from tests.test_data_prep_common import Toy, ToySource


def original_patch_stats(samples, skip_zero_planes=False) -> dict:
    """The original's ``compute_norm_vals`` by hand on ``[T, C, H, W]`` samples (its layout):
    per sample and channel the mean and unbiased std; then the mean over samples. Non-finite
    values count as 0; an all-zero sample (a missing modality) is left out; with
    ``skip_zero_planes`` (MMEarth) so is every all-zero (time step, channel) plane."""
    channels = samples[0].shape[1]
    means, stds = [[] for _ in range(channels)], [[] for _ in range(channels)]
    for sample in samples:
        x = np.nan_to_num(np.asarray(sample, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if not x.any():
            continue
        for c in range(channels):
            planes = x[:, c]
            if skip_zero_planes:
                planes = planes[planes.reshape(len(planes), -1).any(axis=1)]
            if planes.size < 2:
                continue
            means[c].append(planes.mean())
            stds[c].append(planes.std(ddof=1))
    return {
        "mean": [float(np.mean(m)) if m else 0.0 for m in means],
        "std": [float(np.mean(s)) if s else 1.0 for s in stds],
    }


def test_patch_stats_are_means_of_per_sample_means_and_unbiased_stds():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(5, 3, (t, 3, 3, 2)) for t in (1, 2, 3)]
    stats = statistics.PatchStats(2)
    for array in arrays:
        stats.add(array)
    means = [[a[..., c].mean() for c in range(2)] for a in arrays]
    stds = [[np.std(a[..., c], ddof=1) for c in range(2)] for a in arrays]
    summary = stats.summary()
    np.testing.assert_allclose(summary["mean"], np.mean(means, 0), rtol=1e-12)
    np.testing.assert_allclose(summary["std"], np.mean(stds, 0), rtol=1e-12)
    assert summary["count"] == 3


def test_zero_planes_count_unless_skipped_and_missing_modalities_never_count():
    a = np.arange(1.0, 17.0).reshape(2, 2, 2, 2)
    a[1, ..., 1] = 0  # an all-zero (time step, channel) plane
    a[0, 0, 0, 0] = np.nan  # counts as 0, as the pipeline sees it
    b = np.full((1, 2, 2, 2), 3.0)
    b[0, 0, 0, :] = 7.0
    b[..., 1] = 0  # channel 1 entirely zero in this sample
    missing = np.zeros((1, 2, 2, 2))
    values_a = np.nan_to_num(a)
    kept = statistics.PatchStats(2, skip_zero_planes=False)
    skipped = statistics.PatchStats(2, skip_zero_planes=True)
    for stats in (kept, skipped):
        for array in (a, b, missing):
            stats.add(array)
    # Every plane counts: both samples contribute to both channels.
    expected_mean = [
        (values_a[..., 0].mean() + b[..., 0].mean()) / 2,
        (values_a[..., 1].mean() + 0.0) / 2,
    ]
    expected_std = [
        (np.std(values_a[..., 0], ddof=1) + np.std(b[..., 0], ddof=1)) / 2,
        (np.std(values_a[..., 1], ddof=1) + 0.0) / 2,
    ]
    np.testing.assert_allclose(kept.summary()["mean"], expected_mean, rtol=1e-12)
    np.testing.assert_allclose(kept.summary()["std"], expected_std, rtol=1e-12)
    # MMEarth's rule: sample a's channel 1 keeps its first time step only; b has no channel 1.
    expected_mean[1] = values_a[0, ..., 1].mean()
    expected_std[1] = np.std(values_a[0, ..., 1], ddof=1)
    np.testing.assert_allclose(skipped.summary()["mean"], expected_mean, rtol=1e-12)
    np.testing.assert_allclose(skipped.summary()["std"], expected_std, rtol=1e-12)
    assert kept.summary()["count"] == skipped.summary()["count"] == 2


def test_a_channel_never_observed_gets_mean_0_std_1():
    array = np.ones((1, 2, 2, 2)) * np.arange(1, 5).reshape(1, 2, 2, 1)
    array[..., 1] = 0  # B10 of Sentinel-2 L2A
    stats = statistics.PatchStats(2, skip_zero_planes=True)
    stats.add(array)
    assert stats.summary()["mean"][1] == 0.0 and stats.summary()["std"][1] == 1.0


def test_patch_stats_do_not_depend_on_chunking():
    rng = np.random.default_rng(1)
    arrays = [rng.normal(5, 3, (2, 3, 3, 4)) for _ in range(7)]
    whole, first, second = (statistics.KeyStats(4, True) for _ in range(3))
    for array in arrays:
        whole.add(array)
    for array in arrays[:3]:
        first.add(array)
    for array in arrays[3:]:
        second.add(array)
    first.merge(statistics.KeyStats.from_json(json.loads(json.dumps(second.to_json()))))
    for method in statistics.METHODS:
        np.testing.assert_allclose(
            first.summary(method)["mean"], whole.summary(method)["mean"], rtol=1e-12
        )
        np.testing.assert_allclose(
            first.summary(method)["std"], whole.summary(method)["std"], rtol=1e-12
        )


def test_norm_files_use_the_originals_layout_and_channel_order(tmp_path):
    stats = {
        "s2_l1c": {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0], "original_channels": [0, 2, 1]},
        "dem": {"mean": [7.5], "std": [0.25], "count": 3},
    }
    statistics.write_norm_files(tmp_path, stats)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "NORM_dem_patch.json",
        "NORM_s2_l1c_patch.json",
    ]
    text = (tmp_path / "NORM_s2_l1c_patch.json").read_text()
    assert json.loads(text) == {"mean": [1.0, 3.0, 2.0], "std": [4.0, 6.0, 5.0]}
    assert text == json.dumps({"mean": [1.0, 3.0, 2.0], "std": [4.0, 6.0, 5.0]}, indent=4)
    back = statistics.read_norm_files(tmp_path, stats)
    for key in stats:
        assert back[key]["mean"] == stats[key]["mean"] and back[key]["std"] == stats[key]["std"]
    (tmp_path / "NORM_dem_patch.json").write_text(json.dumps({"mean": [1, 2], "std": [1, 2]}))
    with pytest.raises(ValueError, match="2 mean values, the records have 1 channels"):
        statistics.read_norm_files(tmp_path, stats)


def test_a_run_can_use_other_norm_files(tmp_path):
    common.convert(Toy, ToySource(), tmp_path / "toy", ["train"])
    written = common.load_stats(tmp_path / "toy")
    for key in written:  # the converter's NORM files hold the stats.json values
        on_disk = json.loads((tmp_path / "toy" / f"NORM_{key}_patch.json").read_text())
        assert on_disk == {"mean": written[key]["mean"], "std": written[key]["std"]}
    published = tmp_path / "published"
    published.mkdir()
    (published / "NORM_img_patch.json").write_text(json.dumps({"mean": [1, 2], "std": [3, 4]}))
    (published / "NORM_ts_patch.json").write_text(json.dumps({"mean": [5], "std": [6]}))
    source = RecordSource(str(tmp_path / "toy"), norm_path=str(published))
    sample = source.load(0, np.random.default_rng(0))
    stats = source.stats(sample)
    np.testing.assert_array_equal(stats["img"][0], [1, 2])
    np.testing.assert_array_equal(stats["img"][1], [3, 4])
    np.testing.assert_array_equal(stats["ts"][1], [6])
    (published / "NORM_ts_patch.json").unlink()
    with pytest.raises(SourceConfigError, match="no statistics file for 'ts'"):
        len(RecordSource(str(tmp_path / "toy"), norm_path=str(published)))
