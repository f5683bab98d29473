"""Training runs in a bucket (GCS emulator): one killed and resumed, then its model converted and
used to encode a scene, every path a ``gs://`` URL; one shared by two processes.

``configs/demo.py:tiny`` trains with ``--workdir gs://BUCKET/run``; once checkpoint 5 is in the
bucket the process is killed with SIGKILL and the same command is run again. It must resume
from the bucket, and every loss in the bucket's metrics.jsonl (lines of both runs) must equal
the loss of the same step in an uninterrupted run with a local workdir, bitwise (the same
programs, data and keys on CPU). Checkpoints, TensorBoard events and previews must be in the
bucket. ``python -m ramen_jax.convert to-torch`` exports the run to a ``.ckpt`` in the bucket,
``from-torch`` brings it back to a model directory there with the same encoder weights, and
``python -m ramen_jax.encode`` reads that model, a GeoTIFF and a statistics file from the
bucket and writes embeddings there equal to those of the same encoding done on local files.

Then, as the hosts of a slice: two ``jax.distributed`` processes train into one bucket workdir,
and one process resumes their run from it.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_encode import S2_BANDS, s2_scene, write_tif
from test_storage import bucket_files
from test_train import REPO, losses, metrics, run_train, train_command

from ramen_jax import storage
from ramen_jax.encode import __main__ as encode_cli
from ramen_jax.model import build as build_lib
from ramen_jax.model import weights as model_weights

SETTINGS = ("--config.total_steps=30", "--config.workdir_sync_seconds=0")
# validation every 10 steps (the demo has no held-out split: 2 batches of its training data),
# the best validated state kept in WORKDIR/best, through the kill and the resume
VALIDATION = (
    "--config.eval.every_steps=10",
    "--config.eval.batches=2",
    "--config.checkpoint.keep_best=1",
)


def bucket_metrics(workdir: str) -> list[dict]:
    text = bucket_files(workdir).get("metrics.jsonl", b"").decode()
    return [json.loads(line) for line in text.splitlines()]


def forget_listings() -> None:
    """gcsfs keeps directory listings for the life of the process, and the training runs write
    from other processes: this process's Orbax (through epath's file system) must list again."""
    import fsspec

    fsspec.filesystem("gcs", finalize_on_close=True).invalidate_cache()


def saved_steps(workdir: str) -> list[int]:
    """Steps Orbax reads as complete checkpoints in the workdir."""
    forget_listings()
    manager = ocp.CheckpointManager(
        f"{workdir}/checkpoints", options=ocp.CheckpointManagerOptions(read_only=True)
    )
    try:
        return list(manager.all_steps())
    finally:
        manager.close()


def convert(*args) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ramen_jax.convert", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_bucket_run_resumes_after_sigkill_then_converts_and_encodes(gcs_bucket, tmp_path):
    reference = tmp_path / "reference"
    run_train(reference, "configs/demo.py:tiny", *SETTINGS, *VALIDATION)
    expected = losses(reference)
    expected_val = {m["step"]: m["val/loss"] for m in metrics(reference) if "val/loss" in m}
    assert sorted(expected_val) == [10, 20, 30]
    assert sorted(expected) == list(range(1, 31))

    workdir = f"{gcs_bucket}/run"
    process = subprocess.Popen(
        train_command(workdir, "configs/demo.py:tiny", *SETTINGS, *VALIDATION),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while 5 not in saved_steps(workdir):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint in the bucket"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed before the end, not finished
    before = bucket_metrics(workdir)
    assert before and max(m["step"] for m in before) < 30

    result = run_train(workdir, "configs/demo.py:tiny", *SETTINGS, *VALIDATION)
    resumed = [line for line in result.stdout.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1 and f"{workdir}/checkpoints/" in resumed[0], result.stdout[-2000:]
    start = int(resumed[0].split(f"{workdir}/checkpoints/")[1].split()[0])
    logged = bucket_metrics(workdir)
    assert logged[: len(before)] == before  # the killed run's lines stay, the new ones follow
    new = [m["step"] for m in logged[len(before) :] if "loss" in m]
    assert new == list(range(start + 1, 31))
    for m in logged:
        if "loss" in m:
            assert m["loss"] == expected[m["step"]], (m["step"], m["loss"], expected[m["step"]])
    validated = {m["step"]: m["val/loss"] for m in logged if "val/loss" in m}
    assert validated == expected_val  # the same validations, bitwise, across the kill
    best_step = min(expected_val, key=expected_val.get)
    forget_listings()
    best = ocp.CheckpointManager(
        f"{workdir}/best", options=ocp.CheckpointManagerOptions(read_only=True)
    )
    assert list(best.all_steps()) == [best_step]
    best.close()
    files = bucket_files(workdir)
    assert any(name.startswith("tensorboard/events.out.tfevents") for name in files)
    assert any(name.startswith("previews/step_0000030_") for name in files)
    assert 30 in saved_steps(workdir)

    # the run -> a PyTorch checkpoint -> a model directory, all in the bucket
    out = convert("to-torch", workdir, f"{gcs_bucket}/model.ckpt", "--format", "released")
    assert out.startswith("released checkpoint") and f"{gcs_bucket}/model.ckpt" in out
    convert("from-torch", f"{gcs_bucket}/model.ckpt", f"{gcs_bucket}/model", "--num-heads", "2")
    forget_listings()
    trained = model_weights.load_encoder_weights(workdir)
    assert "step 30" in trained.source
    back = model_weights.load_encoder_weights(f"{gcs_bucket}/model")
    assert trained.config.embed_dim == back.config.embed_dim == 32
    flat_back = build_lib.flatten_dict(back.params)
    for path, value in build_lib.flatten_dict(trained.params).items():
        np.testing.assert_array_equal(flat_back[path], value, err_msg=str(path))

    # encode: model, scene and statistics from the bucket, embeddings into it; the same
    # encoding on local files gives the same arrays
    scene = write_tif(tmp_path / "s2.tif", s2_scene(side=32), 10.0)
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"s2": {"mean": [3000.0] * 4, "std": [1500.0] * 4}}))
    storage.upload_file(str(scene), f"{gcs_bucket}/s2.tif")
    storage.upload_file(str(stats), f"{gcs_bucket}/stats.json")
    common = ["--gsd", "40", "--sensor", "s2=sentinel2", "--bands", "s2=" + ",".join(S2_BANDS)]
    remote = ["--checkpoint", f"{gcs_bucket}/model", "--out", f"{gcs_bucket}/embeddings"]
    remote += ["--input", f"s2={gcs_bucket}/s2.tif", "--stats", f"{gcs_bucket}/stats.json"]
    assert encode_cli.main([*remote, *common, "--quiet"]) == 0
    local = ["--checkpoint", f"{gcs_bucket}/model", "--out", str(tmp_path / "embeddings")]
    local += ["--input", f"s2={scene}", "--stats", str(stats)]
    assert encode_cli.main([*local, *common, "--quiet"]) == 0
    written = bucket_files(f"{gcs_bucket}/embeddings")
    assert sorted(written) == sorted(os.listdir(tmp_path / "embeddings"))
    assert {"g40m_block0.tif", "g40m_block0.npy", "g40m_cls.npy"} <= set(written)
    for name in ("g40m_block0.npy", "g40m_cls.npy"):
        path = tmp_path / f"downloaded_{name}"
        path.write_bytes(written[name])
        np.testing.assert_array_equal(np.load(path), np.load(tmp_path / "embeddings" / name))
