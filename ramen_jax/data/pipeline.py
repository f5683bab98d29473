"""The Grain input pipeline: step plan -> samples -> normalised, padded batch + token layout.

``grain.MapDataset.range(total_steps).map(StepBatches(...))`` yields, for each step, the batch
of *this process* as a ``ramen_jax.batch.HostBatch``: the dataset name, the step index and
the ``Batch`` (``pixels[m]``: float32 ``[B_local, T_m, H_m, H_m, C_m]``, dates, time validity,
the step's ``Layout``). Because a step is a pure function of
its index, the step a checkpoint records is all a resumed run needs to read the exact next
batch (``make_iterator(start_step=...)``); ``mp_prefetch`` runs the map in worker processes.

Why mixing happens per batch, not per sample: the original shares one dataset, one effective
GSD and one modality subset across the whole batch (``ramen_jax.data.plan``). Shapes come from a
closed set: every modality of the drawn dataset is always present at its native size (kept or
not), the token sequence is padded to the dataset's bucket, and every time series of a step is
padded (validity mask) to the dataset's time bucket that holds the longest series of the
step's global batch (``ramen_jax.data.buckets``). Every process derives that bucket from the
sources' per-sample date counts (``source.time_steps``) without loading the other processes'
samples, so the batch shape stays a pure function of ``(seed, step)`` and the data.

Per sample: NaN/inf -> 0, then per-channel normalisation ``(x - mean) / std`` (an all-zero
channel plane, i.e. a missing band or modality, stays zero as in the original); a time series
longer than its modality's ``max_time_steps`` cap (0: none, the paper's) is randomly
sub-sampled (dates kept in order). Before that, a modality configured with a
``temporal_dropout`` keeps a random subset of its dates at every load
(``ramen_jax.data.temporal_dropout``).
"""

from __future__ import annotations

import dataclasses
import functools
import signal
from collections.abc import Sequence

import grain
import jax
import numpy as np
from absl import logging

from ramen_jax import geometry, sensors
from ramen_jax.batch import Batch, HostBatch, Layout, build_layout, sequence_lengths
from ramen_jax.data import buckets as buckets_lib
from ramen_jax.data import mixing as mixing_lib
from ramen_jax.data import plan as plan_lib
from ramen_jax.data import temporal_dropout
from ramen_jax.data.sources import SourceConfigError, make_source

# Dates per series assumed for the shapes of a dataset whose data is not on this machine (a
# config checked ahead of time, ``ramen_jax.perf.aot_check``); the 16 slots of earlier configs.
UNKNOWN_TIME_STEPS = 16


class BatchError(ValueError):
    """A sample that does not match its dataset's declared modalities."""


@dataclasses.dataclass
class DatasetPipeline:
    name: str
    specs: tuple  # ModalitySpec, batch order; specs[0] defines the grid
    gsds: tuple
    weight: float
    global_batch: int
    source: object
    buckets: tuple
    grid_pad: int
    temporal_dropout: dict = dataclasses.field(default_factory=dict)  # modality -> fraction
    time_buckets: tuple = (1,)  # slot counts of the time axis of every series
    series_steps: np.ndarray | None = None  # per sample: its longest series after dropout / cap
    time_caps: dict = dataclasses.field(default_factory=dict)  # modality -> cap (0: none)

    def time_slots(self, indices) -> int:
        """Time bucket of a batch of sample ``indices`` (1 without a time series)."""
        if self.series_steps is None:
            return 1
        longest = int(max(self.series_steps[i] for i in indices))
        return buckets_lib.pick_time_bucket(self.time_buckets, longest)

    def bucket(self, kept_names: Sequence[str], gsd: float) -> buckets_lib.Bucket:
        side = geometry.grid_side(self.specs[0].side, self.specs[0].gsd, gsd)
        tokens, series = sequence_lengths(self.specs, kept_names, side)
        return buckets_lib.pick_bucket(self.buckets, tokens, series)

    def layout(self, kept: tuple, gsd: float, mask_ratio: float) -> Layout:
        """The layout of a draw keeping modalities ``kept`` (indices) at ``gsd``, padded to
        its token bucket."""
        names = [self.specs[i].name for i in kept]
        bucket = self.bucket(names, gsd)
        return build_layout(
            self.specs,
            names,
            gsd,
            grid_pad=self.grid_pad,
            token_bucket=bucket.tokens,
            series_bucket=bucket.series,
            mask_ratio=mask_ratio,
        )


def modality_specs(modalities_config) -> tuple:
    return tuple(
        sensors.modality_from_dict(name, dict(value)) for name, value in modalities_config.items()
    )


def build_datasets(
    data_config, batch_shards: int, *, max_buckets: int | None = None, max_time_buckets=None
) -> list:
    """Datasets of ``config.data``; ``batch_shards`` = devices the batch is split over.

    ``max_buckets`` (``data.max_buckets_per_dataset``) bounds a dataset's step shapes: token
    buckets x time buckets; ``max_time_buckets`` (``data.max_time_buckets_per_dataset``) bounds
    the time buckets of a dataset with a time series (``buckets.split_shape_budget``).
    """
    max_buckets = max_buckets or data_config.get("max_buckets_per_dataset", 16)
    max_time_buckets = max_time_buckets or data_config.get("max_time_buckets_per_dataset", 4)
    return [
        dataset_pipeline(
            name,
            cfg,
            make_source(cfg.source, data_config.get("cache_dir")),
            batch_shards,
            max_buckets,
            max_time_buckets,
        )
        for name, cfg in data_config.datasets.items()
    ]


def dataset_pipeline(
    name: str, cfg, source, batch_shards: int, max_buckets: int, max_time_buckets: int
) -> DatasetPipeline:
    """One dataset's pipeline from its config entry and its (already built) source."""
    specs = modality_specs(cfg.modalities)
    gsds = tuple(float(g) for g in cfg.effective_gsds)
    distribution = buckets_lib.step_distribution(specs, gsds)
    global_batch = int(cfg.per_device_batch) * batch_shards
    dropout = temporal_dropout.fractions_of(cfg.modalities)
    caps = {s.name: s.max_time_steps for s in specs if s.time_series}
    series_steps, time_buckets = None, (1,)
    if caps:
        try:
            series_steps = sample_series_steps(source, caps, dropout)
        except SourceConfigError as error:  # no data here: shapes only (the AOT check)
            capped = all(caps.values())
            assumed = max(caps.values()) if capped else UNKNOWN_TIME_STEPS
            series_steps = np.full(1, assumed, np.int64)
            logging.warning(
                "%s: %s; its series are assumed to have %d dates (shapes only: reading a "
                "batch needs the data)",
                name,
                error,
                series_steps[0],
            )
        token_buckets, time_buckets = buckets_lib.split_shape_budget(
            distribution, series_steps, global_batch, max_buckets, max_time_buckets
        )
        specs = tuple(
            dataclasses.replace(s, max_time_steps=time_buckets[-1]) if s.time_series else s
            for s in specs
        )
    else:
        token_buckets = buckets_lib.choose_buckets(distribution, max_buckets)
    return DatasetPipeline(
        name=name,
        specs=specs,
        gsds=gsds,
        weight=float(cfg.get("weight", 1.0)),
        global_batch=global_batch,
        source=source,
        buckets=tuple(token_buckets),
        grid_pad=buckets_lib.max_grid_side(specs[0], gsds),
        temporal_dropout=dropout,
        time_buckets=time_buckets,
        series_steps=series_steps,
        time_caps=caps,
    )


def sample_series_steps(source, caps: dict, dropout: dict) -> np.ndarray:
    """Per sample, the dates of its longest series as a batch holds them: after the temporal
    dropout's count and the cap. From ``source.time_steps`` where the source has it, else by
    loading every sample once."""
    names = list(caps)
    if hasattr(source, "time_steps"):
        counts = source.time_steps(names)
    else:
        rng = np.random.default_rng(0)
        loaded = [source.load(i, rng) for i in range(len(source))]
        counts = {n: np.array([np.shape(x[n])[0] for x in loaded]) for n in names}
    longest = np.ones(len(source), np.int64)
    for name in names:
        steps = np.asarray(counts[name], np.int64)
        if name in dropout:
            kept = {int(n): temporal_dropout.kept_count(int(n), dropout[name]) for n in set(steps)}
            steps = np.array([kept[int(n)] if n > 1 else int(n) for n in steps], np.int64)
        if caps[name]:
            steps = np.minimum(steps, caps[name])
        longest = np.maximum(longest, steps)
    return longest


def normalise(x: np.ndarray, mean, std) -> np.ndarray:
    """NaN/inf -> 0, then ``(x - mean) / std`` per channel, as the original's loaders: an
    all-zero channel plane (a missing band or modality) stays zero."""
    x = np.asarray(x, np.float32)
    x = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    present = np.any(x != 0, axis=(-3, -2), keepdims=True)  # [T, 1, 1, C]
    y = np.where(present, y, 0.0)
    return np.where(np.isfinite(y), y, 0.0).astype(np.float32)


def prepare_sample(
    sample: dict,
    specs: Sequence[sensors.ModalitySpec],
    stats: dict,
    rng: np.random.Generator,
    where: str = "sample",
    mask_time_padding: bool = True,
    time_slots: int | None = None,
    time_caps: dict | None = None,
):
    """Checks, normalises and pads one sample. Returns ``{m: (pixels, dates, valid)}``.

    A series is cut to ``time_caps[m]`` dates (default: its ``max_time_steps``; 0: no cap) and
    padded to ``time_slots`` (default: its ``max_time_steps``)."""
    out = {}
    for spec in specs:
        if spec.name not in sample:
            raise BatchError(f"{where}: modality {spec.name!r} missing (has {sorted(sample)})")
        x = np.asarray(sample[spec.name])
        if x.ndim != 4 or x.shape[1:] != (spec.side, spec.side, spec.num_channels):
            raise BatchError(
                f"{where}: modality {spec.name!r} has shape {x.shape}, expected [T, {spec.side}, "
                f"{spec.side}, {spec.num_channels}] ({spec.num_channels} channels declared)"
            )
        dates = np.asarray(sample.get(f"{spec.name}_dates", np.ones(x.shape[0])), np.int32)
        if dates.shape != (x.shape[0],):
            raise BatchError(
                f"{where}: {spec.name}_dates has shape {dates.shape}, expected [{x.shape[0]}]"
            )
        cap = (time_caps or {}).get(spec.name, spec.max_time_steps) if spec.time_series else 1
        slots = (time_slots or spec.max_time_steps) if spec.time_series else 1
        if cap and x.shape[0] > cap:
            keep = np.sort(rng.choice(x.shape[0], cap, replace=False))
            x, dates = x[keep], dates[keep]
        if x.shape[0] > slots:
            raise BatchError(
                f"{where}: {spec.name!r} has {x.shape[0]} dates, its batch {slots} slots (the "
                "source's time_steps disagree with its samples: time_steps.json out of date?)"
            )
        mean, std = stats[spec.name]
        x = normalise(x, mean, std)
        steps = x.shape[0]
        pixels = np.zeros((slots, *x.shape[1:]), np.float32)
        pixels[:steps] = x
        if mask_time_padding:
            padded_dates = np.ones(slots, np.int32)
            valid = np.arange(slots) < steps
        else:  # the original's collate: zero frames dated 0 that take part like real ones
            padded_dates = np.zeros(slots, np.int32)
            valid = np.ones(slots, bool)
        padded_dates[:steps] = dates
        out[spec.name] = (pixels, padded_dates, valid)
    return out


class StepBatches:
    """``step -> batch`` of this process (picklable, for Grain workers)."""

    def __init__(
        self,
        datasets: Sequence[DatasetPipeline],
        *,
        seed: int,
        mask_ratio: float,
        shards: plan_lib.BatchShards | None = None,
        mask_time_padding: bool = True,
        mixing: str = "weights",
    ):
        self.datasets = list(datasets)
        self.mask_time_padding = mask_time_padding
        self.seed = seed
        self.mask_ratio = mask_ratio
        self.shards = shards or plan_lib.BatchShards()  # default: one process, whole batch
        self.mixing = mixing
        self.batches_per_epoch = [
            mixing_lib.epoch_batches(len(d.source), d.global_batch) for d in self.datasets
        ]
        self.plan = plan_lib.StepPlan(
            [
                plan_lib.DatasetDraws(d.gsds, len(d.specs), d.weight, batches)
                for d, batches in zip(self.datasets, self.batches_per_epoch, strict=True)
            ],
            seed,
            mixing,
        )
        self._streams = {}

    def stream(self, index: int) -> plan_lib.SampleStream:
        if index not in self._streams:
            num_samples = len(self.datasets[index].source)
            used = self.batches_per_epoch[index] * self.datasets[index].global_batch
            # "epoch": an epoch reads its full batches only (drop_last); a split smaller than
            # one batch is read as an endless stream
            per_epoch = used if self.mixing == "epoch" and used <= num_samples else 0
            self._streams[index] = plan_lib.SampleStream(num_samples, self.seed, index, per_epoch)
        return self._streams[index]

    @functools.lru_cache(maxsize=256)  # noqa: B019 (bounded; a few hundred step signatures)
    def layout(self, dataset_index: int, gsd: float, kept: tuple) -> Layout:
        return self.datasets[dataset_index].layout(kept, gsd, self.mask_ratio)

    def draw(self, step: int) -> plan_lib.StepDraw:
        return self.plan(step)

    def __call__(self, step: int) -> HostBatch:
        draw = self.plan(int(step))
        return self.assemble(
            step, draw.dataset, draw.effective_gsd, draw.kept, draw.draw, self.stream(draw.dataset)
        )

    def assemble(self, step, dataset_index, gsd, kept, draw, stream) -> HostBatch:
        """The ``draw``-th batch of a dataset: global rows ``[draw * B, (draw + 1) * B)`` of
        ``stream`` (position -> sample index), this process's rows loaded."""
        d = self.datasets[dataset_index]
        positions = self.shards.positions(draw, d.global_batch)
        batch_rows = range(draw * d.global_batch, (draw + 1) * d.global_batch)
        time_slots = d.time_slots([stream[p] for p in batch_rows])  # the global batch's
        prepared = []
        for position in positions:
            index = stream[position]
            rng = np.random.default_rng([self.seed, 0xDA7A, dataset_index, position])
            sample = d.source.load(index, rng)
            if d.temporal_dropout:
                dropout_rng = np.random.default_rng([self.seed, 0x7D0F, int(step), position])
                sample = temporal_dropout.drop_dates(sample, d.temporal_dropout, dropout_rng)
            prepared.append(
                prepare_sample(
                    sample,
                    d.specs,
                    d.source.stats(sample),
                    rng,
                    where=f"{d.name}[{index}]",
                    mask_time_padding=self.mask_time_padding,
                    time_slots=time_slots,
                    time_caps=d.time_caps,
                )
            )
        pixels, dates, time_valid = (
            {spec.name: np.stack([p[spec.name][i] for p in prepared]) for spec in d.specs}
            for i in range(3)
        )
        batch = Batch(pixels, dates, time_valid, self.layout(dataset_index, gsd, kept))
        return HostBatch(dataset=d.name, step=int(step), batch=batch)


class ValidationBatches(StepBatches):
    """``index -> batch`` over held-out splits: every dataset's full global batches in order
    (at most ``batches_per_dataset`` each, 0: all), samples in split order. The GSD, the
    modality subset (drawn as in training) and any temporal dropout come from ``(seed, index)``
    only, so every validation of a run sees the same batches."""

    def __init__(self, datasets, *, batches_per_dataset: int = 0, **kwargs):
        super().__init__(datasets, mixing="weights", **kwargs)
        self.order = []
        for index, d in enumerate(self.datasets):
            count = len(d.source) // d.global_batch
            if batches_per_dataset:
                count = min(count, batches_per_dataset)
            self.order += [(index, draw) for draw in range(count)]

    def __len__(self) -> int:
        return len(self.order)

    def __call__(self, index: int) -> HostBatch:
        dataset_index, draw = self.order[index]
        d = self.datasets[dataset_index]
        rng = np.random.default_rng([self.seed, 0x7A11D, dataset_index, draw])
        gsd = float(d.gsds[int(rng.integers(len(d.gsds)))])
        size = int(rng.integers(1, len(d.specs) + 1))
        kept = tuple(int(i) for i in rng.choice(len(d.specs), size, replace=False))
        return self.assemble(index, dataset_index, gsd, kept, draw, range(len(d.source)))


def make_dataset(step_batches: StepBatches, total_steps: int) -> grain.MapDataset:
    return grain.MapDataset.range(total_steps).map(step_batches)


def make_iterator(
    step_batches: StepBatches,
    total_steps: int,
    *,
    start_step: int = 0,
    num_workers: int = 0,
    num_threads: int = 2,
    prefetch: int = 4,
):
    """An iterator over the batches of steps ``start_step .. total_steps - 1``.

    Resuming needs no iterator state: a batch is a pure function of its step index, so a run
    that restarts at step ``s`` reads the dataset from ``s`` on, with any worker count
    (Grain's multi-worker iterators have their own state format, which a run with another
    worker count could not restore). ``num_threads`` batches are prepared concurrently and at
    most ``prefetch`` wait ready (a batch can be large: Grain's defaults of 16 threads / 500
    batches would hold hundreds in memory in front of a slower training step);
    ``num_workers`` > 0 prepares them in worker processes.
    """
    if not 0 <= start_step <= total_steps:
        raise ValueError(f"start_step {start_step} is outside 0..{total_steps}")
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    ds = make_dataset(step_batches, total_steps)[start_step:].to_iter_dataset(options)
    if num_workers > 0:
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers),
            worker_init_fn=ignore_stop_signals,
        )
    return iter(ds)


def ignore_stop_signals(worker_index: int, worker_count: int) -> None:
    """Runs in each Grain worker: SIGTERM and SIGINT are for the trainer only.

    Schedulers signal every process of a job (SLURM the whole step, a VM shutdown every
    process, Ctrl-C the terminal's process group). A worker that died of it would take the
    input pipeline down before the trainer could agree on a stop step and save; the trainer
    closes its workers itself when it stops.
    """
    del worker_index, worker_count
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def signature(host: HostBatch) -> tuple:
    """What XLA compiles for: dataset and every array shape (the layout's included)."""
    leaves = jax.tree_util.tree_flatten_with_path(host.batch)[0]
    return (host.dataset,) + tuple((jax.tree_util.keystr(p), np.shape(v)) for p, v in leaves)
