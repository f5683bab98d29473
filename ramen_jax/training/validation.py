"""Validation on held-out splits: per-dataset MAE losses, the same batches and masks every time.

As the original (its Lightning module validates at the end of every epoch on the datasets'
``val`` splits and keeps the best checkpoints by validation loss), ``config.eval``:

- ``every_steps``: > 0 every that many steps; 0 once per epoch (every ``steps_per_epoch``
  steps, the paper config); < 0 never;
- ``split``: the held-out split each ``records`` source reads instead of its training split (a
  source without splits, the demo, reads what it reads in training);
- ``batches``: at most that many full global batches per dataset (0: all of the split);
- ``seed``: the GSD, modality subset, temporal dropout and masking noise of validation batch
  ``i`` come from ``(seed, i)`` only (``pipeline.ValidationBatches``), so validations differ
  only by the model.

The forward runs in eval mode (BatchNorm running statistics, no L-TAE dropout). Logged at the
step (TensorBoard and ``metrics.jsonl``): ``val/<dataset>/loss`` (mean over its batches),
``val/<dataset>/loss/<m>`` (over the batches that kept ``m``) and ``val/loss``, the mean over all
validation batches, which ``checkpoint.keep_best`` ranks checkpoints by.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from ramen_jax.data import pipeline
from ramen_jax.data.sources import make_source
from ramen_jax.model import build as build_lib
from ramen_jax.training import reporting, sharding


def enabled(config) -> bool:
    return "eval" in config and int(config.eval.every_steps) >= 0


def due(config, done: int) -> bool:
    """Whether validation runs after ``done`` completed steps."""
    if not enabled(config):
        return False
    every = int(config.eval.every_steps) or int(config.steps_per_epoch)
    return every > 0 and done % every == 0


def held_out_datasets(config, batch_shards: int) -> list:
    """Each dataset's pipeline on its held-out split (its own time buckets)."""
    data = config.data
    out = []
    for name, cfg in data.datasets.items():
        source_config = ml_collections.ConfigDict(dict(cfg.source))
        if "split" in source_config:
            source_config.split = config.eval.split
        out.append(
            pipeline.dataset_pipeline(
                name,
                cfg,
                make_source(source_config, data.get("cache_dir")),
                batch_shards,
                data.get("max_buckets_per_dataset", 16),
                data.get("max_time_buckets_per_dataset", 4),
            )
        )
    return out


class Validator:
    """Runs a validation for a trainer: ``run(state) -> {name: value}`` (host floats)."""

    def __init__(self, trainer):
        self.trainer = trainer
        config = trainer.config
        self.seed = int(config.eval.seed)
        datasets = held_out_datasets(config, sharding.batch_shards(trainer.mesh, trainer.rules))
        self.batches = pipeline.ValidationBatches(
            datasets,
            batches_per_dataset=int(config.eval.batches),
            seed=self.seed,
            mask_ratio=trainer.model_config.mask_ratio,
            shards=sharding.process_batch_shards(trainer.mesh, trainer.rules),
            mask_time_padding=config.data.get("time_padding", "mask") == "mask",
        )
        if not len(self.batches):
            raise ValueError(
                f"validation: no full global batch in any {config.eval.split!r} split "
                "(eval.every_steps=-1 turns validation off)"
            )
        self.specs = {d.name: tuple(d.specs) for d in datasets}
        self._fns = {}
        self._compiled: set = set()

    def eval_fn(self, dataset: str):
        if dataset not in self._fns:
            specs, graphdef = self.specs[dataset], self.trainer.graphdef
            seed = self.seed

            def run(state, batch, index):
                model = build_lib.merge_model(graphdef, state.params, state.batch_stats)
                key = jax.random.fold_in(jax.random.key(seed), index)
                noise = jax.random.uniform(key, (batch.batch_size, batch.layout.length))
                out = model(batch, specs, noise, train=False)
                return {"loss": out["loss"], **{f"loss/{k}": v for k, v in out["losses"].items()}}

            self._fns[dataset] = jax.jit(run, out_shardings=sharding.replicated(self.trainer.mesh))
        return self._fns[dataset]

    def run(self, state, sync, step: int) -> dict:
        """The validation after ``step`` steps; ``sync`` (``host_sync.HostSync``) holds every
        process back until all have compiled a new program, as the training loop does."""
        trainer = self.trainer
        per_dataset: dict[str, list] = {}
        for index in range(len(self.batches)):
            host = self.batches(index)
            name = host.dataset
            batch = sharding.device_batch(host.batch, trainer.mesh, trainer.rules)
            signature = ("eval", pipeline.signature(host))
            args = (state, batch, np.int32(index))
            if signature not in self._compiled:
                self._compiled.add(signature)
                trainer.programs.prepare(signature, self.eval_fn(name), *args)
                sync.wait_for_all(f"validation/{step}/{len(self._compiled)}")
            metrics = trainer.programs(signature, self.eval_fn(name), *args)
            per_dataset.setdefault(name, []).append(jax.device_get(metrics))
        out = {}
        for name, metrics in per_dataset.items():
            for key, value in reporting.window_mean(metrics).items():
                out[f"val/{name}/{key}"] = value
        every = [float(np.asarray(m["loss"])) for ms in per_dataset.values() for m in ms]
        out["val/loss"] = float(np.mean(every))
        return out
