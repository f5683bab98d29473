"""Per-dataset sample sources: random access to raw samples and their normalisation statistics.

A source has ``len(source)``, ``source.load(index, rng) -> dict`` (modality ``m`` ->
``[T, H, W, C]`` raw values, ``m + "_dates"`` -> ``[T]`` day of year; ``rng`` drives any
per-sample augmentation) and ``source.stats(sample) -> {m: (mean [C], std [C])}``; optionally
``source.time_steps(names) -> {m: int array [len(source)]}``, the dates of each sample's series
without loading it (``ramen_jax.data.pipeline`` scans the samples where a source has none).
Sources are
picklable so Grain worker processes can hold them. Registered by ``type`` in ``SOURCES``:

- ``demo``: the six real BigEarthNet patches bundled with ``bigearthnet-common``
  (``ramen_jax.data.demo``), randomly cropped (same ground footprint in every modality) and
  flipped at every draw: an endless stream from a handful of patches;
- ``records``: a dataset converted by ``data_prep``, in the format of
  ``ramen_jax.data.records`` (ArrayRecord + ``stats.json``). Statistics keyed
  ``<m>_<product>`` are used when a sample carries ``<m>_product`` (MMEarth L1C / L2A).
  ``norm_path`` (a folder, may be a URL) takes mean / std from its ``NORM_<key>_patch.json``
  files instead, the original's format: its published statistics, or those a run trained with.
  ``partition`` < 1 reads only that share of the split: a random subset fixed by
  ``PARTITION_SEED`` (the original trained on a random 60 % of MMEarth, ``partition: 0.6``).
  A URL (``gs://...``) is copied to a local directory under ``cache_dir`` when the source is
  built, before Grain workers start (``ramen_jax.data.staging``).
"""

from __future__ import annotations

import os

import numpy as np

from ramen_jax import storage
from ramen_jax.data import catalog, demo, staging
from ramen_jax.data import records as records_format


class SourceConfigError(ValueError):
    pass


class DemoSource:
    def __init__(self, crop_fraction: float = 0.6):
        self.crop_fraction = float(crop_fraction)
        self._patches = None
        self._stats = None

    def _load_patches(self):
        if self._patches is None:  # stats first: Grain reads from several threads
            patches = demo.load_bigearthnet_patches()
            self._stats = demo.normalisation_stats(patches)
            self._patches = patches
        return self._patches

    def __getstate__(self):  # workers reload the (cached, in-memory) patches themselves
        return {"crop_fraction": self.crop_fraction, "_patches": None, "_stats": None}

    def __len__(self) -> int:
        return len(self._load_patches())

    def load(self, index: int, rng: np.random.Generator) -> dict:
        patch = self._load_patches()[index]
        return demo.random_crop_flip(patch, rng, self.crop_fraction)

    def stats(self, sample: dict) -> dict:
        self._load_patches()
        return self._stats

    def time_steps(self, names) -> dict:
        return {name: np.ones(len(self), np.int64) for name in names}  # single-date patches

    @staticmethod
    def modalities(crop_fraction: float = 0.6) -> dict:
        """The demo's modality descriptions at the cropped sides."""
        sides = catalog.demo_crop_sides(crop_fraction)
        return {name: {**spec, "side": sides[name]} for name, spec in demo.DEMO_MODALITIES.items()}


PARTITION_SEED = 0x60  # the same partition in every run and on every host


class RecordSource:
    takes_cache_dir = True  # make_source passes config.data.cache_dir

    def __init__(
        self,
        path: str,
        split: str = "train",
        cache_dir: str | None = None,
        norm_path: str | None = None,
        partition: float = 1.0,
    ):
        if not 0.0 < float(partition) <= 1.0:
            raise SourceConfigError(f"dataset {path}: partition {partition} is outside (0, 1]")
        self.path = os.fspath(path)  # as configured, for messages
        self.split = split
        self.partition = float(partition)
        self._kept = None  # record indices of the partition (None: all)
        self.norm_path = None if norm_path is None else os.fspath(norm_path)
        self.local_path = self.path
        if storage.is_remote(self.path):
            try:
                self.local_path = staging.stage_dataset(self.path, cache_dir)
            except (staging.StagingError, OSError) as e:
                raise SourceConfigError(f"dataset {self.path}: {e}") from e
        self._records = None
        self._stats = None

    def _open(self):
        if self._records is None:
            if not os.path.isdir(self.local_path):
                raise SourceConfigError(
                    f"dataset directory {self.path!r} does not exist: convert the dataset with "
                    "python -m data_prep.<name> first (docs/data_prep.md)"
                )
            # stats first: Grain reads from several threads
            try:
                self._stats = records_format.load_stats(self.local_path, self.norm_path)
            except (OSError, ValueError) as e:
                raise SourceConfigError(f"dataset {self.path}: {e}") from e
            records = records_format.load_split(self.local_path, self.split)
            if self.partition < 1.0:
                count = max(1, round(self.partition * len(records)))
                order = np.random.default_rng(PARTITION_SEED).permutation(len(records))
                self._kept = np.sort(order[:count])
            self._records = records
        return self._records

    def __getstate__(self):
        state = {"path": self.path, "split": self.split, "local_path": self.local_path}
        state.update(norm_path=self.norm_path, partition=self.partition, _kept=None)
        return {**state, "_records": None, "_stats": None}

    def __len__(self) -> int:
        records = self._open()
        return len(records) if self._kept is None else len(self._kept)

    def _record_index(self, index: int) -> int:
        return int(index) if self._kept is None else int(self._kept[index])

    def load(self, index: int, rng: np.random.Generator) -> dict:
        del rng
        return dict(self._open()[self._record_index(index)])

    def time_steps(self, names) -> dict:
        """From the converter's ``time_steps.json``; a dataset converted before it existed is
        scanned once (every record read)."""
        records = self._open()
        stored = records_format.load_time_steps(self.local_path, self.split) or {}
        kept = np.arange(len(records)) if self._kept is None else self._kept
        out = {}
        for name in names:
            if name in stored:
                counts = np.asarray(stored[name], np.int64)
                if len(counts) != len(records):
                    raise SourceConfigError(
                        f"{self.path}: time_steps.json lists {len(counts)} {self.split} "
                        f"records for {name!r}, the split has {len(records)}"
                    )
                out[name] = counts[kept]
            else:
                dates = name + "_dates"
                out[name] = np.array([len(records[int(i)][dates]) for i in kept])
        return out

    def stats(self, sample: dict) -> dict:
        self._open()
        out = {}
        for key, value in self._stats.items():
            out[key] = (np.asarray(value["mean"]), np.asarray(value["std"]))
        for key in list(sample):
            if key.endswith("_product"):
                modality = key[: -len("_product")]
                product = sample[key]
                product = product.decode() if isinstance(product, bytes) else str(product)
                entry = self._stats.get(f"{modality}_{product}")
                if entry is None:
                    raise SourceConfigError(
                        f"{self.path}: no statistics for {modality} product {product!r}"
                    )
                out[modality] = (np.asarray(entry["mean"]), np.asarray(entry["std"]))
        return out


SOURCES = {"demo": DemoSource, "records": RecordSource}


def make_source(config, cache_dir: str | None = None) -> object:
    """The source of one dataset entry; ``cache_dir`` goes to sources that copy remote data."""
    kind = config.get("type")
    if kind not in SOURCES:
        raise SourceConfigError(f"unknown source type {kind!r}; known: {sorted(SOURCES)}")
    source_class = SOURCES[kind]
    options = {k: v for k, v in dict(config).items() if k != "type"}
    if getattr(source_class, "takes_cache_dir", False):
        options.setdefault("cache_dir", cache_dir)
    return source_class(**options)
