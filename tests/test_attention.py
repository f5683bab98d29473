"""Attention: the implementation chosen for the target platform, and every implementation that
runs on CPU computing the einsum path's function (the TPU splash kernel in Pallas interpret
mode; cuDNN's fallback and padding with XLA standing in for cuDNN).

Tolerance of the float32 comparisons: 1e-5 absolute and relative. The kernels sum the same
products in another order (blocks of 128 keys, online softmax rescaling), so they differ from
the einsum path by a few float32 roundings (eps 1.2e-7) per output, measured at most 2.3e-6 on
gradients of magnitude ~3; an ignored mask, a missing scale or a wrong key changes outputs by
~1e-1.
"""

import logging
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ramen_jax.model import attention as attention_lib
from ramen_jax.model import config as model_config_lib
from ramen_jax.training import run_identity

TOL = {"rtol": 1e-5, "atol": 1e-5}


def qkv_and_mask(batch=3, length=150, heads=2, head_dim=32, dtype=jnp.float32, seed=0):
    """``length`` not a multiple of the kernel's 128-token blocks; sample 0 unmasked, sample 1
    with ~30% masked keys, sample 2 (if any) with no valid key at all."""
    rng = np.random.default_rng(seed)
    q, k, v = (
        jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), dtype) for _ in range(3)
    )
    mask = rng.random((batch, length)) < 0.7
    mask[0] = True
    mask[2:3] = False
    return q, k, v, jnp.asarray(mask)


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("tpu", "splash"), ("gpu", "cudnn"), ("cpu", "chunked"), ("METAL", "xla")],
)
def test_the_default_attention_is_the_target_platforms(platform, expected):
    assert attention_lib.default_attention(platform) == expected
    assert attention_lib.resolve("", platform) == expected
    assert attention_lib.resolve(None, platform) == expected
    assert attention_lib.resolve("einsum", platform) == "einsum"  # an explicit choice wins


def test_an_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        attention_lib.resolve("flash", "tpu")


def test_the_model_config_takes_the_platform_not_the_host_backend():
    """On this CPU host, a config for TPU devices gets the TPU kernel; the run identity (what
    a resume compares) is the same whatever the platform or attention."""
    config = ml_collections.ConfigDict({"model": {"attention_impl": "", "embed_dim": 64}})
    kinds = ("optical",)
    assert jax.default_backend() == "cpu"
    assert model_config_lib.from_config(config.model, kinds, "tpu").attention_impl == "splash"
    assert model_config_lib.from_config(config.model, kinds, "cpu").attention_impl == "chunked"
    config.model.attention_impl = "xla"
    assert model_config_lib.from_config(config.model, kinds, "tpu").attention_impl == "xla"
    identities = [
        run_identity.identity({"model": {"attention_impl": impl, "embed_dim": 64}}, None)
        for impl in ("", "splash", "chunked", "cudnn")
    ]
    assert all(i == identities[0] for i in identities)


def test_platform_of_reads_the_mesh_devices():
    tpu_mesh = types.SimpleNamespace(devices=np.array([[types.SimpleNamespace(platform="tpu")]]))
    assert attention_lib.platform_of(tpu_mesh) == "tpu"
    cpu_mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    assert attention_lib.platform_of(cpu_mesh) == "cpu"


def _outputs_and_grads(implementation, q, k, v, mask):
    def loss(q, k, v):
        out = attention_lib.attention(q, k, v, mask, implementation)
        return jnp.sum(jnp.sin(out)), out  # sin: gradients differ per output element

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.mark.parametrize("length", [150, 256])
def test_splash_kernel_in_interpret_mode_matches_einsum_values_and_gradients(length):
    q, k, v, mask = qkv_and_mask(length=length)
    out, grads = _outputs_and_grads("splash_interpret", q, k, v, mask)
    want_out, want_grads = _outputs_and_grads("einsum", q, k, v, mask)
    assert not np.isnan(np.asarray(out)).any()
    np.testing.assert_allclose(out, want_out, **TOL)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, **TOL)
    # the sample without a valid key: every query gets the mean of the values
    np.testing.assert_allclose(out[2], jnp.broadcast_to(v[2].mean(0), out[2].shape), **TOL)


def test_splash_kernel_without_a_mask_matches_einsum():
    q, k, v, _ = qkv_and_mask(batch=1, length=128, heads=1)
    np.testing.assert_allclose(
        attention_lib.attention(q, k, v, None, "splash_interpret"),
        attention_lib.attention(q, k, v, None, "einsum"),
        **TOL,
    )


@pytest.mark.parametrize("length, kernel", [(34, False), (127, False), (128, True), (150, True)])
def test_splash_takes_only_sequences_of_at_least_one_kernel_block(length, kernel):
    """Shorter sequences (the decoder's attention over a token's dates) take the einsum path:
    the kernel would pad them to 128 queries and keys."""
    q, k, v, mask = qkv_and_mask(batch=2, length=length, heads=2)

    def run(q, k, v):
        return attention_lib.attention(q, k, v, mask, "splash_interpret")

    jaxpr = str(jax.make_jaxpr(run)(q, k, v))
    assert ("pallas_call" in jaxpr) == kernel
    np.testing.assert_allclose(
        run(q, k, v), attention_lib.attention(q, k, v, mask, "einsum"), **TOL
    )


SHARDED = """
import sys, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
sys.path.insert(0, "tests")
from test_attention import qkv_and_mask
from ramen_jax.model import attention as attention_lib
mesh = jax.make_mesh((2, 1), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
q, k, v, mask = qkv_and_mask(batch=2, length=130)
q, k, v = (jax.device_put(t, NamedSharding(mesh, PartitionSpec("data"))) for t in (q, k, v))
run = lambda q, k, v: attention_lib.attention(q, k, v, mask, "splash_interpret")
step = jax.jit(attention_lib.under_mesh(mesh, run))
assert "sdy.manual_computation" in step.lower(q, k, v).as_text()  # the shard_map
np.testing.assert_allclose(
    step(q, k, v), attention_lib.attention(q, k, v, mask, "einsum"), rtol=1e-5, atol=1e-5
)
"""


def test_splash_kernel_under_a_mesh_runs_per_device_shard():
    """Two simulated CPU devices: the kernel runs under shard_map, one sample per device."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", SHARDED], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_cudnn_takes_half_precision_and_head_dims_it_supports():
    assert attention_lib.cudnn_unsupported((2, 130, 4, 64), jnp.bfloat16) is None
    assert attention_lib.cudnn_unsupported((2, 131, 4, 128), jnp.float16) is None
    assert "float32" in attention_lib.cudnn_unsupported((2, 130, 4, 64), jnp.float32)
    assert "head dim 160" in attention_lib.cudnn_unsupported((2, 130, 4, 160), jnp.bfloat16)
    assert "head dim 60" in attention_lib.cudnn_unsupported((2, 130, 4, 60), jnp.bfloat16)


def test_cudnn_falls_back_to_xla_and_says_so_once(caplog):
    attention_lib._log_once.cache_clear()
    q, k, v, mask = qkv_and_mask(batch=2)
    # absl's logger: an in-process command earlier in the session (encode --quiet) may have
    # raised its level, which would hide the warning this test looks for
    with caplog.at_level(logging.WARNING, logger="absl"):
        got = [attention_lib.attention(q, k, v, mask, "cudnn") for _ in range(2)]
    falls_back = [r for r in caplog.records if "cudnn attention falls back to xla" in r.message]
    assert len(falls_back) == 1 and "float32" in falls_back[0].message
    want = attention_lib.attention(q, k, v, mask, "xla")
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_allclose(want, attention_lib.attention(q, k, v, mask, "einsum"), **TOL)


def test_cudnn_padding_to_an_even_length_changes_nothing(monkeypatch):
    """cuDNN cannot run here: XLA stands in for it, so what is checked is our wrapper (an odd
    length padded with masked keys, the sample without a valid key)."""
    real = jax.nn.dot_product_attention
    lengths = []

    def stand_in(q, k, v, mask=None, implementation=None):
        assert implementation == "cudnn"
        lengths.append(q.shape[1])
        return real(q, k, v, mask=mask, implementation="xla")

    monkeypatch.setattr(jax.nn, "dot_product_attention", stand_in)
    q, k, v, mask = qkv_and_mask(length=151)
    got = attention_lib.cudnn_attention(q, k, v, mask)
    assert lengths == [152]
    np.testing.assert_allclose(got, attention_lib.attention(q, k, v, mask, "einsum"), **TOL)
    got = attention_lib.cudnn_attention(q, k, v, None)
    np.testing.assert_allclose(got, attention_lib.attention(q, k, v, None, "einsum"), **TOL)
