r"""Training-step benchmark: step time, throughput, FLOPs, MFU, compile time, memory, padding.

  python -m ramen_jax.bench --config configs/base.py:cpu_step --steps 5
  python -m ramen_jax.bench --config configs/base.py --cases mmearth:50:s2+s1+dem --dtype float32

For each case (dataset : effective GSD : kept modalities, default: every dataset at the middle
of its GSD list with all modalities kept) it builds a batch with the case's real layout (bucket
padding included) and random pixels, compiles the jitted train step (timed), runs ``--warmup``
then ``--steps`` steps and reports the median step time, samples/s, valid tokens/s, analytic
model FLOPs per step (``ramen_jax.perf.flops``) next to XLA's cost analysis, achieved FLOP/s and
MFU against the peak of a large matmul measured on the same device in the same dtype, XLA's
memory estimate, the number of XLA programs compiled for the case (1: no recompiles while
timing) and the token padding. ``--decoder_compare`` also times the decoder forward with the
original's reconstruction order (``ramen_jax.model.reference``) against ours. Options:
``--remat``, ``--scan_layers``, ``--dtype``, ``--attention`` (``xla``/``cudnn``/...). Any config
field can be overridden as in training. Output: a table, then one JSON line.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ramen_jax import cli
from ramen_jax.data import pipeline
from ramen_jax.model import attention as attention_lib
from ramen_jax.model import build as build_lib
from ramen_jax.model.reference import original_order_recon
from ramen_jax.perf import flops as flops_lib
from ramen_jax.training import compile_stats, run_length, sharding
from ramen_jax.training.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_CASES = flags.DEFINE_list("cases", [], "dataset:gsd:mod1+mod2 ... (default: one per dataset)")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per case.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype override.")
_REMAT = flags.DEFINE_bool("remat", None, "Rematerialise blocks (override).")
_SCAN = flags.DEFINE_bool("scan_layers", None, "Scan over transformer blocks (override).")
_ATTENTION = flags.DEFINE_string(
    "attention",
    None,
    "model.attention_impl: xla, cudnn, einsum, chunked, splash or splash_interpret "
    "(default: the mesh devices' platform's, ramen_jax.model.attention).",
)
_DECODER = flags.DEFINE_bool("decoder_compare", False, "Time the original decoder head too.")
flags.mark_flags_as_required(["config"])


def measure_peak_flops(dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a ``size``-square matmul in ``dtype`` on the default device (best of runs)."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def parse_case(text: str, trainer: Trainer):
    name, gsd, mods = text.split(":")
    index = [d.name for d in trainer.datasets].index(name)
    specs = trainer.datasets[index].specs
    kept = tuple(next(i for i, s in enumerate(specs) if s.name == m) for m in mods.split("+"))
    return index, float(gsd), kept


def default_cases(trainer: Trainer):
    out = []
    for index, d in enumerate(trainer.datasets):
        gsds = sorted(d.gsds)
        out.append((index, gsds[len(gsds) // 2], tuple(range(len(d.specs)))))
    return out


def synthetic_batch(batches, index: int, gsd: float, kept: tuple, rng) -> dict:
    d = batches.datasets[index]
    batch = {
        "dataset": d.name,
        "layout": batches.layout(index, gsd, kept),
        "pixels": {},
        "dates": {},
        "time_valid": {},
    }
    for spec in d.specs:
        t = spec.max_time_steps
        rows = len(batches.shards.positions(0, d.global_batch))
        shape = (rows, t, spec.side, spec.side, spec.num_channels)
        batch["pixels"][spec.name] = rng.standard_normal(shape, np.float32)
        batch["dates"][spec.name] = np.tile(np.arange(1, t + 1, dtype=np.int32) * 20, (shape[0], 1))
        batch["time_valid"][spec.name] = np.ones((shape[0], t), bool)
    return batch


def median_seconds(call, repeats: int) -> float:
    """Median wall time of ``call()`` (which must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_calls(fn, args, warmup: int, steps: int):
    """Median time of ``args = fn(*args)`` (state threaded through, e.g. donated)."""
    for _ in range(warmup):
        args = fn(*args)
    holder = [args]

    def call():
        holder[0] = jax.block_until_ready(fn(*holder[0]))

    return median_seconds(call, steps), holder[0]


def programs_built() -> int:
    """XLA programs compiled or read from the persistent cache so far in this process."""
    snapshot = compile_stats.counter().snapshot()
    return snapshot["xla_compiles"] + snapshot["cache_hits"]


def bench_case(trainer: Trainer, batches, case, peak: float, rng) -> dict:
    index, gsd, kept = case
    host = synthetic_batch(batches, index, gsd, kept, rng)
    d = trainer.datasets[index]
    batch = sharding.device_batch(host, trainer.mesh, trainer.rules)
    state = trainer.init_state()
    step = trainer.step_fn(d.name)
    before = programs_built()
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    median, (state, _) = time_calls(
        lambda s, b: (compiled(s, b)[0], b), (state, batch), _WARMUP.value, _STEPS.value
    )  # the step donates its state: keep the latest
    compiles = programs_built() - before
    layout = host["layout"]
    valid = int(layout["token_valid"].sum())
    model_flops = flops_lib.train_step_flops(trainer.model_config, d.specs, layout, host["pixels"])
    row = {
        "case": f"{d.name}:{gsd:g}:" + "+".join(d.specs[i].name for i in kept),
        "batch": d.global_batch,
        "tokens": valid,
        "padded_tokens": int(layout["token_valid"].shape[0]),
        "padding": 1 - valid / layout["token_valid"].shape[0],
        "step_s": median,
        "samples_per_s": d.global_batch / median,
        "tokens_per_s": valid * d.global_batch / median,
        "model_tflops": model_flops / 1e12,
        "xla_tflops": float(cost.get("flops", 0)) / 1e12,
        "achieved_tflops_s": model_flops / median / 1e12,
        "mfu": model_flops / median / (peak * jax.device_count()),
        "compile_s": compile_seconds,
        "compiles": compiles,
        "memory_gib": (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes
        )
        / 2**30,
    }
    if _DECODER.value:
        row.update(compare_decoder_heads(trainer, d, host, batch, state, gsd))
    return row


def compare_decoder_heads(trainer, d, host, batch, state, gsd) -> dict:
    """Decoder forward time with our head vs the original's order (same tokens), on ONE
    sample: the original order holds Dd-wide maps at native size (e.g. 512 x 512 x 512 floats
    per FLAIR-HUB aerial image, times four experts), which does not fit a CPU for a batch."""
    specs = tuple(d.specs)
    side = int(d.specs[0].side * d.specs[0].gsd / gsd)
    graphdef = trainer.graphdef
    batch = {
        **{k: jax.tree.map(lambda x: x[:1], batch[k]) for k in ("pixels", "dates", "time_valid")},
        "layout": batch["layout"],
    }
    length = host["layout"]["token_valid"].shape[0]
    noise = jax.random.uniform(jax.random.key(0), (1, length))

    def latent_of(params, stats):
        model = build_lib.merge_model(graphdef, params, stats)
        return model(batch, specs, noise, train=False)

    out = jax.jit(attention_lib.under_mesh(trainer.mesh, latent_of))(
        state.params, state.batch_stats
    )

    def decode(params, stats, latent, ids_restore, original: bool):
        model = build_lib.merge_model(graphdef, params, stats)
        dec_tokens, recon = model.decoder(latent, ids_restore, batch, specs)
        if not original:
            return recon
        series = None
        if any(s.time_series for s in specs):
            series = model.decoder.temporal(dec_tokens[:, 1:], batch, specs, batch["layout"])
        return original_order_recon(model.decoder, dec_tokens, series, batch, specs, gsd, side)

    timings = {}
    for name, original in (("decoder_s", False), ("decoder_original_order_s", True)):
        fn = jax.jit(
            attention_lib.under_mesh(
                trainer.mesh, lambda p, s, lat, ids, o=original: decode(p, s, lat, ids, o)
            )
        )
        args = (state.params, state.batch_stats, out["latent"], out["ids_restore"])
        jax.block_until_ready(fn(*args))  # compile
        timings[name] = median_seconds(
            lambda f=fn, a=args: jax.block_until_ready(f(*a)), max(_STEPS.value, 3)
        )
    timings["decoder_speedup"] = timings["decoder_original_order_s"] / timings["decoder_s"]
    return timings


def print_table(rows: list[dict], peak: float) -> None:
    print(
        f"device: {jax.devices()[0].device_kind} x {jax.device_count()}; measured matmul peak "
        f"{peak / 1e12:.3f} TFLOP/s per device"
    )
    width = max(len("case"), *(len(r["case"]) for r in rows)) + 2
    print(
        f"{'case':<{width}}{'B':>4}{'tokens':>8}{'pad':>6}{'step s':>9}{'samples/s':>10}"
        f"{'tok/s':>10}{'TFLOP':>8}{'XLA':>8}{'MFU':>7}{'compiles':>9}{'compile':>9}{'GiB':>7}"
    )
    for r in rows:
        print(
            f"{r['case']:<{width}}{r['batch']:>4}{r['tokens']:>8}{r['padding']:>6.1%}"
            f"{r['step_s']:>9.3f}{r['samples_per_s']:>10.2f}{r['tokens_per_s']:>10.0f}"
            f"{r['model_tflops']:>8.3f}{r['xla_tflops']:>8.3f}{r['mfu']:>7.1%}"
            f"{r['compiles']:>9}{r['compile_s']:>8.1f}s{r['memory_gib']:>7.2f}"
        )
        if "decoder_speedup" in r:
            print(
                f"{'':<4}decoder forward: {r['decoder_s']:.3f} s (ours) vs "
                f"{r['decoder_original_order_s']:.3f} s (original order): "
                f"{r['decoder_speedup']:.1f}x"
            )


def main(argv):
    del argv
    config = _CONFIG.value
    if _DTYPE.value:
        config.model.dtype = _DTYPE.value
    if _REMAT.value is not None:
        config.model.remat = _REMAT.value
    if _SCAN.value is not None:
        config.model.scan_layers = _SCAN.value
    if _ATTENTION.value:
        config.model.attention_impl = _ATTENTION.value
    run_length.for_compiling_only(config)
    trainer = Trainer(config, tempfile.mkdtemp())
    batches = pipeline.StepBatches(
        trainer.datasets,
        seed=0,
        mask_ratio=0.75,
        shards=sharding.process_batch_shards(trainer.mesh, trainer.rules),
    )
    cases = [parse_case(c, trainer) for c in _CASES.value] or default_cases(trainer)
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    peak = measure_peak_flops(dtype)
    rng = np.random.default_rng(0)
    rows = [bench_case(trainer, batches, case, peak, rng) for case in cases]
    print_table(rows, peak)
    print(
        json.dumps(
            {
                "device": jax.devices()[0].device_kind,
                "devices": jax.device_count(),
                "dtype": config.model.dtype,
                "remat": bool(config.model.remat),
                "scan_layers": bool(config.model.scan_layers),
                "peak_tflops_per_device": peak / 1e12,
                "cases": rows,
            }
        )
    )


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_absl_flags(argv, _CONFIG))
