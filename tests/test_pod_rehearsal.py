"""A pod rehearsal on one machine: the paper config's mixed datasets and buckets (stand-in
records), two processes x two CPU devices as one jax.distributed job, a Grain worker per
process, the prepared data and the workdir in a bucket (a local GCS emulator), a SIGTERM that
reaches the hosts two seconds apart, a relaunch of the same command, and losses equal to an
uninterrupted run."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import xla_flags
from test_multiprocess import free_port
from test_train import REPO

from configs import base
from data_prep import standins
from ramen_jax import storage

STEPS = 6
# Small enough for two processes on two cores; the step shapes depend on the data config only.
SMALL_MODEL = {
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "decoder_dim": 64,
    "decoder_depth": 1,
    "decoder_heads": 4,
    "dtype": "float32",
}


def pod_flags(config, data_dir, bucket, cache_dir) -> list[str]:
    """The paper config with stand-in data uploaded to ``bucket``, a small model and one sample
    per device; every host stages the data to its own cache directory."""
    for name, path in standins.standin_paths(config, data_dir, lambda line: None).items():
        config.data.datasets[name].source.path = path
    flags = [
        f"--config.total_steps={STEPS}",
        "--config.steps_per_epoch=3",
        "--config.optim.warmup_epochs=1",
        "--config.data.max_buckets_per_dataset=1",  # three datasets: three step shapes
        "--config.data.num_workers=1",
        "--config.log_every_steps=1",
        "--config.preview_every_steps=0",
        "--config.checkpoint.every_steps=100",
        "--config.host_sync.every_steps=1",
        "--config.eval.every_steps=-1",  # the stand-ins hold a train split only
        f"--config.compilation_cache_dir={cache_dir}",
    ]
    flags += [f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()]
    for name, dataset in config.data.datasets.items():
        local = pathlib.Path(dataset.source.path)
        for file in local.rglob("*"):
            if file.is_file():
                storage.upload_file(str(file), f"{bucket}/data/{name}/{file.relative_to(local)}")
        flags.append(f"--config.data.datasets.{name}.source.path={bucket}/data/{name}")
        flags.append(f"--config.data.datasets.{name}.per_device_batch=1")
    return flags


class Host:
    """One process of the job, in its own process group (its Grain worker included), with
    its own data cache (a host's local disk), its stdout read line by line as it comes."""

    def __init__(self, workdir, flags, port, index, env, cache_root):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ramen_jax.train", "--config=configs/base.py"]
            + [f"--workdir={workdir}", *flags, f"--coordinator_address=127.0.0.1:{port}"]
            + [f"--config.data.cache_dir={cache_root / f'host{index}'}"]
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

    def why(self) -> str:
        """The lines that say what went wrong (errors, the first traceback), then the tail."""
        err = "".join(self.err)
        telling = [line for line in self.err if line.startswith(("error:", "warning:"))]
        start = err.find("Traceback")
        first_traceback = err[start : start + 4000] if start >= 0 else ""
        return "".join(telling) + first_traceback + "\n...\n" + err[-1500:]


def job(workdir, flags, env, cache_root) -> list[Host]:
    port = free_port()
    return [Host(workdir, flags, port, i, env, cache_root) for i in range(2)]


def finished(hosts, timeout=900) -> tuple[list[int], str]:
    """Exit codes, and a failure message that tells every host's side."""
    codes = [host.wait(timeout=timeout) for host in hosts]
    sides = zip(hosts, codes, strict=True)
    return codes, "\n\n".join(f"host {i} exit {c}:\n{h.why()}" for i, (h, c) in enumerate(sides))


def logged_losses(workdir) -> dict:
    text = storage.read_text(f"{workdir}/metrics.jsonl")
    return {m["step"]: m["loss"] for m in map(json.loads, text.splitlines())}


def saved_steps(workdir) -> list[int]:
    files = storage.list_files(f"{workdir}/checkpoints")
    return sorted({int(f.split("/")[0]) for f in files if f.split("/")[0].isdigit()})


@pytest.mark.slow
def test_pod_rehearsal_skewed_sigterm_relaunch_matches_an_uninterrupted_run(tmp_path, gcs_bucket):
    config = base.get_config()
    flags = pod_flags(config, tmp_path / "data", gcs_bucket, tmp_path / "xla_cache")
    env = {
        **os.environ,  # the emulator's variables (tests/conftest.py)
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(2),
    }
    hosts_cache = tmp_path / "hosts"

    reference = f"{gcs_bucket}/reference"
    codes, why = finished(job(reference, flags, env, hosts_cache))
    assert codes == [0, 0], why
    expected = logged_losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert all((hosts_cache / f"host{i}").is_dir() for i in range(2))  # each host staged

    run = f"{gcs_bucket}/run"
    hosts = job(run, flags, env, hosts_cache)
    deadline = time.time() + 900
    while hosts[0].steps_done() < 2:
        assert all(h.process.poll() is None for h in hosts), hosts[0].why()
        assert time.time() < deadline
        time.sleep(0.1)
    os.killpg(hosts[0].process.pid, signal.SIGTERM)
    time.sleep(2)
    os.killpg(hosts[1].process.pid, signal.SIGTERM)
    signalled = time.time()
    codes, why = finished(hosts, timeout=300)
    assert codes == [75, 75], why
    assert not any("Traceback" in "".join(host.err) for host in hosts), why
    stopped_in = time.time() - signalled
    (stop_line,) = [line for line in hosts[0].lines if "checkpoint saved at step" in line]
    stopped_at = int(stop_line.split("step ")[1].split(";")[0])
    assert 2 <= stopped_at < STEPS and saved_steps(run) == [stopped_at]
    assert stopped_in < 120, stopped_in

    codes, why = finished(job(run, flags, env, hosts_cache))
    assert codes == [0, 0], why
    resumed = logged_losses(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    # same topology, programs and data as the reference: equal up to float32 summation order
    np.testing.assert_allclose(
        [resumed[s] for s in range(1, STEPS + 1)],
        [expected[s] for s in range(1, STEPS + 1)],
        rtol=1e-6,
    )
