"""Checkpoints that cannot poison a run, and no compile stalls after step 1.

In process: array digests, settings checks, the non-finite guard, damaged checkpoints and the
fallback to the newest intact step, run identities, the workdir lock (local disk and an
emulated gs:// bucket), a full disk (a small tmpfs), the step shapes ``precompile`` compiles.
End to end (``python -m ramen_jax.train`` on ``configs/demo.py:tiny``): each failure is one
``error:`` / ``warning:`` line on stderr with no traceback.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import xla_flags
from test_train import REPO, losses, metrics, train_command

from configs import demo
from ramen_jax.data import pipeline
from ramen_jax.training import (
    array_digests,
    checkpointing,
    precompile,
    run_identity,
    workdir_lock,
)
from ramen_jax.training import step as step_lib
from ramen_jax.training.optimizer import TorchAdamWState

TINY = "configs/demo.py:tiny"

# -- helpers ---------------------------------------------------------------------------------


def small_state(seed=0, poison=None) -> step_lib.TrainState:
    rng = np.random.default_rng(seed)
    params = {
        "encoder": {"kernel": rng.normal(size=(128, 96)).astype(np.float32)},
        "decoder": {"bias": rng.normal(size=(64,)).astype(np.float32)},
    }
    if poison is not None:
        params["decoder"]["bias"][3] = poison
    stats = {"encoder": {"mean": np.zeros(8, np.float32)}}
    counts = jax.tree.map(lambda _: np.ones((), np.int32), params)
    moments = jax.tree.map(np.ones_like, params)
    optimiser = TorchAdamWState(np.ones((), np.int32), counts, moments, moments)
    return step_lib.TrainState(np.ones((), np.int32), params, stats, optimiser)


def target_of(state) -> dict:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        checkpointing.state_to_tree(state),
    )


IDENTITY = {"seed": 0, "model.embed_dim": 32}


def saved_workdir(tmp_path, steps=(1, 2, 3)) -> pathlib.Path:
    saver = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=5, async_save=False)
    for step in steps:
        saver.save(step, small_state(step), {"next_step": step, "identity": IDENTITY})
    saver.close()
    return tmp_path / "checkpoints"


def restore(tmp_path, identity=IDENTITY):
    reports = []
    ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=5, async_save=False)
    try:
        return ckpt.restore_newest_intact(
            target_of(small_state()), identity, reports.append
        ), reports
    finally:
        ckpt.close()


def largest_file(directory: pathlib.Path) -> pathlib.Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def empty_directory(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def truncated_array_file(step_dir):
    data = largest_file(step_dir / "state" / "ocdbt.process_0")
    os.truncate(data, data.stat().st_size // 2)


def unreadable_array_metadata(step_dir):
    (step_dir / "state" / "_METADATA").write_text("{not json")


def unreadable_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text("{not json")


def flipped_bytes(step_dir):
    data = largest_file(step_dir / "state" / "ocdbt.process_0")
    raw = bytearray(data.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))


def one_line_outcome(result, expected_code, prefix="error:"):
    """The run's one ``error:``/``warning:`` line, after checking there is exactly one and
    no traceback."""
    lines = [x for x in result.stderr.splitlines() if x.startswith(("error:", "warning:"))]
    assert result.returncode == expected_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    return lines[0]


def launch(workdir, *overrides, env=None, timeout=300):
    return subprocess.run(
        train_command(workdir, TINY, "--config.preview_every_steps=0", *overrides),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# -- digests and settings --------------------------------------------------------------------


def reference_digest(x: np.ndarray) -> int:
    """The digest in plain NumPy integer arithmetic, for float32 arrays."""
    position = np.arange(x.size, dtype=np.uint64)
    spread = (position * 0x9E3779B1) % 2**32
    weight = (((spread ^ (spread >> 16)) << 1) | 1) % 2**32
    bits = x.astype(np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    return int(np.sum((bits * weight) % 2**32) % 2**32)


def test_digests_are_exact_under_any_sharding_and_see_a_flipped_bit():
    """8 simulated devices (a 4 x 2 mesh) give the digests of the NumPy reference, exactly."""
    script = """
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from ramen_jax.training.array_digests import StateCheck
mesh = jax.make_mesh((4, 2), ("a", "b"))
x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
tree = {"x": jax.device_put(x, NamedSharding(mesh, P("a", "b"))),
        "y": jax.device_put(x[:8], NamedSharding(mesh, P(None, "b")))}
print(StateCheck().check(tree)[1])
"""
    env = {**os.environ, "XLA_FLAGS": xla_flags(8)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    sharded = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 (a dict of ints we printed)
    assert sharded == {"x": reference_digest(x), "y": reference_digest(x[:8])}

    check = array_digests.StateCheck()
    _, base = check.check({"x": x})
    for bit in (0, 17, 31):  # a mantissa, an exponent and the sign bit
        flipped = x.copy()
        flipped.view(np.uint32)[5, 3] ^= np.uint32(1 << bit)
        assert check.check({"x": flipped})[1] != base
    swapped = x.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert check.check({"x": swapped})[1] != base


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"keep": 0}, "checkpoint.keep must be a whole number >= 1, got 0 (0 would delete"),
        ({"keep": -2}, "checkpoint.keep must be"),
        ({"every_steps": 0}, "checkpoint.every_steps must be"),
        ({"every_steps": True}, "checkpoint.every_steps must be"),
        ({"async_save": "yes"}, "checkpoint.async_save must be true or false"),
        ({"keep_period": 3}, "unknown checkpoint settings ['keep_period']"),
    ],
)
def test_nonsense_checkpoint_settings_are_refused(settings, message):
    config = {"every_steps": 5, "keep": 3, "async_save": True, **settings}
    with pytest.raises(checkpointing.CheckpointSettingsError) as error:
        checkpointing.validate_settings(config)
    assert message in str(error.value)


# -- saving ----------------------------------------------------------------------------------


def test_a_non_finite_state_is_never_saved(tmp_path):
    saver = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=3, async_save=True)
    saver.save(6, small_state(), {"next_step": 6})
    with pytest.raises(checkpointing.NonFiniteState) as error:
        saver.save(7, small_state(poison=np.inf), {"next_step": 7})
    saver.close()
    assert "after step 7" in str(error.value) and "params/decoder/bias" in str(error.value)
    assert "the newest complete checkpoint is step 6" in str(error.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["6"]


@pytest.fixture
def tmpfs():
    """``tmpfs(directory, size)`` mounts a small tmpfs there (root only; skips elsewhere),
    unmounted after the test."""
    mounted = []

    def mount(directory: pathlib.Path, size: str) -> pathlib.Path:
        directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in mounted:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_full_disk_fails_the_asynchronous_save_at_the_next_poll(tmp_path, tmpfs):
    small_disk = tmpfs(tmp_path / "checkpoints", "150k")  # one small checkpoint fits, not two
    saver = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=5, async_save=True)
    saver.save(1, small_state(1), {"next_step": 1})
    deadline = time.time() + 30
    with pytest.raises(checkpointing.SaveFailed) as error:
        # waits for step 1 (it fits), then writes step 2 in the background, where it fails;
        # were the disk to fill during the synchronous part, save would raise at once instead
        saver.save(2, small_state(2), {"next_step": 2})
        while time.time() < deadline:
            saver.should_save(3)  # the per-step poll
            time.sleep(0.05)
    saver.close()
    message = str(error.value)
    assert "checkpoint of step 2" in message and "No space left on device" in message
    assert "the newest complete checkpoint is step 1" in message and "\n" not in message
    assert sorted(p.name for p in small_disk.iterdir() if p.name.isdigit()) == ["1"]


def test_a_shortened_save_error_keeps_the_operating_systems_reason():
    """TensorStore's one-line errors run to hundreds of characters of paths and keys; the
    elided line still names what the OS said, wherever it was."""
    path = "/tmp/" + "very_long_directory_name/" * 20
    deep = OSError(f"Error writing {path}d/0: [OS error 28: No space left on device] {path}")
    line = checkpointing.one_line(deep)
    assert "OS error 28: No space left on device" in line and "\n" not in line
    assert len(line) < 420
    later = RuntimeError("write failed\n" + "x" * 50 + "\n[Errno 28] No space left on device")
    assert checkpointing.one_line(later) == "write failed ([Errno 28] No space left on device)"
    assert checkpointing.one_line(ValueError("short")) == "short"


# -- restoring -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        empty_directory,
        truncated_array_file,
        unreadable_array_metadata,
        unreadable_meta,
        flipped_bytes,
    ],
)
def test_a_damaged_newest_step_falls_back_to_the_one_before(tmp_path, damage):
    checkpoints = saved_workdir(tmp_path)
    damage(checkpoints / "3")
    (state, meta), reports = restore(tmp_path)
    assert meta["next_step"] == 2
    expected = checkpointing.state_to_tree(small_state(2))
    for got, want in zip(
        jax.tree.leaves(checkpointing.state_to_tree(state)), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert len(reports) == 1 and "checkpoint step 3" in reports[0] and "\n" not in reports[0]
    assert "moved to 3.damaged, resuming from step 2" in reports[0]
    if damage is flipped_bytes:  # read back without an error, finite: only the digest sees it
        assert "params/encoder/kernel (1 array) differ from the digests" in reports[0]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1", "2", "3.damaged"]


def test_no_intact_step_stops_the_run_instead_of_starting_afresh(tmp_path):
    checkpoints = saved_workdir(tmp_path, steps=(1, 2))
    flipped_bytes(checkpoints / "2")
    empty_directory(checkpoints / "1")
    with pytest.raises(checkpointing.NoIntactCheckpoint) as error:
        restore(tmp_path)
    assert "no intact checkpoint" in str(error.value) and "step 2:" in str(error.value)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1", "2"]  # nothing moved


def test_another_runs_checkpoint_is_refused_before_its_arrays_are_read(tmp_path):
    saved_workdir(tmp_path, steps=(1,))
    other = {"seed": 3, "model.embed_dim": 64}
    reports = []
    ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=5, async_save=False)
    wrong_shapes = {"step": jax.ShapeDtypeStruct((5,), np.float32)}  # would fail to restore
    with pytest.raises(run_identity.RunMismatch) as error:
        ckpt.restore_newest_intact(wrong_shapes, other, reports.append)
    ckpt.close()
    assert "model.embed_dim 32 -> 64" in str(error.value) and "seed 0 -> 3" in str(error.value)
    assert reports == []


def identity_of(config):
    datasets = pipeline.build_datasets(config.data, batch_shards=1)
    batches = {d.name: d.global_batch for d in datasets}
    return run_identity.identity(run_identity.config_json(config), batches)


def test_identity_fields_and_the_fields_that_may_change():
    base = identity_of(demo.get_config("tiny"))

    def changed(**updates):
        config = demo.get_config("tiny")
        for dotted, value in updates.items():
            *parents, leaf = dotted.split("__")
            node = config
            for parent in parents:
                node = node[parent]
            node[leaf] = value
        return run_identity.differences(base, identity_of(config))

    assert changed(model__num_heads=4) == ["model.num_heads 2 -> 4"]
    assert changed(seed=1) == ["seed 0 -> 1"]
    assert changed(data__time_padding="original") == ["data.time_padding mask -> original"]
    per_device = "data__datasets__bigearthnet__per_device_batch"
    assert changed(**{per_device: 4}) == ["data.datasets.bigearthnet.global_batch 2 -> 4"]
    gsds = changed(data__datasets__bigearthnet__effective_gsds=[60.0])
    assert gsds == ["data.datasets.bigearthnet.effective_gsds [60.0, 120.0] -> [60.0]"]
    may_change = {
        "total_steps": 1000,
        "optim__lr": 0.5,
        "checkpoint__every_steps": 7,
        "log_every_steps": 9,
        "mesh__data": 1,
        "data__num_workers": 3,
        "data__max_buckets_per_dataset": 1,
        "model__attention_impl": "einsum",
        "model__remat": True,
        "compilation_cache_dir": "off",
        "precompile": True,
    }
    assert changed(**may_change) == []


# -- the workdir lock ------------------------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_lock_refuses_a_live_run_and_takes_over_a_dead_one(tmp_path):
    first = workdir_lock.WorkdirLock(str(tmp_path), heartbeat_s=0.05)
    first.acquire()
    beat = first.read()["heartbeat"]
    time.sleep(0.3)
    assert first.read()["heartbeat"] > beat  # the heartbeat thread rewrites it
    second = workdir_lock.WorkdirLock(str(tmp_path), settle_s=0.01)
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}.*live process"):
        second.acquire()
    first.release()
    assert not (tmp_path / "run.lock").exists()

    lock_file = tmp_path / "run.lock"
    here = socket.gethostname()
    stale_records = [
        {"host": here, "pid": dead_pid(), "heartbeat": time.time()},  # kill -9 on this host
        {"host": here, "pid": os.getpid(), "pid_started": "1", "heartbeat": time.time()},  # reused
        {"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 600},  # a dead other host
    ]
    for record in stale_records:
        lock_file.write_text(json.dumps(record))
        second.acquire()
        assert second.read()["token"] == second.token
        second.release()
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    with pytest.raises(workdir_lock.WorkdirLocked, match="host elsewhere pid 1.*heartbeat 0 s"):
        second.acquire()


def test_the_lock_works_on_a_gs_bucket(monkeypatch):
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="runs")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        first = workdir_lock.WorkdirLock("gs://runs/base", settle_s=0.1)
        first.acquire()
        assert first.read()["token"] == first.token
        with pytest.raises(workdir_lock.WorkdirLocked, match="gs://runs/base is in use"):
            workdir_lock.WorkdirLock("gs://runs/base", settle_s=0.1).acquire()
        first.release()
        assert first.read() is None
        again = workdir_lock.WorkdirLock("gs://runs/base", settle_s=0.1)
        again.acquire()
        again.release()
    finally:
        server.stop()


# -- compile ahead ---------------------------------------------------------------------------


def test_step_shapes_cover_every_signature_the_run_meets():
    config = demo.get_config("tiny")
    config.data.max_buckets_per_dataset = 3
    datasets = pipeline.build_datasets(config.data, batch_shards=1)
    batches = pipeline.StepBatches(datasets, seed=0, mask_ratio=0.75)
    shapes = precompile.step_shapes(batches)
    assert len(shapes) == len(datasets[0].buckets) == 3
    ahead = {pipeline.signature(s) for s in shapes}
    met = {pipeline.signature(batches(step)) for step in range(40)}
    assert met <= ahead and len(met) >= 2


def test_the_compilation_cache_defaults_to_the_workdir(tmp_path):
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        assert precompile.configure_compilation_cache("", str(tmp_path)) == saved[0]  # JAX's own
        jax.config.update("jax_compilation_cache_dir", None)
        workdir_cache = precompile.configure_compilation_cache("", "gs://b/run/")
        assert workdir_cache == "gs://b/run/compilation_cache"
        assert precompile.configure_compilation_cache(str(tmp_path), "gs://b/run") == str(tmp_path)
        assert precompile.configure_compilation_cache("off", "gs://b/run") is None
        assert not jax.config.jax_enable_compilation_cache
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_enable_compilation_cache", saved[1])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)


# -- end to end ------------------------------------------------------------------------------


def test_a_diverging_run_stops_before_saving_a_non_finite_state(tmp_path):
    """A learning rate that overflows the weight decay turns the parameters to inf in the first
    update, while that step's loss, computed before the update, is finite. The run also uses
    the default compilation cache (no JAX cache configured): WORKDIR/compilation_cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    result = subprocess.run(
        train_command(
            tmp_path,
            TINY,
            "--config.preview_every_steps=0",
            "--config.optim.lr=3e38",
            "--config.optim.warmup_epochs=0",
            "--config.optim.weight_decay=10",
            "--config.checkpoint.every_steps=1",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    line = one_line_outcome(result, 1)
    assert "the state after step 1 has non-finite values in params/" in line
    assert "it was not saved (no checkpoint was saved before)" in line
    assert not any((tmp_path / "checkpoints").iterdir())
    assert any((tmp_path / "compilation_cache").iterdir())
    assert not (tmp_path / "run.lock").exists()


def test_a_full_disk_stops_the_run_at_the_failing_save(tmp_path, tmpfs):
    small_disk = tmpfs(tmp_path / "checkpoints", "2m")  # one tiny-model checkpoint fits, not two
    result = launch(tmp_path, "--config.checkpoint.every_steps=1", "--config.total_steps=10")
    line = one_line_outcome(result, 1)
    saved = sorted(int(p.name) for p in small_disk.iterdir() if p.name.isdigit())
    failed = saved[-1] + 1
    assert f"saving the checkpoint of step {failed} to {small_disk} failed" in line
    assert "No space left on device" in line
    assert f"the newest complete checkpoint is step {saved[-1]}" in line
    assert max(losses(tmp_path)) <= failed + 1  # noticed at the step after the failing save


@pytest.fixture(scope="module")
def precompiled_run(tmp_path_factory):
    """4 steps with previews every 3 steps and checkpoints at 2 and 4, every shape precompiled."""
    workdir = tmp_path_factory.mktemp("precompiled")
    result = subprocess.run(
        train_command(
            workdir,
            TINY,
            "--config.precompile=true",
            "--config.total_steps=4",
            "--config.checkpoint.every_steps=2",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_precompile_leaves_nothing_to_compile_after_step_one(precompiled_run):
    workdir, result = precompiled_run
    assert "precompiled 2 step shapes {'bigearthnet': 2} with their previews" in result.stdout
    logged = metrics(workdir)
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    built = [(m["xla_compiles"], m["cache_hits"]) for m in logged]
    assert built[0][0] + built[0][1] > 0 and len(set(built)) == 1, built
    assert all(m["compiles"] == 2 for m in logged)
    assert list((workdir / "previews").glob("step_0000003_*.png"))
    record = json.loads((workdir / "run_config.json").read_text())
    assert record["identity"]["model.num_heads"] == 2 and record["config"]["precompile"]


def test_resuming_with_other_settings_is_refused(precompiled_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(precompiled_run[0], workdir)
    for override, named in [
        ("--config.model.num_heads=4", "model.num_heads 2 -> 4"),
        ("--config.model.embed_dim=64", "model.embed_dim 32 -> 64"),
        ("--config.seed=5", "seed 0 -> 5"),
    ]:
        line = one_line_outcome(launch(workdir, override, "--config.total_steps=6"), 1)
        assert f"checkpoint {workdir}/checkpoints/4 was saved by a run with other settings" in line
        assert named in line and line.count("->") == 1
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]


def test_a_damaged_checkpoint_is_skipped_then_none_intact_stops(precompiled_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(precompiled_run[0], workdir)
    (workdir / "metrics.jsonl").unlink()
    checkpoints = workdir / "checkpoints"
    flipped_bytes(checkpoints / "4")
    line = one_line_outcome(launch(workdir, "--config.total_steps=4"), 0, prefix="warning:")
    assert f"checkpoint step 4 in {checkpoints} is damaged" in line
    assert "moved to 4.damaged, resuming from step 2" in line
    assert sorted(losses(workdir)) == [3, 4]
    assert losses(workdir)[4] == losses(precompiled_run[0])[4]  # the same step 4 again
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "4.damaged"]

    flipped_bytes(checkpoints / "4")
    empty_directory(checkpoints / "2")
    line = one_line_outcome(launch(workdir, "--config.total_steps=4"), 1)
    assert f"no intact checkpoint in {checkpoints} (step 4:" in line and "step 2:" in line


def test_one_run_per_workdir(tmp_path):
    """A second launch is refused while the first runs; SIGTERM releases the lock; after
    kill -9 an immediate relaunch on the same host takes the lock over."""
    settings = ("--config.total_steps=200", "--config.checkpoint.every_steps=100")

    def start():
        return subprocess.Popen(
            train_command(tmp_path, TINY, "--config.preview_every_steps=0", *settings),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_for_step(process, step):
        deadline = time.time() + 240
        while max(losses(tmp_path), default=0) < step:
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.2)

    first = start()
    try:
        wait_for_step(first, 1)
        line = one_line_outcome(launch(tmp_path, *settings), 1)
        assert f"{tmp_path} is in use by another run" in line and f"pid {first.pid}" in line
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 75
        assert not (tmp_path / "run.lock").exists()

        second = start()
        wait_for_step(second, max(losses(tmp_path)) + 1)
        second.send_signal(signal.SIGKILL)
        second.wait()
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == second.pid
        stopped_at = max(losses(tmp_path))
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.poll() is None:
                process.kill()
    relaunch = launch(tmp_path, "--config.total_steps=" + str(stopped_at + 1))
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert "Traceback" not in relaunch.stderr and not (tmp_path / "run.lock").exists()


def test_every_process_of_a_job_refuses_a_locked_workdir(tmp_path):
    """Process 0 reads the lock and broadcasts its decision: both processes stop with the
    same line instead of one waiting for the other in a collective."""
    record = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
    (tmp_path / "run.lock").write_text(json.dumps(record))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = [
        subprocess.Popen(
            train_command(
                tmp_path,
                TINY,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=REPO,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for process in job:
        out, err = process.communicate(timeout=180)
        result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        line = one_line_outcome(result, 1)
        assert f"{tmp_path} is in use by another run: host" in line
        assert f"pid {os.getpid()}" in line
    assert json.loads((tmp_path / "run.lock").read_text()) == record  # left as it was
