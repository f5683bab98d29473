"""Two CPU processes as one jax.distributed job train like one process, and their checkpoint
resumes in a run with a different process count."""

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
from test_train import REPO, losses, run_train

SETTINGS = (
    "--config.total_steps=5",
    "--config.checkpoint.every_steps=3",
    "--config.preview_every_steps=0",
    "--config.data.max_buckets_per_dataset=1",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_and_resume_with_another_process_count(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    port = free_port()
    multi = tmp_path / "two_processes"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ramen_jax.train",
                "--config=configs/demo.py:tiny",
                f"--workdir={multi}",
                *SETTINGS,
                "--config.data.datasets.bigearthnet.per_device_batch=1",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    for i, (_, err) in enumerate(outputs):  # each process loads only its half of the batch
        assert f"process {i}/2 reads 1 of the 2 samples of each bigearthnet batch" in err

    single = tmp_path / "one_process"
    run_train(
        single,
        "configs/demo.py:tiny",
        *SETTINGS,
        "--config.data.datasets.bigearthnet.per_device_batch=2",
        env={"JAX_PLATFORMS": "cpu"},
    )
    two, one = losses(multi), losses(single)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(
        [two[s] for s in range(1, 6)], [one[s] for s in range(1, 6)], rtol=1e-5
    )

    resumed = tmp_path / "resumed_single"
    shutil.copytree(multi, resumed)
    shutil.rmtree(resumed / "checkpoints" / "5")
    (resumed / "metrics.jsonl").unlink()
    run_train(
        resumed,
        "configs/demo.py:tiny",
        *SETTINGS,
        "--config.data.datasets.bigearthnet.per_device_batch=2",
        env={"JAX_PLATFORMS": "cpu"},
    )
    after = losses(pathlib.Path(resumed))
    assert sorted(after) == [4, 5]
    np.testing.assert_allclose([after[4], after[5]], [two[4], two[5]], rtol=1e-5)
