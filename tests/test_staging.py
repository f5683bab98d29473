"""A data_prep dataset kept in a bucket, read by the training pipeline (GCS emulator).

A small MMEarth conversion is uploaded to the emulator. ``RecordSource`` on its ``gs://`` URL
must copy it to the cache directory and give the same samples and statistics as the local
directory, exactly; so must the training pipeline's batches (``build_datasets`` with
``data.cache_dir``). A restart must reuse the copy without fetching anything, then fetch only a
truncated file and drop a stray one; two processes of a host staging at once must copy once; a
Grain worker's copy of the source must read the local copy without staging again. A folder
without ``features.json`` is refused, and so is a URL as a converter's ``--out``.
``python -m ramen_jax.evaluate`` must probe a model kept in the bucket on the bucket's dataset
and write its report there.
"""

import concurrent.futures
import json
import os
import pickle
import time

import jax
import numpy as np
import pytest
from test_data_prep_mmearth import convert, write_mmearth
from test_encode import TINY, random_state
from test_storage import bucket_files

from configs import base
from ramen_jax import storage
from ramen_jax.convert import model_io
from ramen_jax.data import pipeline, staging
from ramen_jax.data.sources import RecordSource, SourceConfigError
from ramen_jax.evaluate import __main__ as evaluate_cli
from ramen_jax.evaluate import datasets
from ramen_jax.perf import data_location


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """A local data_prep output: 8 MMEarth rows, 6 for train, 2 for val."""
    tmp = tmp_path_factory.mktemp("records")
    write_mmearth(tmp, rows=8)
    split_file = tmp / "splits.json"
    split_file.write_text(json.dumps({"train": list(range(6)), "val": [6, 7]}))
    assert convert(tmp, tmp / "records", "--split-file", str(split_file)) == 0
    return str(tmp / "records")


def upload_directory(local: str, url: str) -> None:
    for relative in storage.list_files(local):
        storage.upload_file(os.path.join(local, relative), f"{url}/{relative}")


def assert_same_samples(source, reference):
    assert len(source) == len(reference) > 0
    for index in range(len(reference)):
        got, want = source.load(index, None), reference.load(index, None)
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        got_stats, want_stats = source.stats(got), reference.stats(want)
        assert sorted(got_stats) == sorted(want_stats)
        for key, (mean, std) in want_stats.items():
            np.testing.assert_array_equal(got_stats[key][0], mean)
            np.testing.assert_array_equal(got_stats[key][1], std)


def test_record_source_reads_a_bucket_through_a_local_copy(
    records, gcs_bucket, tmp_path, monkeypatch
):
    url = f"{gcs_bucket}/data/mmearth"
    upload_directory(records, url)
    cache = str(tmp_path / "cache")
    source = RecordSource(url, "train", cache_dir=cache)
    assert source.local_path == os.path.join(cache, "gs", gcs_bucket[5:], "data", "mmearth")
    assert storage.list_files(source.local_path) == storage.list_files(records)
    assert_same_samples(source, RecordSource(records, "train"))
    assert_same_samples(RecordSource(url, "val", cache_dir=cache), RecordSource(records, "val"))

    fetched = []
    real_download = storage.download_files
    monkeypatch.setattr(
        storage,
        "download_files",
        lambda url, names, local: (fetched.append(sorted(names)), real_download(url, names, local)),
    )
    RecordSource(url, "train", cache_dir=cache)  # a restart: the copy is complete
    assert fetched == []
    shard = next(n for n in storage.list_files(records) if "train.array_record" in n)
    with open(os.path.join(source.local_path, shard), "r+b") as f:
        f.truncate(100)  # as a copy interrupted by a crash leaves it
    stray = os.path.join(source.local_path, "old-shard.array_record")
    open(stray, "wb").close()
    restarted = RecordSource(url, "train", cache_dir=cache)
    assert fetched == [[shard]] and not os.path.exists(stray)
    assert_same_samples(restarted, RecordSource(records, "train"))

    # Grain workers get a pickled source: it reads the local copy and stages nothing
    monkeypatch.setattr(staging, "stage_dataset", lambda *a: pytest.fail("staged in a worker"))
    assert_same_samples(pickle.loads(pickle.dumps(source)), RecordSource(records, "train"))


def test_processes_of_one_host_copy_once(records, gcs_bucket, tmp_path, monkeypatch):
    """Two stagings at once (threads hold separate lock files, as processes do): one copies,
    the other waits and finds the copy complete."""
    url = f"{gcs_bucket}/mmearth"
    upload_directory(records, url)
    fetched = []
    real_download = storage.download_files

    def slow_download(url, names, local):
        fetched.append(sorted(names))
        time.sleep(0.5)  # the other staging reaches the lock meanwhile
        real_download(url, names, local)

    monkeypatch.setattr(storage, "download_files", slow_download)
    cache = str(tmp_path / "cache")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        copies = list(pool.map(lambda _: staging.stage_dataset(url, cache), range(2)))
    assert copies[0] == copies[1] and fetched == [sorted(storage.list_files(records))]


def test_training_batches_from_a_bucket_equal_the_local_ones(records, gcs_bucket, tmp_path):
    url = f"{gcs_bucket}/mmearth"
    upload_directory(records, url)

    def first_batches(path):
        config = base.get_config()
        datasets = {"mmearth": base.paper_datasets().mmearth}
        datasets["mmearth"].source.path = path
        datasets["mmearth"].per_device_batch = 3
        config.data.datasets = datasets
        config.data.cache_dir = str(tmp_path / "cache")
        built = pipeline.build_datasets(config.data, batch_shards=1)
        batches = pipeline.StepBatches(built, seed=0, mask_ratio=0.75)
        return built[0].source, [batches(step) for step in range(3)]

    source, from_bucket = first_batches(url)
    assert source.local_path.startswith(str(tmp_path / "cache"))
    _, from_disk = first_batches(records)
    for got, want in zip(from_bucket, from_disk, strict=True):
        samples_got, samples_want = (x.batch.replace(layout=None) for x in (got, want))
        jax.tree.map(np.testing.assert_array_equal, samples_got, samples_want)

    config = base.get_config()
    config.data.datasets = {"mmearth": base.paper_datasets().mmearth}
    config.data.datasets["mmearth"].source.path = url
    located = data_location.locate_data(config, say=lambda text: None)
    assert located == {"mmearth": ("real", url)}


def test_an_unfinished_folder_is_refused(records, gcs_bucket, tmp_path):
    url = f"{gcs_bucket}/half"
    for name in ("stats.json", "dataset_info.json"):
        storage.upload_file(os.path.join(records, name), f"{url}/{name}")
    with pytest.raises(SourceConfigError, match="not a finished data_prep dataset"):
        RecordSource(url, "train", cache_dir=str(tmp_path))
    with pytest.raises(SourceConfigError, match="not a finished data_prep dataset"):
        RecordSource(f"{gcs_bucket}/nothing-here", "train", cache_dir=str(tmp_path))


def test_converters_refuse_a_bucket_url(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert(tmp_path, "gs://bucket/records")
    assert exit_info.value.code == 2
    assert "gs://bucket/records is a URL" in capsys.readouterr().err
    assert not (tmp_path / "gs:").exists()


def test_evaluate_reads_and_writes_a_bucket(records, gcs_bucket, tmp_path, capsys):
    upload_directory(records, f"{gcs_bucket}/mmearth")
    model_io.save_model(f"{gcs_bucket}/model", TINY, *random_state(TINY), has_decoder=False)
    argv = [
        "--checkpoint",
        f"{gcs_bucket}/model",
        "--out",
        f"{gcs_bucket}/eval",
        "--data",
        "records",
        "--data-dir",
        f"{gcs_bucket}/mmearth",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--label-key",
        "biome",
        "--use",
        "s2,s1",
        "--gsd",
        "160",
        "--reports",
        "curve",
        "--label-counts",
        "all",
        "--k",
        "3",
        "--linear-steps",
        "20",
        "--quiet",
    ]
    assert evaluate_cli.main(argv) == 0, capsys.readouterr().err  # modalities: dataset_info
    assert f"curve ({gcs_bucket}/eval/curve.csv)" in capsys.readouterr().out
    report = bucket_files(f"{gcs_bucket}/eval")
    assert sorted(report) == ["curve.csv", "curve.png", "run.json"]
    assert report["curve.png"][:8] == b"\x89PNG\r\n\x1a\n"
    rows = report["curve.csv"].decode().splitlines()
    assert rows[0].startswith("probe,") and len(rows) == 3  # knn and linear, accuracy
    assert json.loads(report["run.json"])["data"] == {
        "name": "mmearth",
        "task": "multiclass",
        "classes": 6,
        "train": 6,
        "test": 2,
        "note": "",
    }

    # the modalities from a JSON description in the bucket instead of the catalog's
    described = {"s2": {"kind": "optical", "channels": [490.0] * 13, "gsd": 10, "side": 64}}
    storage.write_text(f"{gcs_bucket}/modalities.json", json.dumps(described))
    data = datasets.load_records(
        data_dir=f"{gcs_bucket}/mmearth",
        label_key="biome",
        modalities=f"{gcs_bucket}/modalities.json",
        cache_dir=str(tmp_path / "cache"),
    )
    assert [(s.name, s.channels) for s in data.specs] == [("s2", (490.0,) * 13)]
    assert len(data.train) == 6 and len(data.test) == 2
