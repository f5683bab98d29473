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


def pytest_sessionfinish(session, exitstatus):
    """RAMEN_PARITY_REPORT=path: the worst relative error per fixture case and precision of the
    parity tests that ran, as a table on stdout and JSON at ``path``."""
    import json
    import sys

    path = os.environ.get("RAMEN_PARITY_REPORT")
    pc = sys.modules.get("parity_cases")
    if not path or pc is None or not pc.WORST:
        return
    rows = [
        {"case": file, "precision": precision, **entry}
        for (file, precision), entry in sorted(pc.WORST.items())
    ]
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    write = session.config.pluginmanager.get_plugin("terminalreporter").write_line
    write("worst relative error (max|ours - ref| / max|ref|) per fixture case:")
    for r in rows:
        ratio = f"  ({r['tol_ratio']:.2f} x f32 tolerance)" if "tol_ratio" in r else ""
        write(f"  {r['case']:<36} {r['precision']}  {r['rel']:.2e}  {r['key']}{ratio}")
