"""How a training run ends when it cannot go on, and the exit code each ending gives.

``RunError`` is a failure the user acts on (a locked or mismatched workdir, a damaged
checkpoint with nothing intact behind it, a failed save, hosts out of lockstep, a diverging
run): ``python -m ramen_jax.train`` prints its message as one ``error: ...`` line on stderr,
without a traceback, and exits with ``exit_code``. ``Preempted`` is not an error: every host
agreed on one stop step, saved a checkpoint there and exits with ``PREEMPTED_EXIT_CODE`` so a
launcher knows to relaunch the same command.
"""

from __future__ import annotations

# EX_TEMPFAIL from sysexits.h: "a temporary failure; the user is invited to retry".
PREEMPTED_EXIT_CODE = 75


class RunError(Exception):
    """A failure reported as one line; ``exit_code`` tells a launcher not to relaunch."""

    exit_code = 1


class Preempted(Exception):
    """A stop signal reached at least one host: a checkpoint was written at ``step``."""

    def __init__(self, step: int):
        super().__init__(f"stopped by a signal at step {step}; checkpoint saved")
        self.step = step
