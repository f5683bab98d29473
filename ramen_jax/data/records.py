"""The record format of a converted dataset, as the library reads it.

Owns the on-disk contract between the converters (``python -m data_prep.<name>``, the writing
side) and everything that reads their output (``ramen_jax.data.sources``, evaluation, the
benchmarks). A finished dataset folder holds:

- TFDS ArrayRecord shards of each split, and ``features.json`` + ``dataset_info.json``
  (``INFO_FILES``; ``dataset_info.json`` is written last, so its presence marks a finished
  dataset). Every modality ``m`` of a record is a ``[T, H, W, C]`` tensor plus ``m_dates``
  (``DATES_SUFFIX``), int32 day of year ``[T]``; ``NO_DATE`` is stored where the source has no
  acquisition date;
- ``stats.json`` (``STATS_FILE``): ``{stats key: {"mean": [C], "std": [C], "count": examples,
  "original_channels": [C], ...}}`` over the ``train`` split;
- ``time_steps.json`` (``TIME_STEPS_FILE``): ``{split: {time-series modality: [dates of record
  i, ...]}}`` in the record order of ``load_split``;
- ``NORM_<key>_patch.json`` (``NORM_FILE``): the same statistics in the original's format,
  ``{"mean": [C], "std": [C]}`` with channels in the original's order (record channel ``k`` is
  the original's channel ``original_channels[k]``);
- ``standin.json`` (``STANDIN_FILE``), only in a synthetic stand-in's folder.

Only TFDS and etils are needed here, no converter and no TensorFlow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from etils import epath

STATS_FILE = "stats.json"
TIME_STEPS_FILE = "time_steps.json"
INFO_FILES = ("features.json", "dataset_info.json")  # dataset_info.json last: the commit point
NORM_FILE = "NORM_{key}_patch.json"
# Beside the records of a synthetic stand-in (``python -m data_prep.standins``), never of real
# data: ``{"layout": the release it imitates, "version": ...}``, so readers can say so.
STANDIN_FILE = "standin.json"
TRAIN = "train"
DATES_SUFFIX = "_dates"
NO_DATE = 1  # day-of-year stored where the source has no acquisition date


def load_split(data_dir, split: str):
    """Random-access source over one split: ``len(source)``, ``source[i] -> dict`` of numpy.

    Text fields (``id``, ...) come back as bytes. ``data_dir`` is a local directory:
    ArrayRecord's reader opens local files only (``ramen_jax.data.staging`` copies a dataset
    kept in a bucket).
    """
    import tensorflow_datasets as tfds  # imported on use: the records reader only

    return tfds.builder_from_directory(os.fspath(data_dir)).as_data_source(split)


def load_time_steps(data_dir, split: str) -> dict | None:
    """``{time-series modality: [dates of record i, ...]}`` of a split, in ``load_split``'s
    index order (``data_dir`` may be a URL); None for a dataset converted without the file."""
    path = epath.Path(data_dir) / TIME_STEPS_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(split, {})


def load_stats(data_dir, norm_path=None) -> dict:
    """``{stats key: {"mean": [C], "std": [C], "count": examples, ...}}`` over the train split
    (``data_dir`` may be a URL). With ``norm_path``, mean and std come from the folder's
    ``NORM_<key>_patch.json`` files instead (the original's format, ``read_norm_files``)."""
    stats = json.loads((epath.Path(data_dir) / STATS_FILE).read_text())
    if norm_path is not None:
        stats = read_norm_files(norm_path, stats)
    return stats


def read_norm_files(folder, stats: Mapping[str, Mapping]) -> dict:
    """``stats`` with each entry's mean / std replaced by ``folder``'s ``NORM_<key>_patch.json``
    (for instance the original's published files), reordered into the records' channels."""
    folder = epath.Path(folder)
    out = {}
    for key, entry in stats.items():
        path = folder / NORM_FILE.format(key=key)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no statistics file for {key!r}")
        values = json.loads(path.read_text())
        order = entry.get("original_channels", list(range(len(entry["mean"]))))
        replaced = dict(entry)
        for field in ("mean", "std"):
            if len(values[field]) != len(order):
                raise ValueError(
                    f"{path}: {len(values[field])} {field} values, the records have {len(order)} "
                    "channels"
                )
            replaced[field] = [float(values[field][original]) for original in order]
        out[key] = {**replaced, "method": f"file:{path}"}
    return out
