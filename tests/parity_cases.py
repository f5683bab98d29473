"""Turns the original's parity fixtures (tests/fixtures, made by the original PyTorch code) into
ramen_jax models, batches and comparisons. Used by the parity tests and ``parity_report.py``.

Tolerances (see tests/fixtures/README.md, 'Noise levels and suggested tolerances'):
- float64 (weights and inputs upcast, the original's four float32 tables injected): every array
  within ``F64_RTOL * max|ref|``; structurally-zero gradients ``<= 1e-12`` absolute and their
  updated parameters within ``1e-8``;
- float32 (our own tables): every array within ``F32_NOISE_FACTOR`` times the original's own
  float32-vs-float64 deviation of that array group (``config.json``, ``f64_summary``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from ramen_jax import sensors
from ramen_jax.batch import Batch, build_layout
from ramen_jax.convert import mapping
from ramen_jax.model import build as build_lib
from ramen_jax.model.config import ModelConfig

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
F64_RTOL = 1e-9
F64_ZERO_GRAD_ATOL = 1e-12
F64_ZERO_GRAD_PARAM_ATOL = 1e-8
F32_NOISE_FACTOR = 4.0
# Gradients that are exactly zero in exact arithmetic (fixtures README).
STRUCTURALLY_ZERO_GRADS = {
    "encoder.ltae.inconv.0.bias",
    "encoder.ltae.attention_heads.fc1_k.bias",
    "encoder.ltae.in_norm.bias",
    "encoder.ltae.mlp.0.bias",
    "encoder.ltae.mlp.3.bias",
    "encoder.ltae.mlp.6.bias",
}
# How the fixture config names map to modality kinds (ours are declared, never inferred).
FIXTURE_KINDS = {"s1": sensors.SAR, "s1_des": sensors.SAR, "dem": sensors.DEM}


@functools.cache
def config() -> dict:
    return json.loads((FIXTURES / "config.json").read_text())


class Arrays(dict):
    """A fixture file's arrays; ``file`` names it (for the error report)."""

    file = ""


@functools.cache
def load(name: str) -> Arrays:
    with np.load(FIXTURES / name) as arrays:
        out = Arrays(arrays)
    out.file = name
    return out


# Worst error seen per (fixture file, precision), filled by ``check``; written by conftest as
# a table (and JSON) when RAMEN_PARITY_REPORT=path is set.
WORST: dict = {}


def check(ours, arrays: Arrays, key: str, f64: bool, group: str, record_key: str | None = None):
    """Asserts one array against the fixture (float64: relative to max|ref| within
    ``F64_RTOL``; float32: absolute within ``F32_NOISE_FACTOR`` x the original's noise of
    ``group``) and records the relative error for the report."""
    ref = reference(arrays, key, f64)
    rel = rel_error(ours, ref)
    entry = WORST.setdefault((arrays.file, "f64" if f64 else "f32"), {"rel": 0.0, "key": ""})
    if rel >= entry["rel"]:
        entry.update(rel=rel, key=record_key or key)
    if f64:
        assert rel <= F64_RTOL, f"{key}: rel error {rel:.3g} > {F64_RTOL}"
    else:
        err, tol = abs_error(ours, ref), f32_tolerance(group)
        entry["tol_ratio"] = max(entry.get("tol_ratio", 0.0), err / tol)
        assert err <= tol, f"{key}: abs error {err:.3g} > {tol:.3g}"


def cases(kind_prefix: str) -> list[dict]:
    return [c for c in config()["cases"] if c["kind"].startswith(kind_prefix)]


def model_config() -> ModelConfig:
    size = config()["size"]
    return ModelConfig(
        kinds=(sensors.OPTICAL, sensors.SAR, sensors.DEM),
        embed_dim=size["embed_dim"],
        depth=size["depth"],
        num_heads=size["num_heads"],
        decoder_dim=size["decoder_embed_dim"],
        decoder_depth=size["decoder_depth"],
        decoder_heads=size["decoder_num_heads"],
        mask_ratio=config()["meta"]["mask_ratio"],
        # XLA's attention (einsum in float64), not the builder's CPU default (chunked einsum)
        attention_impl="xla",
    )


def torch_weights() -> dict:
    return load("weights.npz")


def build(dtype, **options):
    """A model holding the fixture weights (cast to ``dtype``); ``options`` replace
    ``ModelConfig`` fields that do not change the parameters (remat, scan_layers, ...)."""
    shapes = build_lib.flat_shapes(build_lib.abstract(model_config()))
    flat = mapping.from_torch(torch_weights(), shapes, "weights.npz")
    return build_lib.model_from_flat(dataclasses.replace(model_config(), **options), flat, dtype)


def dataset_specs(case: dict) -> list[sensors.ModalitySpec]:
    cfg = config()["model_config"]
    ds = case["dataset"]
    return [
        sensors.modality(
            name,
            FIXTURE_KINDS.get(name, sensors.OPTICAL),
            cfg["wavelengths"][ds][name],
            cfg["modalities_res"][ds][name],
            cfg["modalities_input_size"][ds][name],
            time_series=config()["T"][ds][name] > 1,
        )
        for name in cfg["modalities"][ds]
    ]


def batch(case: dict, dtype) -> tuple[list[sensors.ModalitySpec], Batch]:
    """Specs of the kept modalities (dataset order) and the batch built from the fixture."""
    arrays = load(case["file"])
    all_specs = dataset_specs(case)
    keep = case["modalities_keep"]
    specs = [s for s in all_specs if s.name in keep]
    layout = build_layout(
        specs,
        keep,
        case["effective_res"],
        reference=all_specs[0],
        mask_ratio=config()["meta"]["mask_ratio"],
        dtype=np.dtype(dtype),
    )
    pixels = {s.name: arrays[f"x/{s.name}"].transpose(0, 1, 3, 4, 2).astype(dtype) for s in specs}
    dates = {s.name: arrays[f"x/{s.name}_dates"] for s in specs}
    valid = {s.name: np.ones(d.shape, bool) for s, d in zip(specs, dates.values(), strict=True)}
    b = Batch(pixels=pixels, dates=dates, time_valid=valid, layout=layout)
    return specs, jax.tree.map(jnp.asarray, b)


def f64_overrides(case: dict, specs, layout) -> dict:
    """The original's float32 tables, as it used them in its float64 run."""
    arrays = load(case["file"])
    keep = case["modalities_keep"]
    out = {"pos_code": np.concatenate([arrays["f64/pos_embed"][0, 1:]] * len(keep))}
    if "f64/dec_pos_embed" in arrays:
        out["dec_pos_code"] = np.concatenate([arrays["f64/dec_pos_embed"][0, 1:]] * len(keep))
    series = [s for s in specs if s.time_series]
    if series:
        names = [s.name for s in specs]
        steps = max(arrays[f"x/{s.name}"].shape[1] for s in series)
        ts_modality = np.asarray(layout.ts_modality)
        ts_valid = np.asarray(layout.ts_valid)
        for key, prefix in (
            ("ltae_date_code", "f64/ltae_pe/"),
            ("dec_date_code", "f64/dec_temporal_pe/"),
        ):
            if prefix + series[0].name not in arrays:
                continue
            tables = {s.name: arrays[prefix + s.name] for s in series}
            b, _, width = tables[series[0].name].shape
            code = np.zeros((b, ts_modality.shape[0], steps, width))
            for i in np.flatnonzero(ts_valid):
                table = tables[names[ts_modality[i]]]
                code[:, i, : table.shape[1]] = table
            out[key] = code
    return jax.tree.map(jnp.asarray, out)


def f32_tolerance(group: str) -> float:
    noise = config()["f64_summary"]["groups"][group]["f32_noise"]["max_abs"]
    return F32_NOISE_FACTOR * noise


def rel_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = np.abs(ref).max()
    return float(np.abs(ours - ref).max() / scale) if scale > 0 else float(np.abs(ours).max())


def abs_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max())


def reference(arrays: dict, key: str, f64: bool):
    return arrays["f64/" + key] if f64 else arrays[key]


def modality_slice(case: dict, name: str) -> slice:
    per = case["tokens_per_modality"]
    i = case["modalities_keep"].index(name)
    return slice(i * per, (i + 1) * per)
