"""Every command line meets a user's mistake with one clear line, before any work or output.

Each bad input below must end with a non-zero exit status, exactly one line on stderr (the
``error: ...`` line, data_prep's converters included), no traceback, and nothing written
where the outputs would go. Most cases call the command's ``main(argv)`` in this process (a
subprocess costs seconds of JAX import each); a handful run the real ``python -m`` command,
whose flag parsing and interpreter teardown are part of the contract. Good inputs next to the
bad ones must still succeed.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from test_encode import save_encoder, write_tif

from data_prep import flairhub, mmearth, standins, worldstrat
from ramen_jax.convert import cli as convert_cli
from ramen_jax.encode import __main__ as encode_cli
from ramen_jax.evaluate import __main__ as evaluate_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.py")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_errors")
    save_encoder(root / "ckpt")
    rng = np.random.default_rng(0)
    write_tif(root / "s2.tif", rng.random((4, 64, 64)).astype(np.float32), 10.0, dtype="float32")
    nan = np.full((4, 64, 64), np.nan, np.float32)
    write_tif(root / "nan.tif", nan, 10.0, dtype="float32")
    (root / "stats.txt").write_text("mean: 1\n")
    (root / "stats_shape.json").write_text('{"s2": [1, 2]}')
    np.save(root / "one_band.npy", np.ones((64, 64, 1), np.float32))
    return root


def call(main, argv):
    """The exit status of a command's ``main`` (argparse's exits included)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def assert_one_line_error(capsys, status, out_dir, marker="error: "):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status not in (0, None), captured
    assert len(lines) == 1 and lines[0].startswith(marker), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not os.path.exists(out_dir), os.listdir(out_dir)
    return lines[0]


def encode_args(files, out, *extra, channels=None):
    argv = ["--checkpoint", files / "ckpt", "--out", out, "--input", f"s2={files / 's2.tif'}"]
    if channels is None:
        argv += ["--sensor", "s2=sentinel2", "--bands", "s2=B02,B03,B04,B08"]
    else:
        argv += ["--channels", f"s2={channels}"]
    return argv + ["--quiet", *extra]


ENCODE_CASES = {
    # name: (extra arguments, explicit channels, words the message must hold)
    "gsd_zero": (["--gsd", "0"], None, "GSD 0.0 m"),
    "gsd_nan": (["--gsd", "nan"], None, "GSD nan m"),
    "gsd_negative": (["--gsd", "-40"], None, "GSD -40.0 m"),
    "gsd_inf": (["--gsd", "inf"], None, "GSD inf m"),
    "gsd_text": (["--gsd", "forty"], None, "--gsd"),
    "gsd_coarser_than_scene": (["--gsd", "700"], None, "coarser than the scene"),
    "wavelength_50000": (["--gsd", "40"], "50000,560,665,842", "'50000'"),
    "wavelength_negative": (["--gsd", "40"], "-490,560,665,842", "'-490'"),
    "wavelength_nan": (["--gsd", "40"], "nan,560,665,842", "'nan'"),
    "wavelength_micrometres": (["--gsd", "40"], "0.49,0.56,0.665,0.842", "300-15000 nm"),
    "stats_not_json": (["--gsd", "40", "--stats", "{files}/stats.txt"], None, "not JSON"),
    "stats_wrong_form": (["--gsd", "40", "--stats", "{files}/stats_shape.json"], None, "mean"),
    "stats_missing": (["--gsd", "40", "--stats", "{files}/none.json"], None, "does not exist"),
    "tile_zero": (["--gsd", "40", "--tile", "0"], None, "--tile"),
    "overlap_negative": (["--gsd", "40", "--overlap", "-1"], None, "--overlap"),
    "batch_zero": (["--gsd", "40", "--batch-size", "0"], None, "--batch-size"),
    "blocks_text": (["--gsd", "40", "--blocks", "last"], None, "--blocks"),
    "block_out_of_range": (["--gsd", "40", "--blocks", "9"], None, "out of range"),
    "unknown_band": (["--gsd", "40"], None, None),  # replaced below: --bands B44
    "formats": (["--gsd", "40", "--formats", "png"], None, "--formats"),
}


@pytest.mark.parametrize("case", sorted(ENCODE_CASES))
def test_encode_bad_input(files, tmp_path, capsys, case):
    extra, channels, words = ENCODE_CASES[case]
    extra = [str(e).format(files=files) for e in extra]
    out = tmp_path / "out"
    argv = encode_args(files, out, *extra, channels=channels)
    if case == "unknown_band":
        argv[argv.index("s2=B02,B03,B04,B08")] = "s2=B02,B03,B04,B44"
        words = "B44"
    line = assert_one_line_error(capsys, call(encode_cli.main, argv), out)
    assert words in line, line


def test_encode_bad_modality_files(files, tmp_path, capsys):
    out = tmp_path / "out"
    nan_input = encode_args(files, out, "--gsd", "40")
    nan_input[nan_input.index(f"s2={files / 's2.tif'}")] = f"s2={files / 'nan.tif'}"
    line = assert_one_line_error(capsys, call(encode_cli.main, nan_input), out)
    assert "no valid pixel" in line
    npy = ["--checkpoint", files / "ckpt", "--out", out, "--input", f"s2={files / 'one_band.npy'}"]
    npy += ["--channels", "s2=490", "--gsd", "40"]
    line = assert_one_line_error(capsys, call(encode_cli.main, [*npy, "--input-gsd", "s2=0"]), out)
    assert "--input-gsd s2: GSD 0 m" in line
    missing = encode_args(files, out, "--gsd", "40")
    missing[missing.index(f"s2={files / 's2.tif'}")] = "s2=missing.tif"
    assert "does not exist" in assert_one_line_error(capsys, call(encode_cli.main, missing), out)


def test_encode_good_input_is_quiet_and_complete(files, tmp_path, capsys):
    out = tmp_path / "out"
    status = call(encode_cli.main, encode_args(files, out, "--gsd", "40"))
    assert status == 0 and capsys.readouterr() == ("", "")  # --quiet: nothing at all
    names = sorted(os.listdir(out))
    assert names == ["g40m_block1.npy", "g40m_block1.tif", "g40m_cls.npy", "g40m_meta.json"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.partial")]  # staging gone
    loud = [a for a in encode_args(files, out, "--gsd", "80") if a != "--quiet"]
    status = call(encode_cli.main, loud)
    summary = capsys.readouterr().out
    assert status == 0 and "tile(s) of" in summary and "overlap" in summary


EVALUATE_CASES = {
    "k_zero": (["--k", "0"], "--k"),
    "drop_fraction_above_one": (["--drop-fractions", "1.5"], "1.5"),
    "drop_fraction_negative": (["--drop-fractions", "-0.25"], "-0.25"),
    "gsd_zero": (["--gsd", "0"], "GSD 0 m"),
    "cost_gsd_nan": (["--cost-gsds", "30,nan"], "GSD nan m"),
    "draws_zero": (["--draws", "0"], "--draws"),
    "unknown_report": (["--reports", "curves"], "curves"),
    "unknown_modality": (["--use", "s3"], "--use s3"),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_CASES))
def test_evaluate_bad_input(files, tmp_path, capsys, case):
    extra, words = EVALUATE_CASES[case]
    out = tmp_path / "out"
    argv = ["--checkpoint", files / "ckpt", "--out", out, "--quiet", *extra]
    line = assert_one_line_error(capsys, call(evaluate_cli.main, argv), out)
    assert words in line, line


def test_convert_bad_input(files, tmp_path, capsys):
    out = tmp_path / "out"
    missing = ["from-torch", tmp_path / "missing.ckpt", out]
    assert "missing.ckpt" in assert_one_line_error(capsys, call(convert_cli.main, missing), out)
    unknown = ["from-tensorflow", files / "ckpt", out]
    assert "from-tensorflow" in assert_one_line_error(capsys, call(convert_cli.main, unknown), out)


def test_worldstrat_run_that_keeps_nothing_fails(tmp_path, capsys):
    src = tmp_path / "src"
    standins.worldstrat_standin(src)
    for path in (src / "lr_dataset").rglob("*.tif*"):
        path.unlink()  # every item bad
    out = tmp_path / "out"
    argv = ["--src", src, "--out", out, "--on-error", "skip"]
    status = worldstrat.main([str(a) for a in argv])
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()  # the skip warnings are log records
    assert status == 1 and "Traceback" not in captured.err + captured.out
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert "no examples written" in errors[0]
    assert not (out / "dataset_info.json").exists() and not list(out.glob("*array_record*"))


@pytest.mark.parametrize("flag", ["--chunk-size=0", "--workers=0", "--max-examples=0"])
def test_data_prep_counts_below_one_are_one_line(tmp_path, capsys, flag):
    """These used to run with the default (0 read as unset) or end in "the splits list no
    source items"."""
    out = tmp_path / "out"
    argv = ["--src", tmp_path, "--out", out, flag]
    status = call(worldstrat.main, argv)
    assert status == 2 and f"{flag.split('=')[0]}: 0 is not >= 1" in assert_one_line_error(
        capsys, status, out
    )


def test_data_prep_missing_source_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    for main in (mmearth.main, worldstrat.main, flairhub.main):
        argv = ["--src", tmp_path / "missing", "--out", out]
        if main is flairhub.main:
            argv += ["--split-file", f"train={tmp_path / 'missing' / 'TRAIN.csv'}"]
        line = assert_one_line_error(capsys, call(main, argv), out)
        assert line.startswith("error: cannot read the source index under") and "missing" in line


def test_mmearth_bad_flag_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--src", "gs://bucket/mmearth", "--out", out]
    assert "is a URL" in assert_one_line_error(capsys, call(mmearth.main, argv), out)


CONFIG_CASES = {
    # name: (field, value, words of the message)
    "log_every_zero": ("log_every_steps", 0, "log_every_steps=0: must be a whole number >= 1"),
    "negative_lr": ("optim.lr", -1e-3, "gradient ascent"),
    "negative_total_steps": ("total_steps", -5, "total_steps=-5"),
    "nan_weight_decay": ("optim.weight_decay", float("nan"), "weight_decay=nan"),
    "zero_batch": ("data.datasets.bigearthnet.per_device_batch", 0, "per_device_batch=0"),
    "zero_gsd": ("data.datasets.bigearthnet.effective_gsds", [0.0], "GSD 0.0 m"),
    "micrometres": ("data.datasets.bigearthnet.modalities.s2_10m.channels", [0.49], "'0.49'"),
    "accum_splits_no_batch": ("optim.grad_accum", 3, "a multiple of optim.grad_accum=3"),
}


@pytest.mark.parametrize("variant", ["", "debug", "cpu_step", "tiny", "small", "v6e", "v5e"])
def test_every_variant_of_the_paper_config_passes_the_checks(variant):
    from configs import base
    from ramen_jax.training import config_checks

    config_checks.check_config(base.get_config(variant))


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_training_config_values_are_checked_before_any_work(case):
    """The checks ``python -m ramen_jax.train`` runs right after parsing its flags (one real
    command below shows the line it prints); each value here used to crash after the first
    compilation, train by gradient ascent, or run for ever."""
    from configs import demo
    from ramen_jax.training import config_checks

    config = demo.get_config()
    config_checks.check_config(config)  # the demo config itself is fine
    path, value, words = CONFIG_CASES[case]
    *parents, field = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[field] = value
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.check_config(config)
    assert words in str(error.value), error.value


def command(*argv, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    return subprocess.run(
        [sys.executable, "-m", *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True
    )


SUBPROCESS_CASES = {
    # name: (command line with {wd} for the workdir, words the message must hold)
    "train_config_typo": (
        ["ramen_jax.train", "--config", DEMO, "--workdir", "{wd}", "--config.optim.lrr=1"],
        "no field 'lrr' (did you mean 'lr'?)",
    ),
    "train_missing_config": (
        ["ramen_jax.train", "--config", "missing.py", "--workdir", "{wd}"],
        "no such config file",
    ),
    "train_negative_lr": (
        ["ramen_jax.train", "--config", DEMO, "--workdir", "{wd}", "--config.optim.lr=-1e-3"],
        "gradient ascent",
    ),
    "encode_gsd_nan": (
        ["ramen_jax.encode", "--checkpoint", "{files}/ckpt", "--out", "{wd}", "--gsd", "nan"]
        + ["--input", "s2={files}/s2.tif", "--channels", "s2=490,560,665,842"],
        "GSD nan m",
    ),
    "train_unknown_store": (
        ["ramen_jax.train", "--config", DEMO, "--workdir", "s4://bucket/run"],
        "no file system for s4://",
    ),
    "train_cache_in_unknown_store": (
        [
            "ramen_jax.train",
            "--config",
            DEMO,
            "--workdir",
            "{wd}",
            "--config.compilation_cache_dir=hdfs2://cluster/cache",
        ],
        "hdfs2://cluster/cache: no file system for hdfs2://",
    ),  # fmt: skip
    "data_bench_without_config": (["ramen_jax.perf.data_bench", "--batches", "2"], "--config"),
    "bench_missing_config": (
        ["ramen_jax.perf.step_bench", "--config", "missing.py"],
        "no such config file",
    ),
    # every perf tool: absl flags with underscore names, mistakes as one line
    "data_bench_dashed_flag": (
        ["ramen_jax.perf.data_bench", "--config", DEMO, "--batches", "1", "--num-workers", "2"],
        "num-workers",
    ),
    "aot_check_without_config": (["ramen_jax.perf.aot_check", "--topology", "cpu:1"], "--config"),
    "aot_check_bad_topology": (
        ["ramen_jax.perf.aot_check", "--config", DEMO, "--topology", "v5e"],
        "expected KIND:DIMS",
    ),
    "compile_check_missing_config": (
        ["ramen_jax.perf.compile_check", "--config", "missing.py", "--workdir", "{wd}"],
        "no such config file",
    ),
    "mmearth_truncated_h5": (
        ["data_prep.mmearth", "--src", "{files}/mmearth", "--out", "{wd}"],
        "not a readable HDF5 file",
    ),
}


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_real_command_bad_input(files, tmp_path, case):
    if case == "mmearth_truncated_h5" and not (files / "mmearth").exists():
        standins.mmearth_standin(files / "mmearth", rows=4)
        h5 = next((files / "mmearth").glob("*.h5"))
        h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 3])  # a cut download
    argv, words = SUBPROCESS_CASES[case]
    wd = tmp_path / "out"
    result = command(*(a.format(wd=wd, files=files) for a in argv), cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and words in lines[0], lines
    assert lines[0].startswith("error: "), lines
    assert not wd.exists()


def test_encode_that_fails_while_writing_leaves_no_outputs(files, tmp_path, capsys, monkeypatch):
    """The files of a GSD are written in a hidden staging directory and renamed into --out only
    when all are complete: a failure after the maps and GeoTIFF were written (a full disk, a
    kill) leaves nothing under the final names, and the staging directory is removed."""
    from ramen_jax.encode import scene

    written = []

    def write_then_fail(result, prefix, formats):
        written.extend(scene_write(result, prefix, formats))
        raise OSError(28, "No space left on device")

    scene_write = scene.write_outputs
    monkeypatch.setattr(scene, "write_outputs", write_then_fail)
    out = tmp_path / "out"
    line = assert_one_line_error(
        capsys, call(encode_cli.main, encode_args(files, out, "--gsd", "40")), out
    )
    assert "No space left" in line and len(written) == 4
    assert os.listdir(tmp_path) == []  # no staging directory left either


def test_bucket_workdir_without_gcsfs_is_one_line_naming_the_install(tmp_path):
    """gs:// needs gcsfs (the ``gcs`` extra): without it the run stops before any work with
    the install command, not fsspec's ImportError from inside the first checkpoint write."""
    code = (
        "import runpy, sys; sys.modules['gcsfs'] = None; "  # as if gcsfs were not installed
        f"sys.argv = ['train', '--config', {DEMO!r}, '--workdir', 'gs://bucket/run']; "
        "runpy.run_module('ramen_jax.train', run_name='__main__')"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0] == (
        "error: gs://bucket/run: Please install gcsfs to access Google Storage; "
        'pip install "ramen-jax[gcs]"'
    )


def test_the_store_check_covers_every_place_a_run_reads_or_writes():
    from configs import base
    from ramen_jax.training import config_checks

    config = base.get_config()
    config.compilation_cache_dir = "gs://b/cache"
    config.init_from = "gs://b/start"
    config.data.datasets.mmearth.source.norm_path = "gs://b/norm"
    paths = config_checks.paths_of(config, "gs://b/run")
    assert paths[0] == "gs://b/run" and {"gs://b/cache", "gs://b/start", "gs://b/norm"} < set(paths)
    assert {"data/flairhub", "data/mmearth", "data/worldstrat"} < set(paths)


def test_chip_variants_set_fields_the_config_has():
    """A misspelt knob would add a field nothing reads: each must name an existing one."""
    from configs import base

    plain = base.get_config()
    for variant, knobs in base.CHIP_MEMORY_KNOBS.items():
        config = base.get_config(variant)
        for field, value in knobs.items():
            group, name = field.split(".")
            assert name in plain[group] and plain[group][name] != value, (variant, field)
            assert config[group][name] == value
