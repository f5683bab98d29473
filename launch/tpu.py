#!/usr/bin/env python3
"""Run `ramen_jax.train` on every host of a Cloud TPU slice, and keep it running through preemption.

The slice is requested through queued resources; the same command runs on all hosts (JAX finds
the other hosts by itself: `jax.distributed.initialize()` reads the slice's worker list from the
TPU VM metadata). Checkpoints live in a gs:// workdir and resume automatically, so a re-queued
slice only needs the code, the environment and the same command again; `run` does exactly that.

    launch/tpu.sh run --name ramen-v5e --zone us-west4-a --accelerator-type v5litepod-16 --spot \\
        --workdir gs://my-bucket/ramen/base --config configs/base.py --config.optim.lr=1e-4

Multi-slice (several slices joined by the data-centre network): `--node-count N` on every action
queues N slices in one queued resource (named NODE_PREFIX-0 .. NODE_PREFIX-(N-1), the prefix being
`--node-prefix`, by default `--name`), runs each worker command on all of them, and passes
`--config.mesh.dcn_data=N` to the training. The runtime puts the MEGASCALE_* variables (the
coordinator, the slice count and each slice's id) in every worker's TPU environment, where
`jax.distributed.initialize()` reads them; the launcher sets no environment of its own.

Actions (each one also works alone): create, copy, install, train, logs, status, stop, delete,
and run (= all of them in a loop that re-queues a preempted slice). Every action takes --dry-run:
it prints each command it would run, one per line, fully expanded and copy-pasteable, and runs
nothing (`run --dry-run` plays one simulated preemption so its whole loop is shown).
Needs only the Python standard library and, unless --dry-run, `gcloud` and `git` on PATH.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where things live on every worker. `$HOME` is left for the worker's shell to expand.
HOME = '"$HOME"'
CODE_DIR, VENV_DIR, LOG_DIR = (f"{HOME}/ramen_{name}" for name in ("jax", "venv", "logs"))
TRAIN_LOG, TRAIN_PID, TRAIN_EXIT = (f"{LOG_DIR}/train.{ext}" for ext in ("log", "pid", "exit"))
# uv only provides Python >= 3.11 (jax 0.10.2 needs it): the TPU VM images are Ubuntu 22.04, 3.10.
UV_PIN = "uv==0.13.9"

# Software version per TPU generation, as Cloud TPU's "TPU software versions" page lists them.
RUNTIME_VERSIONS = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}
# v2/v3/v4/v5p sizes count TensorCores (8 per host); v5litepod/v6e sizes count chips (up to 8 on
# one host, 4 per host in larger slices). Either way a size above 8 spans several hosts.
COUNTS_CORES = {"v2", "v3", "v4", "v5p"}
ACCELERATOR_RE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$")
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
ZONE_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
GCS_RE = re.compile(r"^gs://[a-z0-9][-a-z0-9._]{1,220}(/.*)?$")
OVERRIDE_RE = re.compile(r"^--config\.[A-Za-z_][\w.]*=")

# Queued-resource states (tpu v2 API): ACTIVE is usable; SUSPENDED (preempted, or deleted by the
# service) and FAILED (never came up) are lost and get re-queued; the rest (CREATING, ACCEPTED,
# WAITING_FOR_RESOURCES, PROVISIONING, SUSPENDING, DELETING) are waited out.
LOST_STATES = {"SUSPENDED", "FAILED"}
ABSENT = "ABSENT"
NOT_FOUND_RE = re.compile(r"not[ _]found", re.IGNORECASE)


class LaunchError(Exception):
    """A bad input or a failed command: reported as `error: ...` with a non-zero exit."""


@dataclass(frozen=True)
class Accelerator:
    generation: str
    size: int

    @classmethod
    def parse(cls, text: str) -> Accelerator:
        match = ACCELERATOR_RE.match(text)
        if not match:
            raise LaunchError(
                f"unknown accelerator type {text!r}: expected GENERATION-SIZE with a generation "
                f"in {', '.join(RUNTIME_VERSIONS)}, e.g. v5litepod-16, v5p-32, v6e-8, v4-16"
            )
        generation, size = match.group(1), int(match.group(2))
        valid = size % 8 == 0 if generation in COUNTS_CORES else size in (1, 4, 8) or size % 16 == 0
        if not valid:
            counted = "TensorCores (a multiple of 8)" if generation in COUNTS_CORES else "chips"
            raise LaunchError(f"no {generation} slice has {size} {counted}: {text!r}")
        return cls(generation, size)

    @property
    def multi_host(self) -> bool:
        return self.size > 8


class Shell:
    """Runs commands, echoing each one; with dry_run it prints them to stdout and runs nothing.

    A dry run still has to take the branches that depend on what gcloud answers (queued-resource
    state, training status on the workers): `simulated` holds the canned answers, per kind.
    """

    def __init__(self, dry_run: bool, simulated: dict[str, list[tuple[int, str, str]]]):
        self.dry_run = dry_run
        self.simulated = simulated

    def note(self, message: str) -> None:
        print(f"# {message}", file=sys.stdout if self.dry_run else sys.stderr, flush=True)

    def report(self, message: str) -> None:
        """A result for the user: stdout, commented out in a dry run (where it is simulated)."""
        print(f"# {message}" if self.dry_run else message, flush=True)

    def _echo(self, argv: list[str]) -> None:
        if self.dry_run:
            print(shlex.join(argv), flush=True)
        else:
            print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)

    def run(self, argv: list[str]) -> None:
        self._echo(argv)
        if not self.dry_run:
            returncode = subprocess.run(argv).returncode
            if returncode != 0:
                raise LaunchError(f"command failed with exit code {returncode}: {shlex.join(argv)}")

    def query(self, argv: list[str], kind: str) -> tuple[int, str, str]:
        """Runs a read-only command and returns (exit code, stdout, stderr)."""
        self._echo(argv)
        if self.dry_run:
            return self.simulated[kind].pop(0)
        done = subprocess.run(argv, capture_output=True, text=True)
        return done.returncode, done.stdout, done.stderr

    def sleep(self, seconds: int) -> None:
        if self.dry_run:
            print(f"sleep {seconds}")
        else:
            time.sleep(seconds)


@dataclass(frozen=True)
class Slice:
    """gcloud command lines for one queued resource and its TPU VMs: one named `name`, or with
    `node_count` > 1 (multi-slice) `node_prefix`-0, -1, ... ."""

    name: str
    zone: str
    project: str | None
    node_count: int = 1
    node_prefix: str | None = None

    @property
    def nodes(self) -> list[str]:
        if self.node_count == 1:
            return [self.name]
        return [f"{self.node_prefix or self.name}-{i}" for i in range(self.node_count)]

    def _where(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

    def queued_resource(self, verb: str, *flags: str) -> list[str]:
        command = ["gcloud", "compute", "tpus", "queued-resources", verb, self.name]
        return command + self._where() + list(flags)

    def ssh(self, command: str, worker: str = "all", node: str | None = None) -> list[str]:
        node = node or self.nodes[0]
        return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *self._where()] + [
            f"--worker={worker}",
            f"--command={command}",
        ]

    def ssh_all(self, command: str) -> list[list[str]]:
        """`command` on every worker of every node (slice), one gcloud call per node."""
        return [self.ssh(command, node=node) for node in self.nodes]

    def scp_to_all(self, local: str, remote: str) -> list[list[str]]:
        return [
            ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{node}:{remote}"]
            + [*self._where(), "--worker=all"]
            for node in self.nodes
        ]


def run_all(shell: Shell, commands: list[list[str]]) -> None:
    for argv in commands:
        shell.run(argv)


def state_of(shell: Shell, tpu: Slice) -> str | None:
    """The queued resource's state, ABSENT if there is none, None if gcloud could not tell."""
    argv = tpu.queued_resource("describe", "--format=value(state.state)")
    returncode, out, err = shell.query(argv, "state")
    if returncode == 0:
        return out.strip()
    if NOT_FOUND_RE.search(err):
        return ABSENT
    shell.note(f"describe failed ({err.strip()[-200:]}); asking again later")
    return None


def create(shell: Shell, tpu: Slice, args: argparse.Namespace) -> None:
    accelerator = Accelerator.parse(args.accelerator_type)
    if tpu.node_count == 1:
        nodes = [f"--node-id={tpu.name}"]
    else:  # multi-slice: one queued resource, node_count slices of the accelerator type
        nodes = [f"--node-count={tpu.node_count}", f"--node-prefix={tpu.node_prefix or tpu.name}"]
    flags = [
        *nodes,
        f"--accelerator-type={args.accelerator_type}",
        f"--runtime-version={args.runtime_version or RUNTIME_VERSIONS[accelerator.generation]}",
    ]
    if args.spot:
        flags.append("--spot")
    if args.service_account:
        flags.append(f"--service-account={args.service_account}")
    shell.run(tpu.queued_resource("create", *flags))


def wait_until_active(shell: Shell, tpu: Slice, poll_seconds: int) -> None:
    while (state := state_of(shell, tpu)) != "ACTIVE":
        if state in LOST_STATES or state == ABSENT:
            raise LaunchError(
                f"queued resource {tpu.name} is {state}; `delete` it and `create` it again "
                "(`run` does this by itself)"
            )
        shell.sleep(poll_seconds)


def copy_code(shell: Shell, tpu: Slice, args: argparse.Namespace) -> None:
    if args.git_url:
        clone = (
            f"rm -rf {CODE_DIR} && git clone --quiet {shlex.quote(args.git_url)} {CODE_DIR} && "
            f"git -C {CODE_DIR} checkout --quiet {shlex.quote(args.ref)}"
        )
        run_all(shell, tpu.ssh_all(clone))
        return
    tarball = str(Path(tempfile.gettempdir()) / f"ramen_jax-{tpu.name}.tar.gz")
    shell.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz", f"--output={tarball}", args.ref]
    )
    run_all(shell, tpu.scp_to_all(tarball, "ramen_jax.tar.gz"))
    unpack = f"rm -rf {CODE_DIR} && mkdir -p {CODE_DIR} && tar -xzf ramen_jax.tar.gz -C {CODE_DIR}"
    run_all(shell, tpu.ssh_all(unpack))


def install(shell: Shell, tpu: Slice, args: argparse.Namespace) -> None:
    run_all(
        shell,
        tpu.ssh_all(
            f"cd {CODE_DIR} && python3 -m pip install --user --quiet {UV_PIN} && "
            f"python3 -m uv venv --clear --python {shlex.quote(args.python_version)} {VENV_DIR} && "
            f"python3 -m uv pip install --python {VENV_DIR}/bin/python -r requirements-tpu.txt"
        ),
    )


def train_command(args: argparse.Namespace) -> str:
    """What every worker runs: training detached from the ssh session (a subshell that ignores
    SIGHUP, as nohup does, and holds none of the session's file descriptors), its pid and, once it
    ends, its exit code kept next to its log. Only that subshell may be in the background: a `&`
    after an `&&` list would background the whole list, which then holds ssh's output open."""
    overrides = list(args.overrides)
    if args.node_count > 1:  # the mesh's data axis spans the slices (configs/base.py, mesh)
        overrides.append(f"--config.mesh.dcn_data={args.node_count}")
    train = f"{VENV_DIR}/bin/python -m ramen_jax.train " + shlex.join(
        ["--config", args.config, "--workdir", args.workdir, *overrides]
    )
    return (
        f"cd {CODE_DIR} && mkdir -p {LOG_DIR} || exit 1; "
        f'if [ -f {TRAIN_PID} ] && kill -0 "$(cat {TRAIN_PID})" 2>/dev/null; then '
        "echo ramen_jax.train is already running >&2; exit 1; fi; "
        f'rm -f {TRAIN_EXIT}; ( trap "" HUP; {train} & echo $! > {TRAIN_PID}; wait $!; '
        f"echo $? > {TRAIN_EXIT} ) > {TRAIN_LOG} 2>&1 < /dev/null &"
    )


def start_training(shell: Shell, tpu: Slice, args: argparse.Namespace) -> None:
    check_workdir(args)
    run_all(shell, tpu.ssh_all(train_command(args)))


def follow_log(shell: Shell, tpu: Slice, worker: str) -> None:
    shell.run(tpu.ssh(f"tail -n 100 -F {TRAIN_LOG}", worker=worker))


def stop_training(shell: Shell, tpu: Slice) -> None:
    """SIGTERM to the training on every worker, then wait (up to 120 s) until it has exited.
    The hosts agree on one step, save a checkpoint there and exit 75 within seconds."""
    run_all(
        shell,
        tpu.ssh_all(
            f'if [ -f {TRAIN_PID} ] && kill "$(cat {TRAIN_PID})" 2>/dev/null; then '
            f'for _ in $(seq 120); do kill -0 "$(cat {TRAIN_PID})" 2>/dev/null || break; sleep 1; '
            "done; fi"
        ),
    )


def stop(shell: Shell, tpu: Slice, args: argparse.Namespace) -> None:
    """`stop`: stop the training with a checkpoint, then delete the slice (billing stops)
    unless --keep. A slice is deleted even if a worker did not confirm its exit: the newest
    intact checkpoint is what a later `run` or `train` resumes from."""
    stop_training(shell, tpu)
    statuses = training_statuses(shell, tpu)
    saved = bool(statuses) and all(s in {"exit=0", "exit=75"} for s in statuses)
    shell.note(
        "training stopped with a checkpoint on every worker"
        if saved
        else f"training did not confirm a checkpoint ({', '.join(statuses or ['no answer'])})"
    )
    if args.keep:
        shell.note(f"--keep: slice {tpu.name} stays up and billed; `delete` it when done")
        return
    delete(shell, tpu)


def training_statuses(shell: Shell, tpu: Slice) -> list[str] | None:
    """One status per worker: `running`, `exit=N` or `missing`; None if ssh failed."""
    probe = (
        f'if [ -f {TRAIN_EXIT} ]; then echo "ramen-status exit=$(cat {TRAIN_EXIT})"; '
        f'elif [ -f {TRAIN_PID} ] && kill -0 "$(cat {TRAIN_PID})" 2>/dev/null; then '
        "echo ramen-status running; else echo ramen-status missing; fi"
    )
    statuses = []
    for argv in tpu.ssh_all(probe):
        returncode, out, _ = shell.query(argv, "probe")
        found = re.findall(r"ramen-status (\S+)", out)
        if returncode != 0 or not found:
            return None
        statuses += found
    return statuses


# ramen_jax.train exits 75 when a stop signal reached a host and every host saved a checkpoint at
# one agreed step; 143 is a SIGTERM that came before its handler was installed (at start-up).
# Both mean "preempted, relaunch me". Any other non-zero code is a failure.
PREEMPTED_STATUSES = {"exit=75", "exit=143"}


def outcome(statuses: list[str]) -> str:
    if any(s.startswith("exit=") and s not in {"exit=0", *PREEMPTED_STATUSES} for s in statuses):
        return "failed"
    if "missing" in statuses or any(s in PREEMPTED_STATUSES for s in statuses):
        return "relaunch"
    return "finished" if all(s == "exit=0" for s in statuses) else "running"


def launch(shell: Shell, tpu: Slice, args: argparse.Namespace) -> None:
    stop_training(shell, tpu)
    copy_code(shell, tpu, args)
    install(shell, tpu, args)
    start_training(shell, tpu, args)


def run(shell: Shell, tpu: Slice, args: argparse.Namespace) -> None:
    """Keeps one training run alive until it finishes, re-queueing the slice when it is lost."""
    Accelerator.parse(args.accelerator_type)
    check_workdir(args)
    if shell.dry_run:
        shell.note("dry run: simulated answers (no slice, ACTIVE, one preemption, finished)")
    launches, last_result = 0, None
    while True:
        state = state_of(shell, tpu)
        if state == ABSENT:
            create(shell, tpu, args)
            continue
        if state in LOST_STATES:
            shell.note(f"slice {tpu.name} is {state}: deleting it to queue a new one")
            delete(shell, tpu)
            last_result = None
            continue
        if state == "ACTIVE":
            statuses = training_statuses(shell, tpu)
            result = outcome(statuses) if statuses else "unknown"
            # An ending counts only when the slice is still ACTIVE one poll later: a preemption can
            # stop the training (with any exit code) before the slice's state shows it.
            if result == last_result == "finished":
                shell.note(f"training finished on all {len(statuses)} workers")
                if not args.keep:
                    delete(shell, tpu)
                return
            if result == last_result == "failed":
                raise LaunchError(
                    f"training exited with an error ({', '.join(statuses)}); the slice is "
                    "left up for inspection: `logs`, then `delete`"
                )
            if result == "relaunch":
                launches += 1
                if launches > args.max_requeues + 1:
                    raise LaunchError(f"gave up after {args.max_requeues} re-queues")
                shell.note(
                    f"launch {launches}: training is not running on every worker "
                    f"({', '.join(statuses) if statuses else 'no answer'})"
                )
                try:
                    launch(shell, tpu, args)
                except LaunchError:
                    if state_of(shell, tpu) == "ACTIVE":
                        raise
                    shell.note("the slice went away during the launch; re-queueing")
            last_result = result
        shell.sleep(args.poll_seconds)


def check_workdir(args: argparse.Namespace) -> None:
    accelerator = Accelerator.parse(args.accelerator_type) if args.accelerator_type else None
    if GCS_RE.match(args.workdir):
        return
    if args.workdir.startswith("gs://"):
        raise LaunchError(f"malformed bucket path --workdir {args.workdir!r}")
    if args.action == "run":
        raise LaunchError(
            f"--workdir must be a gs:// path for `run`, not {args.workdir!r}: a re-queued slice "
            "starts from fresh disks, so checkpoints on a local disk would be lost"
        )
    if accelerator is None or accelerator.multi_host or args.node_count > 1:
        raise LaunchError(
            f"--workdir must be a gs:// path on a multi-host slice, not {args.workdir!r}: every "
            "host writes its shards of each checkpoint to the same place (a local path is allowed "
            "only with --accelerator-type naming a single-host slice)"
        )


def status(shell: Shell, tpu: Slice) -> None:
    state = state_of(shell, tpu)
    shell.report(f"queued resource {tpu.name}: {state}")
    if state == "ACTIVE":
        statuses = training_statuses(shell, tpu)
        shell.report(f"training: {', '.join(statuses) if statuses else 'unknown (ssh failed)'}")


def create_and_wait(shell: Shell, tpu: Slice, args: argparse.Namespace) -> None:
    create(shell, tpu, args)
    wait_until_active(shell, tpu, args.poll_seconds)


def train_and_follow(shell: Shell, tpu: Slice, args: argparse.Namespace) -> None:
    start_training(shell, tpu, args)
    if not args.no_follow:
        follow_log(shell, tpu, "0")


def delete(shell: Shell, tpu: Slice) -> None:
    shell.run(tpu.queued_resource("delete", "--force", "--quiet"))


ACTIONS = {
    "create": create_and_wait,
    "copy": copy_code,
    "install": install,
    "train": train_and_follow,
    "logs": lambda shell, tpu, args: follow_log(shell, tpu, args.worker),
    "status": lambda shell, tpu, args: status(shell, tpu),
    "stop": stop,
    "delete": lambda shell, tpu, args: delete(shell, tpu),
    "run": run,
}

# What gcloud "answers" in a dry run. `run` plays: no slice yet -> created -> ACTIVE, nothing
# running -> launched -> running -> preempted (SUSPENDED) -> deleted -> re-created -> launched
# again -> finished on both (example) workers, twice in a row -> deleted.
_ACTIVE, _GONE = (0, "ACTIVE\n", ""), (1, "", "ERROR: (gcloud) NOT_FOUND: queued resource")
_PROBE = {s: (0, f"ramen-status {s}\n" * 2, "") for s in ("missing", "running", "exit=0")}
SIMULATIONS = {
    "run": {
        "state": [_GONE, _ACTIVE, _ACTIVE, (0, "SUSPENDED\n", ""), _GONE] + [_ACTIVE] * 3,
        "probe": [_PROBE[s] for s in ("missing", "running", "missing", "exit=0", "exit=0")],
    },
    "create": {"state": [_ACTIVE]},
    "status": {"state": [_ACTIVE], "probe": [_PROBE["running"]]},
    "stop": {"probe": [(0, "ramen-status exit=75\n" * 2, "")]},
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="queued resource and TPU VM name")
    common.add_argument("--zone", required=True, help="e.g. us-west4-a (v5e), us-east5-a (v5p)")
    common.add_argument("--project", help="GCP project (default: gcloud's configured project)")
    common.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    common.add_argument(
        "--node-count", type=int, default=1, help="slices (multi-slice over DCN; default 1)"
    )
    common.add_argument("--node-prefix", help="multi-slice node names PREFIX-0.. (default --name)")

    slice_spec = argparse.ArgumentParser(add_help=False)
    slice_spec.add_argument("--accelerator-type", required=True, help="e.g. v5litepod-16, v5p-32")
    slice_spec.add_argument("--runtime-version", help="default: the one for the TPU generation")
    slice_spec.add_argument("--spot", action="store_true", help="Spot capacity (can be preempted)")
    slice_spec.add_argument("--service-account", help="default: the Compute Engine default one")
    slice_spec.add_argument("--poll-seconds", type=int, default=60, help="state polling interval")

    code = argparse.ArgumentParser(add_help=False)
    code.add_argument("--git-url", help="clone this URL on the workers instead of copying HEAD")
    code.add_argument("--ref", default="HEAD", help="commit, branch or tag to ship (default HEAD)")

    env = argparse.ArgumentParser(add_help=False)
    env.add_argument("--python-version", default="3.11", help="Python of the workers' venv")

    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--workdir", required=True, help="gs://BUCKET/PATH for checkpoints")
    training.add_argument("--config", default="configs/base.py", help="relative to the repo root")

    parser = argparse.ArgumentParser(
        prog="launch/tpu.sh",
        description=__doc__.split("\n\n")[0],
        epilog="`launch/tpu.sh ACTION --help` lists the options of each action.",
        allow_abbrev=False,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, *parents: argparse.ArgumentParser):
        return actions.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common, *parents],
            allow_abbrev=False,
        )

    action("create", "queue a slice and wait until it is ACTIVE", slice_spec)
    action("copy", "ship the code to every worker (git archive + scp, or git clone)", code)
    action("install", "make a venv with requirements-tpu.txt on every worker", env)
    train = action("train", "start training on every worker in the background", training)
    train.add_argument("--accelerator-type", help="lets a single-host slice use a local workdir")
    train.add_argument("--no-follow", action="store_true", help="do not stream worker 0's log")
    logs = action("logs", "stream a worker's training log")
    logs.add_argument("--worker", default="0", help="worker index, or `all` (default 0)")
    action("status", "queued-resource state and training status per worker")
    halt = action("stop", "stop training with a checkpoint on every worker, then delete the slice")
    halt.add_argument("--keep", action="store_true", help="keep the slice up (still billed)")
    action("delete", "delete the queued resource and its slice")
    loop = action(
        "run",
        "create + copy + install + train, re-queued until done",
        slice_spec,
        code,
        env,
        training,
    )
    loop.add_argument("--max-requeues", type=int, default=50, help="give up after this many")
    loop.add_argument("--keep", action="store_true", help="keep the slice when training ends")
    train.epilog = loop.epilog = "Any --config.FIELD=VALUE is passed on to ramen_jax.train."
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        wrong = [
            a for a in unknown if not (args.action in ("train", "run") and OVERRIDE_RE.match(a))
        ]
        if wrong:
            raise LaunchError(f"unrecognized arguments for {args.action}: {' '.join(wrong)}")
        args.overrides = unknown
        if not NAME_RE.match(args.name):
            raise LaunchError(f"--name {args.name!r}: use 1-63 lower-case letters, digits, '-'")
        if not ZONE_RE.match(args.zone):
            raise LaunchError(f"--zone {args.zone!r} is not a zone name like us-west4-a")
        if getattr(args, "poll_seconds", 0) < 0:
            raise LaunchError("--poll-seconds must not be negative")
        if getattr(args, "config", None) and Path(args.config).is_absolute():
            raise LaunchError(f"--config {args.config!r} must be relative to the repository root")
        if args.node_count < 1:
            raise LaunchError(f"--node-count must be at least 1, not {args.node_count}")
        if args.node_prefix and not NAME_RE.match(args.node_prefix):
            raise LaunchError(
                f"--node-prefix {args.node_prefix!r}: use lower-case letters, digits, '-'"
            )
        if any(o.startswith("--config.mesh.dcn_data=") for o in args.overrides):
            raise LaunchError("--config.mesh.dcn_data is set from --node-count; drop it")
        simulated = {
            # every node (slice) answers the status probe in a dry run
            kind: [a for a in answers for _ in range(args.node_count if kind == "probe" else 1)]
            for kind, answers in SIMULATIONS.get(args.action, {}).items()
        }
        shell = Shell(args.dry_run, simulated)
        tpu = Slice(args.name, args.zone, args.project, args.node_count, args.node_prefix)
        ACTIONS[args.action](shell, tpu, args)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
