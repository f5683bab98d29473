"""Which settings make a run what it is, so that a workdir is never resumed as another run.

A checkpoint's meta records the run's identity: the flat ``{dotted.field: value}`` of the
settings below. Resuming compares it with the new launch's identity before any array is
restored and refuses a difference (``RunMismatch``), naming the fields.

Identity (fixed for the life of a workdir): ``seed``; every ``model.*`` field except the
execution choices listed in ``MODEL_EXECUTION`` (they change how the same parameters are
computed, not what they are); ``data.time_padding``; ``data.mixing`` (it decides which batch
every step reads); per dataset its modalities, effective
GSDs, weight, source settings other than ``path`` and its *global* batch (per-device batch x
batch shards: the sample stream is laid out in global batches, so a resume on another device
count keeps the data order by keeping the global batch, not the per-device one).

Everything else may change on resume: ``total_steps``, ``steps_per_epoch``, ``epochs`` and the other
``optim.*`` settings, ``contrastive.*``, ``checkpoint.*``, logging and preview cadence, mesh,
sharding rules and device or process count, ``data.num_workers`` / ``num_threads`` /
``prefetch`` / ``max_buckets_per_dataset``, a dataset's ``source.path`` (data moved to another
disk or bucket), ``compilation_cache_dir``, ``precompile``, ``program_map_limit``,
``init_from`` (only read by a fresh run).

A field added to the identity after checkpoints were written without it is compared as
``LEGACY_VALUES`` (by full name) or ``LEGACY_LEAF_VALUES`` (by last name) say: the value every
earlier run had (``data.mixing`` was always ``"weights"`` before it could be chosen, a
modality's ``temporal_dropout`` always 0, a source's ``norm_path`` always unset and its
``partition`` 1).

``write_record`` keeps the latest launch's config, readable, in ``WORKDIR/run_config.json``.
"""

from __future__ import annotations

import json

from etils import epath

from ramen_jax.training.failures import RunError

MODEL_EXECUTION = ("attention_impl", "dtype", "remat", "scan_layers")
DATASET_FIELDS = ("modalities", "effective_gsds", "weight", "source")
RECORD_FILE = "run_config.json"
_ABSENT = "<absent>"
LEGACY_VALUES = {"data.mixing": "weights"}  # what an identity without the field ran
LEGACY_LEAF_VALUES = {"temporal_dropout": 0.0, "norm_path": None, "partition": 1.0}


class RunMismatch(RunError):
    """The workdir holds a run whose identity differs from this launch's."""


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}", value[key], out)
    else:
        out[prefix] = value


def identity(config: dict, global_batches: dict[str, int] | None) -> dict:
    """The identity of a run config given as plain JSON data (``config_json``), with each
    dataset's global batch when known (older checkpoints did not record it)."""
    out = {"seed": config.get("seed")}
    model = {k: v for k, v in config.get("model", {}).items() if k not in MODEL_EXECUTION}
    _flatten("model", model, out)
    data = config.get("data", {})
    out["data.time_padding"] = data.get("time_padding", "mask")
    out["data.mixing"] = data.get("mixing", LEGACY_VALUES["data.mixing"])
    for name, dataset in sorted(data.get("datasets", {}).items()):
        prefix = f"data.datasets.{name}"
        fields = {k: dataset.get(k) for k in DATASET_FIELDS}
        fields["source"] = {k: v for k, v in (fields["source"] or {}).items() if k != "path"}
        _flatten(prefix, fields, out)
        if global_batches is not None:
            out[f"{prefix}.global_batch"] = int(global_batches[name])
    return json.loads(json.dumps(out))  # tuples -> lists, as a stored identity reads back


def config_json(config) -> dict:
    """A ConfigDict as the JSON data a checkpoint's meta stores."""
    return json.loads(config.to_json_best_effort())


def differences(saved: dict, current: dict) -> list[str]:
    """``field saved -> current`` for every identity field that differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        before, after = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if before != after:
            out.append(f"{key} {_short(before)} -> {_short(after)}")
    return out


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(saved_meta: dict, current: dict, where: str) -> None:
    """Raises ``RunMismatch`` unless the checkpoint's run is this launch's run."""
    saved = saved_meta.get("identity")
    if saved is None:  # written before identities were recorded: compare what it has
        saved = identity(saved_meta.get("config", {}), None)
        current = {k: v for k, v in current.items() if not k.endswith(".global_batch")}
    saved = {**legacy_values(current), **saved}
    diffs = differences(saved, current)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise RunMismatch(
            f"checkpoint {where} was saved by a run with other settings: {shown}. Relaunch with "
            "that run's settings, or use another --workdir (docs/training.md lists "
            "the settings that may change on resume)"
        )


def legacy_values(current: dict) -> dict:
    """What a checkpoint written before each of ``current``'s newer fields existed ran."""
    out = {k: v for k, v in LEGACY_VALUES.items() if k in current}
    for key in current:
        leaf = key.rsplit(".", 1)[-1]
        if leaf in LEGACY_LEAF_VALUES:
            out[key] = LEGACY_LEAF_VALUES[leaf]
    return out


def write_record(workdir: str, config: dict, run_identity: dict) -> None:
    """The latest launch's config and identity, for people (process 0 only)."""
    text = json.dumps({"identity": run_identity, "config": config}, indent=2, sort_keys=True)
    (epath.Path(workdir) / RECORD_FILE).write_text(text + "\n")
