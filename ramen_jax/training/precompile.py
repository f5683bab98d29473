"""Every program a run will need, compiled before step 1 (``--config.precompile=true``).

Without it a step shape is compiled the first time a batch of that shape arrives, which on a
pod stalls every host mid-run (minutes for a large model) at unpredictable steps. A run's step
shapes form a closed set, dataset x token bucket x time bucket (``ramen_jax.data.buckets``):
the batch arrays of a dataset always have their native sizes but for the time axis of its
series (its time bucket), and the layout's shapes depend only on the token bucket.
``step_shapes`` enumerates each dataset's GSDs and modality subsets, keeps one draw per token
bucket, repeats it for every time bucket, and builds that draw's host batch from
``ShapeDtypeStruct``s (the layout is the real one: it is small and its values are what
``pipeline.signature`` hashes). ``compile_all`` lowers
the step (and the preview, when previews are on) for each from abstract arguments carrying the
batch and state shardings, and the checkpoint's finite/digest check, so that no program is built
after step 1.

The persistent compilation cache is on by default (``configure_compilation_cache``), so a
relaunch after preemption loads these programs instead of building them again.
"""

from __future__ import annotations

import itertools
import time

import jax
import numpy as np

from ramen_jax.batch import Batch, HostBatch, Layout
from ramen_jax.data import pipeline
from ramen_jax.training import sharding

CACHE_SUBDIR = "compilation_cache"


def configure_compilation_cache(setting: str, workdir: str) -> str | None:
    """Turns JAX's persistent compilation cache on; returns its directory (None: off).

    ``setting`` is ``compilation_cache_dir``: a directory (local or gs://); ``"off"``; or
    ``""`` (the default): the cache JAX is already configured with (``JAX_COMPILATION_CACHE_DIR``)
    if any, else ``WORKDIR/compilation_cache``, shared by every process and every relaunch of
    the run. Programs are cached however fast they compiled: ``programs.MapLimitedPrograms``
    relies on the cache to bring back the executables it drops.
    """
    if setting == "off":
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if not setting and jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    directory = setting or f"{workdir.rstrip('/')}/{CACHE_SUBDIR}"
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return directory


def _abstract(array, where) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(array), np.asarray(array).dtype, sharding=where)


def shape_batch(
    dataset: pipeline.DatasetPipeline, layout: Layout, rows: int, time_slots: int
) -> HostBatch:
    """A host batch of ``rows`` samples with abstract arrays (``ShapeDtypeStruct``s, the
    dtypes ``prepare_sample`` gives) and a real ``layout``: the one place a batch is built
    without data (the benchmarks fill it with ``ramen_jax.perf.synthetic``)."""
    batch = Batch(pixels={}, dates={}, time_valid={}, layout=layout)
    for spec in dataset.specs:
        slots = time_slots if spec.time_series else 1
        batch.pixels[spec.name] = jax.ShapeDtypeStruct(
            (rows, slots, spec.side, spec.side, spec.num_channels), np.float32
        )
        batch.dates[spec.name] = jax.ShapeDtypeStruct((rows, slots), np.int32)
        batch.time_valid[spec.name] = jax.ShapeDtypeStruct((rows, slots), np.bool_)
    return HostBatch(dataset.name, batch)


def bucket_draws(dataset: pipeline.DatasetPipeline) -> list[tuple]:
    """``(token bucket, effective GSD, kept modality indices)`` for every token bucket a run of
    ``dataset`` can meet, each with the first draw (GSDs in order, then modality subsets by
    size) that lands in it: the layout's shapes depend only on the bucket, so that draw's
    layout stands for all of them. Buckets in the order that enumeration first meets them."""
    draws = {}
    for gsd in dataset.gsds:
        for size in range(1, len(dataset.specs) + 1):
            for kept in itertools.combinations(range(len(dataset.specs)), size):
                names = [dataset.specs[i].name for i in kept]
                draws.setdefault(dataset.bucket(names, gsd), (gsd, kept))
    return [(bucket, gsd, kept) for bucket, (gsd, kept) in draws.items()]


def step_shapes(batches: pipeline.StepBatches) -> list[HostBatch]:
    """One host batch (of this process, arrays abstract) per step signature the run can meet:
    dataset x token bucket x time bucket."""
    out = []
    for index, dataset in enumerate(batches.datasets):
        rows = len(batches.shards.positions(0, dataset.global_batch))
        for _, gsd, kept in bucket_draws(dataset):
            layout = batches.layout(index, gsd, kept)
            out += [shape_batch(dataset, layout, rows, t) for t in dataset.time_buckets]
    return out


def largest_step_shapes(
    datasets, mask_ratio: float, per_dataset: int = 1, every_time_bucket: bool = False
) -> list[HostBatch]:
    """Host batches (shapes only) for each dataset's ``per_dataset`` largest token buckets
    (0: all of them), each with its largest time bucket, or every time bucket with
    ``every_time_bucket``: ``largest_step_shapes(datasets, r, 0, True)`` is every step shape
    of the run, the set ``step_shapes`` enumerates (``bucket_draws``), largest first, with
    global batches and no ``StepBatches`` (for ``ramen_jax.perf.aot_check``)."""
    out = []
    for d in datasets:
        draws = sorted(bucket_draws(d), key=lambda x: (x[0].tokens, x[0].series), reverse=True)
        times = sorted(d.time_buckets, reverse=True)
        for _, gsd, kept in draws[: per_dataset or None]:
            layout = d.layout(kept, gsd, mask_ratio)
            for slots in times if every_time_bucket else times[:1]:
                out.append(shape_batch(d, layout, d.global_batch, slots))
    return out


def abstract_state(trainer):
    """The trainer's state as ``ShapeDtypeStruct``s carrying its shardings (nothing allocated)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(trainer.init_state),
        trainer.state_sharding,
    )


def abstract_device_batch(host_batch: Batch, global_batch: int, mesh, rules) -> Batch:
    """What ``sharding.device_batch`` makes of ``host_batch``, as ShapeDtypeStructs."""
    split = sharding.batch_sharding(mesh, rules)
    rep = sharding.replicated(mesh)
    arrays = host_batch.map_samples(
        lambda x: jax.ShapeDtypeStruct((global_batch, *x.shape[1:]), x.dtype, sharding=split)
    )
    return arrays.replace(layout=jax.tree.map(lambda x: _abstract(x, rep), host_batch.layout))


def compile_all(trainer, checkpointer, *, previews: bool) -> str:
    """Compiles every step program (and preview, and the checkpoint check); returns a summary."""
    start = time.time()
    batches = pipeline.StepBatches(
        trainer.datasets,
        seed=trainer.config.seed,
        mask_ratio=trainer.model_config.mask_ratio,
        shards=sharding.process_batch_shards(trainer.mesh, trainer.rules),
    )
    state = abstract_state(trainer)
    global_batches = {d.name: d.global_batch for d in batches.datasets}
    shapes = step_shapes(batches)
    for host in shapes:
        signature = pipeline.signature(host)
        name = host.dataset
        batch = abstract_device_batch(host.batch, global_batches[name], trainer.mesh, trainer.rules)
        trainer.programs.prepare(("step", signature), trainer.step_fn(name), state, batch)
        if previews:
            trainer.programs.prepare(("preview", signature), trainer.preview_fn(name), state, batch)
        trainer.compiled_signatures.add(signature)
    checkpointer.prepare(trainer.abstract_state())
    per_dataset = {n: sum(h.dataset == n for h in shapes) for n in global_batches}
    return (
        f"precompiled {len(shapes)} step shapes {per_dataset}"
        + (" with their previews" if previews else "")
        + f" in {time.time() - start:.0f} s"
    )
