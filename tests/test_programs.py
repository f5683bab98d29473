"""Compiled step programs: kept by key, and under XLA:CPU's JIT mapping limit on CPU hosts."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ramen_jax.training import programs


def chain(x, w):
    for i in range(12):
        x = jnp.tanh(x @ w + i) + jnp.cumsum(x, axis=1)
    return x


def expected(n):
    x = np.ones((4 + n, 8), np.float32)
    w = np.full((8, 8), 0.01, np.float32)
    for i in range(12):
        x = np.tanh(x @ w + i) + np.cumsum(x, axis=1)
    return x


def bounded_mappings_in_a_fresh_process():
    """Run as a script: the kernel merges adjacent mappings, so a process that has already
    freed JIT code (as a long test session has) does not grow by a program's size per program."""
    step = jax.jit(chain)
    w = jnp.full((8, 8), 0.01)
    probe = programs.MapLimitedPrograms(limit=10**9)  # measures one program's mappings
    probe("size", step, jnp.ones((3, 8)), w)
    size = probe.largest_program
    assert size > 0
    del probe
    start = programs.mapped_regions()
    # room for about two programs at a time
    cache = programs.MapLimitedPrograms(limit=start + 3 * size, reserve=0, first_guess=size)
    order = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]
    peak = 0
    for n in order:
        out = cache(n, step, jnp.ones((4 + n, 8)), w)
        np.testing.assert_allclose(np.asarray(out), expected(n), rtol=1e-5)
        peak = max(peak, programs.mapped_regions())
    stats = cache.stats()
    assert 1 <= stats["programs_resident"] <= 3
    assert stats["programs_dropped"] >= len(order) - 3
    assert stats["programs_reloaded"] == 6  # the second pass brings every program back
    # without dropping, 6 programs would add 6 * size mappings
    assert peak - start < 4 * size


@pytest.mark.skipif(not programs.map_limit(), reason="needs /proc and the CPU backend")
def test_real_mappings_stay_bounded_and_results_right_while_dropping():
    result = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_least_recently_used_dropped_and_reloaded():
    """The policy, on a modelled mapping count: 100 mappings per resident executable."""
    cache = programs.MapLimitedPrograms(limit=350, reserve=0, first_guess=100)
    cache.count_maps = lambda: 100 * len(cache.resident)
    step = jax.jit(lambda x: x + 1)
    arg = {n: jnp.zeros((n + 1,)) for n in range(4)}
    for n in [0, 1, 2]:
        cache(n, step, arg[n])
    assert list(cache.resident) == [0, 1, 2]
    cache(0, step, arg[0])  # a hit refreshes 0
    cache(3, step, arg[3])  # room for 3 at most: 1, the least recently used, goes
    assert list(cache.resident) == [2, 0, 3]
    assert cache.stats() == {"programs_resident": 3, "programs_dropped": 1, "programs_reloaded": 0}
    np.testing.assert_array_equal(cache(1, step, arg[1]), np.ones(2))  # back from its Lowered
    assert list(cache.resident) == [0, 3, 1]
    assert cache.stats() == {"programs_resident": 3, "programs_dropped": 2, "programs_reloaded": 1}


def test_plain_programs_compile_each_key_once_and_keep_it():
    compiles = []
    step = jax.jit(lambda x: x * 2)
    real_lower = step.lower

    class Counting:
        def lower(self, *args):
            compiles.append(args[0].shape)
            return real_lower(*args)

    cache = programs.Programs()
    for n in [0, 1, 2, 3, 4, 0, 1]:
        assert float(cache(n, Counting(), jnp.ones((n + 1,)))[0]) == 2.0
    cache.prepare(2, Counting(), jnp.ones((3,)))  # already compiled: nothing to do
    assert compiles == [(1,), (2,), (3,), (4,), (5,)]
    assert cache.stats() == {"programs_resident": 5}


def test_host_choice():
    assert isinstance(programs.for_host(500), programs.MapLimitedPrograms)
    assert programs.for_host(500).limit == 500
    if programs.map_limit() is None:
        assert type(programs.for_host(None)) is programs.Programs
    else:
        assert programs.for_host(None).limit == programs.map_limit()


if __name__ == "__main__":
    bounded_mappings_in_a_fresh_process()
