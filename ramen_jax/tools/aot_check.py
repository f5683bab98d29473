r"""Does a config fit and shard on a target topology? Checked ahead of time, without the hardware.

  python -m ramen_jax.tools.aot_check --config configs/base.py --topology v5e:4x4
  python -m ramen_jax.tools.aot_check --config configs/base.py:debug --topology cpu:8

For the config's mesh on the topology's devices it reports, per device:

1. the exact bytes of parameters, optimiser moments and BatchNorm statistics under the config's
   sharding rules (from the shardings, no compilation needed; works for any topology);
2. when the topology can be compiled for here, XLA's memory analysis of the compiled train step
   for the largest token bucket of every dataset (arguments, outputs, temporaries, and their
   sum), i.e. what one device needs at peak. TPU topologies compile ahead of time when libtpu
   is installed (``jax.experimental.topologies``); ``cpu:N`` uses N simulated CPU devices.
   Where compilation is not possible, the report says why.

Topology names: ``v5e:4x4`` (16 chips), ``v5p:2x2x4``, ``v4:2x2x2``, ``v6e:2x2`` ... (the product
of the dimensions is the chip count), or ``cpu:N``.
"""

from __future__ import annotations

import math
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_TOPOLOGY = flags.DEFINE_string("topology", "cpu:8", "Target, e.g. v5e:4x4, v5p:2x2x4, cpu:8.")
_COMPILE = flags.DEFINE_bool("compile", True, "Compile the train step where possible.")
flags.mark_flags_as_required(["config"])

GIB = 1024**3


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


def state_bytes_per_device(trainer) -> dict:
    """Bytes per device of params / optimiser state / BatchNorm statistics, from shardings."""
    import jax

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


def largest_batches(trainer) -> list[dict]:
    """One host batch per dataset at its largest token bucket (zeros; shapes are what count)."""
    import numpy as np

    from ramen_jax.data.layout import build_layout

    out = []
    for d in trainer.datasets:
        bucket = max(d.buckets, key=lambda b: (b.tokens, b.series))
        gsd = min(d.gsds)
        layout = build_layout(
            d.specs,
            [s.name for s in d.specs],
            gsd,
            grid_pad=d.grid_pad,
            token_bucket=max(bucket.tokens, 1),
            series_bucket=bucket.series,
        )
        batch = {"dataset": d.name, "layout": layout, "pixels": {}, "dates": {}, "time_valid": {}}
        for s in d.specs:
            t = s.max_time_steps
            batch["pixels"][s.name] = np.zeros(
                (d.global_batch, t, s.side, s.side, s.num_channels), np.float32
            )
            batch["dates"][s.name] = np.ones((d.global_batch, t), np.int32)
            batch["time_valid"][s.name] = np.ones((d.global_batch, t), bool)
        out.append(batch)
    return out


def compiled_memory(trainer, batch) -> dict:
    import jax

    from ramen_jax.training import sharding

    split = sharding.batch_sharding(trainer.mesh, trainer.rules)
    rep = sharding.replicated(trainer.mesh)

    def spec(sh):
        return lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)

    args = {k: jax.tree.map(spec(split), batch[k]) for k in ("pixels", "dates", "time_valid")}
    args["layout"] = jax.tree.map(spec(rep), batch["layout"])
    state = jax.eval_shape(trainer.init_state)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        state,
        trainer.state_sharding,
    )
    compiled = trainer.step_fn(batch["dataset"]).lower(state, args).compile()
    analysis = compiled.memory_analysis()
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
    )
    out = {f: int(getattr(analysis, f, 0) or 0) for f in fields}
    out["peak_estimate_bytes"] = (
        out["argument_size_in_bytes"]
        + out["output_size_in_bytes"]
        + out["temp_size_in_bytes"]
        - out["alias_size_in_bytes"]
    )
    return out


def main(argv):
    del argv
    platform, count, dims = parse_topology(_TOPOLOGY.value)
    import jax

    from ramen_jax.training import run_length, sharding
    from ramen_jax.training.trainer import Trainer

    devices, why_not = None, None
    if platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) != count:
            why_not = (
                f"{len(devices)} CPU devices here; run with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={count}"
            )
            devices = None
    else:
        try:
            from jax.experimental import topologies

            devices = topologies.get_topology_desc(_TOPOLOGY.value, "tpu").devices
        except Exception as error:  # no libtpu here: shardings only
            why_not = f"cannot compile for {_TOPOLOGY.value} here: {error}"
    config = _CONFIG.value
    mesh = (
        sharding.make_mesh(config.mesh, devices)
        if devices is not None
        else sharding.abstract_mesh(config.mesh, count)
    )
    run_length.for_compiling_only(config)
    trainer = Trainer(config, "/tmp/unused", mesh=mesh, platform=platform)
    print(
        f"topology {_TOPOLOGY.value}: {count} devices, mesh "
        f"{dict(trainer.mesh.shape)}, model {trainer.model_config.embed_dim}-wide x "
        f"{trainer.model_config.depth}"
    )
    state = state_bytes_per_device(trainer)
    for key, value in state.items():
        print(f"  {key:<12} {value / GIB:8.3f} GiB per device")
    print(f"  {'state total':<12} {sum(state.values()) / GIB:8.3f} GiB per device")
    if not _COMPILE.value:
        return
    if devices is None:
        print(f"train step not compiled: {why_not}")
        return
    for batch in largest_batches(trainer):
        memory = compiled_memory(trainer, batch)
        tokens = int(batch["layout"]["token_valid"].shape[0])
        print(
            f"  {batch['dataset']:<12} {tokens:6d} tokens x {len(batch['pixels'])} modalities:"
            f" peak {memory['peak_estimate_bytes'] / GIB:8.3f} GiB per device "
            f"(temporaries {memory['temp_size_in_bytes'] / GIB:.3f} GiB)"
        )


if __name__ == "__main__":
    if any(a.startswith("--topology=cpu:") for a in sys.argv):
        n = next(a for a in sys.argv if a.startswith("--topology=cpu:")).split(":")[1]
        os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={n}")
    app.run(main)
