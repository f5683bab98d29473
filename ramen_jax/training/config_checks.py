"""Checks of a training config that need no data and no device: run before the workdir exists.

A value that cannot give a sensible run (``log_every_steps=0`` used to crash after the first
compilation; a negative learning rate trained by gradient ascent without a word; a GSD of 0 or
a wavelength in micrometres) stops the run before any work as one ``ConfigError`` line that
names the field, the value and what is accepted.
"""

from __future__ import annotations

import math

from ramen_jax import sensors
from ramen_jax.model import config as model_config_lib
from ramen_jax.training.failures import RunError


class ConfigError(RunError):
    """A config value no run can use (the message names the field and the accepted range)."""


def _number(config, path: str):
    node = config
    for key in path.split("."):
        node = node.get(key) if hasattr(node, "get") else None
    return node


def _check(config, path: str, accept, rule: str, required: bool = True) -> None:
    value = _number(config, path)
    if value is None and not required:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and accept(value)):
        raise ConfigError(f"config {path}={value!r}: must be {rule}")


def check_config(config) -> None:
    """Raises ``ConfigError`` for the first field out of range (see module docstring), or for
    a ``model`` key the model does not have (``ramen_jax.model.config.check_keys``)."""
    try:
        model_config_lib.check_keys(config.get("model", {}))
        model_config_lib.compute_dtype(config.get("model", {}))
    except model_config_lib.ModelConfigError as e:
        raise ConfigError(str(e)) from None
    _check(config, "log_every_steps", lambda v: v >= 1 and v == int(v), "a whole number >= 1")
    _check(config, "total_steps", lambda v: v >= 0, ">= 0 (0: from epochs)", required=False)
    _check(config, "preview_every_steps", lambda v: v >= 0, ">= 0 (0: no previews)", False)
    positive = "> 0 (a negative rate would train by gradient ascent)"
    _check(config, "optim.lr", lambda v: v > 0, positive)
    for name in ("start_lr", "end_lr", "weight_decay"):
        _check(config, f"optim.{name}", lambda v: v >= 0, ">= 0", required=False)
    _check(config, "optim.clip", lambda v: v >= 0, ">= 0 (0: no clipping)", required=False)
    _check(config, "optim.grad_accum", lambda v: v >= 1 and v == int(v), "a whole number >= 1",
           required=False)  # fmt: skip
    accum = int(config.optim.get("grad_accum", 1))
    for name, dataset in config.data.datasets.items():
        where = f"data.datasets.{name}"
        _check(config, f"{where}.per_device_batch", lambda v: v >= 1, ">= 1")
        _check(config, f"{where}.per_device_batch", lambda v: v % accum == 0,
               f"a multiple of optim.grad_accum={accum} (each device splits its rows into "
               f"{accum} micro-batches)")  # fmt: skip
        for gsd in dataset.get("effective_gsds", []):
            try:
                sensors.check_gsd(gsd, f"config {where}.effective_gsds")
            except sensors.ModalityError as e:
                raise ConfigError(str(e)) from None
        for modality, fields in dataset.get("modalities", {}).items():
            try:
                sensors.modality_from_dict(modality, fields)
            except (sensors.ModalityError, TypeError, ValueError) as e:
                raise ConfigError(f"config {where}.modalities.{modality}: {e}") from None


def paths_of(config, workdir: str | None) -> list[str]:
    """The places a run reads or writes: the workdir, each dataset's source, the compilation
    cache (when set), the checkpoint a run starts from (when set)."""
    paths = [workdir] if workdir else []
    for dataset in config.data.datasets.values():
        source = dataset.get("source", {})
        paths += [source[k] for k in ("path", "norm_path") if source.get(k)]
    cache = config.get("compilation_cache_dir", "")
    if cache and cache != "off":
        paths.append(cache)
    if config.get("init_from"):
        paths.append(config.init_from)
    return [str(p) for p in paths]
