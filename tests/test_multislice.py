"""Multi-slice meshes: the ``data`` axis spans slices joined by the data-centre network (DCN).

The device grid is checked on stand-in devices for each way slices are told apart (TPU
``slice_index``, one process per slice, consecutive blocks of simulated CPU devices), a real
mesh on 8 simulated CPU devices runs a data-parallel reduction, and, where an interpreter with
libtpu is named by ``RAMEN_TPU_PYTHON``, the train step of a tiny config is compiled for two
TPU v5e slices ahead of time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict
from test_train import REPO

from ramen_jax.training import sharding


@dataclasses.dataclass(frozen=True)
class StandIn:
    """What the grid builder reads of a device (CPU-like, so jax lays it out as listed)."""

    id: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


@dataclasses.dataclass(frozen=True)
class SlicedStandIn(StandIn):
    slice_index: int = 0


def ids(grid) -> np.ndarray:
    return np.vectorize(lambda d: d.id)(grid)


def slice_of_row(grid, key) -> list[set]:
    return [{key(d) for d in grid[row].flat} for row in range(grid.shape[0])]


def test_each_slice_holds_its_own_rows_of_the_data_axis():
    # TPU: slices by slice_index, whatever order the devices come in.
    tpu = [SlicedStandIn(id=i, slice_index=i % 2) for i in range(8)]
    grid = sharding.hybrid_device_grid((4, 2, 1), 2, tpu[::-1])
    assert grid.shape == (4, 2, 1)
    assert slice_of_row(grid, lambda d: d.slice_index) == [{0}, {0}, {1}, {1}]
    # One process per slice (platforms without slice_index).
    hosts = [StandIn(id=i, process_index=i // 4) for i in range(8)]
    grid = sharding.hybrid_device_grid((4, 2, 1), 2, hosts)
    assert slice_of_row(grid, lambda d: d.process_index) == [{0}, {0}, {1}, {1}]
    # Simulated devices of one process: consecutive blocks, by id.
    simulated = [StandIn(id=i) for i in range(8)]
    grid = sharding.hybrid_device_grid((4, 1, 2), 2, simulated[::-1])
    assert ids(grid).reshape(4, 2).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_slice_count_must_divide_the_data_axis_and_match_the_devices():
    with pytest.raises(ValueError, match="must divide the data axis"):
        sharding.hybrid_device_grid((4, 2, 1), 3, [StandIn(id=i) for i in range(8)])
    three = [SlicedStandIn(id=i, slice_index=i % 3) for i in range(8)]
    with pytest.raises(ValueError, match="span 3 slice"):
        sharding.hybrid_device_grid((4, 2, 1), 2, three)


SIMULATED_MESH = """
import json, jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict
from ramen_jax.training import sharding
mesh = sharding.make_mesh(ConfigDict({"data": -1, "fsdp": 2, "tensor": 1, "dcn_data": 2}))
rules = [("batch", ("data", "fsdp"))]
rows = jax.device_put(np.arange(16.0), sharding.batch_sharding(mesh, rules))
total = jax.jit(lambda x: x.sum(), out_shardings=sharding.replicated(mesh))(rows)
shards = sharding.process_batch_shards(mesh, rules)
grid = np.vectorize(lambda d: d.id)(mesh.devices).tolist()
print(json.dumps({"shape": dict(mesh.shape), "ids": grid, "sum": float(total),
                  "shards": [shards.first, shards.stop, shards.count]}))
"""


def test_hybrid_mesh_on_simulated_cpu_devices_reduces_over_the_slices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", SIMULATED_MESH],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["shape"] == {"data": 4, "fsdp": 2, "tensor": 1}
    # slice 0 = devices 0-3 = data rows 0-1; slice 1 = devices 4-7 = data rows 2-3
    assert out["ids"] == [[[0], [1]], [[2], [3]], [[4], [5]], [[6], [7]]]
    assert out["sum"] == sum(range(16)) and out["shards"] == [0, 8, 8]


def test_one_slice_keeps_jax_make_mesh():
    import jax

    mesh = sharding.make_mesh(ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": 1}))
    reference = jax.make_mesh((len(jax.devices()), 1, 1), sharding.MESH_AXES)
    assert np.array_equal(mesh.devices, reference.devices)


TPU_PYTHON = os.environ.get("RAMEN_TPU_PYTHON", "")


@pytest.mark.slow
@pytest.mark.skipif(
    not TPU_PYTHON,
    reason="RAMEN_TPU_PYTHON is not set: point it at a Python with libtpu "
    '(`pip install -e ".[tpu]"`, docs/scaling.md) to compile for TPU here',
)
def test_tiny_config_compiles_for_two_tpu_slices_ahead_of_time():
    from ramen_jax.model.attention import default_attention
    from ramen_jax.perf.topology import CHIPS

    args = ["--config=configs/base.py:debug", "--topology=v5e:2x2", "--num_slices=2"]
    tiny = ["--config.model.depth=1", "--config.data.datasets.bigearthnet.per_device_batch=2"]
    done = subprocess.run(
        [TPU_PYTHON, "-m", "ramen_jax.perf.aot_check", *args, *tiny],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)),
        timeout=1200,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 devices (TPU v5 lite)" in done.stdout and "'data': 8" in done.stdout
    report = json.loads(done.stdout.splitlines()[-1])
    assert (report["slices"], report["chips"]) == (2, 8)
    assert report["hbm_gib_per_chip"] == CHIPS["TPU v5 lite"].hbm_gib
    entry = report["datasets"]["bigearthnet"]
    assert entry["attention"] == default_attention("tpu"), entry
    assert 0 < entry["peak_gib_per_chip"] < report["hbm_gib_per_chip"]
    assert entry["est_step_s"] > 0 and 0 < entry["mfu_bound"] <= 1
    # tokens/s/chip is the global batch's token slots (2 per chip x 8 chips) over the step time
    expected = 2 * 8 * entry["tokens"] / entry["est_step_s"] / 8
    assert entry["tokens_per_s_per_chip"] == pytest.approx(expected, rel=1e-9)
