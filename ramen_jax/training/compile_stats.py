"""Counting XLA compilations in this process, from JAX's own monitoring events.

Every program JAX builds records ``/jax/core/compile/backend_compile_duration``; a program
served by the persistent compilation cache also records ``/jax/compilation_cache/cache_hits``.
``xla_compiles`` (built from scratch) is their difference. A restarted run with
``compilation_cache_dir`` set should therefore report ``xla_compiles == 0`` for its steps.
"""

from __future__ import annotations

import threading

from jax import monitoring

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
CACHE_HIT = "/jax/compilation_cache/cache_hits"


class _Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.programs = 0
        self.seconds = 0.0
        self.cache_hits = 0

    def on_duration(self, event: str, duration: float, **_) -> None:
        if event == BACKEND_COMPILE:
            with self.lock:
                self.programs += 1
                self.seconds += duration

    def on_event(self, event: str, **_) -> None:
        if event == CACHE_HIT:
            with self.lock:
                self.cache_hits += 1

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "xla_compiles": self.programs - self.cache_hits,
                "compile_seconds": self.seconds,
                "cache_hits": self.cache_hits,
            }


_COUNTER: _Counter | None = None


def counter() -> _Counter:
    """The process-wide counter (listeners registered on first use)."""
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = _Counter()
        monitoring.register_event_duration_secs_listener(_COUNTER.on_duration)
        monitoring.register_event_listener(_COUNTER.on_event)
    return _COUNTER
