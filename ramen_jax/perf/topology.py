"""What the ahead-of-time check (``python -m ramen_jax.perf.aot_check``) knows about a target:
topology names, the target devices (libtpu's topology description, or simulated CPUs), per-chip
constants, the exact per-device state bytes from the shardings, the train step compiled from
abstract arguments, and a roofline step time from XLA's cost analysis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time

import jax

from ramen_jax.perf import compiled as compiled_lib
from ramen_jax.training import precompile

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_gib: float
    peak_bf16_flops: float  # per second
    hbm_bytes_per_s: float


# Per-chip figures from Google's Cloud TPU documentation, the system-architecture page of each
# generation ("TPU v4", "TPU v5e", "TPU v5p", "TPU v6e": peak compute per chip (bf16), HBM
# capacity and HBM bandwidth), keyed by the device_kind that libtpu reports.
CHIPS = {
    "TPU v4": Chip(hbm_gib=32, peak_bf16_flops=275e12, hbm_bytes_per_s=1200e9),
    "TPU v5 lite": Chip(hbm_gib=16, peak_bf16_flops=197e12, hbm_bytes_per_s=819e9),  # v5e
    "TPU v5": Chip(hbm_gib=95, peak_bf16_flops=459e12, hbm_bytes_per_s=2765e9),  # v5p
    "TPU v6 lite": Chip(hbm_gib=32, peak_bf16_flops=918e12, hbm_bytes_per_s=1640e9),  # v6e
}


def parse_topology(name: str) -> tuple[str, int, str]:
    """``(platform, chip count, dims)`` of a topology name."""
    kind, _, dims = name.partition(":")
    if not dims:
        raise ValueError(f"topology {name!r}: expected KIND:DIMS, e.g. v5e:4x4 or cpu:8")
    try:
        count = math.prod(int(d) for d in dims.split("x"))
    except ValueError:
        raise ValueError(f"topology {name!r}: dimensions must be integers like 4x4") from None
    return ("cpu" if kind == "cpu" else "tpu"), count, dims


def target_devices(topology: str, slices: int) -> tuple[list | None, str | None]:
    """The devices to compile for, or ``(None, why not)``."""
    platform, count, _ = parse_topology(topology)
    if platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) != count * slices:
            return None, (
                f"{len(devices)} CPU devices here; run with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={count * slices}"
            )
        return devices, None
    # Compiling touches no chip: let several such processes (and a test) load libtpu at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        return topologies.get_topology_desc(topology, "tpu", num_slices=slices).devices, None
    except Exception as error:  # no libtpu here: shardings only
        return None, f"cannot compile for {topology} here: {error}"


def state_bytes_per_device(trainer) -> dict:
    """Bytes per device of params / optimiser state / BatchNorm statistics, from shardings."""
    shapes = jax.eval_shape(trainer.init_state)
    shardings = trainer.state_sharding

    def per_device(tree, sharding_tree):
        total = 0
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sharding_tree), strict=True):
            shard = s.shard_shape(x.shape)
            total += math.prod(shard) * x.dtype.itemsize
        return total

    return {
        "params": per_device(shapes.params, shardings.params),
        "optimizer": per_device(shapes.opt_state, shardings.opt_state),
        "batch_stats": per_device(shapes.batch_stats, shardings.batch_stats),
    }


# Attention implementations that run as Pallas kernels: XLA's cost analysis sees a custom call
# without FLOPs, so the tool adds theirs (``kernel_attention_flops``).
KERNELS = ("splash",)


@contextlib.contextmanager
def kernel_attention_flops(calls: list):
    """While the step is traced, appends the training FLOPs of every attention call that runs
    as a Pallas kernel: forward 2 matmuls of ``B x Lq x Lk x heads x head_dim`` multiply-adds,
    backward twice that (the kernel's recomputation of the scores not counted). Shapes are the
    global (unpartitioned) ones."""
    from ramen_jax.model import attention as attention_lib

    original = attention_lib.attention

    def counted(q, k, v, key_mask, implementation=None):
        if implementation in KERNELS:
            batch, queries, heads, head_dim = q.shape
            calls.append(3 * 4 * batch * queries * k.shape[1] * heads * head_dim)
        return original(q, k, v, key_mask, implementation)

    attention_lib.attention = counted
    try:
        yield
    finally:
        attention_lib.attention = original


def compile_step(trainer, host, global_batch: int):
    """The train step for ``host``'s shapes (``global_batch`` rows) compiled for the trainer's
    mesh, the seconds it took, and the global FLOPs of its Pallas attention kernels
    (``kernel_attention_flops``)."""
    args = precompile.abstract_device_batch(host.batch, global_batch, trainer.mesh, trainer.rules)
    state = precompile.abstract_state(trainer)
    start, kernel_calls = time.perf_counter(), []
    with kernel_attention_flops(kernel_calls):
        lowered = trainer.step_fn(host.dataset).lower(state, args)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start, float(sum(kernel_calls))


def roofline(
    compiled, chip: Chip, tokens_per_step: int, chips: int, kernel_flops: float = 0.0
) -> dict:
    """Step time if the step ran at the chip's peak FLOP/s or HBM bandwidth (whichever binds),
    from XLA's cost analysis of the partitioned (per-device) program, plus an even share of
    the Pallas kernels' ``kernel_flops`` (global) that the cost analysis cannot see."""
    cost = compiled_lib.cost(compiled)
    flops = float(cost.get("flops", 0.0)) + kernel_flops / chips
    moved = float(cost.get("bytes accessed", 0.0))
    compute_s, memory_s = flops / chip.peak_bf16_flops, moved / chip.hbm_bytes_per_s
    step_s = max(compute_s, memory_s)
    return {
        "est_step_s": step_s,
        "tokens_per_s_per_chip": tokens_per_step / step_s / chips,
        "mfu_bound": compute_s / step_s,
        "flops": flops,
        "kernel_flops": kernel_flops / chips,
        "bytes": moved,
    }


def failure_reason(error: Exception) -> str:
    """The informative line of a compile failure (XLA's out-of-memory report if there is one)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Ran out of memory" in line or "Exceeded hbm" in line or "Used " in line:
            return line[:400]
    return (lines[0] if lines else type(error).__name__)[:400]
