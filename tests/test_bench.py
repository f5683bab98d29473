"""``python -m ramen_jax.perf.step_bench``: the table and JSON a user reads, numbers that hang
together."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

from ramen_jax.data import pipeline
from ramen_jax.model import state as state_lib
from ramen_jax.training.trainer import model_config_from

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_reports_throughput_flops_mfu_compiles_and_decoder_speedup():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ramen_jax.perf.step_bench",
            "--config=configs/base.py:debug",
            "--steps=2",
            "--warmup=1",
            "--decoder_compare",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[1].split()[:3] == ["case", "B", "tokens"]
    assert "decoder forward:" in result.stdout
    report = json.loads(lines[-1])
    assert report["scan_layers"] is False and report["peak_tflops_per_device"] > 0
    (case,) = report["cases"]
    assert case["case"].startswith("bigearthnet:")
    assert case["compiles"] == 1  # one program for the step, no recompile while timing
    # the analytic count and XLA's cost analysis describe the same step
    assert case["model_tflops"] == pytest.approx(case["xla_tflops"], rel=0.1)
    assert 0 < case["mfu"] < 1
    assert case["samples_per_s"] == pytest.approx(case["batch"] / case["step_s"])
    assert case["decoder_speedup"] == pytest.approx(
        case["decoder_original_order_s"] / case["decoder_s"]
    )


def _parameter_count(variant) -> int:
    spec = importlib.util.spec_from_file_location("base_config", ROOT / "configs/base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config, paper = module.get_config(variant), module.get_config()
    assert config.data.to_dict() == paper.data.to_dict()
    assert config.optim.to_dict() == paper.optim.to_dict()
    datasets = pipeline.build_datasets(config.data, 1)
    shapes = state_lib.flat_shapes(
        state_lib.abstract_model(model_config_from(config, datasets, "cpu"))
    )
    return sum(math.prod(s) for s in shapes.values())


def test_model_size_variants_keep_the_paper_setup_with_smaller_models():
    """configs/base.py:tiny / :small: same data and optimiser, ViT-Ti / ViT-S sized models."""
    tiny, small, base = (_parameter_count(v) for v in ("tiny", "small", None))
    assert tiny < small < base
    assert 80e6 < base < 200e6  # ViT-B encoder + 512-wide decoder + projectors
