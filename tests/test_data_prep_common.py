"""data_prep.common: record round trip, statistics, error policy, resume after interruption.

A toy source stands in for a dataset; values are exact (integers or float32 read back as written),
statistics are compared with numpy at rtol 1e-9.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from data_prep import common

TOY = common.DatasetSpec(
    name="toy",
    description="toy dataset for tests",
    homepage="",
    modalities=(
        common.Modality("img", "optical", (490, 560), gsd=1, side=4, dtype=np.uint16),
        common.Modality(
            "ts", "sar", ("asc_vv",), gsd=2, side=2, dtype=np.float32, time_series=True
        ),
    ),
    chunk_size=2,
)


class Toy(common.ChunkBuilder, skip_registration=True):
    name = "toy"
    DATASET = TOY


class Interrupted(Exception):
    """Stands for a crash or Ctrl-C in the middle of a chunk."""


def toy_example(item: int) -> dict:
    rng = np.random.default_rng(item)
    img = rng.integers(0, 1000, (1, 4, 4, 2)).astype(np.uint16)
    if item % 3 == 0:
        img[..., 1] = 0  # an absent channel: must not count in the statistics
    steps = 1 + item % 3
    ts = rng.normal(size=(steps, 2, 2, 1)).astype(np.float32)
    ts[0, 0, 0, 0] = np.nan if item % 2 else np.inf
    return {
        "img": img,
        "img_dates": np.array([1 + item % 366], np.int32),
        "ts": ts,
        "ts_dates": np.arange(1, steps + 1, dtype=np.int32) * 10,
        "id": f"item-{item}",
    }


class ToySource(common.Source):
    def __init__(self, train=6, val=2, bad=(), interrupt_at=None):
        self.train, self.val, self.bad, self.interrupt_at = train, val, set(bad), interrupt_at
        self.visited = []

    def items(self, split):
        return list(range(self.train)) if split == "train" else list(range(100, 100 + self.val))

    def describe(self, item):
        return f"toy item {item}"

    def examples(self, item):
        self.visited.append(item)
        if item == self.interrupt_at:
            raise Interrupted(item)
        if item in self.bad:
            raise common.SourceError(f"/fake/src/{item}.tif", "truncated file")
        yield str(item), toy_example(item)


def read_all(out_dir, split):
    source = common.load_split(out_dir, split)
    return {example["id"].decode(): example for example in (source[i] for i in range(len(source)))}


def expected_patch_stats(items):
    """The original's formula, by hand: per sample and channel, the mean and the unbiased std of
    all its values (non-finite ones set to 0); then the mean over samples of each."""
    result = {}
    for name, channels in (("img", 2), ("ts", 1)):
        means, stds = [], []
        for item in items:
            array = np.nan_to_num(toy_example(item)[name].astype(np.float64), posinf=0, neginf=0)
            per_channel = [array[..., c].ravel() for c in range(channels)]
            means.append([v.mean() for v in per_channel])
            stds.append([v.std(ddof=1) for v in per_channel])
        result[name] = {
            "mean": np.mean(means, axis=0).tolist(),
            "std": np.mean(stds, axis=0).tolist(),
            "count": len(items),
        }
    return result


def expected_stats(items):
    """Pooled statistics of the valid values (finite, in planes that are not all zero)."""
    result = {}
    for name, channels in (("img", 2), ("ts", 1)):
        per_channel, examples = [[] for _ in range(channels)], 0
        for item in items:
            array = toy_example(item)[name]
            seen = False
            for step in range(array.shape[0]):
                for channel in range(channels):
                    plane = array[step, ..., channel]
                    if np.any(plane != 0):
                        per_channel[channel].append(plane[np.isfinite(plane)].astype(np.float64))
                        seen = True
            examples += seen
        values = [np.concatenate(v) for v in per_channel]
        result[name] = {
            "mean": [v.mean() for v in values],
            "std": [v.std() for v in values],
            "count": examples,
        }
    return result


def assert_stats_close(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key]["mean"], expected[key]["mean"], rtol=1e-9)
        np.testing.assert_allclose(actual[key]["std"], expected[key]["std"], rtol=1e-9)
        assert actual[key]["count"] == expected[key]["count"]


def test_round_trip_shapes_dtypes_dates_and_stats(tmp_path, monkeypatch):
    scratch = tmp_path / "system_tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    common.convert(Toy, ToySource(), out, ["train", "val"])
    assert not any(scratch.iterdir())  # nothing left in the system's temporary directory
    train, val = read_all(out, "train"), read_all(out, "val")
    assert sorted(train) == [f"item-{i}" for i in range(6)]
    assert sorted(val) == ["item-100", "item-101"]
    for item in [*range(6), 100, 101]:
        expected = toy_example(item)
        actual = (train if item < 100 else val)[expected["id"]]
        for key in ("img", "img_dates", "ts", "ts_dates"):
            assert actual[key].dtype == expected[key].dtype
            np.testing.assert_array_equal(actual[key], expected[key])
    assert_stats_close(common.load_stats(out), expected_patch_stats(range(6)))
    for split in ("train", "val"):  # dates per record, in load_split's order
        records = common.load_split(out, split)
        expected = [len(records[i]["ts_dates"]) for i in range(len(records))]
        assert common.load_time_steps(out, split) == {"ts": expected}
    assert not (out / common.WORK_DIR).exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "NORM_img_patch.json",
        "NORM_ts_patch.json",
        "dataset_info.json",
        "features.json",
        "stats.json",
        "time_steps.json",
        "toy-train.array_record-00000-of-00003",
        "toy-train.array_record-00001-of-00003",
        "toy-train.array_record-00002-of-00003",
        "toy-val.array_record-00000-of-00001",
    ]


def test_pooled_statistics_stay_available(tmp_path):
    common.convert(Toy, ToySource(), tmp_path, ["train", "val"], stats_method="pooled")
    stats = common.load_stats(tmp_path)
    assert_stats_close(stats, expected_stats(range(6)))
    assert {entry["method"] for entry in stats.values()} == {"pooled"}


def test_load_split_needs_no_builder_class(tmp_path):
    common.convert(Toy, ToySource(), tmp_path, ["train"])
    code = (
        "import sys; from data_prep.common import load_split; s = load_split(sys.argv[1], 'train');"
        " print(len(s), s[0]['img'].shape, 'toy' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code, os.fspath(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    assert output.split() == ["6", "(1,", "4,", "4,", "2)", "False"]


def test_stop_policy_names_the_bad_path(tmp_path):
    with pytest.raises(common.SourceError, match="/fake/src/3.tif: truncated file"):
        common.convert(Toy, ToySource(bad={3}), tmp_path, ["train"])
    assert not (tmp_path / "dataset_info.json").exists()
    assert not list(tmp_path.glob("*array_record*"))


def test_skip_policy_reports_and_drops_items(tmp_path, caplog):
    # Items 2 and 3 form a whole chunk: it ends up empty and is left out of the shard list.
    common.convert(Toy, ToySource(bad={2, 3, 5}), tmp_path, ["train"], on_error="skip")
    assert sorted(read_all(tmp_path, "train")) == ["item-0", "item-1", "item-4"]
    for item in (2, 3, 5):
        assert f"/fake/src/{item}.tif" in caplog.text
    assert_stats_close(common.load_stats(tmp_path), expected_patch_stats([0, 1, 4]))
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert [int(n) for n in info["splits"][0]["shardLengths"]] == [2, 1]


def test_skip_policy_never_finishes_a_dataset_without_examples(tmp_path):
    with pytest.raises(common.EmptyDatasetError, match="all 3 source items were skipped"):
        common.convert(Toy, ToySource(train=3, bad={0, 1, 2}), tmp_path, ["train"], on_error="skip")
    assert not (tmp_path / "dataset_info.json").exists()
    assert not (tmp_path / common.WORK_DIR).exists()  # a rerun reads the sources again
    # Fixed sources convert on the rerun: no chunk result of the failed run is reused.
    common.convert(Toy, ToySource(train=3), tmp_path, ["train"], on_error="skip")
    assert sorted(read_all(tmp_path, "train")) == ["item-0", "item-1", "item-2"]


class RepeatingKeys(ToySource):
    """Items 1 and 2 yield the record key of item 0, as a split listing one AOI twice did."""

    def examples(self, item):
        for _, example in super().examples(item):
            yield ("0" if item in (1, 2) else str(item)), example


def test_a_repeated_record_key_is_a_source_error_of_its_item(tmp_path, caplog):
    with pytest.raises(common.SourceError, match="toy item 1: repeated record key 0"):
        common.convert(Toy, RepeatingKeys(train=4), tmp_path / "stop", ["train"], chunk_size=4)
    common.convert(
        Toy, RepeatingKeys(train=4), tmp_path / "skip", ["train"], chunk_size=4, on_error="skip"
    )
    assert sorted(read_all(tmp_path / "skip", "train")) == ["item-0", "item-3"]
    assert "toy item 2: repeated record key 0" in caplog.text


def test_resume_after_interruption_redoes_only_unfinished_chunks(tmp_path):
    with pytest.raises(Interrupted):
        common.convert(Toy, ToySource(interrupt_at=3), tmp_path, ["train", "val"])
    work = tmp_path / common.WORK_DIR
    assert not (tmp_path / "dataset_info.json").exists()
    assert not list(tmp_path.glob("*array_record*"))  # no shard outside the work area
    assert sorted(p.name for p in (work / "chunks").iterdir()) == ["train-00000.json"]
    # What a hard kill would leave behind: a half-written TFDS folder of the unfinished chunk.
    stale = work / "builds" / "train-00001" / "toy" / "incomplete.X_1.0.0"
    stale.mkdir(parents=True)
    (stale / "toy-train.array_record-00000-of-00001").write_bytes(b"partial")

    resumed = ToySource()
    common.convert(Toy, resumed, tmp_path, ["train", "val"])
    assert resumed.visited == [2, 3, 4, 5, 100, 101]

    reference = tmp_path.parent / "reference"
    common.convert(Toy, ToySource(), reference, ["train", "val"])
    for split in ("train", "val"):
        got, want = read_all(tmp_path, split), read_all(reference, split)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key]["ts"], want[key]["ts"])
    assert common.load_stats(tmp_path) == common.load_stats(reference)
    assert not work.exists()


def test_resume_after_a_crash_between_shard_commit_and_manifest(tmp_path, monkeypatch):
    save_result = common.Workspace.save_result

    def crash_on_second_chunk(self, chunk, result):
        if chunk.name == "train-00001":
            raise Interrupted(chunk.name)
        save_result(self, chunk, result)

    monkeypatch.setattr(common.Workspace, "save_result", crash_on_second_chunk)
    with pytest.raises(Interrupted):
        common.convert(Toy, ToySource(), tmp_path, ["train"])
    assert list((tmp_path / common.WORK_DIR / "builds" / "train-00001").rglob("*array_record*"))
    monkeypatch.setattr(common.Workspace, "save_result", save_result)
    resumed = ToySource()
    common.convert(Toy, resumed, tmp_path, ["train"])
    assert resumed.visited == [2, 3, 4, 5]  # the committed but unrecorded chunk is rebuilt
    assert sorted(read_all(tmp_path, "train")) == [f"item-{i}" for i in range(6)]
    assert_stats_close(common.load_stats(tmp_path), expected_patch_stats(range(6)))


def test_rerun_with_other_options_is_refused_and_finished_output_kept(tmp_path):
    with pytest.raises(Interrupted):
        common.convert(Toy, ToySource(interrupt_at=3), tmp_path, ["train"])
    with pytest.raises(RuntimeError, match="unfinished conversion of other inputs"):
        common.convert(Toy, ToySource(), tmp_path, ["train"], chunk_size=3)
    common.convert(Toy, ToySource(), tmp_path, ["train"])
    again = ToySource()
    common.convert(Toy, again, tmp_path, ["train"])
    assert again.visited == []


def test_worker_processes_write_the_same_records(tmp_path):
    common.convert(Toy, ToySource(), tmp_path / "serial", ["train", "val"])
    common.convert(Toy, ToySource(), tmp_path / "parallel", ["train", "val"], workers=2)
    for split in ("train", "val"):
        serial, parallel = (
            read_all(tmp_path / "serial", split),
            read_all(tmp_path / "parallel", split),
        )
        assert serial.keys() == parallel.keys()
        for key in serial:
            np.testing.assert_array_equal(serial[key]["img"], parallel[key]["img"])
    assert common.load_stats(tmp_path / "serial") == common.load_stats(tmp_path / "parallel")
    with pytest.raises(common.SourceError, match="/fake/src/3.tif"):  # crosses the process pool
        common.convert(Toy, ToySource(bad={3}), tmp_path / "bad", ["train"], workers=2)


def test_max_examples_limits_each_split(tmp_path):
    source = ToySource()
    common.convert(Toy, source, tmp_path, ["train", "val"], max_examples=3)
    assert len(common.load_split(tmp_path, "train")) == 3
    assert len(common.load_split(tmp_path, "val")) == 2
    assert source.visited == [0, 1, 2, 100, 101]


def test_channel_stats_do_not_depend_on_chunking():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(5, 3, (2, 3, 3, 4)) for _ in range(7)]
    whole, first, second = common.ChannelStats(4), common.ChannelStats(4), common.ChannelStats(4)
    for array in arrays:
        whole.add(array)
    for array in arrays[:3]:
        first.add(array)
    for array in arrays[3:]:
        second.add(array)
    first.merge(common.ChannelStats.from_json(json.loads(json.dumps(second.to_json()))))
    values = np.concatenate([a.reshape(-1, 4) for a in arrays])
    for stats in (whole, first):
        np.testing.assert_allclose(stats.summary()["mean"], values.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.summary()["std"], values.std(0), rtol=1e-12)
        assert stats.summary()["count"] == 7


def test_check_rejects_examples_off_spec():
    example = toy_example(1)
    TOY.check(example, "here")
    wrong_dtype = {**example, "img": example["img"].astype(np.int32)}
    with pytest.raises(common.SourceError, match="here: img: got int32"):
        TOY.check(wrong_dtype, "here")
    two_steps = {**example, "img": np.repeat(example["img"], 2, axis=0)}
    with pytest.raises(common.SourceError, match="img: got uint16"):
        TOY.check(two_steps, "here")
    bad_date = {**example, "ts_dates": np.zeros_like(example["ts_dates"])}
    with pytest.raises(common.SourceError, match="outside 1..366"):
        TOY.check(bad_date, "here")
