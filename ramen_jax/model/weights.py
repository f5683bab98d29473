"""The model's own weights on disk: our model directory, and the weights inside a training
workdir's checkpoints.

A **model directory** is what ``train --config.init_from``, ``encode --checkpoint`` and
``evaluate`` load and what ``python -m ramen_jax.convert from-torch`` writes::

    DIR/model_config.json   ModelConfig fields + "has_decoder"
    DIR/state/              Orbax PyTree checkpoint of {"params": ..., "batch_stats": ...}

The two trees are the plain nested dicts of ``build.split_model`` (an encoder-only checkpoint,
e.g. from the released PyTorch weights, holds only their ``encoder`` subtrees). Arrays are
written as host NumPy arrays and restored as NumPy arrays whatever the writer's or the
reader's device count; callers place them on devices themselves. Orbax stores dict keys as
strings, so the block indices (int keys) are restored by walking the tree the config implies,
which also checks every key, shape and dtype. ``DIR`` may be a URL (``gs://...``): paths are
``etils.epath`` paths, as Orbax's own.

A **training workdir** of ``python -m ramen_jax.train`` holds ``WORKDIR/checkpoints/<step>/``
with the Orbax items ``state`` and ``meta`` (the names are defined here, once;
``ramen_jax.training.checkpointing`` writes them). ``load_encoder_weights`` /
``load_model_weights`` read either kind: from a workdir, the latest step or ``step=``, only the
parameters and BatchNorm statistics (an Orbax partial restore: never the optimiser moments,
and only the encoder's for encoding), with the model config of ``meta["model_config"]``.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ramen_jax import storage
from ramen_jax.model import build as build_lib
from ramen_jax.model.config import ModelConfig

CONFIG_FILE = "model_config.json"
STATE_DIR = "state"
# A training workdir's checkpoints: WORKDIR/CHECKPOINTS_DIR/<step>/{STATE_ITEM, META_ITEM}
CHECKPOINTS_DIR = "checkpoints"
STATE_ITEM, META_ITEM = "state", "meta"
ENCODER = "encoder"
_COLLECTIONS = ("params", "batch_stats")


class ModelCheckpointError(ValueError):
    """A model checkpoint directory that is missing, incomplete or does not match its config."""


def config_to_dict(config: ModelConfig, has_decoder: bool) -> dict:
    out = dataclasses.asdict(config)
    out["kinds"] = list(config.kinds)
    out["has_decoder"] = bool(has_decoder)
    return out


def config_from_dict(data: dict, what: str = CONFIG_FILE) -> tuple[ModelConfig, bool]:
    """``(ModelConfig, has_decoder)``; unknown or badly typed fields raise a clear error."""
    data = dict(data)
    has_decoder = data.pop("has_decoder", True)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelCheckpointError(f"{what}: unknown ModelConfig field(s) {unknown}")
    if "kinds" in data:
        data["kinds"] = tuple(data["kinds"])
    try:
        return ModelConfig(**data), bool(has_decoder)
    except (TypeError, ValueError) as e:
        raise ModelCheckpointError(f"{what}: {e}") from e


@functools.lru_cache(maxsize=8)
def _abstract_trees(config: ModelConfig) -> tuple[dict, dict]:
    _, params, batch_stats = build_lib.split_model(build_lib.abstract(config))
    return params, batch_stats


def expected_trees(config: ModelConfig, has_decoder: bool) -> tuple[dict, dict]:
    """``(params, batch_stats)`` of ``jax.ShapeDtypeStruct`` for this config (no memory).

    The trees are cached and shared: do not modify them.
    """
    params, batch_stats = _abstract_trees(config)
    parts = ("encoder", "decoder") if has_decoder else ("encoder",)

    def keep(tree):
        return {k: v for k, v in tree.items() if k in parts}

    return keep(params), keep(batch_stats)


def read_model_config(directory) -> tuple[ModelConfig, bool]:
    directory = storage.as_path(directory)
    if not directory.exists():
        raise ModelCheckpointError(f"model checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise ModelCheckpointError(f"{directory} is not a directory (a model checkpoint is one)")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelCheckpointError(
            f"{directory} is not a ramen_jax model checkpoint: no {path.name}"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelCheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ModelCheckpointError(f"{path}: expected a JSON object")
    return config_from_dict(data, str(path))


def _is_float(dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))  # bfloat16 included, unlike NumPy's


def _mismatches(tree, expected, prefix="") -> list[str]:
    """Differences between ``tree`` and ``expected`` (keys, shapes, dtypes), one line each."""
    out = []
    for key in sorted(set(tree) | set(expected), key=str):
        name = f"{prefix}{key}"
        if key not in tree:
            out.append(f"missing {name}")
        elif key not in expected:
            out.append(f"unexpected {name}")
        elif isinstance(expected[key], dict) != isinstance(tree[key], dict):
            out.append(f"wrong structure at {name}")
        elif isinstance(expected[key], dict):
            out.extend(_mismatches(tree[key], expected[key], name + "."))
        else:
            got, want = tree[key], expected[key]
            if tuple(np.shape(got)) != tuple(want.shape):
                out.append(f"{name}: shape {tuple(np.shape(got))} (expected {tuple(want.shape)})")
            elif _is_float(got.dtype) != _is_float(want.dtype):
                out.append(f"{name}: dtype {got.dtype} (expected {want.dtype})")
    return out


def check_trees(params, batch_stats, config: ModelConfig, has_decoder: bool, what: str) -> None:
    expected = dict(zip(_COLLECTIONS, expected_trees(config, has_decoder), strict=True))
    problems = _mismatches({"params": params, "batch_stats": batch_stats}, expected)
    if problems:
        shown = "; ".join(problems[:20])
        if len(problems) > 20:
            shown += f"; ... ({len(problems)} in all)"
        raise ModelCheckpointError(f"{what} does not match its model config: {shown}")


def save_model(
    directory,
    config: ModelConfig,
    params: dict,
    batch_stats: dict,
    has_decoder: bool = True,
    *,
    overwrite: bool = False,
) -> epath.Path:
    """Writes a model checkpoint directory; returns its path.

    ``params`` / ``batch_stats`` are the nested dicts of ``build.split_model`` (only their
    ``encoder`` subtrees when ``has_decoder`` is False). Arrays are fetched to the host first.
    An existing checkpoint in ``directory`` is replaced only with ``overwrite``.
    """
    directory = storage.absolute(directory)
    params, batch_stats = jax.device_get((params, batch_stats))
    params = jax.tree.map(np.asarray, params)
    batch_stats = jax.tree.map(np.asarray, batch_stats)
    check_trees(params, batch_stats, config, has_decoder, "the state to save")
    ours = [directory / CONFIG_FILE, directory / STATE_DIR]
    if any(p.exists() for p in ours):
        if not overwrite:
            raise FileExistsError(f"{directory} already holds a model checkpoint (use overwrite)")
        (directory / CONFIG_FILE).unlink(missing_ok=True)
        if (directory / STATE_DIR).exists():
            (directory / STATE_DIR).rmtree()
    storage.makedirs(directory)
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(directory / STATE_DIR, {"params": params, "batch_stats": batch_stats})
    # The config goes last: a directory with model_config.json holds a complete checkpoint.
    text = json.dumps(config_to_dict(config, has_decoder), indent=2) + "\n"
    storage.write_text(directory / CONFIG_FILE, text)
    return directory


def rekey(tree: dict, expected: dict) -> dict:
    """Orbax's string keys back to the expected keys (ints for block indices)."""
    by_str = {str(k): k for k in expected}
    out = {}
    for key, value in tree.items():
        target = by_str.get(str(key), key)
        sub = expected.get(target)
        out[target] = (
            rekey(value, sub) if isinstance(value, dict) and isinstance(sub, dict) else value
        )
    return out


def _restore(path: epath.Path) -> dict:
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(path).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as e:  # Orbax/TensorStore raise many types for unreadable files
        raise ModelCheckpointError(f"cannot read the Orbax checkpoint {path}: {e}") from e


def load_model(directory) -> tuple[ModelConfig, dict, dict, bool]:
    """``(config, params, batch_stats, has_decoder)`` from a model checkpoint directory.

    Arrays come back as host NumPy arrays in the saved dtypes, with the key structure of
    ``build.split_model`` (int block indices); any missing, extra or mis-shaped entry raises
    ``ModelCheckpointError``.
    """
    directory = storage.absolute(directory)
    config, has_decoder = read_model_config(directory)
    path = directory / STATE_DIR
    if not path.is_dir():
        raise ModelCheckpointError(f"{directory} has {CONFIG_FILE} but no {STATE_DIR}/ checkpoint")
    restored = _restore(path)
    if not isinstance(restored, dict) or set(restored) != set(_COLLECTIONS):
        keys = sorted(restored) if isinstance(restored, dict) else type(restored).__name__
        raise ModelCheckpointError(f"{path}: expected params and batch_stats, found {keys}")
    expected = dict(zip(_COLLECTIONS, expected_trees(config, has_decoder), strict=True))
    params = rekey(restored["params"], expected["params"])
    batch_stats = rekey(restored["batch_stats"], expected["batch_stats"])
    check_trees(params, batch_stats, config, has_decoder, str(path))
    return config, params, batch_stats, has_decoder


def flat_from_trees(params: dict, batch_stats: dict) -> dict:
    """One flat ``{path: array}`` state (what ``mapping.to_torch`` takes)."""
    flat = build_lib.flatten_dict(params)
    flat.update(build_lib.flatten_dict(batch_stats))
    return flat


@dataclasses.dataclass(frozen=True)
class EncoderWeights:
    """What encoding needs: the architecture and the encoder's state (host NumPy trees)."""

    config: ModelConfig
    params: dict
    batch_stats: dict
    source: str  # human-readable origin, for logs and output metadata


def _from_model_directory(directory: epath.Path) -> EncoderWeights:
    config, params, batch_stats, _ = load_model(directory)
    return EncoderWeights(
        config,
        {ENCODER: params[ENCODER]},
        {ENCODER: batch_stats.get(ENCODER, {})},
        f"model directory {directory}",
    )


def _training_step(manager: ocp.CheckpointManager, workdir, step: int | None) -> int:
    steps = sorted(manager.all_steps())
    if not steps:
        raise ModelCheckpointError(f"training workdir {workdir} holds no checkpoint yet")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ModelCheckpointError(
            f"training workdir {workdir} has no checkpoint of step {step} (steps: {steps})"
        )
    return step


def _restore_model_state(path: epath.Path, encoder_only: bool = True) -> tuple[dict, dict]:
    """Partial restore of ``params`` and ``batch_stats`` (only their ``encoder`` subtrees with
    ``encoder_only``; never the optimiser moments) as NumPy arrays."""
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        stored = checkpointer.metadata(path).item_metadata.tree
        wanted = {
            collection: {
                part: tree
                for part, tree in stored[collection].items()
                if part == ENCODER or not encoder_only
            }
            for collection in ("params", "batch_stats")
            if ENCODER in stored.get(collection, {})
        }
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        restored = checkpointer.restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=wanted, restore_args=restore_args, partial_restore=True
            ),
        )
    except Exception as e:  # Orbax/TensorStore raise many types for unreadable files
        raise ModelCheckpointError(f"cannot read the Orbax checkpoint {path}: {e}") from e
    if "params" not in restored:
        raise ModelCheckpointError(f"{path}: no params/encoder in the training state")
    return restored["params"], restored.get("batch_stats", {ENCODER: {}})


def _training_checkpoint(workdir: epath.Path, step: int | None) -> tuple[ModelConfig, int]:
    """The model config and step of a training workdir's checkpoint (latest by default)."""
    manager = ocp.CheckpointManager(workdir / CHECKPOINTS_DIR, item_names=(STATE_ITEM, META_ITEM))
    try:
        step = _training_step(manager, workdir, step)
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            META_ITEM
        ]
    finally:
        manager.close()
    if "model_config" not in meta:
        raise ModelCheckpointError(f"{workdir} step {step}: meta has no model_config")
    config, _ = config_from_dict(meta["model_config"], f"{workdir} step {step} meta")
    return config, step


def _from_training_workdir(
    workdir: epath.Path, step: int | None, encoder_only: bool = True
) -> tuple[EncoderWeights, bool]:
    config, step = _training_checkpoint(workdir, step)
    params, batch_stats = _restore_model_state(
        workdir / CHECKPOINTS_DIR / str(step) / STATE_ITEM, encoder_only
    )
    has_decoder = not encoder_only and "decoder" in params
    expected_params, expected_stats = expected_trees(config, has_decoder=has_decoder)
    params = rekey(params, expected_params)
    batch_stats = rekey(batch_stats, expected_stats)
    what = f"{workdir} step {step}"
    check_trees(params, batch_stats, config, has_decoder, what)
    return EncoderWeights(config, params, batch_stats, f"training workdir {what}"), has_decoder


def load_encoder_weights(path, step: int | None = None) -> EncoderWeights:
    """Encoder weights from a model directory or a training workdir (see module docstring)."""
    path = storage.absolute(path)
    if not path.exists():
        raise ModelCheckpointError(f"checkpoint {path} does not exist")
    if (path / CONFIG_FILE).is_file():
        if step is not None:
            raise ModelCheckpointError(
                f"{path} is a model directory (one state): a step applies to training workdirs"
            )
        return _from_model_directory(path)
    if (path / CHECKPOINTS_DIR).is_dir():
        return _from_training_workdir(path, step)[0]
    raise ModelCheckpointError(
        f"{path} is neither a model directory (no {CONFIG_FILE}) nor a training "
        f"workdir (no {CHECKPOINTS_DIR}/)"
    )


def load_model_weights(path, step: int | None = None) -> tuple[ModelConfig, dict, dict, bool]:
    """The whole model (encoder, and decoder where stored) from a model directory or a training
    workdir, as ``load_model`` returns it: ``(config, params, batch_stats,
    has_decoder)``. ``python -m ramen_jax.convert to-torch`` reads its source with this."""
    path = storage.absolute(path)
    if (path / CHECKPOINTS_DIR).is_dir() and not (path / CONFIG_FILE).is_file():
        weights, has_decoder = _from_training_workdir(path, step, encoder_only=False)
        return weights.config, weights.params, weights.batch_stats, has_decoder
    if step is not None:
        raise ModelCheckpointError(
            f"{path} is not a training workdir: a step applies to training workdirs"
        )
    return load_model(path)
