"""Suite-wide settings: one persistent XLA compilation cache for the whole session.

Many tests (and the training runs they start as subprocesses) compile the same programs; with
a shared cache each is compiled once per session. A fresh directory per session keeps runs
independent of each other.
"""

import os
import tempfile

import jax

_CACHE = tempfile.mkdtemp(prefix="ramen_jax_xla_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE  # inherited by subprocesses
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
