"""MMEarth64 -> RAMEN ArrayRecord records (``python -m data_prep.mmearth``).

Owns reading the published MMEarth64 release (``data_1M_v001_64``) and turning each tile into one
record with the modalities ``s2``, ``s1`` and ``dem`` (64 x 64 px at 10 m, one date).

Source layout (``--src``), as published and as read by the MMEarth-train loader and TorchGeo::

    data_1M_v001_64/
      data_1M_v001_64.h5               the data (any single ``data_*.h5`` is accepted)
      data_1M_v001_64_splits.json      {"train": [row, ...], "val": [...], "test": [...]}
      data_1M_v001_64_band_stats.json  not used (statistics are recomputed)
      data_1M_v001_64_tile_info.json   {tile id: {"S2_DATE": "YYYY-MM-DD", "S2_type": ..., ...}}

HDF5 datasets read (N tiles, channels first):

- ``sentinel2`` uint16 [N, 13, 64, 64], bands B1 B2 B3 B4 B5 B6 B7 B8A B8 B9 B10 B11 B12
  (B8A *before* B8). L2A tiles carry zeros in B10. Records reorder to the wavelength order of
  ``ramen_jax.data.catalog`` (B8 842 nm before B8A 865 nm).
- ``sentinel1`` float32 [N, 8, 64, 64]: asc VV VH HH HV, desc VV VH HH HV; a band that was not
  acquired is -inf: a whole orbit, or the pair of an acquired orbit that its dual-polarisation
  mode lacks (HH HV for the usual VV+VH acquisitions). Values are stored as they are (NaN / inf
  included; statistics ignore them).
- ``aster`` int16 [N, 2, 64, 64]: elevation, slope -> ``dem`` channels ``dsm``, ``slope``.
- ``biome`` uint8 [N, 14] one-hot -> ``biome`` label (argmax; -1 if the row has no class).
- ``metadata`` compound [N]: field 0 is the tile id (bytes); ``S2_type`` (``l1c``/``l2a``) when
  present gives ``s2_product``. Without it the original's rule applies: L2A iff B10 is all zero.

Dates: ``s2_dates`` is the day of year of the tile's ``S2_DATE`` in ``*_tile_info.json``. The
original passes 0; the records keep what the release has, so the date is there for any use (the
model reads dates of time series only, which MMEarth's are not). The release records no
Sentinel-1 date (its image is the one closest in time to the Sentinel-2 one) and the ASTER DEM
has none: ``s1_dates`` and ``dem_dates`` are [1]. Without a tile_info file (``--tile-info``)
every date is [1], logged once; a tile missing from it is an error (``--on-error``). The file (a
few GB for the 1.2 M tiles) is decoded one tile at a time, keeping the dates only.
Splits: ``--split-file`` takes a JSON file of row lists per split (e.g. the published
``*_splits.json``, whose ``val`` is empty). Without it, 10 % of the rows of every biome go to
``val`` (seeded), like the original's stratified split (which uses scikit-learn, not reproduced
row for row). Statistics: ``s2_l1c`` and ``s2_l2a`` are kept apart, as in the original.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date
from pathlib import Path

import h5py
import numpy as np

from data_prep import common
from ramen_jax import cli
from ramen_jax.data import catalog

# Record band k is HDF5 band S2_RECORD_FROM_H5[k]: the file stores B8A (865 nm) before B8 (842 nm).
S2_RECORD_FROM_H5 = (0, 1, 2, 3, 4, 5, 6, 8, 7, 9, 10, 11, 12)
B10 = 10  # index of the cirrus band, the same in both orders
VAL_FRACTION = 0.1
SPLIT_SEED = 42
DEFAULT_SPLITS = ("train", "val")

DATASET = common.DatasetSpec(
    name="mmearth",
    description="MMEarth64 (data_1M_v001_64): Sentinel-2, Sentinel-1 and ASTER DEM, 64 px.",
    homepage="https://github.com/vishalned/MMEarth-data",
    modalities=catalog.MMEARTH,
    chunk_size=2000,
    text_fields=("s2_product",),
    int_fields=("biome",),
)


class MMEarth(common.ChunkBuilder, skip_registration=True):
    """TFDS builder of the ``mmearth`` records (one instance writes one chunk)."""

    name = "mmearth"
    DATASET = DATASET


def find_h5(src: Path) -> Path:
    candidates = sorted(src.glob("data_*.h5"))
    if len(candidates) != 1:
        raise common.SourceError(src, f"expected one data_*.h5 file, found {len(candidates)}")
    try:  # the header and its stated size: a truncated download fails here, before any work
        with h5py.File(candidates[0], "r"):
            pass
    except OSError as error:
        raise common.SourceError(
            candidates[0], f"not a readable HDF5 file ({error}); download it again"
        ) from None
    return candidates[0]


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> dict[str, list]:
    """Sends round(val_fraction * n) random rows of every label to ``val``, the rest to train."""
    rng = np.random.default_rng(seed)
    val = [
        rng.permutation(members)[: round(len(members) * val_fraction)]
        for members in (np.flatnonzero(labels == label) for label in np.unique(labels))
    ]
    val_rows = np.sort(np.concatenate(val))
    train_rows = np.setdiff1d(np.arange(len(labels)), val_rows)
    return {"train": train_rows.tolist(), "val": val_rows.tolist()}


def json_object_items(file, chunk_chars: int = 1 << 24):
    """(key, value) of the JSON object in ``file``, decoded one entry at a time."""
    decoder, blank = json.JSONDecoder(), re.compile(r"\s*")
    buffer, at_end = file.read(chunk_chars), False
    while buffer.isspace() and not at_end:
        more = file.read(chunk_chars)
        buffer, at_end = buffer + more, not more
    position = blank.match(buffer).end()
    if buffer[position : position + 1] != "{":
        raise ValueError("not a JSON object")
    position += 1
    while True:
        try:
            start = blank.match(buffer, position).end()
            if buffer[start] == "}":
                return
            key, end = decoder.raw_decode(buffer, start)
            end = blank.match(buffer, end).end()
            if buffer[end] != ":":
                raise ValueError(f"expected ':' after key {key!r}")
            value, end = decoder.raw_decode(buffer, blank.match(buffer, end + 1).end())
            end = blank.match(buffer, end).end()
            if buffer[end] not in ",}":
                raise ValueError(f"expected ',' or '}}' after the value of {key!r}")
        except (IndexError, json.JSONDecodeError):
            if at_end:
                raise ValueError("truncated JSON object") from None
            more = file.read(chunk_chars)  # the entry runs past the buffer: read on, retry it
            buffer, position, at_end = buffer[position:] + more, 0, not more
            continue
        yield key, value
        position = end + 1 if buffer[end] == "," else end


def read_s2_dates(path: Path) -> dict[str, int]:
    """{tile id: day of year of its ``S2_DATE``} from a ``*_tile_info.json``."""
    dates = {}
    try:
        with open(path, encoding="utf-8") as file:
            for tile, info in json_object_items(file):
                dates[tile] = common.day_of_year(date.fromisoformat(info["S2_DATE"][:10]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise common.SourceError(path, f"not a readable tile_info file: {error!r}") from error
    return dates


class MMEarthSource(common.Source):
    """Rows of the MMEarth HDF5 file; an item is a row index."""

    def __init__(self, src: Path, split_file: Path | None = None, tile_info: Path | None = None):
        self.h5_path = find_h5(Path(src))
        self.split_file = split_file
        self.tile_info = tile_info or self.h5_path.with_name(f"{self.h5_path.stem}_tile_info.json")
        self.s2_dates = None  # {tile id: day of year}, None without a tile_info file
        if self.tile_info.is_file():
            self.s2_dates = read_s2_dates(self.tile_info)
            common.log.info(
                "mmearth: S2 dates of %d tiles from %s", len(self.s2_dates), self.tile_info
            )
        elif tile_info is not None:
            raise common.SourceError(tile_info, "missing tile_info file")
        else:
            common.log.warning("mmearth: no %s: every date is stored as 1", self.tile_info)
        self._h5 = None  # opened lazily, once per process

    def items(self, split: str) -> list[int]:
        rows = self._split_rows()
        if split not in rows:
            raise ValueError(f"split {split!r} not in {sorted(rows)}")
        return sorted(int(row) for row in rows[split])

    def _split_rows(self) -> dict:
        if self.split_file is not None:
            return json.loads(Path(self.split_file).read_text())
        with h5py.File(self.h5_path, "r") as h5:
            biome = np.argmax(h5["biome"][:], axis=1)
        return stratified_split(biome, VAL_FRACTION, SPLIT_SEED)

    def describe(self, row: int) -> str:
        return f"{self.h5_path} row {row}"

    def examples(self, row: int):
        if self._h5 is None:
            self._h5 = h5py.File(self.h5_path, "r")
        try:
            s2 = self._h5["sentinel2"][row]
            s1 = self._h5["sentinel1"][row]
            dem = self._h5["aster"][row]
            biome = self._h5["biome"][row]
            metadata = self._h5["metadata"][row]
        except (OSError, KeyError, ValueError) as error:
            raise common.SourceError(self.describe(row), f"unreadable: {error}") from error
        tile = metadata[0].decode()
        no_date = np.full((1,), common.NO_DATE, np.int32)
        example = {
            "s2": common.channels_last(s2[list(S2_RECORD_FROM_H5)])[None],
            "s1": common.channels_last(s1)[None],
            "dem": common.channels_last(dem)[None],
            "s2_dates": self._s2_date(tile),
            "s1_dates": no_date,
            "dem_dates": no_date,
            "id": tile,
            "s2_product": s2_product(metadata, s2),
            "biome": int(np.argmax(biome)) if biome.max() == 1 else -1,
        }
        yield str(row), example

    def _s2_date(self, tile: str) -> np.ndarray:
        if self.s2_dates is None:
            return np.full((1,), common.NO_DATE, np.int32)
        if tile not in self.s2_dates:
            raise common.SourceError(self.tile_info, f"no entry for tile {tile}")
        return np.array([self.s2_dates[tile]], np.int32)

    # The original's MMEarth loader leaves all-zero planes unnormalised; its statistics files are
    # in the HDF5 band order.
    skip_zero_planes = True
    original_channels = {"s2_l1c": S2_RECORD_FROM_H5, "s2_l2a": S2_RECORD_FROM_H5}

    def stats_key(self, modality: str, example) -> str:
        return f"s2_{example['s2_product']}" if modality == "s2" else modality

    def __getstate__(self):
        return {**self.__dict__, "_h5": None}  # an open HDF5 handle does not cross processes


def s2_product(metadata: np.void, s2_h5_order: np.ndarray) -> str:
    """``l1c`` or ``l2a``: the metadata's S2_type, else L2A iff band B10 is all zero."""
    if metadata.dtype.names and "S2_type" in metadata.dtype.names:
        return metadata["S2_type"].decode().strip().lower()
    return "l2a" if not np.any(s2_h5_order[B10]) else "l1c"


def parse_args(argv):
    parser = cli.OneLineParser(
        prog="python -m data_prep.mmearth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_common_arguments(parser)
    parser.add_argument(
        "--split-file",
        type=Path,
        default=None,
        help="JSON {split: [row, ...]} (e.g. data_1M_v001_64_splits.json); "
        "default: 90/10 train/val split stratified by biome",
    )
    parser.add_argument(
        "--splits",
        default=",".join(DEFAULT_SPLITS),
        help="comma-separated splits to write (default: train,val)",
    )
    parser.add_argument(
        "--tile-info",
        type=Path,
        default=None,
        help="the release's tile_info JSON, source of the Sentinel-2 dates "
        "(default: <h5 name>_tile_info.json beside the h5 file)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return common.run(
        MMEarth,
        lambda a: MMEarthSource(a.src, a.split_file, a.tile_info),
        lambda a: a.splits.split(","),
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
