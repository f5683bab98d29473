"""ramen_jax.storage on local paths and on a GCS emulator (``gcs_bucket``, tests/conftest.py).

Each helper must give the same bytes on both: whole-file writes, appends (on GCS composed, no
temporary object left behind; without compose rewritten), downloads for libraries that need a
local file, uploads only when the writer succeeded, directory listings with sizes. The training
reporter must put metrics.jsonl and TensorBoard events in a bucket workdir, and a resumed run
must append to them. Warnings gcsfs repeats at every operation must be shown once.
"""

import json
import logging
import os
import shutil
import struct

import pytest

from ramen_jax import storage
from ramen_jax.training import reporting


def bucket_files(url: str) -> dict[str, bytes]:
    """``{relative path: content}`` under ``url``, read with a fresh client (no cached listing
    from earlier in the test)."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)
    root = url.removeprefix("gs://").rstrip("/")
    return {name[len(root) + 1 :]: fs.cat_file(name) for name in fs.find(root)}


def test_local_paths(tmp_path):
    target = tmp_path / "a.txt"
    assert not storage.is_remote(target) and storage.is_remote("gs://b/x")
    assert storage.join("gs://b/run", "metrics.jsonl") == "gs://b/run/metrics.jsonl"
    assert storage.join(str(tmp_path), "x") == os.path.join(tmp_path, "x")
    storage.write_text(target, "one\n")
    storage.append_bytes(target, b"two\n")
    assert target.read_text() == "one\ntwo\n" and os.listdir(tmp_path) == ["a.txt"]
    with storage.local_copy(target) as local:
        assert local == str(target)
    with storage.local_output(tmp_path / "b.bin") as local:
        assert local.endswith(".partial")
        with open(local, "wb") as f:
            f.write(b"whole")
    assert (tmp_path / "b.bin").read_bytes() == b"whole"
    with pytest.raises(RuntimeError), storage.local_output(tmp_path / "c.bin") as local:
        with open(local, "wb") as f:
            f.write(b"half")
        raise RuntimeError("writer failed")
    with storage.local_output_dir(tmp_path / "out") as directory:
        os.makedirs(os.path.join(directory, "sub"))
        with open(os.path.join(directory, "sub", "d.bin"), "wb") as f:
            f.write(b"12345")
    assert storage.list_files(tmp_path) == {"a.txt": 8, "b.bin": 5, "out/sub/d.bin": 5}


def test_the_same_on_a_bucket(gcs_bucket, tmp_path):
    run = f"{gcs_bucket}/run"
    storage.makedirs(run)  # no directories on object stores: nothing to create
    storage.write_text(f"{run}/a.txt", "one\n")
    storage.append_bytes(f"{run}/a.txt", b"two\n")
    storage.append_bytes(f"{run}/a.txt", b"three\n")
    storage.append_bytes(f"{run}/new.txt", b"first\n")
    assert storage.read_text(f"{run}/a.txt") == "one\ntwo\nthree\n"
    assert bucket_files(run) == {"a.txt": b"one\ntwo\nthree\n", "new.txt": b"first\n"}

    with storage.local_copy(f"{run}/a.txt") as local:
        assert not storage.is_remote(local)
        assert open(local, "rb").read() == b"one\ntwo\nthree\n"
    assert not os.path.exists(local)  # the download is gone with the block
    with storage.local_output(f"{run}/b.bin") as local:
        with open(local, "wb") as f:
            f.write(b"whole")
    with pytest.raises(RuntimeError), storage.local_output(f"{run}/c.bin") as local:
        with open(local, "wb") as f:
            f.write(b"half")
        raise RuntimeError("writer failed")
    with storage.local_output_dir(f"{run}/out") as directory:
        os.makedirs(os.path.join(directory, "sub"))
        with open(os.path.join(directory, "sub", "d.bin"), "wb") as f:
            f.write(b"12345")
    sizes = {"a.txt": 14, "b.bin": 5, "new.txt": 6, "out/sub/d.bin": 5}
    assert storage.list_files(run) == sizes
    storage.download_files(run, ["b.bin", "out/sub/d.bin"], str(tmp_path))
    assert storage.list_files(tmp_path) == {"b.bin": 5, "out/sub/d.bin": 5}

    assert not storage.as_path(f"{gcs_bucket}-absent").exists()
    storage.makedirs(f"{gcs_bucket}-absent/run")  # a mistyped bucket is not created
    assert not storage.as_path(f"{gcs_bucket}-absent").exists()


def test_append_without_compose_rewrites_the_object(gcs_bucket, monkeypatch):
    monkeypatch.setattr(storage, "_composes", lambda fs: False)
    storage.append_bytes(f"{gcs_bucket}/log", b"a\n")
    storage.append_bytes(f"{gcs_bucket}/log", b"b\n")
    assert bucket_files(gcs_bucket) == {"log": b"a\nb\n"}


def event_records(data: bytes) -> int:
    """Number of TFRecord-framed records (length, crc, payload, crc) that fill ``data``."""
    count, offset = 0, 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        offset += 8 + 4 + length + 4
        count += 1
    assert offset == len(data), "a truncated record"
    return count


def _log(reporter, step):
    reporter.log(step, {"loss": 1.0 / step, "lr": 1e-3, "grad_norm": 2.0})


def test_reporter_in_a_bucket_workdir_and_a_resumed_run_appends(gcs_bucket):
    workdir = f"{gcs_bucket}/run"
    first = reporting.Reporter(workdir, 5, 0, sync_seconds=0)
    for step in (1, 2, 3):
        _log(first, step)
    # sync_seconds=0: each logged step is in the bucket before the run ends
    assert [
        json.loads(line)["step"] for line in bucket_files(workdir)["metrics.jsonl"].splitlines()
    ] == [
        1,
        2,
        3,
    ]
    first.close()
    assert not os.path.exists(first.mirror.local_dir)
    second = reporting.Reporter(workdir, 5, 3, sync_seconds=3600)
    for step in (4, 5):
        _log(second, step)
    assert len(bucket_files(workdir)["metrics.jsonl"].splitlines()) == 3  # not yet: synced at close
    second.close()
    files = bucket_files(workdir)
    logged = [json.loads(line) for line in files["metrics.jsonl"].splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5] and logged[1]["loss"] == 0.5
    events = [name for name in files if name.startswith("tensorboard/events.out.tfevents")]
    # Per run a file-version record, then one per scalar (loss, lr, grad_norm, steps/s,
    # tokens/s) and step. The runs write one file each, or share one when they start within
    # the same second (tensorboardX names files by the second): appended, it stays whole.
    assert 1 <= len(events) <= 2
    assert sum(event_records(files[name]) for name in events) == (1 + 3 * 5) + (1 + 2 * 5)


def test_a_failed_sync_is_retried_and_a_failed_last_one_keeps_the_files(
    gcs_bucket, monkeypatch, caplog
):
    workdir = f"{gcs_bucket}/run"
    reporter = reporting.Reporter(workdir, 5, 0, sync_seconds=0)
    real_append, bucket_down = storage.append_bytes, [True]

    def flaky_append(path, data):
        if bucket_down[0]:
            raise OSError("bucket unreachable")
        real_append(path, data)

    monkeypatch.setattr(storage, "append_bytes", flaky_append)
    _log(reporter, 1)  # the sync fails: a warning, and the run goes on
    assert "metrics not copied to" in caplog.text and "metrics.jsonl" not in bucket_files(workdir)
    bucket_down[0] = False
    _log(reporter, 2)
    steps = [
        json.loads(line)["step"] for line in bucket_files(workdir)["metrics.jsonl"].splitlines()
    ]
    assert steps == [1, 2]
    bucket_down[0] = True
    _log(reporter, 3)
    reporter.close()  # the last sync fails: the local files stay, the warning says where
    local_dir = reporter.mirror.local_dir
    assert f"the files are in {local_dir}" in caplog.text
    with open(os.path.join(local_dir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
    shutil.rmtree(local_dir)


def test_repeated_gcsfs_warnings_are_shown_once(caplog):
    caplog.set_level(logging.WARNING)
    gcsfs_logger = logging.getLogger("gcsfs")
    for bucket in ("a", "a", "a", "b"):
        gcsfs_logger.warning(
            "Could not determine bucket type for bucket name %s: no credentials, falling "
            "back to GCSFileSystem",
            bucket,
        )
    gcsfs_logger.warning("_request out of retries on exception: 503")
    gcsfs_logger.warning("_request out of retries on exception: 503")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("bucket name a" in m for m in messages) == 1
    assert sum("bucket name b" in m for m in messages) == 1
    assert messages.count("_request out of retries on exception: 503") == 2  # real errors stay
