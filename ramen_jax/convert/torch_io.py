"""Reading and writing the original RAMEN's PyTorch checkpoints.

Two formats, both ``torch.save`` pickles of ``{"state_dict": {name: tensor}}``:

- ``released`` (the published weights, what PANGAEA loads): bare encoder names
  (``cls_token``, ``blocks.0.attn.qkv.weight``...), BatchNorm buffers included;
- ``lightning`` (the original training checkpoint): ``model.encoder.<name>`` and
  ``model.decoder.<name>``.

Reading also accepts plain ``encoder.`` / ``decoder.`` names (a ``RAMENMAE.state_dict()``) and a
bare state dict without the ``state_dict`` wrapper; other top-level keys (``epoch``,
``optimizer_states``...) are ignored. Files are read with ``weights_only=True``: no code from a
checkpoint is ever run. The architecture is inferred from the tensor shapes except the head
counts, which no tensor reveals. Every name is then checked against the inferred model
(``mapping.check_keys``): a missing, unexpected or mis-shaped tensor is an error, never a
partial load.

torch is imported here only, and only when a file is read or written. ``torch.load`` and
``torch.save`` get a local file: a URL (``gs://...``) is downloaded first, or written locally
and uploaded (``ramen_jax.storage``).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from ramen_jax import sensors, storage
from ramen_jax.convert import mapping
from ramen_jax.model import build as build_lib
from ramen_jax.model import weights
from ramen_jax.model.config import ModelConfig

FORMATS = ("released", "lightning")
# Prefix of the RAMENMAE names in each format that can be read ("mae": plain RAMENMAE names).
_READ_PREFIX = {"released": "encoder.", "lightning": "", "mae": ""}
# First name segments of the encoder (bare names in the released format).
_ENCODER_MODULES = {
    "cls_token",
    "spectral_projector",
    "radar_projector",
    "dem_projector",
    "resampler",
    "ltae",
    "in_norm",
    "blocks",
    "norm",
}
_BLOCK = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.")
_ARCHITECTURE = ("kinds", "embed_dim", "depth", "mlp_ratio", "decoder_dim", "decoder_depth")


class TorchCheckpointError(ValueError):
    """A file that is not a readable RAMEN checkpoint, or a request that cannot be written."""


def _torch():
    try:
        import torch
    except ImportError as e:
        raise TorchCheckpointError(
            'PyTorch is needed to read or write .ckpt files: pip install -e ".[torch]"'
        ) from e
    return torch


@dataclasses.dataclass
class Converted:
    """A PyTorch checkpoint in ramen_jax form (what ``weights.save_model`` takes)."""

    format: str
    num_tensors: int
    config: ModelConfig
    has_decoder: bool
    params: dict
    batch_stats: dict


# ----------------------------------------------------------------------------- reading


def _load_pickle(path):
    torch = _torch()
    if not path.is_file():
        raise TorchCheckpointError(f"checkpoint file {path} does not exist")
    with storage.local_copy(path) as local:
        try:
            return torch.load(local, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises pickle, zip and runtime errors for foreign files
            hint = ""
            if "weights_only" in str(e).lower() or "weights only" in str(e).lower():
                hint = (
                    " (the file holds pickled Python objects; in a trusted environment re-save "
                    "only its tensors: torch.save({'state_dict': ckpt['state_dict']}, path))"
                )
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TorchCheckpointError(
                f"cannot read {path} as a PyTorch checkpoint: {first_line}{hint}"
            ) from e


def _tensor_to_numpy(name: str, value, torch) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise TorchCheckpointError(f"state_dict entry {name!r} is a {type(value).__name__}")
    value = value.detach().cpu()
    if value.dtype in (torch.bfloat16, torch.float16):
        value = value.float()
    return value.numpy()


def detect_format(names) -> str:
    """``lightning``, ``mae`` (plain ``encoder.``/``decoder.``) or ``released``, from the names."""
    names = list(names)
    if any(n.startswith(("model.encoder.", "model.decoder.")) for n in names):
        return "lightning"
    if any(n.startswith(("encoder.", "decoder.")) for n in names):
        return "mae"
    if any(n.split(".")[0] in _ENCODER_MODULES for n in names):
        return "released"
    raise TorchCheckpointError(
        "not a RAMEN checkpoint: no encoder names (cls_token, blocks.N..., with or without "
        f"'model.encoder.' / 'encoder.' prefixes) among its {len(names)} entries"
    )


def _mae_name(name: str, fmt: str) -> str:
    if fmt == "lightning" and name.startswith("model."):
        return name[len("model.") :]
    return _READ_PREFIX[fmt] + name


def read_state_dict(path) -> tuple[str, dict[str, np.ndarray]]:
    """``(format, {RAMENMAE name: array})`` of a PyTorch checkpoint file, in file order."""
    torch = _torch()
    path = storage.as_path(path)
    data = _load_pickle(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) for k in data):
        raise TorchCheckpointError(f"{path} is not a RAMEN checkpoint: no 'state_dict' of tensors")
    fmt = detect_format(data)
    return fmt, {_mae_name(k, fmt): _tensor_to_numpy(k, v, torch) for k, v in data.items()}


# ----------------------------------------------------------------------------- architecture


def _first_shape(state_dict: dict, names, axis: int) -> int | None:
    for name in names:
        if name in state_dict and np.ndim(state_dict[name]) > 0:
            return int(np.shape(state_dict[name])[axis])
    return None


def _depth(state_dict: dict, part: str) -> int:
    """Number of blocks: the largest index + 1 (a missing middle block is a missing key)."""
    indices = [int(m[2]) for n in state_dict if (m := _BLOCK.match(n)) and m[1] == part]
    return max(indices) + 1 if indices else 0


def _kinds(state_dict: dict) -> tuple:
    kinds = [sensors.OPTICAL]
    for kind, module in ((sensors.SAR, "radar_projector."), (sensors.DEM, "dem_projector.")):
        if any(n.split(".", 1)[-1].startswith(module) for n in state_dict):
            kinds.append(kind)
    return tuple(kinds)


def infer_architecture(state_dict: dict) -> tuple[dict, bool]:
    """``(ModelConfig fields read off the shapes, has_decoder)`` of a RAMENMAE state dict."""
    width = ["encoder.cls_token", "encoder.norm.weight", "encoder.in_norm.weight"]
    embed_dim = _first_shape(state_dict, width, -1)
    depth = _depth(state_dict, "encoder")
    if embed_dim is None or depth == 0:
        raise TorchCheckpointError(
            "cannot infer the encoder size: need encoder.cls_token (or norm.weight) and blocks.N.*"
        )
    fc1 = [f"encoder.blocks.{i}.mlp.fc1.weight" for i in range(depth)]
    hidden = _first_shape(state_dict, fc1, 0)
    arch = {"kinds": _kinds(state_dict), "embed_dim": embed_dim, "depth": depth}
    if hidden is not None:
        arch["mlp_ratio"] = hidden / embed_dim
    has_decoder = any(n.startswith("decoder.") for n in state_dict)
    if has_decoder:
        dec_width = ["decoder.decoder_embed.weight", "decoder.norm.weight"]
        decoder_dim = _first_shape(state_dict, dec_width, 0)
        decoder_depth = _depth(state_dict, "decoder")
        if decoder_dim is None or decoder_depth == 0:
            raise TorchCheckpointError(
                "cannot infer the decoder size: need decoder.decoder_embed.weight and blocks.N.*"
            )
        arch.update(decoder_dim=decoder_dim, decoder_depth=decoder_depth)
    return arch, has_decoder


def resolve_config(
    arch: dict,
    *,
    num_heads: int | None = None,
    decoder_heads: int | None = None,
    extra: dict | None = None,
) -> ModelConfig:
    """The ModelConfig: inferred fields, then head counts (flag > ``extra`` > default), then
    any other field from ``extra`` (ModelConfig fields; inferred ones must agree)."""
    extra = {k: v for k, v in (extra or {}).items() if k != "has_decoder"}  # the weights decide
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise TorchCheckpointError(f"--config: unknown ModelConfig field(s) {unknown}")
    for field in _ARCHITECTURE:
        if field in extra and field in arch:
            given = tuple(sorted(extra[field])) if field == "kinds" else extra[field]
            inferred = tuple(sorted(arch[field])) if field == "kinds" else arch[field]
            if given != inferred:
                raise TorchCheckpointError(
                    f"--config sets {field}={extra[field]!r} but the weights have {arch[field]!r}"
                )
    fields = {**extra, **arch}
    default_heads = {"num_heads": max(1, arch["embed_dim"] // 64), "decoder_heads": 16}
    for field, flag in (("num_heads", num_heads), ("decoder_heads", decoder_heads)):
        fields[field] = flag if flag is not None else extra.get(field, default_heads[field])
    try:
        config = ModelConfig(**fields)
    except (TypeError, ValueError) as e:
        raise TorchCheckpointError(f"invalid model config: {e}") from e
    for dim, heads, flag in (
        (config.embed_dim, config.num_heads, "--num-heads"),
        (config.decoder_dim, config.decoder_heads, "--decoder-heads"),
    ):
        if heads <= 0 or dim % heads:
            raise TorchCheckpointError(f"{flag} {heads} does not divide the width {dim}")
    return config


def expected_shapes(config: ModelConfig, has_decoder: bool) -> dict:
    """Our flat ``{path: shape}`` for the checkpoint's parts of this model."""
    params, batch_stats = weights.expected_trees(config, has_decoder)
    flat = weights.flat_from_trees(params, batch_stats)
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def to_model_state(
    state_dict: dict, config: ModelConfig, has_decoder: bool, what: str
) -> tuple[dict, dict]:
    """RAMENMAE-named arrays -> ``(params, batch_stats)`` nested dicts, after ``check_keys``."""
    flat = mapping.from_torch(state_dict, expected_shapes(config, has_decoder), what)
    params_spec, stats_spec = weights.expected_trees(config, has_decoder)
    stats_paths = set(build_lib.flatten_dict(stats_spec))
    dtypes = build_lib.flatten_dict(params_spec) | build_lib.flatten_dict(stats_spec)
    params, stats = {}, {}
    for path, value in flat.items():
        dtype = np.dtype(dtypes[path].dtype)
        if np.issubdtype(dtype, np.integer) and np.any(value > np.iinfo(dtype).max):
            raise TorchCheckpointError(f"{what}: {path} value {value} overflows {dtype}")
        (stats if path in stats_paths else params)[path] = value.astype(dtype)
    return build_lib.unflatten_dict(params), build_lib.unflatten_dict(stats)


def load_torch_checkpoint(
    path,
    *,
    num_heads: int | None = None,
    decoder_heads: int | None = None,
    extra_config: dict | None = None,
) -> Converted:
    """Reads, infers the architecture, checks every key, converts."""
    fmt, state_dict = read_state_dict(path)
    arch, has_decoder = infer_architecture(state_dict)
    config = resolve_config(
        arch, num_heads=num_heads, decoder_heads=decoder_heads, extra=extra_config
    )
    params, stats = to_model_state(state_dict, config, has_decoder, f"{fmt} checkpoint {path}")
    return Converted(fmt, len(state_dict), config, has_decoder, params, stats)


# ----------------------------------------------------------------------------- writing


def torch_names_and_values(params: dict, batch_stats: dict, fmt: str) -> dict[str, np.ndarray]:
    """The ``state_dict`` of ``fmt``, in PyTorch order: float32 tensors, int64 step counts."""
    if fmt not in FORMATS:
        raise TorchCheckpointError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    named = mapping.to_torch(weights.flat_from_trees(params, batch_stats))
    if fmt == "released":
        prefix = "encoder."
        return {n[len(prefix) :]: _cast(v) for n, v in named.items() if n.startswith(prefix)}
    if not any(n.startswith("decoder.") for n in named):
        raise TorchCheckpointError(
            "the lightning format needs a decoder; this checkpoint is encoder-only "
            "(export --format released instead)"
        )
    return {"model." + n: _cast(v) for n, v in named.items()}


def _cast(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    dtype = np.int64 if np.issubdtype(value.dtype, np.integer) else np.float32
    return np.array(value, dtype=dtype, order="C", copy=True)


def write_torch_checkpoint(
    path, params: dict, batch_stats: dict, fmt: str = "released", *, overwrite: bool = False
) -> int:
    """Writes ``{"state_dict": ...}`` in ``fmt``; returns the number of tensors."""
    torch = _torch()
    path = storage.as_path(path)
    if path.is_dir():
        raise TorchCheckpointError(f"{path} is a directory; give a .ckpt file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (use overwrite)")
    state_dict = {
        name: torch.from_numpy(value)
        for name, value in torch_names_and_values(params, batch_stats, fmt).items()
    }
    storage.makedirs(path.parent)
    with storage.local_output(path) as local:  # readers never see a half-written file
        torch.save({"state_dict": state_dict}, local)
    return len(state_dict)
