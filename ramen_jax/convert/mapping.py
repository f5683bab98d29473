"""Parameter-name mapping between ramen_jax state and the original PyTorch ``state_dict``.

Our state is a flat ``{path tuple: array}`` (``nnx.to_flat_state``); PyTorch names are the
``RAMENMAE`` state_dict names of the original (``encoder.*`` / ``decoder.*``). The mapping is a
short table of module renames plus four leaf rules:

- Linear ``weight [out, in]`` <-> ``kernel [in, out]`` (transpose);
- norm ``weight`` <-> ``scale``; BatchNorm buffers ``running_mean/var``,
  ``num_batches_tracked`` <-> ``mean``/``var``/``count``;
- the resampler's four 1x1-conv experts ``experts.i.weight [D, D, 1, 1]`` / ``.bias`` <->
  stacked ``expert_kernel [4, D, D]`` / ``expert_bias [4, D]``;
- radar/DEM key vectors ``<key>_param`` <-> ``<key>``.

Everything here is NumPy; torch is only needed to read/write ``.ckpt`` files (``torch_io``).
"""

from __future__ import annotations

import re

import numpy as np

from ramen_jax import sensors
from ramen_jax.model.resampler import NUM_EXPERTS

# (our dotted module path pattern, torch replacement), applied in order.
_MODULE_RENAMES = [
    (r"_projector\.mlp\.fc1\.", "_projector.mlp.0."),
    (r"_projector\.mlp\.fc2\.", "_projector.mlp.2."),
    (r"_projector\.mlp\.norm\.", "_projector.mlp.3."),
    (r"resampler\.gate_fc1\.", "resampler.mlp.0."),
    (r"resampler\.gate_fc2\.", "resampler.mlp.2."),
    (r"ltae\.inconv\.linear\.", "ltae.inconv.0."),
    (r"ltae\.inconv\.norm\.", "ltae.inconv.1."),
    (r"ltae\.mlp1\.linear\.", "ltae.mlp.0."),
    (r"ltae\.mlp1\.norm\.", "ltae.mlp.1."),
    (r"ltae\.mlp2\.linear\.", "ltae.mlp.3."),
    (r"ltae\.mlp2\.norm\.", "ltae.mlp.4."),
    (r"ltae\.mlp3\.linear\.", "ltae.mlp.6."),
    (r"ltae\.mlp3\.norm\.", "ltae.mlp.7."),
    (r"ltae\.key_proj\.", "ltae.attention_heads.fc1_k."),
    (r"ltae\.query$", "ltae.attention_heads.Q"),
    (r"ltae\.group_norm_scale$", "ltae.in_norm.weight"),
    (r"ltae\.group_norm_bias$", "ltae.in_norm.bias"),
]
_KEY_PARAM = re.compile(r"_projector\.(" + "|".join(sensors.SAR_KEYS + sensors.DEM_KEYS) + r")$")
_LEAF_RENAMES = {
    "scale": "weight",
    "mean": "running_mean",
    "var": "running_var",
    "count": "num_batches_tracked",
}

# Rank of every name segment in PyTorch's state_dict order (own parameters first, then child
# modules in registration order). Numeric segments sort numerically.
_SEGMENT_RANK = {
    "encoder": 0,
    "decoder": 1,
    "cls_token": 0,
    "mask_token": 0,
    "decoder_embed": 1,
    "spectral_projector": 2,
    "radar_projector": 3,
    "dem_projector": 4,
    "resampler": 5,
    "ltae": 6,
    "temporal_block": 6,
    "in_norm": 7,
    "temporal_norm": 7,
    "blocks": 8,
    "norm": 9,
    "temperature": 0,
    "experts": 1,
    "mlp": 10,
    "inconv": 0,
    "attention_heads": 1,
    "Q": 0,
    "fc1_k": 1,
    "norm1": 0,
    "attn": 1,
    "norm2": 2,
    "qkv": 0,
    "proj": 1,
    "fc1": 0,
    "fc2": 1,
    "weight": 0,
    "bias": 1,
    "running_mean": 2,
    "running_var": 3,
    "num_batches_tracked": 4,
}
_SEGMENT_RANK.update({f"{k}_param": i for i, k in enumerate(sensors.SAR_KEYS)})
_SEGMENT_RANK.update({f"{k}_param": i for i, k in enumerate(sensors.DEM_KEYS)})


class MappingError(ValueError):
    """A state dict that does not match the model: names every missing/extra/mis-shaped key."""


def _order_key(name: str):
    return tuple(int(s) if s.isdigit() else _SEGMENT_RANK[s] for s in name.split("."))


def torch_names(path: tuple) -> list[str]:
    """PyTorch name(s) of one of our leaves (four names for a stacked expert leaf)."""
    dotted = ".".join(str(p) for p in path)
    if dotted.endswith("resampler.expert_kernel"):
        base = dotted[: -len("expert_kernel")]
        return [f"{base}experts.{i}.weight" for i in range(NUM_EXPERTS)]
    if dotted.endswith("resampler.expert_bias"):
        base = dotted[: -len("expert_bias")]
        return [f"{base}experts.{i}.bias" for i in range(NUM_EXPERTS)]
    for pattern, repl in _MODULE_RENAMES:
        dotted = re.sub(pattern, repl, dotted)
    if _KEY_PARAM.search(dotted):
        return [dotted + "_param"]
    head, _, leaf = dotted.rpartition(".")
    if leaf == "kernel":
        leaf = "weight"
    elif leaf in _LEAF_RENAMES:
        leaf = _LEAF_RENAMES[leaf]
    return [f"{head}.{leaf}" if head else leaf]


def _to_torch_values(path: tuple, value: np.ndarray) -> list[np.ndarray]:
    leaf = path[-1]
    if leaf == "expert_kernel":
        return [np.ascontiguousarray(value[i].T)[:, :, None, None] for i in range(NUM_EXPERTS)]
    if leaf == "expert_bias":
        return [np.array(value[i]) for i in range(NUM_EXPERTS)]
    if leaf == "kernel":
        return [np.ascontiguousarray(value.T)]
    if leaf == "count":
        return [np.asarray(value, np.int64)]
    return [np.array(value)]


def to_torch(flat_state: dict) -> dict[str, np.ndarray]:
    """Our flat state -> PyTorch state_dict (NumPy values), in PyTorch's order."""
    out = {}
    for path, value in flat_state.items():
        value = np.asarray(value)
        for name, v in zip(torch_names(path), _to_torch_values(path, value), strict=True):
            out[name] = v
    return {name: out[name] for name in sorted(out, key=_order_key)}


def expected_torch_shapes(flat_shapes: dict) -> dict[str, tuple]:
    """PyTorch names and shapes for a model whose flat state has ``flat_shapes``."""
    dummy = {path: np.zeros(shape, np.float32) for path, shape in flat_shapes.items()}
    return {name: v.shape for name, v in to_torch(dummy).items()}


def check_keys(state_dict: dict, flat_shapes: dict, what: str = "checkpoint") -> None:
    """Raises ``MappingError`` naming every missing, unexpected and mis-shaped key."""
    expected = expected_torch_shapes(flat_shapes)
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: {tuple(np.shape(state_dict[k]))} (expected {expected[k]})"
        for k in expected
        if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(expected[k])
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {missing}")
        if extra:
            parts.append(f"unexpected {len(extra)} key(s): {extra}")
        if shapes:
            parts.append(f"mis-shaped {len(shapes)} key(s): {shapes}")
        raise MappingError(f"{what} does not match the model: " + "; ".join(parts))


def from_torch(state_dict: dict, flat_shapes: dict, what: str = "checkpoint") -> dict:
    """PyTorch state_dict (NumPy values) -> our flat state, after ``check_keys``."""
    check_keys(state_dict, flat_shapes, what)
    flat = {}
    for path, shape in flat_shapes.items():
        names = torch_names(path)
        values = [np.asarray(state_dict[n]) for n in names]
        leaf = path[-1]
        if leaf == "expert_kernel":
            value = np.stack([v[:, :, 0, 0].T for v in values])
        elif leaf == "expert_bias":
            value = np.stack(values)
        elif leaf == "kernel":
            value = values[0].T
        else:
            value = values[0]
        flat[path] = np.ascontiguousarray(value).reshape(shape)
    return flat
