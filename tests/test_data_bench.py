"""The input-pipeline benchmark on the paper's mixed config (configs/base.py), on stand-ins.

The two-step use runs once from an empty folder, so no ``source.path`` of the config exists:
``python -m data_prep.standins`` must write every dataset as a stand-in in its published layout,
convert it and print the overrides pointing the config at it, then ``python -m
ramen_jax.perf.data_bench`` (40 batches, ``--flagfile`` of those overrides) reads them and says they
are stand-ins. What it reports is then recounted independently: the same steps are drawn
straight from ``StepBatches`` (no Grain iterator) and the padding is derived from the step plan
and the grid geometry, not from ``token_valid``. Counts must match exactly, fractions to rel
1e-12. A records dataset with no data stops the bench with one line naming the stand-in command.
"""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs import base
from data_prep import standins
from ramen_jax import geometry
from ramen_jax.data import pipeline, records, temporal_dropout
from ramen_jax.perf import pipeline_tally

REPO = Path(__file__).resolve().parents[1]
BATCHES = 40
DATASETS = ("flairhub", "mmearth", "worldstrat")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """(stdout lines, stderr, final JSON, workdir, the stand-in command's run) of the two-step
    use: stand-ins written, then the bench on them."""
    workdir = tmp_path_factory.mktemp("standins")
    cwd = tmp_path_factory.mktemp("empty_cwd")  # data/<name> does not exist here
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    config = f"--config={REPO / 'configs' / 'base.py'}"
    standin_run = subprocess.run(
        [sys.executable, "-m", "data_prep.standins", config, f"--workdir={workdir}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert standin_run.returncode == 0, standin_run.stderr[-4000:]
    command = [
        sys.executable,
        "-m",
        "ramen_jax.perf.data_bench",
        config,
        f"--batches={BATCHES}",
        f"--flagfile={workdir / standins.FLAGFILE}",
    ]
    completed = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.strip().splitlines()
    return lines, completed.stderr, json.loads(lines[-1]), workdir, standin_run


def test_standin_command_writes_and_points_at_every_absent_dataset(bench_run):
    result, workdir, standin_run = bench_run[2], bench_run[3], bench_run[4]
    overrides = standin_run.stdout.strip().splitlines()
    assert overrides == [
        f"--config.data.datasets.{name}.source.path={result['per_dataset'][name]['path']}"
        for name in DATASETS
    ]
    assert (workdir / standins.FLAGFILE).read_text().splitlines() == overrides
    for name in DATASETS:
        (said,) = [line for line in standin_run.stderr.splitlines() if line.startswith(f"{name}: ")]
        assert f"NO DATA at data/{name}" in said and "SYNTHETIC STAND-IN" in said
        assert result["per_dataset"][name]["path"].startswith(os.fspath(workdir))


def test_says_it_runs_on_standins_and_prints_table_then_json(bench_run):
    lines, stderr, result, _, _ = bench_run
    for name in DATASETS:
        (said,) = [line for line in lines if line.startswith(f"{name}: ")]
        path = result["per_dataset"][name]["path"]
        assert said.startswith(f"{name}: SYNTHETIC STAND-IN records at {path} ")
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["dataset", "data"])
    assert [lines[header + 2 + i].split()[0] for i in range(4)] == [*DATASETS, "all"]
    assert f"[bench] {BATCHES}/{BATCHES} batches" in stderr
    assert {"distinct_shapes", "padding_fraction", "batches_per_s", "samples_per_s"} <= set(result)
    assert result["batches"] == BATCHES and result["batches_per_s"] > 0
    assert set(result["per_dataset"]) == set(DATASETS)
    assert sum(d["steps"] for d in result["per_dataset"].values()) == BATCHES
    assert all(d["data"] == "stand-in" for d in result["per_dataset"].values())


def test_standins_have_the_papers_native_shapes(bench_run):
    result = bench_run[2]
    for name, dataset in base.paper_datasets().items():
        split = records.load_split(result["per_dataset"][name]["path"], "train")
        assert 1 < len(split) <= 16  # a handful, repeated by the pipeline
        record = split[0]
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
    result = bench_run[2]
    config = base.get_config()
    assert config.data.mixing == "epoch"
    batches = {}  # full global batches per epoch (one batch shard), at least one
    for name in DATASETS:
        split = records.load_split(result["per_dataset"][name]["path"], records.TRAIN)
        batches[name] = max(1, len(split) // config.data.datasets[name].per_device_batch)
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


def test_cache_is_reused_and_existing_data_is_read_as_real(bench_run, tmp_path):
    result, workdir = bench_run[2], bench_run[3]
    paths = {name: result["per_dataset"][name]["path"] for name in DATASETS}
    info = {name: Path(path, "dataset_info.json") for name, path in paths.items()}
    written = {name: path.stat().st_mtime_ns for name, path in info.items()}
    config = base.get_config()
    real = tmp_path / "flairhub"  # converted records without the stand-in mark: real data
    shutil.copytree(paths["flairhub"], real, ignore=shutil.ignore_patterns(records.STANDIN_FILE))
    config.data.datasets.flairhub.source.path = os.fspath(real)
    said = []
    overrides = standins.point_at_standins(config, workdir, said.append)
    assert {name: path.stat().st_mtime_ns for name, path in info.items()} == written
    assert said[0] == f"flairhub: data exists at {real}, left as it is"
    assert overrides == [
        f"--config.data.datasets.{name}.source.path={paths[name]}"
        for name in ("mmearth", "worldstrat")
    ]
    for name in ("mmearth", "worldstrat"):
        config.data.datasets[name].source.path = paths[name]
    out = io.StringIO()
    again = pipeline_tally.run_bench(config, 2, out=out)
    assert out.getvalue().startswith(f"flairhub: real data, converted records at {real}")
    assert again["per_dataset"]["flairhub"]["data"] == "real"
    assert again["per_dataset"]["mmearth"]["data"] == "stand-in"
    assert json.loads(out.getvalue().splitlines()[-1]) == json.loads(json.dumps(again))


def test_absent_data_stops_the_bench_naming_the_standin_command(tmp_path):
    mmearth = base.paper_datasets().mmearth
    mmearth.source.path = os.fspath(tmp_path / "absent")
    config = base.get_config()
    config.data.datasets = ml_collections.ConfigDict({"mmearth": mmearth})
    match = "mmearth: no records at .*absent; .*data_prep"
    with pytest.raises(pipeline_tally.BenchError, match=match):
        pipeline_tally.run_bench(config, 1, out=io.StringIO())
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ramen_jax.perf.data_bench",
            f"--config={REPO / 'configs' / 'base.py'}",
            "--batches=1",
        ],
        cwd=tmp_path,  # data/<name> does not exist here
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1 and completed.stdout == ""
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("error: flairhub: no records at data/flairhub; ")
    assert "python -m data_prep.standins --config CONFIG --workdir DIR" in line


def test_dataset_without_data_or_standin_stops_the_standin_command(tmp_path):
    unknown = base.paper_datasets().flairhub
    unknown.source.path = os.fspath(tmp_path / "absent")
    config = base.get_config()
    config.data.datasets = ml_collections.ConfigDict({"other": unknown})
    with pytest.raises(standins.MissingStandInError, match="other: no data at .*absent and no"):
        standins.point_at_standins(config, tmp_path, lambda line: None)


def test_standin_command_refuses_a_dataset_it_has_no_standin_for(tmp_path):
    config_file = tmp_path / "other.py"
    config_file.write_text(
        "from configs import base\n\n\n"
        "def get_config():\n"
        "    config = base.get_config()\n"
        "    config.data.datasets = {'other': base.paper_datasets().flairhub}\n"
        "    return config\n"
    )
    completed = subprocess.run(
        [sys.executable, "-m", "data_prep.standins", f"--config={config_file}", "--workdir=out"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([os.fspath(REPO), os.environ.get("PYTHONPATH", "")]),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1 and completed.stdout == ""
    (line,) = [text for text in completed.stderr.splitlines() if text.startswith("error:")]
    assert line.startswith("error: other: no data at data/flairhub and no stand-in")
    assert not (tmp_path / "out").exists()
