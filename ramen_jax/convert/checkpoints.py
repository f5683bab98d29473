"""Weights from a model directory or a training workdir: the encoder for inference
(``load_encoder_weights``, used by encode/evaluate) or the whole model for export
(``load_model_weights``, used by ``python -m ramen_jax.convert to-torch``).

``load_encoder_weights(path)`` accepts either

- a ramen_jax **model directory** (``model_config.json`` + ``state/``), as written by
  ``python -m ramen_jax.convert from-torch`` or ``model_io.save_model``; or
- a **training workdir** of ``python -m ramen_jax.train`` (``WORKDIR/checkpoints/<step>/`` with
  the Orbax items ``state`` and ``meta``): the latest step, or ``step=``. Only the encoder's
  parameters and BatchNorm statistics are read from ``state`` (an Orbax partial restore), not
  the decoder or the optimiser moments, so a large run's checkpoint loads in a fraction of its
  size. The model config comes from ``meta["model_config"]``.

Either may be a URL (``gs://...``). Both give host NumPy trees with the key structure of
``state.split_model``'s ``encoder`` subtree (Orbax stores the block indices as strings; they
are turned back into ints and every key and shape is checked against the config, with
``model_io``'s helpers).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ramen_jax import storage
from ramen_jax.convert import model_io
from ramen_jax.model.mae import ModelConfig

CHECKPOINTS_DIR = "checkpoints"
STATE_ITEM, META_ITEM = "state", "meta"
ENCODER = "encoder"


@dataclasses.dataclass(frozen=True)
class EncoderWeights:
    """What encoding needs: the architecture and the encoder's state (host NumPy trees)."""

    config: ModelConfig
    params: dict
    batch_stats: dict
    source: str  # human-readable origin, for logs and output metadata


def _from_model_directory(directory: epath.Path) -> EncoderWeights:
    config, params, batch_stats, _ = model_io.load_model(directory)
    return EncoderWeights(
        config,
        {ENCODER: params[ENCODER]},
        {ENCODER: batch_stats.get(ENCODER, {})},
        f"model directory {directory}",
    )


def _training_step(manager: ocp.CheckpointManager, workdir, step: int | None) -> int:
    steps = sorted(manager.all_steps())
    if not steps:
        raise model_io.ModelCheckpointError(f"training workdir {workdir} holds no checkpoint yet")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise model_io.ModelCheckpointError(
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
        raise model_io.ModelCheckpointError(f"cannot read the Orbax checkpoint {path}: {e}") from e
    if "params" not in restored:
        raise model_io.ModelCheckpointError(f"{path}: no params/encoder in the training state")
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
        raise model_io.ModelCheckpointError(f"{workdir} step {step}: meta has no model_config")
    config, _ = model_io.config_from_dict(meta["model_config"], f"{workdir} step {step} meta")
    return config, step


def _from_training_workdir(
    workdir: epath.Path, step: int | None, encoder_only: bool = True
) -> tuple[EncoderWeights, bool]:
    config, step = _training_checkpoint(workdir, step)
    params, batch_stats = _restore_model_state(
        workdir / CHECKPOINTS_DIR / str(step) / STATE_ITEM, encoder_only
    )
    has_decoder = not encoder_only and "decoder" in params
    expected_params, expected_stats = model_io.expected_trees(config, has_decoder=has_decoder)
    params = model_io.rekey(params, expected_params)
    batch_stats = model_io.rekey(batch_stats, expected_stats)
    what = f"{workdir} step {step}"
    model_io.check_trees(params, batch_stats, config, has_decoder, what)
    return EncoderWeights(config, params, batch_stats, f"training workdir {what}"), has_decoder


def load_encoder_weights(path, step: int | None = None) -> EncoderWeights:
    """Encoder weights from a model directory or a training workdir (see module docstring)."""
    path = storage.absolute(path)
    if not path.exists():
        raise model_io.ModelCheckpointError(f"checkpoint {path} does not exist")
    if (path / model_io.CONFIG_FILE).is_file():
        if step is not None:
            raise model_io.ModelCheckpointError(
                f"{path} is a model directory (one state): a step applies to training workdirs"
            )
        return _from_model_directory(path)
    if (path / CHECKPOINTS_DIR).is_dir():
        return _from_training_workdir(path, step)[0]
    raise model_io.ModelCheckpointError(
        f"{path} is neither a model directory (no {model_io.CONFIG_FILE}) nor a training "
        f"workdir (no {CHECKPOINTS_DIR}/)"
    )


def load_model_weights(path, step: int | None = None) -> tuple[ModelConfig, dict, dict, bool]:
    """The whole model (encoder, and decoder where stored) from a model directory or a training
    workdir, as ``model_io.load_model`` returns it: ``(config, params, batch_stats,
    has_decoder)``. ``python -m ramen_jax.convert to-torch`` reads its source with this."""
    path = storage.absolute(path)
    if (path / CHECKPOINTS_DIR).is_dir() and not (path / model_io.CONFIG_FILE).is_file():
        weights, has_decoder = _from_training_workdir(path, step, encoder_only=False)
        return weights.config, weights.params, weights.batch_stats, has_decoder
    if step is not None:
        raise model_io.ModelCheckpointError(
            f"{path} is not a training workdir: a step applies to training workdirs"
        )
    return model_io.load_model(path)
