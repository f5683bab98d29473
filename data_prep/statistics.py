"""Per-channel normalisation statistics of a converted train split, and the original's file format.

Two methods, both accumulated for every chunk (so the choice is made when a conversion is
finalised, and chunking, workers or resuming never change the result):

- ``patch`` (default, the original's): per sample, the mean and the unbiased (ddof=1) standard
  deviation of each channel over all its values (time steps x pixels); the statistics are the mean
  over samples of the per-sample means and the mean over samples of the per-sample stds
  (``compute_norm_vals`` of the original's ``src/data/{FLAIRHUB,WorldStrat,MMEarth}.py``);
- ``pooled``: mean and population std over all valid values of the split (``ChannelStats``), so
  the between-sample spread is included.

Values are taken as the pipeline sees them: NaN/inf -> 0. A modality that is entirely zero in a
sample is a zero-filled missing modality (the original has no such sample): it never contributes.
Sources that set ``skip_zero_planes`` (MMEarth, whose original normalisation leaves every
all-zero (time step, channel) plane untouched: a non-acquired Sentinel-1 orbit, B10 of L2A) leave
those planes out of a sample's statistics too; a channel no sample observed gets mean 0, std 1.

The original's files: ``NORM_<key>_patch.json`` = ``{"mean": [C floats], "std": [C floats]}``
(``json.dump(..., indent=4)``), one per statistics key, channels in the original's order.
``write_norm_files`` (and the library's reader, ``ramen_jax.data.records.read_norm_files``)
convert between that order and the records' with the
permutation each ``stats.json`` entry records as ``original_channels`` (record channel ``k`` is
the original's channel ``original_channels[k]``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

from ramen_jax.data.records import NORM_FILE, read_norm_files  # noqa: F401  (re-exported)

METHODS = ("patch", "pooled")


def _planes(array: np.ndarray) -> np.ndarray:
    """``[T, H, W, C]`` -> float64 ``[T, C, H*W]`` with NaN/inf set to 0."""
    planes = np.moveaxis(np.asarray(array), -1, 1).reshape(array.shape[0], array.shape[-1], -1)
    planes = planes.astype(np.float64)
    return np.where(np.isfinite(planes), planes, 0.0)


class ChannelStats:
    """Per-channel count, mean and M2 (sum of squared deviations) of the valid values seen.

    Valid values are finite values of (time step, channel) planes that are not entirely zero.
    Batches are merged with the exact parallel formula (Chan et al.).
    """

    def __init__(self, channels: int):
        self.count = np.zeros(channels, np.int64)
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)
        self.examples = 0

    def add(self, array: np.ndarray) -> None:
        """Adds one ``[T, H, W, C]`` array."""
        planes = np.moveaxis(array, -1, 1).reshape(array.shape[0], array.shape[-1], -1)
        valid = np.isfinite(planes) & np.any(planes != 0, axis=2, keepdims=True)
        values = np.where(valid, planes, 0).astype(np.float64)
        count = valid.sum(axis=(0, 2))
        mean = values.sum(axis=(0, 2)) / np.maximum(count, 1)
        m2 = (np.where(valid, values - mean[None, :, None], 0) ** 2).sum(axis=(0, 2))
        self._merge(count, mean, m2)
        self.examples += int(count.sum() > 0)

    def merge(self, other: ChannelStats) -> None:
        self._merge(other.count, other.mean, other.m2)
        self.examples += other.examples

    def _merge(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + count
        share = np.divide(count, total, out=np.zeros_like(self.mean), where=total > 0)
        delta = mean - self.mean
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2 + delta**2 * self.count * share
        self.count = total

    def to_json(self) -> dict:
        return {
            "count": self.count.tolist(),
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
            "examples": self.examples,
        }

    @classmethod
    def from_json(cls, state: Mapping) -> ChannelStats:
        stats = cls(len(state["count"]))
        stats.count = np.asarray(state["count"], np.int64)
        stats.mean = np.asarray(state["mean"], np.float64)
        stats.m2 = np.asarray(state["m2"], np.float64)
        stats.examples = int(state["examples"])
        return stats

    def summary(self) -> dict:
        """``stats.json`` entry: population std; channels never observed get mean 0, std 1."""
        seen = self.count > 0
        std = np.sqrt(np.divide(self.m2, self.count, out=np.ones_like(self.m2), where=seen))
        return {
            "mean": np.where(seen, self.mean, 0.0).tolist(),
            "std": std.tolist(),
            "count": self.examples,
        }


class PatchStats:
    """Sums of per-sample channel means and unbiased stds, and how many samples each holds."""

    def __init__(self, channels: int, skip_zero_planes: bool = False):
        self.skip_zero_planes = bool(skip_zero_planes)
        self.samples = np.zeros(channels, np.int64)
        self.mean_sum = np.zeros(channels, np.float64)
        self.std_sum = np.zeros(channels, np.float64)
        self.examples = 0

    def add(self, array: np.ndarray) -> None:
        """Adds one sample's ``[T, H, W, C]`` array."""
        planes = _planes(array)
        if not np.any(planes):
            return  # a zero-filled missing modality
        if self.skip_zero_planes:
            valid = np.broadcast_to(np.any(planes != 0, axis=2, keepdims=True), planes.shape)
        else:
            valid = np.ones(planes.shape, bool)
        count = valid.sum(axis=(0, 2))
        used = count >= 2  # an unbiased std needs two values
        mean = np.where(valid, planes, 0).sum(axis=(0, 2)) / np.maximum(count, 1)
        squares = (np.where(valid, planes - mean[None, :, None], 0) ** 2).sum(axis=(0, 2))
        std = np.sqrt(squares / np.maximum(count - 1, 1))
        self.samples += used
        self.mean_sum += np.where(used, mean, 0.0)
        self.std_sum += np.where(used, std, 0.0)
        self.examples += 1

    def merge(self, other: PatchStats) -> None:
        self.samples = self.samples + other.samples
        self.mean_sum = self.mean_sum + other.mean_sum
        self.std_sum = self.std_sum + other.std_sum
        self.examples += other.examples

    def to_json(self) -> dict:
        return {
            "samples": self.samples.tolist(),
            "mean_sum": self.mean_sum.tolist(),
            "std_sum": self.std_sum.tolist(),
            "examples": self.examples,
            "skip_zero_planes": self.skip_zero_planes,
        }

    @classmethod
    def from_json(cls, state: Mapping) -> PatchStats:
        stats = cls(len(state["samples"]), state["skip_zero_planes"])
        stats.samples = np.asarray(state["samples"], np.int64)
        stats.mean_sum = np.asarray(state["mean_sum"], np.float64)
        stats.std_sum = np.asarray(state["std_sum"], np.float64)
        stats.examples = int(state["examples"])
        return stats

    def summary(self) -> dict:
        """``stats.json`` entry; channels never observed (or with std 0) get mean 0, std 1."""
        seen = self.samples > 0
        mean = np.divide(self.mean_sum, self.samples, out=np.zeros_like(self.mean_sum), where=seen)
        std = np.divide(self.std_sum, self.samples, out=np.ones_like(self.std_sum), where=seen)
        return {
            "mean": mean.tolist(),
            "std": np.where(std > 0, std, 1.0).tolist(),
            "count": self.examples,
        }


class KeyStats:
    """Both accumulators of one statistics key (``stats.json`` entry)."""

    def __init__(self, channels: int, skip_zero_planes: bool = False):
        self.pooled = ChannelStats(channels)
        self.patch = PatchStats(channels, skip_zero_planes)

    def add(self, array: np.ndarray) -> None:
        self.pooled.add(array)
        self.patch.add(array)

    def merge(self, other: KeyStats) -> None:
        self.pooled.merge(other.pooled)
        self.patch.merge(other.patch)

    def to_json(self) -> dict:
        return {"pooled": self.pooled.to_json(), "patch": self.patch.to_json()}

    @classmethod
    def from_json(cls, state: Mapping) -> KeyStats:
        stats = cls.__new__(cls)
        stats.pooled = ChannelStats.from_json(state["pooled"])
        stats.patch = PatchStats.from_json(state["patch"])
        return stats

    def summary(self, method: str) -> dict:
        if method not in METHODS:
            raise ValueError(f"unknown statistics method {method!r}; known: {METHODS}")
        return {**getattr(self, method).summary(), "method": method}


def write_norm_files(folder, stats: Mapping[str, Mapping]) -> list:
    """Writes ``NORM_<key>_patch.json`` for every ``stats.json`` entry, in the original's channel
    order; returns the paths written."""
    folder = epath.Path(folder)
    written = []
    for key, entry in stats.items():
        order = entry.get("original_channels", list(range(len(entry["mean"]))))
        values = {}
        for field in ("mean", "std"):
            original = [0.0] * len(order)
            for record_channel, original_channel in enumerate(order):
                original[original_channel] = float(entry[field][record_channel])
            values[field] = original
        path = folder / NORM_FILE.format(key=key)
        path.write_text(json.dumps(values, indent=4))
        written.append(path)
    return written


def merged_summary(states: Sequence[Mapping[str, Mapping]], method: str, orders: Mapping) -> dict:
    """``stats.json``: chunk states merged per key, summarised with ``method``; ``orders`` maps a
    key to its ``original_channels`` where the records reorder the original's channels."""
    merged: dict[str, KeyStats] = {}
    for state in states:
        for key, value in state.items():
            stats = KeyStats.from_json(value)
            if key in merged:
                merged[key].merge(stats)
            else:
                merged[key] = stats
    out = {}
    for key in sorted(merged):
        summary = merged[key].summary(method)
        order = orders.get(key)
        summary["original_channels"] = list(order or range(len(summary["mean"])))
        out[key] = summary
    return out
