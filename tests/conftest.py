"""Suite-wide settings, inherited by the training runs tests start as subprocesses.

- One persistent XLA compilation cache for the session: many tests compile the same programs,
  each is compiled once. A fresh directory per session keeps runs independent.
- ``--xla_backend_optimization_level=0``: on a 2-core CPU compiling dominates the suite's time,
  and LLVM's optimisation level changes code speed, not results (no fast-math either way).
"""

import os
import tempfile

import jax

_CACHE = tempfile.mkdtemp(prefix="ramen_jax_xla_cache_")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE  # inherited by subprocesses
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
