#!/usr/bin/env python3
"""Write (and with --submit, sbatch) a SLURM job running `ramen_jax.train` on N nodes x G GPUs.

    launch/slurm.sh --nodes 4 --gpus-per-node 4 --partition gpu --time 24:00:00 \\
        --workdir /shared/ramen/base --config configs/base.py --submit

One task per GPU. `jax.distributed.initialize()` (called by ramen_jax.train) recognises a SLURM
job step by SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID
(jax/_src/clusters/slurm_cluster.py): the coordinator is the first host of the step's node list,
on port 61440 + job id % 4096 (JAX_COORDINATOR_PORT overrides it), there are SLURM_NTASKS
processes, this one is number SLURM_PROCID, and it drives GPU number SLURM_LOCALID of its node.
That last default is why one task per GPU is the layout that needs no extra setting: with one task
per node every process would get SLURM_LOCALID 0 and see only GPU 0 (unless JAX_LOCAL_DEVICE_IDS
listed them all). It also means each task must see all of its node's GPUs, so the job asks for
--gpus-per-node, never --gpus-per-task, and srun runs with --gpu-bind=none.

Preemption and time limits: the job is --requeue'able, so SLURM puts it back in the queue when it
is preempted or a node fails; shortly before the time limit SLURM sends USR1 to the batch script
(--signal), which requeues the job itself; so does a training run that exits with code 75 (a
stop signal reached a task; all tasks saved a checkpoint at one agreed step). A requeued job
keeps its id and its log (appended) and training resumes from the last checkpoint in the
workdir, which must be on storage that every node sees (a shared file system, or gs://).
To stop for good, `scancel JOBID` (a cancelled job is not requeued).
--dry-run prints the script and the sbatch command and writes nothing. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TIME_RE = re.compile(r"^([0-9]+-)?[0-9]{1,2}:[0-9]{2}:[0-9]{2}$")
JOB_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SBATCH_OPTION_RE = re.compile(r"^[a-z][a-z-]*(=\S+)?$")
OVERRIDE_RE = re.compile(r"^--config\.[A-Za-z_][\w.]*=")

REQUEUE_ON_USR1 = """\
# Near the time limit SLURM sends USR1 to this script (--signal above): requeue the job. It keeps
# its id and this log, and training resumes from the last checkpoint in the workdir.
requeued=""
requeue() {
  echo "$(date -u +%FT%TZ) $1: requeueing job ${SLURM_JOB_ID}"
  requeued=1
  scontrol requeue "${SLURM_JOB_ID}" || echo "requeue refused: submit this script again" >&2
}
trap 'requeue "time limit near"' USR1
"""

# Exit code 75 from ramen_jax.train: a stop signal reached a task, every task saved a
# checkpoint at the same step and stopped. That is a preemption: requeue, unless done already.
WAIT_FOR_SRUN = """\
srun_pid=$!
# `wait` returns early when the USR1 trap runs; wait again until srun itself has ended.
while true; do
  status=0
  wait "${srun_pid}" || status=$?
  kill -0 "${srun_pid}" 2>/dev/null && continue
  if [ "${status}" -eq 75 ] && [ -z "${requeued}" ]; then
    requeue "training stopped by a signal with a checkpoint (exit 75)"
  fi
  exit "${status}"
done
"""


class LaunchError(Exception):
    """A bad input or a failed command: reported as `error: ...` with a non-zero exit."""


def batch_script(args: argparse.Namespace, log_dir: Path) -> str:
    sbatch = [
        ("job-name", args.job_name),
        ("nodes", args.nodes),
        ("ntasks-per-node", args.gpus_per_node),
        ("gpus-per-node", args.gpus_per_node),
        ("cpus-per-task", args.cpus_per_task),
        ("time", args.time),
        ("partition", args.partition),
        ("account", args.account),
        ("output", log_dir / "%x-%j.out"),
        ("open-mode", "append"),
        ("requeue", True),
        ("signal", f"B:USR1@{args.requeue_seconds}"),
    ]
    lines = [
        "#!/bin/bash",
        f"# Written by launch/slurm.sh: ramen_jax.train on {args.nodes} node(s) x "
        f"{args.gpus_per_node} GPU(s), one task per GPU.",
    ]
    lines += [
        f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}"
        for key, value in sbatch
        if value is not None
    ]
    lines += [f"#SBATCH --{option}" for option in args.sbatch]
    lines += ["set -euo pipefail", "", REQUEUE_ON_USR1]
    lines.append(
        'echo "$(date -u +%FT%TZ) job ${SLURM_JOB_ID}, restart ${SLURM_RESTART_COUNT:-0}, '
        'nodes ${SLURM_JOB_NODELIST}"'
    )
    lines.append(f"cd {shlex.quote(str(args.repo))}")
    for assignment in args.env:
        key, value = assignment.split("=", 1)
        lines.append(f"export {key}={shlex.quote(value)}")
    srun = ["srun", "--kill-on-bad-exit=1", "--label", "--gpu-bind=none"]
    if args.cpus_per_task:  # srun no longer inherits sbatch's --cpus-per-task (SLURM >= 22.05)
        srun.append(f"--cpus-per-task={args.cpus_per_task}")
    train = [str(args.python), "-m", "ramen_jax.train", "--config", args.config]
    train += ["--workdir", args.workdir, *args.overrides]
    lines += [shlex.join(srun) + " \\", f"  {shlex.join(train)} &", WAIT_FOR_SRUN]
    return "\n".join(lines)


def check(args: argparse.Namespace, unknown: list[str]) -> None:
    wrong = [a for a in unknown if not OVERRIDE_RE.match(a)]
    if wrong:
        raise LaunchError(f"unrecognized arguments: {' '.join(wrong)}")
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise LaunchError("--nodes and --gpus-per-node must be at least 1")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        raise LaunchError("--cpus-per-task must be at least 1")
    if not TIME_RE.match(args.time):
        raise LaunchError(f"--time {args.time!r}: use HH:MM:SS or D-HH:MM:SS")
    if not JOB_NAME_RE.match(args.job_name):
        raise LaunchError(f"--job-name {args.job_name!r}: use letters, digits, '_', '.', '-'")
    for assignment in args.env:
        if not ENV_RE.match(assignment):
            raise LaunchError(f"--env {assignment!r}: use NAME=VALUE")
    for option in args.sbatch:
        if not SBATCH_OPTION_RE.match(option):
            raise LaunchError(f"--sbatch {option!r}: use an sbatch option as NAME or NAME=VALUE")
    if Path(args.config).is_absolute():
        raise LaunchError(f"--config {args.config!r} must be relative to the repository root")
    if args.requeue_seconds < 1:
        raise LaunchError("--requeue-seconds must be at least 1")


def log_dir_for(args: argparse.Namespace) -> Path:
    if args.log_dir:
        log_dir = Path(args.log_dir).resolve()
    elif args.workdir.startswith("gs://"):
        raise LaunchError("--log-dir is needed with a gs:// workdir: SLURM writes logs to files")
    else:
        log_dir = Path(args.workdir) / "slurm_logs"
    if re.search(r"\s", str(log_dir)):
        raise LaunchError(f"log directory {str(log_dir)!r}: #SBATCH --output takes no spaces")
    return log_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/slurm.sh",
        description=__doc__.split("\n\n")[0],
        epilog="Any --config.FIELD=VALUE is passed on to ramen_jax.train.",
        allow_abbrev=False,
    )
    parser.add_argument("--nodes", type=int, required=True, help="number of nodes")
    parser.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (= tasks) per node")
    parser.add_argument("--workdir", required=True, help="checkpoints: shared path or gs://")
    parser.add_argument("--config", default="configs/base.py", help="relative to the repo root")
    parser.add_argument("--time", default="24:00:00", help="time limit per (re)queued run")
    parser.add_argument("--job-name", default="ramen", help="SLURM job name")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per GPU task (data loading)")
    parser.add_argument(
        "--sbatch", action="append", default=[], metavar="OPTION[=VALUE]",
        help="any other sbatch option, e.g. --sbatch qos=high --sbatch exclusive (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="environment variable for every task, e.g. NCCL_SOCKET_IFNAME=ib0 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout on shared storage")
    parser.add_argument(
        "--python", help="interpreter with ramen_jax installed (default REPO/.venv)"
    )
    parser.add_argument("--log-dir", help="default WORKDIR/slurm_logs")
    parser.add_argument(
        "--script", help="where to write the job script (default LOG_DIR/NAME.sbatch)"
    )
    parser.add_argument(
        "--requeue-seconds", type=int, default=300,
        help="requeue this long before the time limit (default 300)",
    )  # fmt: skip
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--submit", action="store_true", help="write the script and sbatch it")
    action.add_argument("--dry-run", action="store_true", help="print script + command, no writes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    try:
        check(args, unknown)
        args.overrides = unknown
        args.repo = args.repo.resolve()
        args.python = Path(args.python) if args.python else args.repo / ".venv/bin/python"
        if not args.workdir.startswith("gs://"):
            args.workdir = str(Path(args.workdir).resolve())
        log_dir = log_dir_for(args)
        script_path = (
            Path(args.script).resolve() if args.script else log_dir / f"{args.job_name}.sbatch"
        )
        script = batch_script(args, log_dir)
        sbatch = ["sbatch", str(script_path)]
        if args.dry_run:
            print(script)
            print(f"# written to {script_path} without --dry-run, then submitted with:")
            print(shlex.join(sbatch))
            return 0
        log_dir.mkdir(parents=True, exist_ok=True)
        script_path.parent.mkdir(parents=True, exist_ok=True)
        script_path.write_text(script)
        print(f"wrote {script_path}", file=sys.stderr)
        if not args.submit:
            print(f"submit with: {shlex.join(sbatch)}", file=sys.stderr)
            return 0
        print(f"+ {shlex.join(sbatch)}", file=sys.stderr)
        returncode = subprocess.run(sbatch).returncode
        if returncode != 0:
            raise LaunchError(f"sbatch failed with exit code {returncode}")
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
