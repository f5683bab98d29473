"""Encoder parity with the original PyTorch RAMEN, every encoder fixture case, float64 and float32.

float64: weights and inputs upcast, the original's float32 position / date tables injected,
every array within 1e-9 of max|ref| (the fixtures README's criterion: it catches a wrong eps
or a wrong GroupNorm grouping). float32: our own tables, within 4x the original's float32 noise.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import parity_cases as pc
import pytest

from ramen_jax import geometry
from ramen_jax.model import build as build_lib
from ramen_jax.model import tokens as tok
from ramen_jax.model.encodings import grid_position_code

ENCODER_CASES = pc.cases("encoder")
SERIES_CASES = [c for c in ENCODER_CASES if any(t > 1 for t in c["T"].values())]


def _intermediates(model, batch, specs, overrides):
    """Everything the fixtures store for an encoder case, from one (jitted) call."""
    enc, layout = model.encoder, batch.layout
    dtype = enc.cls_token[...].dtype
    out = {
        "tokens": enc(batch, specs, train=False, overrides=overrides),
        "embedded": enc.embed(batch, specs, train=False, overrides=overrides),
        "spec": enc.projections(specs),
        "spec_sincos": [
            enc.spectral_projector.sincos(s.channels, dtype) if s.kind == "optical" else None
            for s in specs
        ],
    }
    if any(s.time_series for s in specs):
        grids = [tok.resize_to_grid(batch.pixels[s.name], layout.enc_resize[s.name]) for s in specs]
        series = tok.gather_series_tokens(grids, out["spec"], specs, layout, dtype)
        weights = enc.resampler.gate(layout.enc_scale.astype(dtype))
        series = enc.resampler.mix_experts(series, weights[layout.ts_modality][:, None])
        dates, valid = tok.series_dates(batch, specs, layout)
        out["ltae"] = enc.ltae(
            series,
            dates,
            valid,
            tok.series_groups(specs, layout, dtype),
            layout.kept_rank,
            train=False,
            date_code=(overrides or {}).get("ltae_date_code"),
        )
    return out


@functools.cache
def _run(file, f64):
    case = next(c for c in ENCODER_CASES if c["file"] == file)
    with jax.enable_x64(f64):
        model = pc.build(jnp.float64 if f64 else jnp.float32)
        specs, batch = pc.batch(case, np.float64 if f64 else np.float32)
        overrides = pc.f64_overrides(case, specs, batch.layout) if f64 else None
        graphdef, params, stats = build_lib.split_model(model)

        @jax.jit
        def run(params, stats, batch, overrides):
            return _intermediates(
                build_lib.merge_model(graphdef, params, stats), batch, tuple(specs), overrides
            )

        out = jax.tree.map(np.asarray, run(params, stats, batch, overrides))
    return case, specs, batch, out


def _stored(arrays, key, f64):
    return ("f64/" + key if f64 else key) in arrays


@pytest.mark.parametrize("f64", [True, False], ids=["f64", "f32"])
@pytest.mark.parametrize("file", [c["file"] for c in ENCODER_CASES])
def test_encoder_outputs(file, f64):
    case, specs, _, out = _run(file, f64)
    arrays = pc.load(file)
    pc.check(out["tokens"], arrays, "tokens", f64, "tokens")
    for i, spec in enumerate(specs):
        if _stored(arrays, f"tok/{spec.name}", f64):
            pc.check(
                out["embedded"][:, pc.modality_slice(case, spec.name)],
                arrays,
                f"tok/{spec.name}",
                f64,
                "tok",
            )
        pc.check(out["spec"][i], arrays, f"spec/{spec.name}", f64, "spec")
        if spec.kind == "optical":
            pc.check(out["spec_sincos"][i], arrays, f"spec_sincos/{spec.name}", f64, "spec_sincos")


@pytest.mark.parametrize("f64", [True, False], ids=["f64", "f32"])
@pytest.mark.parametrize("file", [c["file"] for c in SERIES_CASES])
def test_ltae_output(file, f64):
    """``ltae_out/<mod>``: the L-TAE output of each time-series modality (eval mode)."""
    case, specs, _, out = _run(file, f64)
    arrays = pc.load(file)
    side = int(case["tokens_per_modality"] ** 0.5)
    series = [s for s in specs if s.time_series]
    for i, spec in enumerate(series):
        pooled = out["ltae"][:, i * side * side : (i + 1) * side * side]
        grid = pooled.reshape(-1, side, side, pooled.shape[-1]).transpose(0, 3, 1, 2)
        pc.check(grid, arrays, f"ltae_out/{spec.name}", f64, "ltae_out")


@pytest.mark.parametrize("file", [c["file"] for c in ENCODER_CASES])
def test_position_code_float32(file):
    """Our float32 2-D code against the original's float32 table (1-ulp sin/cos differences)."""
    case, specs, batch, _ = _run(file, False)
    layout = batch.layout
    code = np.asarray(
        grid_position_code(
            layout.token_row,
            layout.token_col,
            layout.effective_gsd,
            pc.config()["size"]["embed_dim"],
        )
    )
    per = case["tokens_per_modality"]
    ref = pc.load(file)["pos_embed"][0]
    assert np.all(ref[0] == 0)
    assert pc.abs_error(code[:per], ref[1:]) < 5e-7
    for i in range(1, len(specs)):  # the same code for every modality
        np.testing.assert_array_equal(code[i * per : (i + 1) * per], code[:per])


@pytest.mark.parametrize("f64", [True, False], ids=["f64", "f32"])
def test_resampler_in_original_order(f64):
    """``resampled/<mod>``: project, bilinear by scale, experts (before any second resize)."""
    with jax.enable_x64(f64):
        dtype = jnp.float64 if f64 else jnp.float32
        resampler = pc.build(dtype).encoder.resampler
        resample = jax.jit(resampler.resample_features, static_argnums=3)
        checked = 0
        for case in ENCODER_CASES:
            arrays = pc.load(case["file"])
            _, specs, _, out = _run(case["file"], f64)
            for i, spec in enumerate(specs):
                key = f"resampled/{spec.name}"
                if not _stored(arrays, key, f64):
                    continue
                x = jnp.asarray(arrays[f"x/{spec.name}"], dtype)
                b, t, c, h, w = x.shape
                features = x.transpose(0, 1, 3, 4, 2).reshape(b * t, h, w, c) @ out["spec"][i]
                scale = spec.gsd / case["effective_res"]
                side = geometry.scaled_side(h, scale)
                matrix = jnp.asarray(geometry.bilinear_matrix(h, side, scale, np.dtype(dtype)))
                result = resample(features, matrix, matrix, scale)
                pc.check(np.asarray(result).transpose(0, 3, 1, 2), arrays, key, f64, "resampled")
                checked += 1
        assert checked >= 12
