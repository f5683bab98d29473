"""Shared machinery of the dataset converters (``python -m data_prep.<name>``).

Owns:

- the record contract: ``DatasetSpec`` (its modalities described in ``ramen_jax.data.catalog``)
  -> TFDS features (every modality ``m`` is a ``[T, H, W, C]`` tensor plus ``m_dates``, int32
  day-of-year ``[T]``), zero-filled missing modalities, and the check of every example against
  its spec;
- ``ChunkBuilder``, the TFDS ``GeneratorBasedBuilder`` each dataset subclasses. One instance writes
  one *chunk* (a slice of one split) as a single ArrayRecord shard with ``download_and_prepare``,
  which commits it atomically (TFDS writes into an ``incomplete.*`` folder and renames it);
- ``convert``: plans the chunks, builds the pending ones (optionally in worker processes), then
  finalises: moves the shards into ``OUT``, writes ``stats.json`` (and the same statistics as
  the original's ``NORM_<key>_patch.json`` files) and finally
  ``dataset_info.json`` + ``features.json`` (their presence marks a finished dataset). A
  conversion that ends with no example at all is refused (``EmptyDatasetError``), never finished;
- resuming: ``OUT/_work/plan.json`` fingerprints the chunk plan, and
  ``OUT/_work/chunks/<chunk>.json`` (written atomically once the chunk's shard is committed) marks
  a chunk done and holds its statistics. A rerun skips done chunks and discards what an
  interrupted chunk left behind;
- collecting per-channel statistics of the train split (computed in ``data_prep.statistics``);
- the command-line flags shared by the converters.

The format itself (file names, ``load_split`` / ``load_stats`` / ``load_time_steps``) is the
library's, ``ramen_jax.data.records``: the converters write what it reads.

A ``Source`` (one per dataset) reads the published on-disk format and yields examples; reading
problems are raised as ``SourceError`` naming the offending path, and ``--on-error`` decides
whether the run stops or skips that source item.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from datetime import date
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import splits as splits_lib

from data_prep import statistics
from data_prep.statistics import ChannelStats, PatchStats  # noqa: F401  (re-exported)
from ramen_jax import cli
from ramen_jax.data import catalog
from ramen_jax.data.records import (  # noqa: F401  (the record format; re-exported)
    DATES_SUFFIX,
    INFO_FILES,
    NO_DATE,
    STATS_FILE,
    TIME_STEPS_FILE,
    TRAIN,
    load_split,
    load_stats,
    load_time_steps,
)

VERSION = "1.0.0"
STATS_FORMAT = "pooled+patch,time_steps"  # what a chunk result holds; part of the fingerprint
WORK_DIR = "_work"
ON_ERROR_CHOICES = ("stop", "skip")

log = logging.getLogger("data_prep")


class EmptyDatasetError(Exception):
    """Every source item was skipped (or none was listed): there is no dataset to finish."""


class SourceError(Exception):
    """A source file is missing, unreadable or not in the published layout."""

    def __init__(self, path, reason: str):
        super().__init__(str(path), reason)  # both in args, so the error pickles across processes
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# A modality as the records store it: described once, in the library's catalog.
Modality = catalog.StoredModality


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the records of one dataset hold (its modalities: ``ramen_jax.data.catalog``), and
    how big its chunks are by default."""

    name: str
    description: str
    homepage: str
    modalities: tuple[Modality, ...]
    chunk_size: int  # source items per chunk (one shard per chunk)
    text_fields: tuple[str, ...] = ()
    int_fields: tuple[str, ...] = ()

    def features(self) -> tfds.features.FeaturesDict:
        fields = {"id": tfds.features.Text()}
        for modality in self.modalities:
            fields[modality.name] = tfds.features.Tensor(
                shape=modality.shape, dtype=modality.dtype, encoding="zlib"
            )
            fields[modality.name + DATES_SUFFIX] = tfds.features.Tensor(
                shape=modality.shape[:1], dtype=np.int32
            )
        fields.update({name: tfds.features.Text() for name in self.text_fields})
        fields.update({name: tfds.features.Scalar(dtype=np.int64) for name in self.int_fields})
        return tfds.features.FeaturesDict(fields)

    def check(self, example: Mapping, where: str) -> None:
        """Raises ``SourceError`` unless ``example`` matches this spec exactly."""
        expected = {"id", *self.text_fields, *self.int_fields}
        for modality in self.modalities:
            expected |= {modality.name, modality.name + DATES_SUFFIX}
            data, dates = example.get(modality.name), example.get(modality.name + DATES_SUFFIX)
            if data is None or dates is None:
                continue  # reported below as a missing key
            steps, *rest = data.shape
            if (
                tuple(rest) != modality.shape[1:]
                or data.dtype != modality.dtype
                or steps < 1
                or (steps != 1 and not modality.time_series)
            ):
                raise SourceError(
                    where,
                    f"{modality.name}: got {data.dtype}{list(data.shape)}, expected "
                    f"{np.dtype(modality.dtype)}{list(modality.shape)}",
                )
            if dates.shape != (steps,) or dates.dtype != np.int32:
                raise SourceError(where, f"{modality.name}: dates {dates.dtype}{list(dates.shape)}")
            if not np.all((dates >= 1) & (dates <= 366)):
                raise SourceError(where, f"{modality.name}: day-of-year outside 1..366: {dates}")
        if set(example) != expected:
            raise SourceError(where, f"example keys {sorted(example)} != {sorted(expected)}")


def day_of_year(day: date) -> int:
    return day.timetuple().tm_yday


def channels_last(array: np.ndarray) -> np.ndarray:
    """``[..., C, H, W]`` -> ``[..., H, W, C]``."""
    return np.moveaxis(array, -3, -1)


def as_stored_dtype(array: np.ndarray, dtype: type, path) -> np.ndarray:
    """Casts to the record dtype, refusing casts that would change a value."""
    if array.dtype == dtype:
        return array
    cast = array.astype(dtype)
    if not np.array_equal(cast.astype(array.dtype), array, equal_nan=True):
        raise SourceError(path, f"{array.dtype} values do not fit {np.dtype(dtype)} losslessly")
    return cast


def read_geotiff(path: Path) -> np.ndarray:
    """All bands of a GeoTIFF as ``[bands, H, W]`` in the file's dtype."""
    try:
        with rasterio.open(path) as raster:
            return raster.read()
    except (rasterio.errors.RasterioError, OSError) as error:
        raise SourceError(path, str(error)) from error


class Source(abc.ABC):
    """Reads one dataset in its published layout. Items are JSON-able keys of source units."""

    examples_per_item = 1
    # The original leaves all-zero (time step, channel) planes out of its normalisation
    # (MMEarth only); see ``data_prep.statistics``.
    skip_zero_planes = False
    # stats key -> the original's channel of each record channel, where the records reorder it.
    original_channels: Mapping[str, Sequence[int]] = {}

    @abc.abstractmethod
    def items(self, split: str) -> list:
        """Source items of a split, in a deterministic order."""

    @abc.abstractmethod
    def examples(self, item) -> Iterator[tuple[str, dict]]:
        """(unique key, example) pairs of one item; raises ``SourceError`` on bad input."""

    @abc.abstractmethod
    def describe(self, item) -> str:
        """Where an item comes from, for error messages."""

    def stats_key(self, modality: str, example: Mapping) -> str:
        """Name of the statistics entry that ``example[modality]`` contributes to."""
        del example
        return modality


@dataclasses.dataclass(frozen=True)
class Chunk:
    split: str
    index: int
    items: tuple

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}"


def plan_chunks(items_by_split: Mapping[str, Sequence], chunk_size: int) -> list[Chunk]:
    return [
        Chunk(split, index, tuple(items[start : start + chunk_size]))
        for split, items in items_by_split.items()
        for index, start in enumerate(range(0, len(items), chunk_size))
    ]


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    def initialize_from_bucket(self) -> None:
        """Nothing to fetch: these datasets are never on TFDS's public bucket (TFDS would
        create, and leave behind, an empty temporary directory per chunk for the lookup)."""


class ChunkBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of one chunk; datasets subclass it with their ``name`` and ``DATASET``."""

    VERSION = tfds.core.Version(VERSION)
    DATASET: DatasetSpec

    def __init__(self, *, source: Source | None, chunk: Chunk | None, on_error: str, **kwargs):
        self._source, self._chunk, self._on_error = source, chunk, on_error
        self.stats: dict[str, statistics.KeyStats] = {}
        self.skipped: list[str] = []
        self.num_examples = 0
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self,
            description=self.DATASET.description,
            homepage=self.DATASET.homepage,
            features=self.DATASET.features(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # sources are local files
        return {self._chunk.split: self._generate_examples()}

    def _generate_examples(self):
        written_keys = set()
        for item in self._chunk.items:
            try:
                examples = list(self._source.examples(item))  # all examples of an item, or none
                item_keys = set()
                for key, example in examples:
                    self.DATASET.check(example, self._source.describe(item))
                    # TFDS would stop the whole build on a repeated key, past --on-error and
                    # with an error that needs TensorFlow to be shown: refuse it here instead.
                    if key in written_keys or key in item_keys:
                        raise SourceError(self._source.describe(item), f"repeated record key {key}")
                    item_keys.add(key)
                written_keys |= item_keys
            except SourceError as error:
                if self._on_error == "stop":
                    raise
                log.warning("skipped %s", error)
                self.skipped.append(str(error))
                continue
            for key, example in examples:
                if self._chunk.split == TRAIN:
                    self._add_to_stats(example)
                self.num_examples += 1
                yield key, example

    def _add_to_stats(self, example: Mapping) -> None:
        for modality in self.DATASET.modalities:
            key = self._source.stats_key(modality.name, example)
            if key not in self.stats:
                channels = len(modality.channels)
                self.stats[key] = statistics.KeyStats(channels, self._source.skip_zero_planes)
            stats = self.stats[key]
            stats.add(example[modality.name])

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):
        # Local files only, nothing downloaded: no checksums file. (TFDS would otherwise locate
        # one through ``importlib_resources``, a package this environment does not have.)
        return None

    # One chunk of many: per-chunk TFDS banners would drown ``convert``'s progress log.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass


class Workspace:
    """``OUT/_work``: the plan fingerprint, per-chunk results and per-chunk TFDS build folders."""

    def __init__(self, out_dir: Path):
        self.root = out_dir / WORK_DIR

    def open(self, fingerprint: str) -> None:
        plan = self.root / "plan.json"
        if plan.exists():
            if json.loads(plan.read_text())["fingerprint"] != fingerprint:
                raise RuntimeError(
                    f"{self.root.parent} holds an unfinished conversion of other inputs or options;"
                    " delete it or choose another --out"
                )
            return
        write_json_atomic(plan, {"fingerprint": fingerprint})

    def build_dir(self, chunk: Chunk) -> Path:
        return self.root / "builds" / chunk.name

    def result(self, chunk: Chunk) -> dict | None:
        path = self.root / "chunks" / f"{chunk.name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save_result(self, chunk: Chunk, result: dict) -> None:
        write_json_atomic(self.root / "chunks" / f"{chunk.name}.json", result)


def write_json_atomic(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as file:
        json.dump(value, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def fingerprint(name: str, chunks: Sequence[Chunk]) -> str:
    plan = [
        name,
        VERSION,
        STATS_FORMAT,
        [(chunk.split, chunk.index, list(chunk.items)) for chunk in chunks],
    ]
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()


def build_chunk(builder_class, source: Source, chunk: Chunk, build_dir: Path, on_error: str):
    """Writes one chunk as one committed shard; returns its result record."""
    builder = builder_class(
        source=source,
        chunk=chunk,
        on_error=on_error,
        data_dir=os.fspath(build_dir),
        file_format="array_record",
    )
    config = tfds.download.DownloadConfig(
        num_shards=1, compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
    try:
        builder.download_and_prepare(download_config=config)
    except AssertionError:
        if builder.num_examples:
            raise
        # Every item of the chunk was skipped: TFDS refuses to write an empty split.
    shard, num_bytes = None, 0
    if builder.num_examples:
        num_bytes = builder.info.splits[chunk.split].num_bytes
        (shard,) = builder.data_path.glob(f"{builder.name}-{chunk.split}.array_record-*")
        shard = os.fspath(shard.relative_to(build_dir))
    return {
        "num_examples": builder.num_examples,
        "num_bytes": num_bytes,
        "shard": shard,
        "skipped": builder.skipped,
        "stats": {key: stats.to_json() for key, stats in builder.stats.items()},
        "time_steps": None if builder.num_examples else {},  # read back when finalising
    }


def _time_steps(builder_class, data_path, split: str) -> dict:
    """Dates per record of each time-series modality, in the shard's record order (TFDS orders
    a shard by hashed key, not as the source yields): read back from the committed shard, by
    the main process (an ArrayRecord reader in a forked worker can crash on the reader threads
    its parent started)."""
    names = [m.name for m in builder_class.DATASET.modalities if m.time_series]
    if not names:
        return {}
    records = tfds.builder_from_directory(os.fspath(data_path)).as_data_source(split)
    counts = {name: [] for name in names}
    for index in range(len(records)):
        record = records[index]
        for name in names:
            counts[name].append(len(record[name + DATES_SUFFIX]))
    return counts


_worker_job: tuple = ()


def _init_worker(builder_class, source, on_error) -> None:
    global _worker_job
    _worker_job = (builder_class, source, on_error)


def _build_in_worker(chunk: Chunk, build_dir: Path) -> dict:
    builder_class, source, on_error = _worker_job
    return build_chunk(builder_class, source, chunk, build_dir, on_error)


def convert(
    builder_class,
    source: Source,
    out_dir: Path,
    splits: Sequence[str],
    *,
    on_error: str = "stop",
    max_examples: int | None = None,
    chunk_size: int | None = None,
    workers: int = 1,
    stats_method: str = "patch",
) -> None:
    """Converts ``splits`` of ``source`` into a TFDS ArrayRecord dataset in ``out_dir``.

    ``stats_method`` (``patch``, the original's, or ``pooled``) picks the statistics written to
    ``stats.json`` and the ``NORM_<key>_patch.json`` files (``data_prep.statistics``).

    Resumable: rerun with the same arguments after an interruption and only unfinished chunks
    are built again. Raises ``SourceError`` (``on_error='stop'``) naming the bad source path, and
    ``EmptyDatasetError`` when no split holds an example (every item skipped, or none listed).
    """
    if stats_method not in statistics.METHODS:
        raise ValueError(f"unknown statistics method {stats_method!r}; known: {statistics.METHODS}")
    out_dir = Path(out_dir)
    work = Workspace(out_dir)
    if (out_dir / INFO_FILES[-1]).exists() and not work.root.exists():
        log.info("%s already holds a finished conversion; nothing to do", out_dir)
        return
    tfds.disable_progress_bar()
    items = {split: list(source.items(split)) for split in splits}
    if max_examples is not None:
        limit = math.ceil(max_examples / source.examples_per_item)
        items = {split: split_items[:limit] for split, split_items in items.items()}
    chunks = plan_chunks(items, chunk_size or builder_class.DATASET.chunk_size)
    work.open(fingerprint(builder_class.name, chunks))
    pending = [chunk for chunk in chunks if work.result(chunk) is None]
    for chunk in pending:
        shutil.rmtree(work.build_dir(chunk), ignore_errors=True)  # leftovers of an interruption
    log.info(
        "%s: %d chunks planned (%s), %d left to build",
        builder_class.name,
        len(chunks),
        ", ".join(f"{split}: {len(split_items)} items" for split, split_items in items.items()),
        len(pending),
    )
    progress = _Progress(len(pending))
    for chunk, result in _build_chunks(builder_class, source, pending, work, on_error, workers):
        work.save_result(chunk, result)
        progress.update(chunk, result)
    orders = {key: list(order) for key, order in source.original_channels.items()}
    _finalize(builder_class, chunks, work, out_dir, list(items), (stats_method, orders))


def _build_chunks(builder_class, source, pending, work, on_error, workers):
    if workers <= 1:
        for chunk in pending:
            yield chunk, build_chunk(builder_class, source, chunk, work.build_dir(chunk), on_error)
        return
    # fork: workers inherit the source (metadata tables can be large) instead of unpickling it.
    pool = futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(builder_class, source, on_error),
    )
    try:
        jobs = {pool.submit(_build_in_worker, c, work.build_dir(c)): c for c in pending}
        for job in futures.as_completed(jobs):
            yield jobs[job], job.result()
    finally:
        pool.shutdown(cancel_futures=True)


class _Progress:
    def __init__(self, chunks: int):
        self.chunks, self.done, self.examples, self.start = chunks, 0, 0, time.monotonic()

    def update(self, chunk: Chunk, result: Mapping) -> None:
        self.done += 1
        self.examples += result["num_examples"]
        elapsed = time.monotonic() - self.start
        rate = self.examples / max(elapsed, 1e-9)
        eta = elapsed / self.done * (self.chunks - self.done)
        log.info(
            "chunk %s: %d examples, %d skipped | %d/%d chunks, %d examples, %.1f examples/s, "
            "ETA %.0f s",
            chunk.name,
            result["num_examples"],
            len(result["skipped"]),
            self.done,
            self.chunks,
            self.examples,
            rate,
            eta,
        )


def _finalize(builder_class, chunks, work: Workspace, out_dir: Path, splits, stats_options) -> None:
    """Moves the shards into place, then writes stats.json (and the same statistics as the
    original's NORM files) and the TFDS metadata."""
    results = [(chunk, work.result(chunk)) for chunk in chunks]
    for chunk, result in results:  # before any shard moves, so that a rerun finds them all
        if result.get("time_steps") is None:
            built = work.build_dir(chunk) / result["shard"]
            result["time_steps"] = _time_steps(builder_class, built.parent, chunk.split)
            work.save_result(chunk, result)
    split_infos = []
    for split in splits:
        done = [(c, r) for c, r in results if c.split == split and r["num_examples"]]
        if not done:
            log.warning("split %s has no examples; it is not written", split)
            continue
        template = naming.ShardedFileTemplate(
            data_dir=out_dir,
            dataset_name=builder_class.name,
            split=split,
            filetype_suffix="array_record",
        )
        for index, (chunk, result) in enumerate(done):
            built = work.build_dir(chunk) / result["shard"]
            target = template.sharded_filepath(shard_index=index, num_shards=len(done))
            if built.exists():
                os.replace(built, target)
            elif not Path(target).exists():
                raise RuntimeError(f"shard of chunk {chunk.name} is lost: {built}")
        split_infos.append(
            splits_lib.SplitInfo(
                name=split,
                shard_lengths=[result["num_examples"] for _, result in done],
                num_bytes=sum(result["num_bytes"] for _, result in done),
                filename_template=template,
            )
        )
    if not split_infos:
        _refuse_empty_dataset(results, work, out_dir)
    if TRAIN in splits:
        method, orders = stats_options
        states = [result["stats"] for chunk, result in results if chunk.split == TRAIN]
        merged = statistics.merged_summary(states, method, orders)
        statistics.write_norm_files(out_dir, merged)
        write_json_atomic(out_dir / STATS_FILE, merged)
    time_steps = {}
    for split in splits:
        for chunk, result in results:
            if chunk.split == split and result["num_examples"]:
                for name, counts in result["time_steps"].items():
                    time_steps.setdefault(split, {}).setdefault(name, []).extend(counts)
    write_json_atomic(out_dir / TIME_STEPS_FILE, time_steps)
    builder = builder_class(
        source=None,
        chunk=None,
        on_error="stop",
        data_dir=os.fspath(work.root / "info"),
        file_format="array_record",
    )
    builder.info.set_splits(splits_lib.SplitDict(split_infos))
    staging = work.root / "info_files"
    staging.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(staging)
    for name in INFO_FILES:
        os.replace(staging / name, out_dir / name)
    shutil.rmtree(work.root)
    skipped = sum(len(result["skipped"]) for _, result in results)
    log.info("%s finished in %s (%d source items skipped)", builder_class.name, out_dir, skipped)


def _refuse_empty_dataset(results, work: Workspace, out_dir: Path) -> None:
    """Raises ``EmptyDatasetError``; the workspace goes, so a rerun reads the sources again."""
    skipped = [reason for _, result in results for reason in result["skipped"]]
    shutil.rmtree(work.root)
    if skipped:
        raise EmptyDatasetError(
            f"{out_dir}: no examples written, all {len(skipped)} source items were skipped "
            f"(first: {skipped[0]})"
        )
    raise EmptyDatasetError(f"{out_dir}: no examples written, the splits list no source items")


def local_folder(text: str) -> Path:
    """A ``--src`` / ``--out`` folder. The converters read and write local files (h5py,
    rasterio, the ArrayRecord writer), and ``Path("gs://b/x")`` would be the local ``gs:/b/x``:
    a URL is refused."""
    if "://" in text:
        raise argparse.ArgumentTypeError(
            f"{text} is a URL: converters read and write local folders; convert locally, then "
            "copy the whole finished folder to the bucket (docs/data_prep.md)"
        )
    return Path(text)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--src", type=local_folder, required=True, help="dataset root (layout above)"
    )
    parser.add_argument(
        "--out",
        type=local_folder,
        required=True,
        help="output folder: ArrayRecord shards, dataset_info.json, features.json, stats.json",
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="stop",
        help="on a missing or corrupt source file: stop (default) or skip its item and go on",
    )
    parser.add_argument(
        "--max-examples",
        type=cli.positive_int,
        default=None,
        help="convert at most about this many examples per split (a quick trial run)",
    )
    parser.add_argument(
        "--chunk-size",
        type=cli.positive_int,
        default=None,
        help="source items per chunk; each chunk is one shard and one unit of resuming",
    )
    parser.add_argument(
        "--workers", type=cli.positive_int, default=1, help="chunks built in parallel"
    )
    parser.add_argument(
        "--stats",
        choices=statistics.METHODS,
        default="patch",
        help="normalisation statistics: patch (default, the original's: mean over train samples "
        "of per-sample means and unbiased stds) or pooled (over all values)",
    )


def run(builder_class, make_source, splits_of, args: argparse.Namespace) -> int:
    """Runs a converter CLI; returns the process exit status. A run that cannot start, stops on
    a source error or writes no example ends with one ``error: ...`` line on stderr and status
    1, as every command line of the project reports a user's mistake (``ramen_jax.cli``)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("absl").setLevel(logging.WARNING)  # TFDS logs every chunk twice
    try:
        source = make_source(args)
    except (SourceError, OSError, ValueError) as error:
        return cli.report(f"cannot read the source index under {args.src}: {error}")
    try:
        convert(
            builder_class,
            source,
            args.out,
            splits_of(args),
            on_error=args.on_error,
            max_examples=args.max_examples,
            chunk_size=args.chunk_size,
            workers=args.workers,
            stats_method=args.stats,
        )
    except SourceError as error:
        return cli.report(f"stopped on a source error (rerun to resume): {error}")
    except EmptyDatasetError as error:
        return cli.report(error)
    return 0
