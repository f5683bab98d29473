"""Two CPU processes as one jax.distributed job train like one process, and their checkpoint
resumes in a run with a different process count."""

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
from conftest import xla_flags
from test_train import REPO, losses, run_train, validation_losses

SETTINGS = (
    "--config.total_steps=5",
    "--config.checkpoint.every_steps=3",
    "--config.preview_every_steps=0",
    "--config.data.max_buckets_per_dataset=1",
)
# the demo patches have no held-out split: validation reads two batches of the training data
VALIDATION = ("--config.eval.every_steps=3", "--config.eval.batches=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_and_resume_with_another_process_count(tmp_path):
    multi = tmp_path / "two_processes"
    processes = launch(
        multi,
        *SETTINGS,
        *VALIDATION,
        "--config.data.datasets.bigearthnet.per_device_batch=1",
        "--verbose",  # the INFO line saying which rows each process reads
    )
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
        *VALIDATION,
        "--config.data.datasets.bigearthnet.per_device_batch=2",
        env={"JAX_PLATFORMS": "cpu"},
    )
    two, one = losses(multi), losses(single)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(
        [two[s] for s in range(1, 6)], [one[s] for s in range(1, 6)], rtol=1e-5
    )
    # validation after step 3, its batches split over the processes like training's
    (val_two,), (val_one,) = validation_losses(multi), validation_losses(single)
    assert val_two[0] == val_one[0] == 3
    np.testing.assert_allclose(val_two[1], val_one[1], rtol=1e-5)

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


def launch(workdir, *overrides, processes=2, devices=1, env=None, per_process=None):
    """``processes`` CPU processes of ``configs/demo.py:tiny`` with ``devices`` devices each,
    as one jax.distributed job, each in its own process group (so a signal can reach one host
    and its Grain workers). ``per_process[i]``: extra flags of process ``i``."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(devices), **(env or {})}
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ramen_jax.train",
                "--config=configs/demo.py:tiny",
                f"--workdir={workdir}",
                *overrides,
                *(per_process[i] if per_process else ()),
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(processes)
    ]


def finish(processes, timeout=600):
    """(exit code, stdout, stderr) of each process."""
    outputs = [p.communicate(timeout=timeout) for p in processes]
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=True)]


def test_tensor_axis_across_processes_builds_the_global_batch_every_process_needs(tmp_path):
    """mesh data=1 x tensor=2 over two one-device processes: the batch is not split, so both
    processes load all of it; losses equal one process with the same global batch."""
    settings = (*SETTINGS, "--config.total_steps=3", "--config.checkpoint.every_steps=3")
    settings += ("--config.data.datasets.bigearthnet.per_device_batch=2",)
    processes = launch(
        tmp_path / "tensor",
        *settings,
        "--config.mesh.data=1",
        "--config.mesh.tensor=2",
        "--verbose",
    )
    for code, _, err in finish(processes):
        assert code == 0, err[-3000:]
        assert "reads 2 of the 2 samples of each bigearthnet batch" in err
    run_train(tmp_path / "one", "configs/demo.py:tiny", *settings, env={"JAX_PLATFORMS": "cpu"})
    two, one = losses(tmp_path / "tensor"), losses(tmp_path / "one")
    assert sorted(two) == sorted(one) == [1, 2, 3]
    np.testing.assert_allclose([two[s] for s in (1, 2, 3)], [one[s] for s in (1, 2, 3)], rtol=1e-5)


def test_hosts_with_different_step_shapes_stop_with_one_line_naming_them(tmp_path):
    """One host was started with another batch size (so other array shapes): both stop before
    the first step with one error line naming the processes, instead of hanging."""
    batch = [[f"--config.data.datasets.bigearthnet.per_device_batch={b}"] for b in (1, 2)]
    processes = launch(tmp_path / "w", *SETTINGS, per_process=batch)
    for code, _, err in finish(processes, timeout=300):
        assert code == 1, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, err[-3000:]
        assert "out of lockstep before step 0" in errors[0]
        assert "processes [0]" in errors[0] and "processes [1]" in errors[0]
