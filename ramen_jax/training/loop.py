"""One run of the training loop: where it starts, what it writes, and each step in order.

``TrainingRun(trainer).run()`` resumes from the newest intact checkpoint (or initialises, or
loads ``init_from``), opens the input pipeline at that step, then for every step: read the host
batch, compile a new step shape before the hosts agree on it, agree (stop signals, shapes),
run the step, and log, preview, checkpoint and validate when due. The run's mutable state (the
train state, the metrics not yet fetched, the last saved step) lives on this object, not in
closures; everything it opened is closed when it returns or fails.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from ramen_jax.data import pipeline
from ramen_jax.model import build as build_lib
from ramen_jax.model import weights
from ramen_jax.training import (
    checkpointing,
    compile_stats,
    host_sync,
    precompile,
    reporting,
    run_identity,
    sharding,
    validation,
)
from ramen_jax.training.failures import PREEMPTED_EXIT_CODE, Preempted
from ramen_jax.training.step import TrainState


def describe_step(host_batch) -> str:
    """What a step runs, for messages that compare hosts."""
    batch = host_batch.batch
    rows = batch.batch_size
    return f"{host_batch.dataset} ({batch.layout.length} token slots, {rows} local rows)"


def load_init_from(directory: str, state: TrainState, reporter) -> TrainState:
    """Overwrites parameters (and BatchNorm stats) with those of a converted model checkpoint;
    parameters the checkpoint lacks (e.g. a new sensor's projector) keep their fresh init."""
    _, params, stats, _ = weights.load_model(directory)

    def merge(current, loaded, what):
        cur, new = build_lib.flatten_dict(current), build_lib.flatten_dict(loaded)
        bad = [
            f"{'/'.join(map(str, p))}: {np.shape(v)} vs {cur[p].shape}"
            for p, v in new.items()
            if p in cur and tuple(np.shape(v)) != cur[p].shape
        ]
        if bad:
            raise ValueError(f"init_from {directory}: mis-shaped {what}: {bad}")
        merged = {
            p: (
                jax.device_put(np.asarray(new[p], cur[p].dtype), cur[p].sharding) if p in new else v
            )
            for p, v in cur.items()
        }
        fresh = [p for p in cur if p not in new]
        ignored = [p for p in new if p not in cur]
        return build_lib.unflatten_dict(merged), fresh, ignored

    params, fresh, ignored = merge(state.params, params, "parameters")
    stats, _, _ = merge(state.batch_stats, stats, "batch statistics")
    loaded = len(build_lib.flatten_dict(params)) - len(fresh)
    reporter.message(
        f"init_from {directory}: loaded {loaded} parameter arrays; freshly "
        f"initialised: {len(fresh)}; ignored (not in this model): {len(ignored)}"
    )
    return state._replace(params=params, batch_stats=stats)


class TrainingRun:
    def __init__(self, trainer):
        self.trainer = trainer
        self.config = config = trainer.config
        self.reporter = reporting.Reporter(
            trainer.workdir, config.total_steps, 0, config.workdir_sync_seconds
        )
        self.validator = validation.Validator(trainer) if validation.enabled(config) else None
        settings = dict(config.checkpoint)
        keep_best = settings.pop("keep_best", 0)
        if keep_best and self.validator is None:
            logging.warning(
                "checkpoint.keep_best=%d keeps nothing: validation is off (eval.every_steps=-1)",
                keep_best,
            )
            keep_best = 0
        self.ckpt = checkpointing.Checkpointer(trainer.workdir, **settings)
        self.best = checkpointing.BestCheckpoints(trainer.workdir, keep_best) if keep_best else None
        self.config_json = run_identity.config_json(config)
        self.global_batch = {d.name: d.global_batch for d in trainer.datasets}
        self.identity = run_identity.identity(self.config_json, self.global_batch)
        self.state = None
        self.saved_step = None  # the step of the newest checkpoint this run wrote or resumed
        self.pending: list = []  # (step, metrics on device) not yet fetched
        self.shapes_run: set = set()  # this run's step shapes so far: alike on every host
        self.iterator = self.sync = self.signals = None

    def run(self):
        try:
            start = self._restore_or_init()
            self._open_batches(start)
            for step in range(start, self.config.total_steps):
                self._step(step, next(self.iterator))
            self._flush(self.config.total_steps)
        finally:
            self._close()
        return self.state

    def _restore_or_init(self) -> int:
        """The train state to start from and its step; writes the run's identity record."""
        trainer, config = self.trainer, self.config
        restored = self.ckpt.restore_newest_intact(trainer.abstract_state(), self.identity)
        if restored is not None:
            self.state, meta = restored
            self.reporter.message(
                f"resumed from {self.ckpt.directory}/{self.ckpt.newest_complete} "
                f"(data position {meta['next_step']})"
            )
        else:
            self.state = trainer.init_state()
            if config.init_from:
                self.state = load_init_from(config.init_from, self.state, self.reporter)
        if jax.process_index() == 0:
            run_identity.write_record(trainer.workdir, self.config_json, self.identity)
        if config.get("precompile"):
            previews = bool(config.preview_every_steps)
            self.reporter.message(precompile.compile_all(trainer, self.ckpt, previews=previews))
        start = int(jax.device_get(self.state.step))
        if restored is not None:
            self.saved_step = start
        self.reporter.last_step = start
        return start

    def _open_batches(self, start: int) -> None:
        trainer, config = self.trainer, self.config
        shards = sharding.process_batch_shards(trainer.mesh, trainer.rules)
        for d in trainer.datasets:
            logging.info(
                "process %d/%d reads %d of the %d samples of each %s batch",
                jax.process_index(),
                jax.process_count(),
                len(shards.positions(0, d.global_batch)),
                d.global_batch,
                d.name,
            )
        batches = pipeline.StepBatches(
            trainer.datasets,
            seed=config.seed,
            mask_ratio=trainer.model_config.mask_ratio,
            shards=shards,
            mask_time_padding=config.data.get("time_padding", "mask") == "mask",
            mixing=config.data.get("mixing", "weights"),
        )
        self.iterator = pipeline.make_iterator(
            batches,
            config.total_steps,
            start_step=start,
            num_workers=config.data.num_workers,
            num_threads=config.data.get("num_threads", 2),
            prefetch=config.data.get("prefetch", 4),
        )
        self.sync = host_sync.HostSync(
            every_steps=config.host_sync.every_steps,
            timeout_s=config.host_sync.timeout_s,
            start_step=start,
        )
        self.signals = host_sync.StopSignals().__enter__()

    def _step(self, step: int, host_batch) -> None:
        trainer, config = self.trainer, self.config
        signature = pipeline.signature(host_batch)
        new_shape = signature not in self.shapes_run
        self.shapes_run.add(signature)
        batch = sharding.device_batch(host_batch.batch, trainer.mesh, trainer.rules)
        step_fn = trainer.step_fn(host_batch.dataset)
        if new_shape:  # compiled before the hosts agree: none waits in a collective while
            # another compiles (CPU collectives give up after 30 s)
            trainer.programs.prepare(("step", signature), step_fn, self.state, batch)
        if self.sync.due(step, new_shape) and self.sync.exchange(
            step,
            host_sync.signature_digest(signature),
            describe_step(host_batch),
            stop_requested=self.signals.received is not None,
        ):
            self._save(step, wait=True)
            self.reporter.message(
                f"{self.signals.received or 'stop signal on another host'}: checkpoint saved "
                f"at step {step}; stopping (exit code {PREEMPTED_EXIT_CODE}: relaunch "
                "the same command to resume)"
            )
            raise Preempted(step)
        trainer.compiled_signatures.add(signature)
        self.state, metrics = trainer.programs(("step", signature), step_fn, self.state, batch)
        done = step + 1
        self.pending.append((done, metrics))
        self.reporter.count_tokens(
            int(host_batch.batch.layout.token_valid.sum()) * self.global_batch[host_batch.dataset]
        )
        if done % config.log_every_steps == 0 or done == config.total_steps:
            self._flush(done)
        if config.preview_every_steps and done % config.preview_every_steps == 0:
            trainer.write_preview(self.state, host_batch, batch, done, signature)
        if self.ckpt.should_save(done) or done == config.total_steps:
            self._save(done)
        if self.validator is not None and validation.due(config, done):
            values = self.validator.run(self.state, self.sync, done)
            self.reporter.log_values(done, values)
            if self.best is not None:
                self.best.save(done, self.state, self._meta(done), values["val/loss"])

    def _flush(self, step: int) -> None:
        """Fetches the pending metrics, stops on NaN/inf, logs their mean over the window
        (per-modality losses over the steps that kept the modality)."""
        window = [(s, jax.device_get(m)) for s, m in self.pending]
        for s, host in window:
            reporting.check_finite(s, host)
        if window:
            self.reporter.log(
                step,
                reporting.window_mean([m for _, m in window]),
                {
                    "compiles": len(self.trainer.compiled_signatures),
                    **compile_stats.counter().snapshot(),
                    **self.trainer.programs.stats(),
                },
            )
        self.pending.clear()

    def _meta(self, step: int) -> dict:
        trainer = self.trainer
        return checkpointing.run_meta(
            step, self.config.seed, trainer.model_config, self.config, self.identity
        )

    def _save(self, step: int, wait: bool = False) -> None:
        if step == self.saved_step:
            return
        self.saved_step = step
        self._flush(step)
        self.ckpt.save(step, self.state, self._meta(step), wait=wait)

    def _close(self) -> None:
        if self.signals is not None:
            self.signals.__exit__()
        if hasattr(self.iterator, "close"):  # stops Grain's worker processes now
            self.iterator.close()
        self.ckpt.close()
        if self.best is not None:
            self.best.close()
        self.reporter.close()
