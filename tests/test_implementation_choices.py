"""Every implementation choice computes the original's function: projecting on the token grid
(it commutes with resizing), padding (it never leaks into valid tokens), remat, scanned layers
and chunked attention, with every attention implementation this machine's
backends offer (the TPU splash kernel in Pallas interpret mode)."""

import jax
import jax.numpy as jnp
import numpy as np
import parity_cases as pc
import pytest

from ramen_jax.batch import Batch, build_layout
from ramen_jax.convert import mapping
from ramen_jax.model import attention as attention_lib
from ramen_jax.model import decoder as decoder_lib
from ramen_jax.model import state as state_lib
from ramen_jax.model.reference import original_order_recon
from ramen_jax.training import step as step_lib


@pytest.mark.parametrize("file", [c["file"] for c in pc.cases("mae")])
def test_decoder_head_in_original_order_matches_the_refactor(file):
    """float64: resizing Dd-wide features then experts then projection (the original) equals
    experts and projection on the token grid then resizing C channels (ours)."""
    case = next(c for c in pc.cases("mae") if c["file"] == file)
    arrays = pc.load(file)
    with jax.enable_x64(True):
        model = pc.build(jnp.float64)
        specs, batch = pc.batch(case, np.float64)
        overrides = pc.f64_overrides(case, specs, batch.layout)
        graphdef, params, stats = state_lib.split_model(model)
        side = int(case["tokens_per_modality"] ** 0.5)

        @jax.jit
        def both(params, stats, batch, noise):
            m = state_lib.merge_model(graphdef, params, stats)
            out = m(batch, tuple(specs), noise, train=True, overrides=overrides)
            series = None
            if any(s.time_series for s in specs):
                series = m.decoder.temporal(
                    out["dec_tokens"][:, 1:], batch, tuple(specs), batch.layout, overrides
                )
            slow = original_order_recon(
                m.decoder,
                out["dec_tokens"],
                series,
                batch,
                tuple(specs),
                case["effective_res"],
                side,
            )
            return out["recon"], slow

        fast, slow = both(params, stats, batch, jnp.asarray(arrays["mask_noise"], jnp.float64))
        for spec in specs:
            assert pc.rel_error(slow[spec.name], fast[spec.name]) < 1e-12, spec.name
            assert pc.rel_error(slow[spec.name], arrays[f"f64/recon/{spec.name}"]) < 1e-9


def _attention_implementations():
    platforms = {d.platform for d in jax.devices()}
    return [None, "xla", "einsum", "chunked", "splash_interpret"] + (
        ["cudnn"] if "gpu" in platforms else []
    )


@pytest.mark.parametrize(
    "implementation", _attention_implementations(), ids=lambda i: str(i or "default")
)
def test_padded_tokens_never_change_valid_tokens(implementation, monkeypatch):
    """The same step without padding and padded to a 3x longer bucket: valid tokens agree
    (chunked attention on blocks of 16 queries)."""
    monkeypatch.setattr(attention_lib, "ATTENTION_CHUNK", 16)
    case = next(c for c in pc.cases("encoder") if c["file"] == "enc_fx_b_g5_aerial-s2-s1_des.npz")
    model = pc.build(jnp.float32)
    for block in list(model.encoder.blocks):
        block.attn.implementation = implementation
    specs, batch = pc.batch(case, np.float32)
    all_specs = pc.dataset_specs(case)
    keep = case["modalities_keep"]
    length = batch.layout.length
    series = batch.layout.series_length
    padded_layout = build_layout(
        specs,
        keep,
        case["effective_res"],
        reference=all_specs[0],
        grid_pad=12,
        token_bucket=3 * length,
        series_bucket=2 * series,
    )
    padded = batch.replace(layout=jax.tree.map(jnp.asarray, padded_layout))
    graphdef, params, stats = state_lib.split_model(model)
    encode = jax.jit(
        lambda b: state_lib.merge_model(graphdef, params, stats).encoder(b, tuple(specs))
    )
    plain, with_padding = encode(batch), encode(padded)
    assert with_padding.shape[1] == 1 + 3 * length
    np.testing.assert_allclose(with_padding[:, : 1 + length], plain, rtol=0, atol=2e-5)
    np.testing.assert_allclose(
        plain, pc.load(case["file"])["tokens"], atol=pc.f32_tolerance("tokens")
    )


@pytest.mark.parametrize(
    "options",
    [
        {"remat": True},
        {"scan_layers": True},
        {"remat": True, "scan_layers": True},
        {"attention_impl": "chunked"},
    ],
    ids=lambda o: "+".join(o),
)
def test_remat_scan_and_chunked_attention_compute_the_original_loss_and_gradients(
    options, monkeypatch
):
    """float64: the memory/compile-time options change how the step is computed, not what.
    Chunked attention runs on blocks of 7 queries here (the fixture has a few dozen tokens),
    the last one padded; under remat the decoder's attention over dates runs 5 of the 128
    time-series tokens at a time, the last chunk padded."""
    monkeypatch.setattr(attention_lib, "ATTENTION_CHUNK", 7)
    monkeypatch.setattr(decoder_lib, "TEMPORAL_CHUNK_TOKENS", 5)  # with remat: several chunks
    case = next(c for c in pc.cases("mae") if c["kind"] == "mae_train")
    arrays = pc.load(case["file"])
    with jax.enable_x64(True):
        model = pc.build(jnp.float64, **options)
        specs, batch = pc.batch(case, np.float64)
        assert batch.layout.length > 2 * attention_lib.ATTENTION_CHUNK
        assert batch.layout.series_length > 2 * decoder_lib.TEMPORAL_CHUNK_TOKENS
        overrides = pc.f64_overrides(case, specs, batch.layout)
        graphdef, params, stats = state_lib.split_model(model)
        noise = jnp.asarray(arrays["mask_noise"], jnp.float64)
        out, _, grads = jax.jit(
            lambda p, s, b, o, n: step_lib.loss_and_grads(
                graphdef, p, s, b, tuple(specs), n, overrides=o
            )
        )(params, stats, batch, overrides, noise)
        assert pc.rel_error(out["loss"], arrays["f64/loss_total"]) < pc.F64_RTOL
        torch_grads = mapping.to_torch(state_lib.flatten_dict(grads))
        checked = 0
        for name, grad in torch_grads.items():
            key = f"f64/grad/{name}"
            if key not in arrays:
                continue
            if np.abs(arrays[key]).max() <= pc.F64_ZERO_GRAD_ATOL:  # structurally zero
                assert np.abs(grad).max() <= pc.F64_ZERO_GRAD_ATOL, name
            else:
                assert pc.rel_error(np.asarray(grad), arrays[key]) < pc.F64_RTOL, name
            checked += 1
        assert checked > 100


def test_a_step_that_keeps_no_time_series_modality():
    """FLAIR-HUB-like data (aerial + two time series) on a step that keeps only the aerial
    image: the series sub-sequence is empty, and the step still runs with finite gradients
    (the paper's mixed config draws such steps; a 1,000-step run found this)."""
    case = next(c for c in pc.cases("mae") if c["file"] == "mae_fx_b_g5_aerial-s2-s1_des.npz")
    arrays = pc.load(case["file"])
    all_specs = pc.dataset_specs(case)
    kept = [s.name for s in all_specs if not s.time_series]
    assert kept and len(kept) < len(all_specs)
    layout = build_layout(
        all_specs,
        kept,
        case["effective_res"],
        reference=all_specs[0],
        mask_ratio=pc.config()["meta"]["mask_ratio"],
    )
    assert layout.ts_token.shape == (0,)
    pixels = {s.name: arrays[f"x/{s.name}"].transpose(0, 1, 3, 4, 2) for s in all_specs}
    dates = {s.name: arrays[f"x/{s.name}_dates"] for s in all_specs}
    valid = {name: np.ones(d.shape, bool) for name, d in dates.items()}
    batch = jax.tree.map(
        jnp.asarray, Batch(pixels=pixels, dates=dates, time_valid=valid, layout=layout)
    )
    graphdef, params, stats = state_lib.split_model(pc.build(jnp.float32))
    noise = jax.random.uniform(jax.random.key(0), layout.token_valid.shape)[None]
    noise = jnp.broadcast_to(noise, (pixels[kept[0]].shape[0], noise.shape[1]))
    out, _, grads = jax.jit(
        lambda p, s, b, n: step_lib.loss_and_grads(graphdef, p, s, b, tuple(all_specs), n)
    )(params, stats, batch, noise)
    assert np.isfinite(float(out["loss"])) and float(out["loss"]) > 0
    for spec in all_specs:
        assert (float(out["losses"][spec.name]) > 0) == (spec.name in kept), spec.name
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
