"""The input-pipeline benchmark on the paper's mixed config (configs/base.py), on stand-ins.

``python -m ramen_jax.data.bench`` runs once (40 batches) from an empty folder, so no
``source.path`` of the config exists and every dataset must be written as a stand-in in its
published layout and converted. What it reports is then recounted independently: the same steps
are drawn straight from ``StepBatches`` (no Grain iterator) and the padding is derived from the
step plan and the grid geometry, not from ``token_valid``. Counts must match exactly, fractions
to rel 1e-12.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs import base
from ramen_jax import geometry
from ramen_jax.data import bench, pipeline, temporal_dropout

REPO = Path(__file__).resolve().parents[1]
BATCHES = 40
DATASETS = ("flairhub", "mmearth", "worldstrat")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """(stdout lines, stderr, final JSON, workdir) of one command-line run."""
    workdir = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable,
        "-m",
        "ramen_jax.data.bench",
        f"--config={REPO / 'configs' / 'base.py'}",
        f"--batches={BATCHES}",
        f"--workdir={workdir}",
    ]
    completed = subprocess.run(
        command,
        cwd=tmp_path_factory.mktemp("empty_cwd"),  # data/<name> does not exist here
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.strip().splitlines()
    return lines, completed.stderr, json.loads(lines[-1]), workdir


def test_says_it_runs_on_standins_and_prints_table_then_json(bench_run):
    lines, stderr, result, _ = bench_run
    for name in DATASETS:
        (said,) = [line for line in lines if line.startswith(f"{name}: ")]
        assert f"NO DATA at data/{name}" in said and "SYNTHETIC STAND-IN" in said
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["dataset", "data"])
    assert [lines[header + 2 + i].split()[0] for i in range(4)] == [*DATASETS, "all"]
    assert f"[bench] {BATCHES}/{BATCHES} batches" in stderr
    assert {"distinct_shapes", "padding_fraction", "batches_per_s", "samples_per_s"} <= set(result)
    assert result["batches"] == BATCHES and result["batches_per_s"] > 0
    assert set(result["per_dataset"]) == set(DATASETS)
    assert sum(d["steps"] for d in result["per_dataset"].values()) == BATCHES
    assert all(d["data"] == "stand-in" for d in result["per_dataset"].values())


def test_standins_have_the_papers_native_shapes(bench_run):
    from data_prep import common

    result = bench_run[2]
    for name, dataset in base.paper_datasets().items():
        records = common.load_split(result["per_dataset"][name]["path"], "train")
        assert 1 < len(records) <= 16  # a handful, repeated by the pipeline
        record = records[0]
        for modality, spec in dataset.modalities.items():
            steps, *shape = record[modality].shape
            assert tuple(shape) == (spec.side, spec.side, len(spec.channels)), (name, modality)
            assert (steps > 1) == spec.time_series, (name, modality, steps)
            values = record[modality].astype(np.float64)
            assert np.std(values[np.isfinite(values)]) > 0  # not a constant (-inf: no orbit)


def recount(result: dict) -> dict:
    """Signatures, steps, samples and padded / all token slots of the same steps, counted
    without the bench: padding from the plan's draw and the grid side, batch rows from the
    config."""
    config = base.get_config()
    for name in DATASETS:
        config.data.datasets[name].source.path = result["per_dataset"][name]["path"]
    datasets = pipeline.build_datasets(config.data, batch_shards=1)
    batches = pipeline.StepBatches(
        datasets, seed=config.seed, mask_ratio=0.75, mixing=config.data.mixing
    )
    counts = {
        name: {"signatures": set(), "steps": 0, "samples": 0, "padded": 0, "slots": 0, "dates": {}}
        for name in DATASETS
    }
    for step in range(BATCHES):
        draw, batch = batches.draw(step), batches(step)
        dataset = datasets[draw.dataset]
        reference = dataset.specs[0]
        side = geometry.grid_side(reference.side, reference.gsd, draw.effective_gsd)
        tokens = len(draw.kept) * side * side
        slots = len(batch.batch.layout.token_modality)
        rows = config.data.datasets[dataset.name].per_device_batch
        count = counts[dataset.name]
        count["signatures"].add(pipeline.signature(batch))
        count["steps"] += 1
        count["samples"] += rows
        count["padded"] += rows * (slots - tokens)
        count["slots"] += rows * slots
        stream = batches.stream(draw.dataset)
        for spec in dataset.specs:
            if not spec.time_series:
                continue
            for position in range(draw.draw * rows, (draw.draw + 1) * rows):
                dates = len(dataset.source.load(stream[position], None)[f"{spec.name}_dates"])
                fraction = dataset.temporal_dropout.get(spec.name)
                kept = (
                    temporal_dropout.kept_count(dates, fraction)
                    if fraction and dates > 1
                    else dates
                )
                count["dates"].setdefault(spec.name, []).append(kept)
    return counts


def test_step_shares_measured_and_expected_from_the_epoch_mixing(bench_run):
    from data_prep import common

    result = bench_run[2]
    config = base.get_config()
    assert config.data.mixing == "epoch"
    batches = {}  # full global batches per epoch (one batch shard), at least one
    for name in DATASETS:
        records = common.load_split(result["per_dataset"][name]["path"], common.TRAIN)
        batches[name] = max(1, len(records) // config.data.datasets[name].per_device_batch)
    expected = {name: count / sum(batches.values()) for name, count in batches.items()}
    assert result["expected_step_share"] == pytest.approx(expected, rel=1e-12)
    measured = {name: d["steps"] / BATCHES for name, d in result["per_dataset"].items()}
    assert result["dataset_step_share"] == pytest.approx(measured, rel=1e-12)
    assert sum(result["dataset_step_share"].values()) == pytest.approx(1.0)


def test_shapes_and_padding_match_an_independent_count(bench_run):
    result = bench_run[2]
    counts = recount(result)
    all_signatures = set().union(*(c["signatures"] for c in counts.values()))
    assert result["distinct_shapes"] == len(all_signatures) <= 48
    padded = sum(c["padded"] for c in counts.values())
    slots = sum(c["slots"] for c in counts.values())
    assert 0 < padded < slots
    assert result["padding_fraction"] == pytest.approx(padded / slots, rel=1e-12)
    for name, count in counts.items():
        reported = result["per_dataset"][name]
        assert reported["distinct_shapes"] == len(count["signatures"])
        assert reported["steps"] == count["steps"] and reported["samples"] == count["samples"]
        expected = count["padded"] / count["slots"] if count["slots"] else 0.0
        assert reported["padding_fraction"] == pytest.approx(expected, rel=1e-12)
        for modality, dates in count["dates"].items():  # every date kept: no cap
            assert result["time_steps"][f"{name}/{modality}"] == {
                "min": min(dates),
                "median": float(np.median(dates)),
                "max": max(dates),
            }
    assert set(result["time_steps"]) == {"flairhub/s2", "flairhub/s1_des", "worldstrat/s2"}
    assert result["time_steps"]["flairhub/s1_des"]["max"] > 16  # the stand-ins' S1 series
    samples = sum(c["samples"] for c in counts.values())
    assert result["samples_per_s"] == pytest.approx(result["batches_per_s"] * samples / BATCHES)


def test_cache_is_reused_and_existing_data_is_read_as_real(bench_run):
    result, workdir = bench_run[2], bench_run[3]
    info = {
        name: Path(result["per_dataset"][name]["path"], "dataset_info.json") for name in DATASETS
    }
    written = {name: path.stat().st_mtime_ns for name, path in info.items()}
    config = base.get_config()
    config.data.datasets.flairhub.source.path = result["per_dataset"]["flairhub"]["path"]
    out = io.StringIO()
    again = bench.run_bench(config, 2, workdir, out=out)
    assert {name: path.stat().st_mtime_ns for name, path in info.items()} == written
    assert out.getvalue().startswith(
        f"flairhub: real data, converted records at {result['per_dataset']['flairhub']['path']}"
    )
    assert again["per_dataset"]["flairhub"]["data"] == "real"
    assert again["per_dataset"]["mmearth"]["data"] == "stand-in"
    assert json.loads(out.getvalue().splitlines()[-1]) == json.loads(json.dumps(again))


def test_dataset_without_data_or_standin_stops_the_run(tmp_path):
    unknown = base.paper_datasets().flairhub
    unknown.source.path = os.fspath(tmp_path / "absent")
    config = base.get_config()
    config.data.datasets = ml_collections.ConfigDict({"other": unknown})
    with pytest.raises(bench.BenchError, match="other: no data at .*absent and no stand-in"):
        bench.run_bench(config, 1, tmp_path, out=io.StringIO())
