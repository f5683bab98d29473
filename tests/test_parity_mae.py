"""Masked-autoencoder parity with the original: masking, latent, decoder tokens, per-modality
reconstructions and losses, BatchNorm running statistics, every gradient, the clipped AdamW step.

Runs the product's own ``train_step`` (jitted) with the fixture's masking noise, in float64
(tables injected, rtol 1e-9) and float32 (4x the original's float32 noise).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import parity_cases as pc
import pytest

from ramen_jax.convert import mapping
from ramen_jax.model import build as build_lib
from ramen_jax.model.projectors import projection_matrix
from ramen_jax.training import step as step_lib
from ramen_jax.training.optimizer import torch_adamw

MAE_CASES = pc.cases("mae")
TRAIN_CASES = [c for c in MAE_CASES if c["kind"] == "mae_train"]
OPT = pc.config()["meta"]["optimizer"]


@functools.cache
def _run(file, f64):
    case = next(c for c in MAE_CASES if c["file"] == file)
    arrays = pc.load(file)
    with jax.enable_x64(f64):
        dtype = jnp.float64 if f64 else jnp.float32
        model = pc.build(dtype)
        specs, batch = pc.batch(case, np.float64 if f64 else np.float32)
        overrides = pc.f64_overrides(case, specs, batch.layout) if f64 else None
        graphdef, params, stats = build_lib.split_model(model)
        optimizer = torch_adamw(
            OPT["lr"],
            b1=OPT["betas"][0],
            b2=OPT["betas"][1],
            eps=OPT["eps"],
            weight_decay=OPT["weight_decay"],
            max_grad_norm=OPT["clip_grad_norm"],
        )
        noise = jnp.asarray(arrays["mask_noise"], dtype)

        @jax.jit
        def run(params, stats, batch, overrides, noise):
            out, new_stats, grads = step_lib.loss_and_grads(
                graphdef, params, stats, batch, tuple(specs), noise, overrides=overrides
            )
            state = step_lib.TrainState(
                jnp.zeros((), jnp.int32), params, stats, optimizer.init(params)
            )
            new_state, metrics = step_lib.train_step(
                state,
                batch,
                graphdef=graphdef,
                specs=tuple(specs),
                optimizer=optimizer,
                overrides=overrides,
                noise=noise,
            )
            return out, new_stats, grads, new_state.params, metrics

        out, new_stats, grads, new_params, metrics = jax.tree.map(
            np.asarray, run(params, stats, batch, overrides, noise)
        )
    torch_grads = mapping.to_torch(build_lib.flatten_dict(grads))
    torch_after = mapping.to_torch(build_lib.flatten_dict(new_params))
    torch_stats = mapping.to_torch(build_lib.flatten_dict(new_stats))
    return case, specs, out, torch_grads, torch_after, torch_stats, metrics


@pytest.mark.parametrize("f64", [True, False], ids=["f64", "f32"])
@pytest.mark.parametrize("file", [c["file"] for c in MAE_CASES])
def test_mae_forward(file, f64):
    case, specs, out, _, _, stats, _ = _run(file, f64)
    arrays = pc.load(file)
    np.testing.assert_array_equal(out["ids_shuffle"], arrays["ids_shuffle"])
    np.testing.assert_array_equal(out["ids_restore"], arrays["ids_restore"])
    np.testing.assert_array_equal(out["mask"], arrays["mask"])
    pc.check(out["latent"], arrays, "latent", f64, "latent")
    pc.check(out["dec_tokens"], arrays, "dec_tokens", f64, "dec_tokens")
    for spec in specs:
        pc.check(out["recon"][spec.name], arrays, f"recon/{spec.name}", f64, "recon")
        pc.check(out["losses"][spec.name], arrays, f"loss/{spec.name}", f64, "loss")
    pc.check(out["loss"], arrays, "loss_total", f64, "loss_total")
    for key in arrays:
        if key.startswith("bn_after/") and "num_batches_tracked" not in key:
            pc.check(stats[key[len("bn_after/") :]], arrays, key, f64, "bn_after")
        elif key.startswith("bn_after/"):
            assert stats[key[len("bn_after/") :]] == arrays[key], key


@pytest.mark.parametrize("f64", [True, False], ids=["f64", "f32"])
def test_decoder_projections(f64):
    for case in MAE_CASES:
        arrays = pc.load(case["file"])
        with jax.enable_x64(f64):
            model = pc.build(jnp.float64 if f64 else jnp.float32)
            specs, _ = pc.batch(case, np.float32)
            for spec in specs:
                dtype = jnp.float64 if f64 else jnp.float32
                ours = projection_matrix(model.decoder, spec, dtype)
                pc.check(ours, arrays, f"dec_spec/{spec.name}", f64, "dec_spec")


def _weights():
    return {
        k: v
        for k, v in pc.torch_weights().items()
        if "running_" not in k and "num_batches" not in k
    }


@pytest.mark.parametrize("f64", [True, False], ids=["f64", "f32"])
@pytest.mark.parametrize("file", [c["file"] for c in TRAIN_CASES])
def test_gradients_and_adamw_step(file, f64):
    case, _, _, grads, after, _, metrics = _run(file, f64)
    arrays = pc.load(file)
    weights = _weights()
    grad_none = set(case["grad_none_params"])
    pc.check(metrics["grad_norm"], arrays, "grad_norm_preclip", f64, "grad_norm_preclip")
    assert set(grads) >= set(weights)
    for name, weight in weights.items():
        if name in grad_none:  # not used by the step: no gradient, untouched (no decay)
            assert np.all(grads[name] == 0), name
            np.testing.assert_array_equal(after[name], weight.astype(after[name].dtype))
            continue
        if ("f64/" if f64 else "") + f"grad/{name}" not in arrays:
            continue  # float64 gradients stored for the first case only (norms: see below)
        if name in pc.STRUCTURALLY_ZERO_GRADS:
            limit = pc.F64_ZERO_GRAD_ATOL if f64 else pc.f32_tolerance("grad")
            assert np.abs(grads[name]).max() <= limit, name
            ref = pc.reference(arrays, f"param_after/{name}", f64)
            atol = pc.F64_ZERO_GRAD_PARAM_ATOL if f64 else 2 * OPT["lr"]
            assert pc.abs_error(after[name], ref) <= atol, name
            continue
        pc.check(grads[name], arrays, f"grad/{name}", f64, "grad")
        if f64:
            pc.check(after[name], arrays, f"param_after/{name}", f64, "param_after")
        else:  # a tiny gradient's sign is float32 noise: at most lr apart, as the README says
            err = pc.abs_error(after[name], arrays[f"param_after/{name}"])
            assert err <= max(pc.f32_tolerance("param_after"), 2 * OPT["lr"]), name


def test_per_parameter_norms_f64():
    """``mae_fx_a_g20_s2-s1``: float64 per-parameter gradient and update norms (all 165)."""
    file = "mae_fx_a_g20_s2-s1.npz"
    case, _, _, grads, after, _, _ = _run(file, True)
    arrays = pc.load(file)
    weights = _weights()
    names = list(weights)
    assert len(names) == arrays["f64/grad_l2"].shape[0]
    grad_l2 = np.array([np.linalg.norm(grads[n]) for n in names])
    update_l2 = np.array([np.linalg.norm(after[n] - weights[n].astype(np.float64)) for n in names])
    assert pc.rel_error(grad_l2, arrays["f64/grad_l2"]) <= pc.F64_RTOL
    assert pc.rel_error(update_l2, arrays["f64/update_l2"]) <= pc.F64_RTOL
    untouched = [i for i, n in enumerate(names) if n in set(case["grad_none_params"])]
    assert untouched and np.all(update_l2[untouched] == 0)
