"""Compiled programs, one per batch signature, compiled ahead of time.

``Programs`` compiles each key's program once, from the first arguments that have it, and
keeps the executable: the loop compiles a new step shape before the hosts agree on it (no host
waits in a collective while another compiles) and later calls run the kept executable. That is
all an accelerator needs.

XLA:CPU needs more: every compiled program is linked into the process by LLVM's JIT, about three
memory mappings per kernel (1,600-2,400 for one train step of the compile check's small model,
more for deeper models). Linux caps a process at ``vm.max_map_count`` mappings (65,530 by
default); past it LLVM fails with "Cannot allocate memory" and the process dies, and the paper's
mixed config meets up to 48 step shapes. ``MapLimitedPrograms`` keeps the ``jax.stages.Lowered``
program of every key but only as many executables as the mapping headroom allows: before
compiling or loading one, the least recently used are dropped until the largest program seen so
far fits with room to spare. A dropped program that comes back is compiled again from its kept
``Lowered`` program, which JAX's persistent compilation cache (``compilation_cache_dir``) serves
without building it again, so XLA builds each distinct signature once. ``for_host`` picks
``MapLimitedPrograms`` on CPU hosts whose limit it can read, ``Programs`` elsewhere.
"""

from __future__ import annotations

import collections
import gc
from collections.abc import Callable, Hashable

import jax
from absl import logging

MAX_MAP_COUNT = "/proc/sys/vm/max_map_count"
PROCESS_MAPS = "/proc/self/maps"
RESERVE_MAPS = 4096  # threads, allocator arenas, file maps opened while a program runs
FIRST_PROGRAM_GUESS = 4096  # headroom kept before any program size has been measured


def map_limit() -> int | None:
    """``vm.max_map_count`` when the default backend links host code (CPU) and it is readable."""
    if jax.default_backend() != "cpu":
        return None
    try:
        with open(MAX_MAP_COUNT) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def mapped_regions() -> int:
    with open(PROCESS_MAPS) as f:
        return sum(1 for _ in f)


class Programs:
    """Ahead-of-time compiled executables by key, all kept.

    ``programs(key, jitted, *args)`` runs ``jitted``'s executable for ``key`` on ``args``;
    ``args`` must have the shapes and shardings every call with that key will have.
    """

    def __init__(self):
        self.resident: collections.OrderedDict = collections.OrderedDict()

    def __call__(self, key: Hashable, jitted, *args):
        executable = self.resident.get(key)
        if executable is None:
            executable = self._load(key, jitted, args)
        self.resident.move_to_end(key)
        return executable(*args)

    def prepare(self, key: Hashable, jitted, *args) -> None:
        """Compiles ``key``'s program before its first call; ``args`` may be abstract
        (``jax.ShapeDtypeStruct`` with the shardings the real arguments will have)."""
        if key not in self.resident:
            self._load(key, jitted, args)

    def _load(self, key, jitted, args):
        executable = self.resident[key] = jitted.lower(*args).compile()
        return executable

    def stats(self) -> dict:
        return {"programs_resident": len(self.resident)}


class MapLimitedPrograms(Programs):
    """``Programs`` that drops the least recently used executables under map pressure."""

    def __init__(
        self,
        limit: int,
        *,
        count_maps: Callable[[], int] = mapped_regions,
        reserve: int = RESERVE_MAPS,
        first_guess: int = FIRST_PROGRAM_GUESS,
    ):
        super().__init__()
        self.limit = limit
        self.count_maps = count_maps
        self.reserve = reserve
        self.first_guess = first_guess
        self.lowered: dict[Hashable, jax.stages.Lowered] = {}
        self.largest_program = 0  # mappings added by the largest program so far
        self.dropped = 0
        self.reloads = 0

    def prepare(self, key: Hashable, jitted, *args) -> None:
        if key not in self.lowered:
            super().prepare(key, jitted, *args)

    def _load(self, key, jitted, args):
        lowered = self.lowered.get(key)
        if lowered is None:
            lowered = self.lowered[key] = jitted.lower(*args)
        else:
            self.reloads += 1
        self._make_room()
        before = self.count_maps()
        # compiler_options={} (the same options): the Lowered object does not keep a reference
        # to what it compiles, so a dropped executable is really freed
        executable = lowered.compile(compiler_options={})
        self.largest_program = max(self.largest_program, self.count_maps() - before)
        self.resident[key] = executable
        return executable

    def _make_room(self) -> None:
        need = int(1.25 * (self.largest_program or self.first_guess)) + self.reserve
        before = self.dropped
        while self.resident and self.count_maps() + need > self.limit:
            self.resident.popitem(last=False)
            self.dropped += 1
            # JAX's compilation cache holds every executable whose lowered module is alive (ours
            # are kept); clearing it leaves only the resident executables referenced.
            jax.clear_caches()
            gc.collect()
        if before == 0 and self.dropped and not jax.config.jax_compilation_cache_dir:
            logging.warning(
                "dropping compiled steps to stay under %d memory mappings without a persistent "
                "compilation cache: each one that comes back is compiled again (set "
                "compilation_cache_dir)",
                self.limit,
            )
        if before // 100 != self.dropped // 100 or (before == 0 and self.dropped):
            logging.info(
                "program cache: %d resident, %d dropped so far (limit %d mappings, %d mapped)",
                len(self.resident),
                self.dropped,
                self.limit,
                self.count_maps(),
            )

    def stats(self) -> dict:
        return {
            **super().stats(),
            "programs_dropped": self.dropped,
            "programs_reloaded": self.reloads,
        }


def for_host(limit: int | None) -> Programs:
    """``MapLimitedPrograms`` under ``limit`` mappings (``program_map_limit`` in the config) or
    the host's ``vm.max_map_count`` on CPU; plain ``Programs`` where neither applies."""
    limit = limit or map_limit()
    return MapLimitedPrograms(limit) if limit else Programs()
