r"""Compile count of a long mixed run, and what a restart compiles with the persistent cache.

  python -m ramen_jax.perf.compile_check --steps 1000 --restart_at 500 --workdir /tmp/cc
  python -m ramen_jax.perf.compile_check --config configs/demo.py:tiny --steps 20 --restart_at 10

Runs ``python -m ramen_jax.train`` twice, as a user would, with ``compilation_cache_dir`` set:

1. a fresh run of ``--steps`` steps, checkpointing every ``--restart_at`` steps;
2. a restart after a simulated crash: checkpoints after step ``--restart_at`` are deleted and
   the same command resumes from there, replaying the batches ``restart_at + 1 .. steps``.

Reported (a table, then one JSON line): the distinct batch shapes the first run met (each is one
compiled train step, the quantity bounded by the bucket set), the XLA programs each process
built from scratch (``xla_compiles``) and those it read from the persistent cache, and the
executables the first run dropped and reloaded to stay under the host's memory-map limit
(``ramen_jax.training.programs``; XLA:CPU only). The restart should build nothing: every
program it needs was compiled and cached by the first run.

Default config: the paper's mixed data (``configs/base.py``: three datasets, all their effective
GSDs and modality subsets, 16 buckets per dataset) with a small model and one sample per batch,
so a 2-core, 24 GB CPU gets through 1,000 steps (WorldStrat at 5 m has 12,168 tokens: the CPU
default, chunked attention, is what keeps it in memory); shapes depend on the
data config, not on the model width, the attention implementation or the batch size. On a small
CPU, ``XLA_FLAGS=--xla_backend_optimization_level=0`` shortens compiling without changing which
programs exist. A records dataset must exist at its path: real data, or stand-ins written by
``python -m data_prep.standins --config configs/base.py --workdir DIR`` and passed with
``--flagfile=DIR/standins.flags`` (the tool says which it reads).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from ramen_jax import cli
from ramen_jax.perf import data_location

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Steps of the first run.", lower_bound=2)
_RESTART = flags.DEFINE_integer("restart_at", 500, "Checkpoint step the restart resumes from.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (replaced).")
_SMALL = flags.DEFINE_bool(
    "small_model", True, "Shrink the model and batches (shapes do not depend on them)."
)
_MAX_SHAPES = flags.DEFINE_integer("max_shapes", 48, "Budget of distinct step shapes.")
flags.mark_flags_as_required(["workdir"])

SMALL_MODEL = {
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "decoder_dim": 64,
    "decoder_depth": 1,
    "decoder_heads": 4,
    "dtype": "float32",
}


def overrides(config, workdir: pathlib.Path, steps: int, every: int, small: bool) -> list[str]:
    """``--config.*`` flags for both runs (what each dataset reads is said once)."""
    say = lambda line: print(line, flush=True)  # noqa: E731
    data_location.locate_data(config, say)
    flags_out = [
        f"--config.total_steps={steps}",
        f"--config.compilation_cache_dir={workdir / 'xla_cache'}",
        f"--config.checkpoint.every_steps={every}",
        f"--config.checkpoint.keep={steps // every + 1}",
        "--config.checkpoint.async_save=False",
        "--config.preview_every_steps=0",
        f"--config.log_every_steps={min(50, every)}",
        "--config.data.num_workers=0",
        "--config.eval.every_steps=-1",  # training steps only: validation has its own programs
    ]
    for name, dataset in config.data.datasets.items():
        source = dataset.source
        if source.get("path"):
            flags_out.append(f"--config.data.datasets.{name}.source.path={source.path}")
        if small:
            flags_out.append(f"--config.data.datasets.{name}.per_device_batch=1")
    if small:
        flags_out += [f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()]
    return flags_out


def run_training(config_arg: str, run_dir: pathlib.Path, extra: list[str], log) -> dict:
    """One ``python -m ramen_jax.train`` process; returns its last ``metrics.jsonl`` line."""
    metrics = run_dir / "metrics.jsonl"
    before = metrics.read_text().count("\n") if metrics.exists() else 0
    command = [sys.executable, "-m", "ramen_jax.train", f"--config={config_arg}"]
    command += [f"--workdir={run_dir}", *extra]
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"training failed (exit {result.returncode}); see {log}")
    lines = metrics.read_text().splitlines()[before:]
    if not lines:
        raise RuntimeError(f"the run wrote no metrics; see {log}")
    last = json.loads(lines[-1])
    return {**last, "seconds": time.perf_counter() - start}


def simulate_crash(run_dir: pathlib.Path, keep_until: int) -> list[int]:
    """Deletes the checkpoints after ``keep_until``, as if the run died right after it."""
    removed = []
    for path in (run_dir / "checkpoints").iterdir():
        if path.name.isdigit() and int(path.name) > keep_until:
            shutil.rmtree(path)
            removed.append(int(path.name))
    return sorted(removed)


def compile_check(
    config, config_arg, workdir, steps, restart_at, small, max_shapes, user_overrides=()
) -> dict:
    workdir = pathlib.Path(workdir).absolute()
    if not 0 < restart_at < steps:
        raise ValueError(f"--restart_at must lie in (0, {steps}), got {restart_at}")
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(workdir / "xla_cache", ignore_errors=True)
    extra = overrides(config, workdir, steps, restart_at, small) + list(user_overrides)
    print(f"run 1: {steps} steps from scratch (log: {workdir / 'run1.log'})", flush=True)
    first = run_training(config_arg, run_dir, extra, workdir / "run1.log")
    removed = simulate_crash(run_dir, restart_at)
    print(f"crash simulated: removed checkpoints {removed}; run 2 resumes at {restart_at}")
    second = run_training(config_arg, run_dir, extra, workdir / "run2.log")
    return {
        "steps": steps,
        "restart_at": restart_at,
        "distinct_shapes": int(first["compiles"]),
        "max_shapes": max_shapes,
        "within_budget": int(first["compiles"]) <= max_shapes,
        "run1_xla_compiles": int(first["xla_compiles"]),
        "run1_compile_seconds": first["compile_seconds"],
        "run1_seconds": first["seconds"],
        "run1_cache_hits": int(first["cache_hits"]),
        "run1_programs_dropped": int(first.get("programs_dropped", 0)),
        "run1_programs_reloaded": int(first.get("programs_reloaded", 0)),
        "restart_shapes": int(second["compiles"]),
        "restart_xla_compiles": int(second["xla_compiles"]),
        "restart_cache_hits": int(second["cache_hits"]),
        "restart_seconds": second["seconds"],
    }


def main(argv):
    if len(argv) > 1:
        sys.exit(cli.report(f"unexpected arguments: {argv[1:]}", cli.USAGE_EXIT_CODE))
    config_flag = flags.FLAGS["config"]
    config_arg = config_flags.get_config_filename(config_flag)
    user = [f"--config.{k}={v}" for k, v in config_flags.get_override_values(config_flag).items()]
    try:
        result = compile_check(
            _CONFIG.value,
            config_arg,
            _WORKDIR.value,
            _STEPS.value,
            _RESTART.value,
            _SMALL.value,
            _MAX_SHAPES.value,
            user,
        )
    except data_location.MissingDataError as error:
        sys.exit(cli.report(error))
    print(
        f"first run : {result['steps']} steps, {result['distinct_shapes']} distinct step shapes "
        f"(budget {result['max_shapes']}), {result['run1_xla_compiles']} XLA programs built "
        f"({result['run1_compile_seconds']:.0f} s compiling), {result['run1_seconds']:.0f} s; "
        f"{result['run1_programs_dropped']} executables dropped for the host's memory-map limit, "
        f"{result['run1_programs_reloaded']} reloaded"
    )
    print(
        f"restart   : from step {result['restart_at']}, {result['restart_shapes']} shapes, "
        f"{result['restart_xla_compiles']} XLA programs built, {result['restart_cache_hits']} "
        f"read from the persistent cache, {result['restart_seconds']:.0f} s"
    )
    print(json.dumps(result))
    if not result["within_budget"]:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_absl_flags(argv, _CONFIG))
