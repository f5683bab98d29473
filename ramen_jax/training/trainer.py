"""``train(config, workdir)``: checks the config, locks the workdir and runs a ``Trainer``.

``Trainer`` holds a run's compiled pieces (state init, one jitted step per dataset, previews);
``ramen_jax.training.loop.TrainingRun`` is the loop itself. One code path for a laptop CPU, one
GPU, simulated CPU devices and every host of a TPU slice: mesh and sharding rules from the
config, parameters created sharded, one jitted step per batch signature (dataset x token
bucket) with donated state, metrics fetched to the host only every ``log_every_steps``, Orbax
checkpoints (async, keep-last-k, on SIGTERM, automatic resume), validation on held-out splits
with keep-best-k checkpoints (``validation``), TensorBoard scalars and PNG reconstruction
previews. A NaN/inf loss stops the run, naming the step and modality, before anything after the
last good checkpoint is saved.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from ramen_jax import storage
from ramen_jax.data import pipeline
from ramen_jax.model import attention as attention_lib
from ramen_jax.model import build as build_lib
from ramen_jax.model import config as model_config_lib
from ramen_jax.model import loss as loss_lib
from ramen_jax.training import (
    checkpointing,
    compile_stats,
    config_checks,
    loop,
    precompile,
    previews,
    process_agreement,
    programs,
    reporting,
    run_length,
    sharding,
    workdir_lock,
)
from ramen_jax.training import step as step_lib
from ramen_jax.training.failures import Preempted, RunError
from ramen_jax.training.optimizer import TorchAdamWState, learning_rate_schedule, torch_adamw


def trainable_mask(params, optim_config):
    """True for parameters the optimiser may change (``optim.trainable`` / ``optim.frozen``
    regexes over '/'-joined paths, e.g. ``encoder/blocks/.*``)."""
    keep = [re.compile(p) for p in optim_config.get("trainable", [])]
    frozen = [re.compile(p) for p in optim_config.get("frozen", [])]

    def flag(path):
        name = "/".join(str(p) for p in path)
        ok = not keep or any(p.fullmatch(name) for p in keep)
        return ok and not any(p.fullmatch(name) for p in frozen)

    flat = build_lib.flatten_dict(params)
    mask = {path: flag(path) for path in flat}
    if not any(mask.values()):
        raise ValueError("optim.trainable / optim.frozen leave no trainable parameter")
    return build_lib.unflatten_dict(mask)


def _state_shardings(param_sh, stats_sh, mesh) -> step_lib.TrainState:
    rep = sharding.replicated(mesh)
    opt = TorchAdamWState(
        step=rep, count=jax.tree.map(lambda _: rep, param_sh), mu=param_sh, nu=param_sh
    )
    return step_lib.TrainState(rep, param_sh, stats_sh, opt)


class Trainer:
    """Holds the compiled pieces of a run; ``run()`` runs them (``loop.TrainingRun``)."""

    def __init__(self, config, workdir: str, mesh=None, platform: str | None = None):
        """``platform``: of the devices the steps run on; default: the mesh's devices' (an
        ``AbstractMesh``, which has none, needs it for its default attention)."""
        self.config = config
        self.workdir = workdir
        self.mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
        self.rules = [tuple(r) for r in config.sharding_rules]
        self.datasets = pipeline.build_datasets(
            config.data, sharding.batch_shards(self.mesh, self.rules)
        )
        self.specs = {d.name: tuple(d.specs) for d in self.datasets}
        self.model_config = model_config_lib.from_config(
            config.model,
            {spec.kind for d in self.datasets for spec in d.specs},
            platform or attention_lib.platform_of(self.mesh),
        )
        self.dtype = model_config_lib.compute_dtype(config.model)
        abstract = build_lib.abstract(self.model_config, dtype=self.dtype)
        self.graphdef = nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]
        param_sh, stats_sh = sharding.state_shardings(abstract, self.rules, self.mesh)
        run_length.resolve(config, self.datasets)  # lengths left at 0: from the data sizes
        self.schedule = learning_rate_schedule(
            config.optim, config.total_steps, config.steps_per_epoch
        )
        params_abstract = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
        optim = config.optim
        self.optimizer = torch_adamw(
            self.schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            max_grad_norm=optim.clip or None,
            trainable=trainable_mask(params_abstract, optim),
        )
        self.state_sharding = _state_shardings(param_sh, stats_sh, self.mesh)
        self.options = step_lib.StepOptions(
            seed=config.seed,
            grad_accum=config.optim.get("grad_accum", 1),
            contrastive_weight=config.contrastive.weight,
            contrastive_temperature=config.contrastive.temperature,
        )
        self._init = None
        self._steps = {}
        self._previews = {}
        self.compiled_signatures: set = set()
        self.programs = programs.for_host(config.get("program_map_limit"))

    def init_state(self) -> step_lib.TrainState:
        """Fresh state, created directly with its shardings (jitted once per trainer)."""
        if self._init is None:

            def init():
                model = build_lib.build(self.model_config, seed=self.config.seed, dtype=self.dtype)
                _, params, stats = build_lib.split_model(model)
                return step_lib.TrainState(
                    jnp.zeros((), jnp.int32), params, stats, self.optimizer.init(params)
                )

            self._init = jax.jit(init, out_shardings=self.state_sharding)
        return self._init()

    def abstract_state(self) -> dict:
        shapes = jax.eval_shape(self.init_state)
        return checkpointing.abstract_tree(shapes, self.state_sharding)

    def step_fn(self, dataset: str):
        if dataset not in self._steps:
            fn = functools.partial(
                step_lib.train_step,
                graphdef=self.graphdef,
                specs=self.specs[dataset],
                optimizer=self.optimizer,
                options=self.options,
                learning_rate=self.schedule,
            )
            self._steps[dataset] = jax.jit(
                attention_lib.under_mesh(self.mesh, fn),
                out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
                donate_argnums=0,
            )
        return self._steps[dataset]

    def preview_fn(self, dataset: str):
        """Eval-mode forward with the step's masking noise: first sample's recon + hidden mask."""
        if dataset not in self._previews:
            specs = self.specs[dataset]

            def run(state, batch):
                model = build_lib.merge_model(self.graphdef, state.params, state.batch_stats)
                noise = step_lib.masking_noise(self.options.seed, state.step - 1, batch)
                out = model(batch, specs, noise, train=False)
                first, every_date = out["mask"][:1], jnp.ones((1, 1), bool)  # first sample
                hidden = {
                    s.name: loss_lib.pixel_weights(first, batch.layout, s.name, every_date)[0, 0]
                    for s in specs
                }
                return {k: v[0] for k, v in out["recon"].items()}, hidden

            # replicated outputs: every process can read the first sample (multi-host)
            self._previews[dataset] = jax.jit(
                attention_lib.under_mesh(self.mesh, run),
                out_shardings=sharding.replicated(self.mesh),
            )
        return self._previews[dataset]

    def run(self) -> step_lib.TrainState:
        """Trains from the newest intact checkpoint (or a fresh state) to ``total_steps``."""
        return loop.TrainingRun(self).run()

    def write_preview(self, state, host_batch, batch, step, signature):
        preview_fn = self.preview_fn(host_batch.dataset)
        recon, hidden = self.programs(("preview", signature), preview_fn, state, batch)
        if jax.process_index() == 0:
            recon = {k: np.asarray(jax.device_get(v)) for k, v in recon.items()}
            hidden = {k: np.asarray(jax.device_get(v)) for k, v in hidden.items()}
            previews.write_previews(
                storage.join(self.workdir, "previews"),
                step,
                self.specs[host_batch.dataset],
                host_batch.batch,
                recon,
                hidden,
            )


class Diverged(RunError):
    """A NaN/inf loss (``reporting.check_finite``), reported as one line."""


def reported_error(error: BaseException) -> BaseException:
    """What a stopped run reports: the earliest ``RunError`` or ``Preempted`` among ``error``
    and the exceptions it interrupted (on a full disk, closing the logs fails after the
    checkpoint save did: the save's one line is the one to show), a NaN/inf loss as
    ``Diverged``; any other error as it is."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__context__
    for earlier in reversed(chain):
        if isinstance(earlier, (RunError, Preempted)):
            return earlier
        if isinstance(earlier, reporting.NonFiniteLossError):
            return Diverged(str(earlier))
    return chain[0]


def run_summary(workdir: str, config) -> str:
    """The closing lines of a finished run: where its outputs are and how to look at them."""
    lines = [
        f"finished {config.total_steps} steps; outputs in {workdir}:",
        f"  checkpoints  {storage.join(workdir, 'checkpoints')}",
        f"  TensorBoard  {storage.join(workdir, 'tensorboard')} "
        f"(metrics also in {storage.join(workdir, 'metrics.jsonl')})",
    ]
    if config.get("preview_every_steps"):
        lines.append(f"  previews     {storage.join(workdir, 'previews')}")
    lines.append(f"  look at them: tensorboard --logdir {storage.join(workdir, 'tensorboard')}")
    return "\n".join(lines)


def train(config, workdir: str) -> step_lib.TrainState:
    config_checks.check_config(config)  # before any work, before the workdir exists
    checkpointing.validate_settings(config.checkpoint)
    storage.makedirs(workdir)
    precompile.configure_compilation_cache(config.get("compilation_cache_dir", ""), workdir)
    compile_stats.counter()  # count every program from here on, initialisation included
    lock = workdir_lock.WorkdirLock(workdir)
    process_agreement.decided_on_process_zero(lock.acquire, (workdir_lock.WorkdirLocked,))
    try:
        return Trainer(config, workdir).run()
    except Exception as e:
        reported = reported_error(e)
        if reported is e:
            raise
        if not isinstance(e, reporting.NonFiniteLossError):  # e came while stopping for it
            logging.warning("while stopping: %s", checkpointing.one_line(e))
        raise reported from None
    finally:
        if jax.process_index() == 0:
            lock.release()
