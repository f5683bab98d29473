"""launch/: the TPU and SLURM launchers, driven through their shell wrappers.

No network, gcloud or SLURM is needed: dry runs are checked command by command; the shell
snippets that run on TPU workers and the generated SLURM script are executed here against fake
`python`/`srun`/`scontrol`; and a real (non-dry) `run` loop talks to a fake `gcloud` to show it
executes exactly what its dry run prints.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPU, SLURM = REPO / "launch/tpu.sh", REPO / "launch/slurm.sh"
SLICE = ["--name", "ramen-v5e", "--zone", "us-west4-a", "--project", "my-proj"]
GS_WORKDIR = "gs://my-bucket/ramen/base"

FAKE_COMMAND = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
script_path = os.environ.get("FAKE_SCRIPT")
if name == "gcloud" and script_path:
    markers = [("describe", "state"), ("ramen-status", "probe"), ("uv pip install", "install")]
    kind = next((k for marker, k in markers if marker in str(sys.argv)), "")
    with open(script_path) as f:
        script = json.load(f)
    if script.get(kind):
        code, out, err = script[kind].pop(0)
        with open(script_path, "w") as f:
            json.dump(script, f)
        sys.stdout.write(out)
        sys.stderr.write(err)
        sys.exit(code)
"""


@pytest.fixture
def fakes(tmp_path):
    """A PATH whose gcloud/git/sbatch only record their calls (to tmp_path/calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gcloud", "git", "sbatch"):
        (bin_dir / name).write_text(FAKE_COMMAND.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path))
    env["FAKE_CALLS"] = str(tmp_path / "calls")
    return env


def calls(env) -> list[list[str]]:
    path = Path(env["FAKE_CALLS"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def launch(script: Path, *args: str, env=None, ok=True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def dry_run(env, *args: str) -> list[list[str]]:
    """The commands a TPU dry run prints, split as the shell would; checks it ran nothing."""
    out = launch(TPU, *args, "--dry-run", env=env).stdout
    assert calls(env) == [], "a dry run must not run anything"
    return [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]


def remote(command: list[str]) -> str:
    """The --command of a `gcloud compute tpus tpu-vm ssh` line."""
    assert command[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], command
    (text,) = [arg.removeprefix("--command=") for arg in command if arg.startswith("--command=")]
    return text


def kind(command: list[str]) -> str:
    if command[0] in ("sleep", "git"):
        return command[0]
    if command[3] == "queued-resources":
        return command[4]
    if command[4] == "scp":
        return "scp"
    text = remote(command)
    for marker, name in [("ramen-status", "probe"), ("seq 120", "stop"), ("tar -x", "unpack"),
                         ("uv pip install", "install"), ("ramen_jax.train", "train"),
                         ("tail", "logs")]:  # fmt: skip
        if marker in text:
            return name
    raise AssertionError(f"unexpected command {command}")


def queued_resource(verb: str, *flags: str) -> list[str]:
    where = ["--zone=us-west4-a", "--project=my-proj"]
    return ["gcloud", "compute", "tpus", "queued-resources", verb, "ramen-v5e", *where, *flags]


# --- Cloud TPU -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accelerator, options, flags",
    [
        ("v5litepod-16", ["--spot"], ["--runtime-version=v2-alpha-tpuv5-lite", "--spot"]),
        ("v5p-32", [], ["--runtime-version=v2-alpha-tpuv5"]),
        ("v6e-8", ["--runtime-version", "v2-custom"], ["--runtime-version=v2-custom"]),
        (
            "v4-16",
            ["--service-account", "sa@p.iam.gserviceaccount.com"],
            [
                "--runtime-version=tpu-ubuntu2204-base",
                "--service-account=sa@p.iam.gserviceaccount.com",
            ],
        ),
    ],
)
def test_create_queues_the_slice_and_waits_for_it(fakes, accelerator, options, flags):
    commands = dry_run(fakes, "create", *SLICE, "--accelerator-type", accelerator, *options)
    node = ["--node-id=ramen-v5e", f"--accelerator-type={accelerator}"]
    assert commands == [
        queued_resource("create", *node, *flags),
        queued_resource("describe", "--format=value(state.state)"),
    ]


def test_delete(fakes):
    assert dry_run(fakes, "delete", *SLICE) == [queued_resource("delete", "--force", "--quiet")]


def sandbox_home(tmp_path) -> dict:
    home = tmp_path / "worker_home"
    home.mkdir()
    return dict(os.environ, HOME=str(home))


def on_worker(command: str, env, ok=True) -> subprocess.CompletedProcess:
    """Runs a worker command as gcloud's ssh would: bash, in the home directory."""
    done = subprocess.run(
        ["bash", "-c", command], cwd=env["HOME"], env=env, capture_output=True, text=True,
        timeout=10,
    )  # fmt: skip
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def test_copy_ships_the_committed_tree_to_every_worker(fakes, tmp_path):
    archive, scp, unpack = dry_run(fakes, "copy", *SLICE)
    tarball = str(tmp_path / "ramen_jax-ramen-v5e.tar.gz")
    assert archive == [
        "git", "-C", str(REPO), "archive", "--format=tar.gz", f"--output={tarball}", "HEAD",
    ]  # fmt: skip
    assert scp == [
        "gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "ramen-v5e:ramen_jax.tar.gz",
        "--zone=us-west4-a", "--project=my-proj", "--worker=all",
    ]  # fmt: skip
    assert "--worker=all" in unpack
    # Carry it out: the archive made here, unpacked as a worker would.
    subprocess.run(archive, check=True, timeout=60)
    worker = sandbox_home(tmp_path)
    shutil.copy(tarball, Path(worker["HOME"]) / "ramen_jax.tar.gz")
    on_worker(remote(unpack), worker)
    assert (Path(worker["HOME"]) / "ramen_jax/pyproject.toml").is_file()


def test_copy_can_clone_a_ref_instead(fakes, tmp_path):
    (clone,) = dry_run(fakes, "copy", *SLICE, "--git-url", str(REPO), "--ref", "HEAD")
    assert "--worker=all" in clone
    worker = sandbox_home(tmp_path)
    on_worker(remote(clone), worker)
    assert (Path(worker["HOME"]) / "ramen_jax/pyproject.toml").is_file()


def test_install_makes_a_venv_from_requirements_tpu_on_every_worker(fakes):
    (install,) = dry_run(fakes, "install", *SLICE, "--python-version", "3.12")
    assert "--worker=all" in install
    text = remote(install)
    assert text.startswith('cd "$HOME"/ramen_jax && ')
    assert 'uv venv --clear --python 3.12 "$HOME"/ramen_venv' in text
    assert 'uv pip install --python "$HOME"/ramen_venv/bin/python -r requirements-tpu.txt' in text


def test_train_starts_on_every_worker_and_streams_worker_0(fakes):
    args = ["--workdir", GS_WORKDIR, "--config", "configs/base.py:debug", "--config.optim.lr=0.1"]
    start, follow = dry_run(fakes, "train", *SLICE, *args)
    assert "--worker=all" in start
    assert "--worker=0" in follow and "tail -n 100 -F" in remote(follow)
    assert (
        '"$HOME"/ramen_venv/bin/python -m ramen_jax.train --config configs/base.py:debug '
        f"--workdir {GS_WORKDIR} --config.optim.lr=0.1 &" in remote(start)
    )
    (start_only,) = dry_run(fakes, "train", *SLICE, *args, "--no-follow")
    assert start_only == start


FAKE_TRAINER = """#!/bin/bash
echo "trainer args: $*"
while [ ! -f "$HOME/release" ]; do sleep 0.05; done
exit "$(cat "$HOME/release")"
"""


def wait_for_status(probe: str, worker, expected: str) -> None:
    deadline = time.monotonic() + 10
    while (out := on_worker(probe, worker).stdout.strip()) != f"ramen-status {expected}":
        assert time.monotonic() < deadline, out
        time.sleep(0.05)


def test_worker_commands_run_detach_report_and_stop_training(fakes, tmp_path):
    """The train/status/stop snippets, executed on a sandboxed 'worker' with a fake trainer."""
    args = ["--workdir", GS_WORKDIR, "--config.optim.lr=0.001"]
    start, _ = dry_run(fakes, "train", *SLICE, *args)
    describe, probe_command = dry_run(fakes, "status", *SLICE)
    assert kind(describe) == "describe" and "--worker=all" in probe_command
    probe = remote(probe_command)
    stop, stop_probe, delete = dry_run(fakes, "stop", *SLICE)
    assert kind(stop_probe) == "probe" and delete == queued_resource("delete", "--force", "--quiet")
    worker = sandbox_home(tmp_path)
    home = Path(worker["HOME"])
    (home / "ramen_jax").mkdir()
    (home / "ramen_venv/bin").mkdir(parents=True)
    (home / "ramen_venv/bin/python").write_text(FAKE_TRAINER)
    (home / "ramen_venv/bin/python").chmod(0o755)
    try:
        assert on_worker(probe, worker).stdout == "ramen-status missing\n"
        on_worker(remote(start), worker)
        wait_for_status(probe, worker, "running")
        # Detached like nohup: a hang-up (the ssh session ending) does not stop it.
        os.kill(int((home / "ramen_logs/train.pid").read_text()), signal.SIGHUP)
        time.sleep(0.2)
        wait_for_status(probe, worker, "running")
        again = on_worker(remote(start), worker, ok=False)
        assert again.returncode == 1 and "already running" in again.stderr
        (home / "release").write_text("0")
        wait_for_status(probe, worker, "exit=0")
        assert (home / "ramen_logs/train.log").read_text() == (
            "trainer args: -m ramen_jax.train --config configs/base.py "
            f"--workdir {GS_WORKDIR} --config.optim.lr=0.001\n"
        )
        (home / "release").unlink()
        on_worker(remote(start), worker)
        wait_for_status(probe, worker, "running")
        on_worker(remote(stop), worker)
        wait_for_status(probe, worker, f"exit={128 + signal.SIGTERM}")
    finally:
        (home / "release").write_text("0")


# The whole re-queue loop, in the order the dry run plays it: no slice -> create -> ACTIVE with
# nothing running -> launch -> running -> SUSPENDED (preempted) -> delete -> create -> launch ->
# finished, and still finished (not preempted) one poll later -> delete.
LAUNCH = ["stop", "git", "scp", "unpack", "install", "train", "sleep"]
RUN_LOOP = (
    ["describe", "create", "describe", "probe", *LAUNCH, "describe", "probe", "sleep"]
    + ["describe", "delete", "describe", "create", "describe", "probe", *LAUNCH]
    + ["describe", "probe", "sleep", "describe", "probe", "delete"]
)
RUN_ARGS = [*SLICE, "--accelerator-type", "v5litepod-16", "--spot", "--workdir", GS_WORKDIR]


def test_run_dry_run_shows_the_requeue_loop(fakes):
    commands = dry_run(fakes, "run", *RUN_ARGS, "--config.optim.lr=0.1", "--poll-seconds", "30")
    assert [kind(command) for command in commands] == RUN_LOOP
    creates = [c for c in commands if kind(c) == "create"]
    assert len(creates) == 2 and all("--spot" in c for c in creates)
    assert all(
        f"--workdir {GS_WORKDIR} --config.optim.lr=0.1" in remote(c)
        for c in commands
        if kind(c) == "train"
    )
    assert all(c == ["sleep", "30"] for c in commands if kind(c) == "sleep")
    assert commands[-1] == queued_resource("delete", "--force", "--quiet")
    kept = dry_run(fakes, "run", *RUN_ARGS, "--keep")
    assert [kind(c) for c in kept] == RUN_LOOP[:-1]


# --- Multi-slice: one queued resource of several slices, joined over the data-centre network ----

WORKER_KINDS = {"probe", "stop", "scp", "unpack", "install", "train"}  # once per node


def node_of(command: list[str]) -> str:
    return command[6].split(":")[0] if command[4] == "scp" else command[5]


def test_multislice_create_queues_every_slice_in_one_queued_resource(fakes):
    args = ["create", *SLICE, "--accelerator-type", "v5litepod-16", "--node-count", "2"]
    create, _ = dry_run(fakes, *args)
    flags = ["--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite"]
    assert create == queued_resource("create", "--node-count=2", "--node-prefix=ramen-v5e", *flags)
    create, _ = dry_run(fakes, *args, "--node-prefix", "ramen-slice")
    assert "--node-prefix=ramen-slice" in create and not any("--node-id" in a for a in create)


def test_multislice_run_reaches_every_slice_and_spans_the_data_axis_over_them(fakes):
    commands = dry_run(fakes, "run", *RUN_ARGS, "--node-count", "2", "--config.seed=1")
    expected = [k for k in RUN_LOOP for _ in range(2 if k in WORKER_KINDS else 1)]
    assert [kind(command) for command in commands] == expected
    worker_commands = [c for c in commands if kind(c) in WORKER_KINDS]
    assert [node_of(c) for c in worker_commands] == ["ramen-v5e-0", "ramen-v5e-1"] * (
        len(worker_commands) // 2
    )
    trains = [remote(c) for c in commands if kind(c) == "train"]
    assert len(trains) == 4
    assert all("--config.seed=1 --config.mesh.dcn_data=2 &" in text for text in trains)
    assert all("--node-count=2" in c for c in commands if kind(c) == "create")
    # One slice: no dcn_data override, the node is the queued resource's own name.
    single = dry_run(fakes, "train", *SLICE, "--workdir", GS_WORKDIR, "--no-follow")
    assert node_of(single[0]) == "ramen-v5e" and "dcn_data" not in remote(single[0])
    (follow,) = dry_run(fakes, "logs", *SLICE, "--node-count", "2")
    assert node_of(follow) == "ramen-v5e-0"  # process 0 is worker 0 of slice 0


def test_jax_reads_the_multislice_environment_of_a_queued_resource(monkeypatch):
    """jax.distributed.initialize() on Cloud TPU (jax/_src/clusters/cloud_tpu_cluster.py) takes
    the coordinator, the slice count and the slice id from the MEGASCALE_* entries that the
    runtime writes into each worker's `tpu-env` metadata: the launcher sets none itself."""
    from jax._src.clusters import cloud_tpu_cluster

    metadata = {
        "agent-worker-number": "1",
        "worker-network-endpoints": "10.0.0.5,10.0.0.6",
        "tpu-env": "MEGASCALE_COORDINATOR_ADDRESS: '127.0.0.1'\nMEGASCALE_NUM_SLICES: '2'\n"
        "MEGASCALE_SLICE_ID: '1'\n",
    }
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", lambda key: (metadata[key], 200))
    for name in ("MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID"):
        monkeypatch.delenv(name, raising=False)
    cluster = cloud_tpu_cluster.GceTpuCluster
    assert cluster.get_process_count() == 4  # 2 hosts per slice x 2 slices
    assert cluster.get_process_id() == 3  # host 1 of slice 1
    assert cluster.get_coordinator_address(5, None).startswith("127.0.0.1:")


def test_run_executes_what_its_dry_run_prints(fakes, tmp_path):
    """A real `run` against a fake gcloud answering as the dry run's simulation does."""
    gone = [1, "", "ERROR: (gcloud.compute.tpus.queued-resources.describe) NOT_FOUND: x\n"]
    gone_too = [1, "", "ERROR: (gcloud...describe) Queued resource [ramen-v5e] not found\n"]
    active = [0, "ACTIVE\n", ""]
    probe = {s: [0, f"ramen-status {s}\nramen-status {s}\n", ""] for s in ("missing", "running")}
    script = {
        "state": [gone, active, active, [0, "SUSPENDED\n", ""], gone_too, active, active, active],
        "probe": [probe["missing"], probe["running"], probe["missing"]]
        + [[0, "ramen-status exit=0\nramen-status exit=0\n", ""]] * 2,
    }
    (tmp_path / "script.json").write_text(json.dumps(script))
    env = dict(fakes, FAKE_SCRIPT=str(tmp_path / "script.json"))
    expected = [c for c in dry_run(fakes, "run", *RUN_ARGS) if c[0] != "sleep"]
    launch(TPU, "run", *RUN_ARGS, "--poll-seconds", "0", env=env)
    assert calls(env) == expected


def test_run_stops_when_training_fails_while_the_slice_is_up(fakes, tmp_path):
    failed = [0, "ramen-status exit=1\nramen-status exit=0\n", ""]
    script = {"state": [[0, "ACTIVE\n", ""]] * 2, "probe": [failed, failed]}
    (tmp_path / "script.json").write_text(json.dumps(script))
    env = dict(fakes, FAKE_SCRIPT=str(tmp_path / "script.json"))
    done = launch(TPU, "run", *RUN_ARGS, "--poll-seconds", "0", env=env, ok=False)
    assert done.returncode == 1
    assert "training exited with an error (exit=1, exit=0)" in done.stderr
    assert [kind(c) for c in calls(env)] == ["describe", "probe", "describe", "probe"]


def test_run_requeues_when_a_clean_exit_was_a_preemption(fakes, tmp_path):
    """Training that exits 0 because the slice is being preempted must not end the run."""
    active, done = [0, "ACTIVE\n", ""], [0, "ramen-status exit=0\n", ""]
    script = {
        "state": [active, [0, "SUSPENDED\n", ""], [1, "", "NOT_FOUND"]] + [active] * 3,
        "probe": [done, [0, "ramen-status missing\n", ""], done, done],
    }
    (tmp_path / "script.json").write_text(json.dumps(script))
    env = dict(fakes, FAKE_SCRIPT=str(tmp_path / "script.json"))
    launch(TPU, "run", *RUN_ARGS, "--poll-seconds", "0", env=env)
    assert [kind(c) for c in calls(env)] == (
        ["describe", "probe", "describe", "delete", "describe", "create", "describe", "probe"]
        + ["stop", "git", "scp", "unpack", "install", "train"]
        + ["describe", "probe", "describe", "probe", "delete"]
    )


def test_run_relaunches_training_stopped_with_a_checkpoint(fakes, tmp_path):
    """Exit 75 (a stop signal on the slice, checkpoint saved by every host) is a preemption:
    `run` relaunches on the same slice instead of stopping as for a failure."""
    active = [0, "ACTIVE\n", ""]
    stopped = [0, "ramen-status exit=75\nramen-status exit=75\n", ""]
    done = [0, "ramen-status exit=0\nramen-status exit=0\n", ""]
    script = {"state": [active] * 4, "probe": [stopped, done, done]}
    (tmp_path / "script.json").write_text(json.dumps(script))
    env = dict(fakes, FAKE_SCRIPT=str(tmp_path / "script.json"))
    result = launch(TPU, "run", *RUN_ARGS, "--poll-seconds", "0", env=env)
    assert "training is not running on every worker (exit=75, exit=75)" in result.stderr
    assert [kind(c) for c in calls(env)] == (
        ["describe", "probe", "stop", "git", "scp", "unpack", "install", "train"]
        + ["describe", "probe", "describe", "probe", "delete"]
    )


@pytest.mark.parametrize("keep", [False, True])
def test_stop_saves_and_deletes_the_slice_unless_kept(fakes, tmp_path, keep):
    script = {"probe": [[0, "ramen-status exit=75\nramen-status exit=75\n", ""]]}
    (tmp_path / "script.json").write_text(json.dumps(script))
    env = dict(fakes, FAKE_SCRIPT=str(tmp_path / "script.json"))
    result = launch(TPU, "stop", *SLICE, *(["--keep"] if keep else []), env=env)
    assert "training stopped with a checkpoint on every worker" in result.stderr
    kinds = [kind(c) for c in calls(env)]
    assert kinds == (["stop", "probe"] if keep else ["stop", "probe", "delete"])


def test_run_requeues_a_slice_lost_during_the_launch(fakes, tmp_path):
    active, suspended = [0, "ACTIVE\n", ""], [0, "SUSPENDED\n", ""]
    script = {
        "state": [active, suspended, suspended, [1, "", "NOT_FOUND"], active, active],
        "probe": [[0, "ramen-status missing\n", ""]] + [[0, "ramen-status exit=0\n", ""]] * 2,
        "install": [[255, "", "ssh: connect to host: Connection refused\n"]],
    }
    (tmp_path / "script.json").write_text(json.dumps(script))
    env = dict(fakes, FAKE_SCRIPT=str(tmp_path / "script.json"))
    done = launch(TPU, "run", *RUN_ARGS, "--poll-seconds", "0", env=env)
    assert "went away during the launch" in done.stderr
    assert [kind(c) for c in calls(env)] == (
        ["describe", "probe", "stop", "git", "scp", "unpack", "install", "describe"]
        + ["describe", "delete", "describe", "create", "describe", "probe", "describe", "probe"]
        + ["delete"]
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", *SLICE, "--accelerator-type", "v5p-32"], "--workdir"),
        (["run", *SLICE, "--accelerator-type", "v5litepod-8", "--workdir", "/ckpt"], "gs://"),
        (["train", *SLICE, "--accelerator-type", "v5p-32", "--workdir", "ckpt"], "multi-host"),
        (["train", *SLICE, "--workdir", "/ckpt"], "multi-host"),
        (["train", *SLICE, "--workdir", "gs://x"], "malformed bucket path"),
        (["create", *SLICE, "--accelerator-type", "v5e-16"], "unknown accelerator type"),
        (["create", *SLICE, "--accelerator-type", "v5p-12"], "no v5p slice has 12"),
        (["create", *SLICE, "--accelerator-type", "v6e-2"], "no v6e slice has 2"),
        (["create", *SLICE], "--accelerator-type"),
        (["create", "--name", "ramen", "--accelerator-type", "v4-8"], "--zone"),
        (["delete", "--name", "Ramen_1", "--zone", "us-west4-a"], "--name 'Ramen_1'"),
        (["delete", "--name", "ramen", "--zone", "uswest4"], "--zone 'uswest4'"),
        (["delete", *SLICE, "--spot"], "unrecognized arguments for delete: --spot"),
        (["delete", *SLICE, "--config.optim.lr=1"], "unrecognized arguments"),
        (["train", *SLICE, "--workdir", GS_WORKDIR, "--config", "/abs/base.py"], "relative"),
        (["train", *SLICE, "--workdir", GS_WORKDIR, "--config.lr", "1"], "--config.lr 1"),
        (["status", *SLICE, "--node-count", "0"], "--node-count must be at least 1"),
        (
            [
                "train",
                *SLICE,
                "--workdir",
                GS_WORKDIR,
                "--node-count",
                "2",
                "--config.mesh.dcn_data=3",
            ],
            "set from --node-count",
        ),
        (["train", *SLICE, "--workdir", "/ckpt", "--node-count", "2"], "gs:// path"),
    ],
)
def test_tpu_bad_input_is_a_clear_error(fakes, args, message):
    done = launch(TPU, *args, "--dry-run", env=fakes, ok=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert done.stdout == "" and calls(fakes) == []


def test_single_host_slice_may_train_into_a_local_workdir(fakes):
    args = ["--accelerator-type", "v5litepod-8", "--workdir", "/ckpt/run", "--no-follow"]
    (start,) = dry_run(fakes, "train", *SLICE, *args)
    assert "--workdir /ckpt/run" in remote(start)


def test_help(fakes):
    assert "re-queued until done" in launch(TPU, "--help", env=fakes).stdout
    assert "--gpus-per-node" in launch(SLURM, "--help", env=fakes).stdout


# --- SLURM -----------------------------------------------------------------------------------

SLURM_ARGS = ["--nodes", "4", "--gpus-per-node", "4", "--partition", "gpu", "--time", "2-00:00:00"]


def slurm_dry_run(env, tmp_path, *args: str) -> tuple[str, list[str]]:
    workdir = tmp_path / "shared/run"
    out = launch(SLURM, *SLURM_ARGS, "--workdir", str(workdir), *args, "--dry-run", env=env).stdout
    assert calls(env) == [] and not (tmp_path / "shared").exists(), "a dry run writes nothing"
    script, _, tail = out.rpartition("\n# written to ")
    return script, shlex.split(tail.splitlines()[-1])


def test_slurm_script_runs_one_task_per_gpu_and_requeues(fakes, tmp_path):
    script, sbatch = slurm_dry_run(fakes, tmp_path, "--cpus-per-task", "12", "--config.seed=3")
    logs = tmp_path / "shared/run/slurm_logs"
    assert sbatch == ["sbatch", str(logs / "ramen.sbatch")]
    options = re.findall(r"^#SBATCH --([a-z-]+)(?:=(.*))?$", script, flags=re.MULTILINE)
    assert dict(options) == {
        "job-name": "ramen",
        "nodes": "4",
        "ntasks-per-node": "4",
        "gpus-per-node": "4",
        "cpus-per-task": "12",
        "time": "2-00:00:00",
        "partition": "gpu",
        "output": f"{logs}/%x-%j.out",
        "open-mode": "append",
        "requeue": "",
        "signal": "B:USR1@300",
    }
    assert script.startswith("#!/bin/bash\n") and "\nset -euo pipefail\n" in script
    srun = (
        "srun --kill-on-bad-exit=1 --label --gpu-bind=none --cpus-per-task=12 \\\n"
        f"  {REPO}/.venv/bin/python -m ramen_jax.train --config configs/base.py "
        f"--workdir {tmp_path}/shared/run --config.seed=3 &\n"
    )
    assert srun in script
    assert "trap 'requeue \"time limit near\"' USR1" in script
    assert 'scontrol requeue "${SLURM_JOB_ID}"' in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_jax_reads_the_slurm_variables_one_task_per_gpu_relies_on(monkeypatch):
    """jax.distributed.initialize()'s SLURM detection (jax/_src/clusters/slurm_cluster.py), as the
    script's layout assumes it: coordinator on the step's first node, port from the job id,
    process id from SLURM_PROCID, and the GPU of each process from SLURM_LOCALID."""
    from jax._src import clusters

    slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[01-04]", "SLURM_NTASKS": "16"}
    for name, value in {**slurm, "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
    detected = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 300
    )
    assert detected == (f"gpu01:{61440 + 4242 % 4096}", 16, 5, [1])


FAKE_SRUN = """#!/bin/bash
echo "$@" > "$SANDBOX/srun_args"
while [ ! -f "$SANDBOX/release" ]; do sleep 0.05; done
exit "$(cat "$SANDBOX/release")"
"""
FAKE_SCONTROL = '#!/bin/bash\necho "$@" >> "$SANDBOX/scontrol_calls"\n'


@pytest.mark.parametrize("exit_code", [0, 3])
def test_slurm_script_requeues_itself_on_usr1_and_keeps_srun_exit_code(fakes, tmp_path, exit_code):
    for name, text in [("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)]:
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    env = dict(fakes, SANDBOX=str(tmp_path))
    script, _ = slurm_dry_run(env, tmp_path, "--repo", str(tmp_path), "--env", "A=b c")
    env.update(SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu[01-04]")
    job = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "srun_args").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        job.send_signal(signal.SIGUSR1)
        while not (tmp_path / "scontrol_calls").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job.poll() is None, "the job must keep waiting for srun after requeueing"
    finally:
        (tmp_path / "release").write_text(str(exit_code))
    assert job.wait(timeout=10) == exit_code
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 4242\n"
    assert "ramen_jax.train --config configs/base.py" in (tmp_path / "srun_args").read_text()
    assert "time limit near: requeueing job 4242" in job.stdout.read()


@pytest.mark.parametrize("exit_code, requeues", [(75, True), (1, False), (0, False)])
def test_slurm_script_requeues_a_run_stopped_with_a_checkpoint(
    fakes, tmp_path, exit_code, requeues
):
    """ramen_jax.train exits 75 when a stop signal reached a task and every task saved: the
    script requeues the job (once); other exit codes are passed on without a requeue."""
    for name, text in [("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)]:
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    env = dict(fakes, SANDBOX=str(tmp_path), SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu01")
    script, _ = slurm_dry_run(env, tmp_path, "--repo", str(tmp_path))
    (tmp_path / "release").write_text(str(exit_code))
    job = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert job.returncode == exit_code
    calls_made = tmp_path / "scontrol_calls"
    if requeues:
        assert calls_made.read_text() == "requeue 4242\n"
        assert "stopped by a signal with a checkpoint (exit 75): requeueing job 4242" in job.stdout
    else:
        assert not calls_made.exists()


def test_slurm_writes_the_script_and_submits_it(fakes, tmp_path):
    workdir = tmp_path / "shared/run"
    args = [*SLURM_ARGS, "--workdir", str(workdir), "--job-name", "base"]
    written = launch(SLURM, *args, env=fakes)
    script_path = workdir / "slurm_logs/base.sbatch"
    assert f"submit with: sbatch {script_path}" in written.stderr and calls(fakes) == []
    assert f"#SBATCH --output={workdir}/slurm_logs/%x-%j.out\n" in script_path.read_text()
    launch(SLURM, *args, "--submit", "--log-dir", str(tmp_path / "logs"), env=fakes)
    submitted = tmp_path / "logs/base.sbatch"
    assert calls(fakes) == [["sbatch", str(submitted)]]
    assert f"#SBATCH --output={tmp_path}/logs/%x-%j.out\n" in submitted.read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus-per-node", "4", "--workdir", "/w"], "--nodes"),
        (["--nodes", "2", "--gpus-per-node", "0", "--workdir", "/w"], "at least 1"),
        (["--nodes", "2", "--gpus-per-node", "8"], "--workdir"),
        ([*SLURM_ARGS, "--workdir", GS_WORKDIR], "--log-dir is needed"),
        ([*SLURM_ARGS, "--workdir", "/w", "--log-dir", "/a b"], "takes no spaces"),
        ([*SLURM_ARGS, "--workdir", "/w", "--time", "2 days"], "--time '2 days'"),
        ([*SLURM_ARGS, "--workdir", "/w", "--env", "A B"], "--env 'A B'"),
        ([*SLURM_ARGS, "--workdir", "/w", "--sbatch", "qos high"], "--sbatch 'qos high'"),
        ([*SLURM_ARGS, "--workdir", "/w", "--gpus"], "unrecognized arguments: --gpus"),
        ([*SLURM_ARGS, "--workdir", "/w", "--submit", "--dry-run"], "not allowed with"),
    ],
)
def test_slurm_bad_input_is_a_clear_error(fakes, args, message):
    dry = [] if "--dry-run" in args else ["--dry-run"]
    done = launch(SLURM, *args, *dry, env=fakes, ok=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert done.stdout == "" and calls(fakes) == []


# --- requirements-tpu.txt --------------------------------------------------------------------

REQUIREMENT_RE = re.compile(r"^([A-Za-z0-9_.-]+)(\[[a-z0-9,]+\])?(.*)$")


def test_requirements_tpu_pins_match_pyproject_and_jax_tpu_extra():
    text = (REPO / "requirements-tpu.txt").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    assert lines[-1] == "-e ." and not any(line.startswith("-") for line in lines[:-1])
    assert "pypi" not in text.lower(), "no package-registry host names in the repo"
    pins = {m[1].lower(): (m[2], m[3]) for m in map(REQUIREMENT_RE.match, lines[:-1])}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["gcs"]:
        name, _, spec = REQUIREMENT_RE.match(requirement).groups()
        assert pins[name.lower()][1] == spec, name
    assert pins["jax"] == ("[tpu]", "==0.10.2")
    # libtpu: jax's own `tpu` extra pins it (jax-*.dist-info/METADATA); ours must satisfy that.
    (extra,) = [r for r in importlib.metadata.requires("jax") if r.startswith("libtpu")]
    wanted = re.match(r"libtpu\s*==\s*([0-9.]+)\.\*", extra)[1]
    assert pins["libtpu"][1].startswith(f"=={wanted}.")
    assert project["optional-dependencies"]["tpu"] == [f"libtpu{pins['libtpu'][1]}"]
    assert importlib.metadata.version("jax") == "0.10.2"
