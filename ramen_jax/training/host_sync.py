"""Agreement between the processes of a job: the same step shape everywhere, one stop step.

Two things a multi-host run must never get wrong, and neither is visible to one process:

- **Lockstep.** Every process must run the same program at every step. The step plan is a pure
  function of ``(seed, step)``, so processes agree when their configs and code agree; a host
  started with another seed, dataset list or code version would run another step shape, and
  the step's collectives would then wait for each other forever.
- **One stop step.** A stop signal (SIGTERM from a scheduler, a TPU maintenance event or
  ``launch/tpu.sh stop``) reaches hosts at different moments. A host that stops alone leaves
  the others waiting in the next collective, and no checkpoint gets written.

``HostSync.exchange(step, ...)`` settles both at chosen steps. Each process publishes its step
signature and its stop flag to the job's coordination service (the key-value store that
``jax.distributed.initialize`` starts: host-side RPCs, no device program, so the devices keep
working), waits at a barrier, and reads everybody's entry. All processes read the same
entries, so all take the same decision: stop if any host was signalled, or fail with one line
naming the processes that disagree (or did not arrive within ``timeout_s``).

``due(step, new_shape)`` says when to exchange: at the first step of the run, at every step
whose shape this process has not run before (a mismatch is caught before the step runs) and
every ``every_steps`` steps (how long a signalled run may take to stop). With one process there
is nothing to agree on: the local flag decides at every step, and no RPC is made.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading

import jax
from absl import logging

from ramen_jax.training.failures import RunError

PREFIX = "ramen_jax/host_sync"


class LockstepError(RunError):
    """Processes of one job are about to run different steps (or did not arrive)."""


def signature_digest(signature) -> str:
    """A short, process-independent digest of a step signature (``pipeline.signature``)."""
    return hashlib.sha256(repr(signature).encode()).hexdigest()[:16]


def _client():
    from jax._src import distributed  # the coordination service client (also used by Orbax)

    return distributed.global_state.client


class StopSignals:
    """Turns SIGTERM and SIGINT into a flag, checked at the next agreed step.

    A second SIGINT (Ctrl-C twice) falls through to Python's default: an immediate
    ``KeyboardInterrupt``.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        name = signal.Signals(signum).name
        if self.received == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            logging.warning("%s received: stopping at the next step all hosts agree on", name)
        self.received = name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class HostSync:
    def __init__(self, *, every_steps: int, timeout_s: float, start_step: int):
        if every_steps < 1:
            raise ValueError(f"host_sync.every_steps must be >= 1, got {every_steps}")
        if not timeout_s > 0:
            raise ValueError(f"host_sync.timeout_s must be > 0, got {timeout_s}")
        self.every_steps = int(every_steps)
        self.timeout_ms = int(timeout_s * 1000)
        self.start_step = int(start_step)
        self.process = jax.process_index()
        self.processes = jax.process_count()
        self.exchanges = 0
        self._last_exchanged: int | None = None

    def due(self, step: int, new_shape: bool) -> bool:
        if self.processes == 1:
            return True  # free: only the local flag is read
        return new_shape or step == self.start_step or step % self.every_steps == 0

    def exchange(self, step: int, digest: str, what: str, stop_requested: bool) -> bool:
        """Returns whether the job stops before ``step``; raises ``LockstepError``."""
        if self.processes == 1:
            return stop_requested
        client = _client()
        entry = json.dumps({"step": step, "digest": digest, "what": what, "stop": stop_requested})
        client.key_value_set(f"{PREFIX}/{step}/{self.process}", entry)
        try:
            client.wait_at_barrier(f"{PREFIX}/barrier/{step}", self.timeout_ms)
        except Exception as error:  # the service's own error text names no process
            published = client.key_value_dir_get(f"{PREFIX}/{step}/")
            arrived = {int(key.rsplit("/", 1)[1]) for key, _ in published}
            missing = sorted(set(range(self.processes)) - arrived)
            raise LockstepError(
                f"hosts out of lockstep before step {step}: processes {missing} did not reach "
                f"it within {self.timeout_ms / 1000:.0f} s (another step shape, or stuck: "
                f"check their logs) [{type(error).__name__}]"
            ) from None
        entries = {
            int(key.rsplit("/", 1)[1]): json.loads(value)
            for key, value in client.key_value_dir_get(f"{PREFIX}/{step}/")
        }
        self.exchanges += 1
        if self._last_exchanged is not None:  # everyone read those before writing this step's
            client.key_value_delete(f"{PREFIX}/{self._last_exchanged}/{self.process}")
        self._last_exchanged = step
        groups: dict = {}
        for process, e in sorted(entries.items()):
            groups.setdefault((e["step"], e["digest"]), []).append((process, e["what"]))
        if len(groups) > 1:
            described = "; ".join(
                f"processes {[p for p, _ in members]} run step {key[0]} on {members[0][1]}"
                for key, members in groups.items()
            )
            raise LockstepError(f"hosts out of lockstep before step {step}: {described}")
        return any(e["stop"] for e in entries.values())

    def wait_for_all(self, name: str) -> None:
        """Waits until every process reaches ``name`` (unique per use): e.g. after compiling a
        program and before its first collective, which CPU collectives abandon after 30 s."""
        if self.processes == 1:
            return
        try:
            _client().wait_at_barrier(f"{PREFIX}/wait/{name}", self.timeout_ms)
        except Exception as error:  # noqa: BLE001 (the service's text names no process)
            raise LockstepError(
                f"hosts out of lockstep at {name}: not every process arrived within "
                f"{self.timeout_ms / 1000:.0f} s (check their logs) [{type(error).__name__}]"
            ) from None
