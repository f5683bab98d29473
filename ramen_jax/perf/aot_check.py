r"""Does a config fit and shard on a target topology, and how fast could it run? Checked ahead of
time, without the hardware.

  pip install -e ".[tpu]"   # libtpu (a separate venv is fine): TPU programs compile on a CPU host
  export JAX_PLATFORMS=cpu  # compile for the topology, do not look for attached TPUs
  python -m ramen_jax.perf.aot_check --config configs/base.py --topology v5p:2x2x4
  python -m ramen_jax.perf.aot_check --config configs/base.py --topology v5e:4x4 --num_slices 2
  python -m ramen_jax.perf.aot_check --config configs/base.py:debug --topology cpu:8

For the config's mesh on the topology's devices (``--num_slices`` copies of the topology joined
by the data-centre network, the mesh's ``data`` axis spanning them) it reports, per device:

1. the exact bytes of parameters, optimiser moments and BatchNorm statistics under the config's
   sharding rules (from the shardings, no compilation needed; works for any topology);
2. when the topology can be compiled for here, for the largest token bucket of every dataset
   (``--buckets_per_dataset`` for more), the compiled train step with the attention of the
   *target* platform: XLA's peak memory per chip against the chip's HBM, a roofline step time
   (XLA's cost analysis: FLOPs / the chip's peak bf16 FLOP/s, or bytes accessed / its HBM
   bandwidth, whichever is longer), the tokens per second per chip it implies, the MFU upper
   bound (compute time / roofline time), and the compile time. TPU topologies compile ahead of
   time when libtpu is installed (``jax.experimental.topologies``); ``cpu:N`` uses N simulated
   CPU devices (memory only: no chip constants).

The last line of the output is one JSON object for scripts::

  {"topology", "slices", "chips", "hbm_gib_per_chip", "datasets": {NAME: {"tokens",
   "time_slots", "attention", "peak_gib_per_chip", "est_step_s", "tokens_per_s_per_chip",
   "mfu_bound", "compile_s"}}}

with ``null`` for what could not be compiled or estimated and a ``"why"`` beside it.
``tokens`` is the bucket's token slots per sample (all modalities, before masking),
``time_slots`` the date slots of its time series (the dataset's largest time bucket; the
prepared data's date counts decide it, 16 assumed without data); tokens/s/chip counts the
token slots for the whole global batch. ``--all_shapes`` compiles every step shape of the run
(dataset x token bucket x time bucket, largest first) and adds ``"shapes"`` (one entry per
shape: dataset, tokens, time_slots, peak_gib_per_chip, compile_s) and ``"compile_s_total"``.

Topology names: ``v5e:4x4`` (16 chips), ``v5p:2x2x4``, ``v4:2x2x2``, ``v6e:2x2x2`` ... (the
product of the dimensions is the chip count of one slice), or ``cpu:N``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from ramen_jax import cli
from ramen_jax.model import attention
from ramen_jax.perf import compiled as compiled_lib
from ramen_jax.perf import topology as topology_lib
from ramen_jax.perf.topology import GIB, Chip
from ramen_jax.training import precompile, run_length, sharding
from ramen_jax.training.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_TOPOLOGY = flags.DEFINE_string("topology", "cpu:8", "Target, e.g. v5e:4x4, v5p:2x2x4, cpu:8.")
_NUM_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "Slices of the topology joined over DCN (sets mesh.dcn_data)."
)
_COMPILE = flags.DEFINE_bool("compile", True, "Compile the train step where possible.")
_BUCKETS = flags.DEFINE_integer(
    "buckets_per_dataset", 1, "Compile this many of each dataset's buckets, largest first."
)
_ALL_SHAPES = flags.DEFINE_bool(
    "all_shapes",
    False,
    "Compile every step shape of the run (dataset x token bucket x time bucket) and report "
    "each compile time and the total.",
)
_DATASETS = flags.DEFINE_list(
    "datasets", [], "Only these datasets of the config (default: all), e.g. mmearth,worldstrat."
)
flags.mark_flags_as_required(["config"])


def dataset_report(trainer, batch, chip: Chip | None, attention: str, chips: int) -> dict:
    tokens, rows = batch.batch.layout.length, batch.batch.batch_size
    entry = {"tokens": tokens, "time_slots": batch.batch.time_slots, "attention": attention}
    empty = dict.fromkeys(("est_step_s", "tokens_per_s_per_chip", "mfu_bound"))
    try:
        compiled, seconds, kernel_flops = topology_lib.compile_step(trainer, batch, rows)
    except Exception as error:  # e.g. XLA:TPU out of HBM: reported, the others still run
        return {**entry, "peak_gib_per_chip": None, **empty, "compile_s": None,
                "why": topology_lib.failure_reason(error)}  # fmt: skip
    entry["peak_gib_per_chip"] = compiled_lib.peak_bytes(compiled) / GIB
    if chip is None:
        return {
            **entry,
            **empty,
            "compile_s": seconds,
            "why": "no chip constants for this platform",
        }
    estimate = topology_lib.roofline(compiled, chip, rows * tokens, chips, kernel_flops)
    print(
        f"  {batch.dataset:<12} per chip: {estimate['flops'] / 1e12:.2f} TFLOP (of which "
        f"{estimate['kernel_flops'] / 1e12:.2f} in attention kernels), "
        f"{estimate['bytes'] / 1e9:.2f} GB accessed"
    )
    entry.update({k: estimate[k] for k in empty})
    entry["compile_s"] = seconds
    return entry


def main(argv):
    if len(argv) > 1:
        sys.exit(cli.report(f"unexpected arguments: {argv[1:]}", cli.USAGE_EXIT_CODE))
    try:
        platform, count, _ = topology_lib.parse_topology(_TOPOLOGY.value)
        keep_only(_CONFIG.value, _DATASETS.value)
    except ValueError as error:
        sys.exit(cli.report(error, cli.USAGE_EXIT_CODE))
    slices = _NUM_SLICES.value
    devices, why_not = topology_lib.target_devices(_TOPOLOGY.value, slices)
    config = _CONFIG.value
    with config.unlocked():
        config.mesh.dcn_data = slices
        # The target's attention, not this host's (an explicit --config.model.attention_impl wins).
        config.model.attention_impl = attention.resolve(config.model.attention_impl, platform)
    mesh = (
        sharding.make_mesh(config.mesh, devices)
        if devices is not None
        else sharding.abstract_mesh(config.mesh, count * slices)
    )
    run_length.for_compiling_only(config)
    trainer = Trainer(config, "/tmp/unused", mesh=mesh, platform=platform)
    chips = count * slices
    chip = topology_lib.CHIPS.get(devices[0].device_kind) if devices is not None else None
    print(
        f"topology {_TOPOLOGY.value} x {slices} slice(s): {chips} devices"
        f"{f' ({devices[0].device_kind})' if devices is not None else ''}, mesh "
        f"{dict(trainer.mesh.shape)}, model {trainer.model_config.embed_dim}-wide x "
        f"{trainer.model_config.depth}, attention {config.model.attention_impl}, "
        f"compute {config.model.dtype}"
    )
    state = topology_lib.state_bytes_per_device(trainer)
    for key, value in state.items():
        print(f"  {key:<12} {value / GIB:8.3f} GiB per device")
    print(f"  {'state total':<12} {sum(state.values()) / GIB:8.3f} GiB per device")
    result = {
        "topology": _TOPOLOGY.value,
        "slices": slices,
        "chips": chips,
        "hbm_gib_per_chip": chip.hbm_gib if chip else None,
        "datasets": {},
    }
    if not _COMPILE.value or devices is None:
        why = why_not or "--nocompile"
        print(f"train step not compiled: {why}")
        for d in trainer.datasets:
            tokens = max(b.tokens for b in d.buckets)
            result["datasets"][d.name] = {
                "tokens": tokens,
                "time_slots": max(d.time_buckets),
                "attention": config.model.attention_impl,
            }
            result["datasets"][d.name].update(
                dict.fromkeys(
                    ("peak_gib_per_chip", "est_step_s", "tokens_per_s_per_chip", "mfu_bound")
                ),
                compile_s=None,
                why=why,
            )
        print(json.dumps(result))
        return
    every = _ALL_SHAPES.value
    batches = precompile.largest_step_shapes(
        trainer.datasets,
        trainer.model_config.mask_ratio,
        0 if every else _BUCKETS.value,
        every_time_bucket=every,
    )
    shapes = []
    for i, batch in enumerate(batches):
        entry = dataset_report(trainer, batch, chip, config.model.attention_impl, chips)
        result["datasets"].setdefault(batch.dataset, entry)  # the largest bucket's
        shapes.append({"dataset": batch.dataset, **entry})
        progress = f" [{i + 1}/{len(batches)}]" if every else ""
        print(describe(batch.dataset, entry, chip) + progress, flush=True)
    if every:
        seconds = [e["compile_s"] for e in shapes if e["compile_s"] is not None]
        result["shapes"] = [
            {k: e[k] for k in ("dataset", "tokens", "time_slots", "peak_gib_per_chip", "compile_s")}
            for e in shapes
        ]
        result["compile_s_total"] = sum(seconds)
        print(
            f"{len(seconds)} of {len(shapes)} step shapes compiled in {sum(seconds):.0f} s "
            f"(per shape {min(seconds, default=0):.0f}-{max(seconds, default=0):.0f} s)"
        )
    print(json.dumps(result))


def keep_only(config, names: list[str]) -> None:
    """Drops the config's datasets not in ``names`` (all kept when empty); unknown names are an
    error naming the known ones."""
    if not names:
        return
    known = list(config.data.datasets)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--datasets {','.join(unknown)}: not in the config ({', '.join(known)})")
    with config.unlocked():
        for name in known:
            if name not in names:
                del config.data.datasets[name]


def describe(name: str, entry: dict, chip: Chip | None) -> str:
    line = (
        f"  {name:<12} {entry['tokens']:6d} tokens, {entry['time_slots']} date slots, "
        f"{entry['attention']} attention:"
    )
    if entry["peak_gib_per_chip"] is None:
        return f"{line} not compiled: {entry['why']}"
    line += f" peak {entry['peak_gib_per_chip']:8.3f} GiB per chip"
    if chip is not None:
        headroom = 1 - entry["peak_gib_per_chip"] / chip.hbm_gib
        line += (
            f" of {chip.hbm_gib:g} ({headroom:+.0%} headroom), step >= "
            f"{entry['est_step_s'] * 1e3:.1f} ms, <= {entry['tokens_per_s_per_chip']:,.0f} "
            f"tokens/s/chip, MFU <= {entry['mfu_bound']:.0%}"
        )
    return f"{line}; compiled in {entry['compile_s']:.1f} s"


if __name__ == "__main__":
    for arg in sys.argv:
        if arg.startswith("--topology=cpu:"):
            n = int(arg.split(":")[1])
            slices = next(
                (int(a.split("=")[1]) for a in sys.argv if a.startswith("--num_slices=")), 1
            )
            os.environ.setdefault(
                "XLA_FLAGS", f"--xla_force_host_platform_device_count={n * slices}"
            )
    app.run(main, flags_parser=lambda argv: cli.parse_absl_flags(argv, _CONFIG))
