r"""Pretrain RAMEN: ``python -m ramen_jax.train --config configs/base.py --workdir DIR``.

Kept short on purpose: parse flags, start the multi-process runtime when the job has several
processes, call ``train``. Any config field can be overridden with
``--config.a.b=value`` (e.g. ``--config.total_steps=1000``). A run resumes automatically from
the latest checkpoint in ``--workdir``. Exit codes: 0 finished; 75 stopped by SIGTERM/SIGINT
on any host, with a checkpoint written at a step all hosts agreed on (re-run the same command
to continue); 1 a failure reported as one ``error:`` line (``ramen_jax.training.failures``).
"""

import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ramen_jax import cli, logs, storage
from ramen_jax.training import config_checks

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/base.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and previews go here.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a manual multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of a manual run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (manual run).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' INFO logs (Orbax, absl).")
flags.mark_flags_as_required(["config", "workdir"])

# Environment variables that mean "several processes, let JAX detect the cluster".
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _multi_process() -> bool:
    if any(os.environ.get(k) for k in _CLUSTER_ENV):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed() -> None:
    if _COORDINATOR.value:
        if os.environ.get("JAX_PLATFORMS") == "cpu":  # CPU processes talk through gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _multi_process():
        jax.distributed.initialize()


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with every flag mistake as one ``error:`` line (``ramen_jax.cli``),
    then the config's values checked, all before the heavy imports and the workdir."""
    rest = cli.parse_absl_flags(argv, _CONFIG)
    try:
        config_checks.check_config(_CONFIG.value)
    except config_checks.ConfigError as e:
        sys.exit(cli.report(e, e.exit_code))
    try:
        for path in config_checks.paths_of(_CONFIG.value, _WORKDIR.value):
            storage.require_store(path)
    except storage.MissingStorePackage as e:
        sys.exit(cli.report(e))
    return rest


def main(argv):
    del argv
    logs.configure_from_absl_flags(flags.FLAGS, verbose=_VERBOSE.value)
    initialize_distributed()
    from ramen_jax.training.failures import PREEMPTED_EXIT_CODE, Preempted, RunError
    from ramen_jax.training.trainer import run_summary, train

    logging.info(
        "JAX %s: %d processes, %d devices (%d local)",
        jax.__version__,
        jax.process_count(),
        jax.device_count(),
        jax.local_device_count(),
    )
    try:
        train(_CONFIG.value, _WORKDIR.value)
        if jax.process_index() == 0:
            print(run_summary(_WORKDIR.value, _CONFIG.value), flush=True)
    except Preempted:
        sys.exit(PREEMPTED_EXIT_CODE)
    except RunError as e:
        cli.report(e)
        # The failure is reported: a failed async write's orphaned asyncio futures would log
        # the same error again as a traceback when the interpreter tears down.
        std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
