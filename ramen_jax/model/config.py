"""``ModelConfig``: the one description of a RAMEN architecture, and building it from a run's
``config.model``.

The dataclass holds every field the model reads; its defaults are the released RAMEN-B
(ViT-B encoder, 8-block 512-wide decoder) and are the only place a default lives. A training
config's ``model`` section may list any of these fields plus ``dtype`` (the compute dtype of
the run, not part of the architecture: a checkpoint's weights serve any dtype, and encode
chooses its own); any other key is refused by ``from_config`` with one line naming it and the
closest known key.

``attention_impl`` ``""`` means "the default of the devices' platform"; ``for_platform`` turns
it into a concrete implementation (``ramen_jax.model.attention.default_attention``). The
builder (``ramen_jax.model.build``) applies it, so training, encoding and evaluation share
one policy. Checkpoints record the resolved name; older files that stored ``null`` read as
``""``.
"""

from __future__ import annotations

import dataclasses
import difflib

import jax.numpy as jnp

from ramen_jax import sensors
from ramen_jax.model import attention as attention_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
# ``config.model`` keys that are run settings, not architecture (see module docstring).
RUN_KEYS = ("dtype",)


class ModelConfigError(ValueError):
    """A model setting no model can be built from (the message names the key)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture. ``kinds`` lists the modality kinds the projectors must cover."""

    kinds: tuple = (sensors.OPTICAL,)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    block_norm_eps: float = 1e-6
    # Dropout on the L-TAE's attention weights in training mode. 0.0 here so that a model built
    # without a training config is deterministic; the original pretraining used 0.1 (the
    # default ``attn_dropout`` of the L-TAE's scaled dot-product attention, which its
    # multi-head attention never overrides), which configs/base.py sets.
    ltae_attention_dropout: float = 0.0
    attention_impl: str = ""  # "" = the platform's default (``for_platform``)
    remat: bool = False
    scan_layers: bool = False

    def __post_init__(self):
        kinds = tuple(sorted(set(self.kinds)))
        unknown = [k for k in kinds if k not in sensors.KINDS]
        if unknown:
            raise ValueError(f"unknown modality kind(s) {unknown}; expected {sensors.KINDS}")
        object.__setattr__(self, "kinds", kinds)
        if self.attention_impl is None:  # what checkpoints written before "" stored
            object.__setattr__(self, "attention_impl", "")

    def for_platform(self, platform: str) -> ModelConfig:
        """This config with ``attention_impl`` ``""`` replaced by ``platform``'s default
        (``"tpu"``, ``"gpu"``, ``"cpu"``); an explicit implementation is kept (and checked)."""
        try:
            attention = attention_lib.resolve(self.attention_impl, platform)
        except ValueError as e:
            raise ModelConfigError(f"model.attention_impl: {e}") from None
        return dataclasses.replace(self, attention_impl=attention)


FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def config_defaults() -> dict:
    """Every key a run's ``config.model`` may hold, with ``ModelConfig``'s defaults (and
    ``dtype`` float32): what a config file starts its ``model`` section from, so that each key
    can be set on the command line of a locked config and no default is written twice."""
    defaults = ModelConfig()
    values = {name: getattr(defaults, name) for name in FIELDS if name != "kinds"}
    return {**values, "dtype": "float32"}


def check_keys(model_section, where: str = "config model") -> None:
    """Raises ``ModelConfigError`` for the first key of ``model_section`` (a mapping) that is
    neither a ``ModelConfig`` field nor a run key; ``kinds`` comes from the data, not from it."""
    known = [f for f in FIELDS if f != "kinds"] + list(RUN_KEYS)
    for key in model_section.keys():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {sorted(known)}"
            raise ModelConfigError(f"{where}: no field {key!r}{hint}")


def compute_dtype(model_section):
    """The jnp dtype named by ``model_section.dtype`` (float32 when absent)."""
    name = model_section.get("dtype", "float32")
    if name not in DTYPES:
        raise ModelConfigError(f"config model.dtype={name!r}: one of {sorted(DTYPES)}")
    return DTYPES[name]


def from_config(model_section, kinds, platform: str | None = None) -> ModelConfig:
    """The ``ModelConfig`` of a run's ``config.model`` (an ml_collections ``ConfigDict`` or
    any mapping) for datasets of modality ``kinds``; unknown keys are refused
    (``check_keys``), absent ones take the dataclass default. With ``platform``, the attention
    is resolved for it (``ModelConfig.for_platform``)."""
    check_keys(model_section)
    values = {k: v for k, v in model_section.items() if k not in RUN_KEYS}
    try:
        config = ModelConfig(kinds=tuple(kinds), **values)
    except (TypeError, ValueError) as e:
        raise ModelConfigError(f"config model: {e}") from None
    return config.for_platform(platform) if platform else config
