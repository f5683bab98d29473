"""``python -m ramen_jax.perf.compile_check``: a restarted run builds no XLA program anew, and
executables dropped for the host's memory-map limit come back from the cache, not rebuilt."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_restart_and_dropped_programs_compile_nothing_new(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ramen_jax.perf.compile_check",
            "--config=configs/demo.py:tiny",
            "--steps=12",
            "--restart_at=6",
            "--nosmall_model",
            f"--workdir={tmp_path}",
            # room for no executable: every change of step shape drops and reloads one
            "--config.program_map_limit=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert 1 <= report["distinct_shapes"] <= report["max_shapes"]
    assert report["distinct_shapes"] >= 2
    assert report["run1_programs_dropped"] >= 1 and report["run1_programs_reloaded"] >= 1
    # one program per step shape, plus the state initialisation and the checkpoint's
    # all-finite/digest check; reloads read the cache
    assert report["run1_xla_compiles"] == report["distinct_shapes"] + 2
    assert report["run1_cache_hits"] >= report["run1_programs_reloaded"]
    assert report["restart_xla_compiles"] == 0
    assert report["restart_cache_hits"] >= report["restart_shapes"] >= 1
    run1 = (tmp_path / "run1.log").read_text()
    run2 = (tmp_path / "run2.log").read_text()
    assert "step 12/12" in run1 and "resumed from" in run2 and "step 12/12" in run2


def test_absent_records_stop_it_with_one_line_naming_the_standin_command(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ramen_jax.perf.compile_check",
            f"--config={ROOT / 'configs' / 'base.py'}",
            "--steps=2",
            "--restart_at=1",
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,  # data/<name> does not exist here
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: flairhub: no records at data/flairhub; ")
    assert "python -m data_prep.standins" in line
    assert not (tmp_path / "run" / "run1.log").exists()  # no training started
