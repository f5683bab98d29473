"""The measurements of ``python -m ramen_jax.perf.step_bench``: one case (dataset, effective
GSD, kept modalities) compiled and timed on a random batch of its real shapes.

A row holds the median step time, samples/s, valid tokens/s, analytic model FLOPs per step
(``ramen_jax.perf.flops``) next to XLA's cost analysis, achieved FLOP/s and MFU against the
peak of a large matmul measured on the same device in the same dtype, XLA's memory
(``ramen_jax.perf.compiled.live_bytes``), the XLA programs built while timing (1: no
recompiles) and the token padding; ``compare_decoder_heads`` times the decoder forward with
the original's reconstruction order (``ramen_jax.model.reference``) against ours.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from ramen_jax.model import attention as attention_lib
from ramen_jax.model import state as state_lib
from ramen_jax.model.reference import original_order_recon
from ramen_jax.perf import compiled as compiled_lib
from ramen_jax.perf import flops as flops_lib
from ramen_jax.perf import synthetic
from ramen_jax.training import compile_stats, sharding
from ramen_jax.training.trainer import Trainer


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


def bench_case(
    trainer: Trainer, batches, case, peak: float, rng, *, warmup: int, steps: int, decoder=False
) -> dict:
    """One case's row: a random batch of the case's shapes through the compiled step, timed
    over ``steps`` steps after ``warmup``; ``decoder``: ``compare_decoder_heads`` too."""
    index, gsd, kept = case
    host = synthetic.random_batch(batches, index, gsd, kept, rng)
    d = trainer.datasets[index]
    batch = sharding.device_batch(host.batch, trainer.mesh, trainer.rules)
    state = trainer.init_state()
    step = trainer.step_fn(d.name)
    before = programs_built()
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    median, (state, _) = time_calls(
        lambda s, b: (compiled(s, b)[0], b), (state, batch), warmup, steps
    )  # the step donates its state: keep the latest
    compiles = programs_built() - before
    layout = host.batch.layout
    valid = int(layout.token_valid.sum())
    model_flops = flops_lib.train_step_flops(
        trainer.model_config, d.specs, layout, host.batch.pixels
    )
    row = {
        "case": f"{d.name}:{gsd:g}:" + "+".join(d.specs[i].name for i in kept),
        "batch": d.global_batch,
        "tokens": valid,
        "padded_tokens": layout.length,
        "padding": 1 - valid / layout.length,
        "step_s": median,
        "samples_per_s": d.global_batch / median,
        "tokens_per_s": valid * d.global_batch / median,
        "model_tflops": model_flops / 1e12,
        "xla_tflops": float(compiled_lib.cost(compiled).get("flops", 0)) / 1e12,
        "achieved_tflops_s": model_flops / median / 1e12,
        "mfu": model_flops / median / (peak * jax.device_count()),
        "compile_s": compile_seconds,
        "compiles": compiles,
        "memory_gib": compiled_lib.live_bytes(compiled) / 2**30,
    }
    if decoder:
        row.update(compare_decoder_heads(trainer, d, host, batch, state, gsd, max(steps, 3)))
    return row


def compare_decoder_heads(trainer, d, host, batch, state, gsd, repeats: int) -> dict:
    """Decoder forward time with our head vs the original's order (same tokens), on ONE
    sample: the original order holds Dd-wide maps at native size (e.g. 512 x 512 x 512 floats
    per FLAIR-HUB aerial image, times four experts), which does not fit a CPU for a batch."""
    specs = tuple(d.specs)
    side = int(d.specs[0].side * d.specs[0].gsd / gsd)
    graphdef = trainer.graphdef
    batch = batch.map_samples(lambda x: x[:1])
    noise = jax.random.uniform(jax.random.key(0), (1, batch.layout.length))

    def latent_of(params, stats):
        model = state_lib.merge_model(graphdef, params, stats)
        return model(batch, specs, noise, train=False)

    out = jax.jit(attention_lib.under_mesh(trainer.mesh, latent_of))(
        state.params, state.batch_stats
    )

    def decode(params, stats, latent, ids_restore, original: bool):
        model = state_lib.merge_model(graphdef, params, stats)
        dec_tokens, recon = model.decoder(latent, ids_restore, batch, specs)
        if not original:
            return recon
        series = None
        if any(s.time_series for s in specs):
            series = model.decoder.temporal(dec_tokens[:, 1:], batch, specs, batch.layout)
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
        timings[name] = median_seconds(lambda f=fn, a=args: jax.block_until_ready(f(*a)), repeats)
    timings["decoder_speedup"] = timings["decoder_original_order_s"] / timings["decoder_s"]
    return timings
