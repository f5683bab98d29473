"""A pod rehearsal on one machine: the paper config's mixed datasets and buckets (stand-in
records), two processes x two CPU devices as one jax.distributed job, a Grain worker per
process, the workdir on a bucket (a local GCS emulator), a SIGTERM that reaches the hosts two
seconds apart, a relaunch of the same command, and losses equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_multiprocess import free_port
from test_train import REPO

from configs import base
from ramen_jax.data import data_location
from ramen_jax.perf.compile_check import SMALL_MODEL

STEPS = 6


def pod_flags(config, data_dir, cache_dir) -> list[str]:
    """The paper config with stand-in data, a small model and one sample per device."""
    data_location.locate_data(config, data_dir, lambda line: None)
    flags = [
        f"--config.total_steps={STEPS}",
        "--config.steps_per_epoch=3",
        "--config.optim.warmup_epochs=1",
        "--config.data.max_buckets_per_dataset=2",
        "--config.data.num_workers=1",
        "--config.log_every_steps=1",
        "--config.preview_every_steps=0",
        "--config.checkpoint.every_steps=100",
        "--config.host_sync.every_steps=1",
        f"--config.compilation_cache_dir={cache_dir}",
    ]
    flags += [f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()]
    for name, dataset in config.data.datasets.items():
        flags.append(f"--config.data.datasets.{name}.source.path={dataset.source.path}")
        flags.append(f"--config.data.datasets.{name}.per_device_batch=1")
    return flags


class Host:
    """One process of the job, in its own process group (its Grain worker included), with
    its stdout read line by line as it comes."""

    def __init__(self, workdir, flags, port, index, env):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ramen_jax.train", "--config=configs/base.py"]
            + [f"--workdir={workdir}", *flags, f"--coordinator_address=127.0.0.1:{port}"]
            + ["--num_processes=2", f"--process_id={index}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.lines)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line)

    def steps_done(self) -> int:
        done = [
            int(line.split()[1].split("/")[0]) for line in self.lines if line.startswith("step ")
        ]
        return max(done, default=0)

    def wait(self, timeout) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join()
        return code


def job(workdir, flags, env) -> list[Host]:
    port = free_port()
    return [Host(workdir, flags, port, i, env) for i in range(2)]


def logged_losses(read_text) -> dict:
    return {m["step"]: m["loss"] for m in map(json.loads, read_text().splitlines())}


@pytest.mark.slow
def test_pod_rehearsal_skewed_sigterm_relaunch_matches_an_uninterrupted_run(tmp_path, bucket):
    config = base.get_config()
    flags = pod_flags(config, tmp_path / "data", tmp_path / "xla_cache")
    env = {
        **os.environ,
        **bucket.env,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }

    reference = bucket.url("reference")
    for host in job(reference, flags, env):
        assert host.wait(timeout=900) == 0, "".join(host.err)[-3000:]
    expected = logged_losses(lambda: bucket.read_text("reference/metrics.jsonl"))
    assert sorted(expected) == list(range(1, STEPS + 1))

    run = bucket.url("run")
    hosts = job(run, flags, env)
    deadline = time.time() + 900
    while hosts[0].steps_done() < 2:
        assert all(h.process.poll() is None for h in hosts), "".join(hosts[0].err)[-3000:]
        assert time.time() < deadline
        time.sleep(0.1)
    os.killpg(hosts[0].process.pid, signal.SIGTERM)
    time.sleep(2)
    os.killpg(hosts[1].process.pid, signal.SIGTERM)
    signalled = time.time()
    for host in hosts:
        assert host.wait(timeout=300) == 75, "".join(host.err)[-3000:]
        assert "Traceback" not in "".join(host.err)
    stopped_in = time.time() - signalled
    (stop_line,) = [line for line in hosts[0].lines if "checkpoint saved at step" in line]
    stopped_at = int(stop_line.split("step ")[1].split(";")[0])
    assert 2 <= stopped_at < STEPS and bucket.steps("run/checkpoints") == [stopped_at]
    assert stopped_in < 120, stopped_in

    for host in job(run, flags, env):
        assert host.wait(timeout=900) == 0, "".join(host.err)[-3000:]
    resumed = logged_losses(lambda: bucket.read_text("run/metrics.jsonl"))
    assert sorted(resumed) == list(range(1, STEPS + 1))
    # same topology, programs and data as the reference: equal up to float32 summation order
    np.testing.assert_allclose(
        [resumed[s] for s in range(1, STEPS + 1)],
        [expected[s] for s in range(1, STEPS + 1)],
        rtol=1e-6,
    )


class LocalBucket:
    def __init__(self, root):
        self.root = root
        self.env = {}

    def url(self, path):
        return str(self.root / path)

    def read_text(self, path):
        return (self.root / path).read_text()

    def steps(self, path):
        return sorted(int(p.name) for p in (self.root / path).iterdir() if p.name.isdigit())


@pytest.fixture
def bucket(tmp_path):
    return LocalBucket(tmp_path / "bucket")
