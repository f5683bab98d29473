"""The ahead-of-time topology check: exact per-device state bytes, compiled memory on CPU, and
the JSON line scripts read (tests/test_multislice.py compiles for TPU where libtpu is there)."""

import json
import os
import re
import subprocess
import sys

from test_time_buckets import batches
from test_train import REPO

from ramen_jax.training import precompile


def aot_check(*args, env=None):
    result = subprocess.run(
        [sys.executable, "-m", "ramen_jax.perf.aot_check", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def per_device_gib(out, key):
    return float(re.search(rf"{key}\s+([\d.]+) GiB per device", out).group(1))


def test_base_config_on_a_tpu_slice_reports_sharded_state_without_hardware():
    replicated = aot_check("--config=configs/base.py", "--topology=v5p:2x2x4")
    fsdp = aot_check(
        "--config=configs/base.py",
        "--topology=v5p:2x2x4",
        "--config.mesh.data=4",
        "--config.mesh.fsdp=4",
    )
    assert "16 devices" in replicated and "'fsdp': 4" in fsdp
    # 131.5 M float32 parameters (98.4 M encoder + 33.0 M decoder): 0.49 GiB replicated
    assert abs(per_device_gib(replicated, "params") - 131.46e6 * 4 / 2**30) < 0.01
    # fsdp=4 splits the large matrices four ways; AdamW moments are twice the parameters
    assert per_device_gib(fsdp, "params") < 0.3 * per_device_gib(replicated, "params")
    assert abs(per_device_gib(fsdp, "optimizer") - 2 * per_device_gib(fsdp, "params")) < 0.01
    assert "not compiled" in replicated  # no libtpu here, and the report says so
    report = json.loads(replicated.splitlines()[-1])
    assert (report["topology"], report["slices"], report["chips"]) == ("v5p:2x2x4", 1, 16)
    assert set(report["datasets"]) == {"flairhub", "mmearth", "worldstrat"}
    for entry in report["datasets"].values():
        assert entry["peak_gib_per_chip"] is None and "cannot compile" in entry["why"]


def test_datasets_flag_keeps_the_named_datasets_and_refuses_unknown_ones():
    out = aot_check("--config=configs/base.py", "--topology=v5p:2x2x4", "--datasets=worldstrat")
    assert set(json.loads(out.splitlines()[-1])["datasets"]) == {"worldstrat"}
    result = subprocess.run(
        [sys.executable, "-m", "ramen_jax.perf.aot_check", "--config=configs/base.py",
         "--topology=v5p:2x2x4", "--datasets=worldstrat,sentinel"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--datasets sentinel: not in the config (flairhub, mmearth, worldstrat)" in result.stderr


def _shape_key(host):
    layout = host.batch.layout
    return (host.dataset, layout.length, layout.series_length, host.batch.pixels["s2"].shape[1])


def test_all_shapes_are_the_step_shapes_a_run_compiles():
    """``--all_shapes`` enumerates dataset x token bucket x time bucket as precompile does."""
    step_batches = batches()  # a dataset with several token and time buckets
    datasets = step_batches.datasets
    every = precompile.largest_step_shapes(datasets, 0.75, 0, every_time_bucket=True)
    run = {_shape_key(b) for b in precompile.step_shapes(step_batches)}
    assert len(run) > 2 and len(step_batches.datasets[0].time_buckets) > 1
    assert sorted(map(_shape_key, every)) == sorted(run)  # each once
    largest = precompile.largest_step_shapes(datasets, 0.75, 1)
    assert [_shape_key(b) for b in largest] == [max(run, key=lambda k: (k[1], k[2], k[3]))]
    for host in every:
        assert host.batch.time_slots == host.batch.pixels["s2"].shape[1]
        assert host.batch.pixels["s2"].shape[0] == step_batches.datasets[0].global_batch


DATASET_KEYS = {
    "tokens": int,
    "time_slots": int,
    "attention": str,
    "peak_gib_per_chip": float,
    "est_step_s": (float, type(None)),
    "tokens_per_s_per_chip": (float, type(None)),
    "mfu_bound": (float, type(None)),
    "compile_s": float,
}


def test_debug_config_compiles_for_two_simulated_slices_and_ends_with_one_json_line():
    out = aot_check(
        "--config=configs/base.py:debug",
        "--topology=cpu:2",
        "--num_slices=2",
        "--config.mesh.fsdp=2",
        "--all_shapes",  # one shape here: one token bucket, no time series
        "--config.data.max_buckets_per_dataset=1",
        env={
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
            + " --xla_force_host_platform_device_count=4"
        },
    )
    assert "'data': 2, 'fsdp': 2" in out and "chunked attention" in out, out
    line = r"bigearthnet\s+\d+ tokens, 1 date slots, chunked attention: peak\s+[\d.]+ GiB"
    assert re.search(line, out), out
    report = json.loads(out.splitlines()[-1])
    assert set(report) == {
        "topology", "slices", "chips", "hbm_gib_per_chip", "datasets", "shapes", "compile_s_total"
    }  # fmt: skip
    assert "1 of 1 step shapes compiled" in out
    (shape,) = report["shapes"]
    assert report["compile_s_total"] == shape["compile_s"] > 0
    assert (report["topology"], report["slices"], report["chips"]) == ("cpu:2", 2, 4)
    assert report["hbm_gib_per_chip"] is None  # no chip constants for a CPU
    entry = report["datasets"]["bigearthnet"]
    assert set(entry) == {*DATASET_KEYS, "why"}
    for key, kind in DATASET_KEYS.items():
        assert isinstance(entry[key], kind), (key, entry[key])
    assert entry["peak_gib_per_chip"] > 0 and entry["est_step_s"] is None
    assert entry["tokens"] == max(int(t) for t in re.findall(r"(\d+) tokens", out))
