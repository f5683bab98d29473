"""Decisions every process of a job must take alike, or the job hangs in a collective.

``all_processes(ok)`` is True only if ``ok`` is True on every process (a save, a restore or a
read that failed on one process fails for all). ``decided_on_process_zero(fn)`` runs ``fn`` on
process 0 only (taking the workdir lock) and makes its ``RunError``, message included, the
outcome of every process. With one process both are plain function calls.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from ramen_jax.training.failures import RunError

_MESSAGE_BYTES = 2048


def all_processes(ok: bool) -> bool:
    if jax.process_count() == 1:
        return bool(ok)
    gathered = multihost_utils.process_allgather(np.asarray(bool(ok), np.int32))
    return bool(np.all(np.asarray(gathered) == 1))


def _encode(text: str) -> np.ndarray:
    data = text.encode()[:_MESSAGE_BYTES]
    out = np.zeros(_MESSAGE_BYTES, np.uint8)
    out[: len(data)] = np.frombuffer(data, np.uint8)
    return out


def _decode(array) -> str:
    return bytes(np.asarray(array, np.uint8)).rstrip(b"\0").decode(errors="replace")


def decided_on_process_zero(fn: Callable[[], None], errors: tuple[type[RunError], ...]) -> None:
    """Runs ``fn`` on process 0; an error of one of ``errors`` it raises is raised, with the
    same class and message, on every process. Any other error is raised on process 0 as it is
    and as a ``RunError`` carrying its message on the others (they must not wait for ever)."""
    if jax.process_count() == 1:
        fn()
        return
    kind, message, unexpected = -1, "", None
    if jax.process_index() == 0:
        try:
            fn()
        except errors as e:
            kind, message = errors.index(type(e)), str(e)
        except Exception as e:  # noqa: BLE001 (re-raised below, after the others know)
            kind, message, unexpected = len(errors), f"process 0 failed: {e}", e
    kind, payload = multihost_utils.broadcast_one_to_all(
        (np.asarray(kind, np.int32), _encode(message))
    )
    if unexpected is not None:
        raise unexpected
    if int(kind) >= 0:
        raise (errors + (RunError,))[int(kind)](_decode(payload))
