r"""Training-step benchmark: step time, throughput, FLOPs, MFU, compile time, memory, padding.

  python -m ramen_jax.perf.step_bench --config configs/base.py:cpu_step --steps 5
  python -m ramen_jax.perf.step_bench --config configs/base.py --cases mmearth:50:s2+s1+dem \
      --dtype float32

For each case (dataset : effective GSD : kept modalities, default: every dataset at the middle
of its GSD list with all modalities kept) it builds a batch with the case's real layout (bucket
padding included) and random pixels (``ramen_jax.perf.synthetic``), compiles the jitted train
step (timed), runs ``--warmup`` then ``--steps`` steps and reports what
``ramen_jax.perf.step_timing`` measures: the median step time, samples/s, valid tokens/s,
analytic and XLA FLOPs, MFU, XLA's memory per device, the XLA programs built for the case
(1: no recompiles while timing) and the token padding. ``--decoder_compare`` also times the
decoder forward with the original's reconstruction order against ours. Options: ``--remat``,
``--scan_layers``, ``--dtype``, ``--attention`` (``xla``/``cudnn``/...). Any config field can
be overridden as in training. Output: a table, then one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ramen_jax import cli
from ramen_jax.data import pipeline
from ramen_jax.perf import step_timing
from ramen_jax.training import run_length, sharding
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
    if len(argv) > 1:
        sys.exit(cli.report(f"unexpected arguments: {argv[1:]}", cli.USAGE_EXIT_CODE))
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
    cases = [step_timing.parse_case(c, trainer) for c in _CASES.value]
    cases = cases or step_timing.default_cases(trainer)
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    peak = step_timing.measure_peak_flops(dtype)
    rng = np.random.default_rng(0)
    rows = [
        step_timing.bench_case(
            trainer,
            batches,
            case,
            peak,
            rng,
            warmup=_WARMUP.value,
            steps=_STEPS.value,
            decoder=_DECODER.value,
        )
        for case in cases
    ]
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
