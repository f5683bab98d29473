"""WorldStrat -> RAMEN ArrayRecord records (``python -m data_prep.worldstrat``).

Owns reading the published WorldStrat release (SPOT 6/7 at 1.5 m with temporally matched
Sentinel-2 L2A revisits) and cutting every area of interest (AOI) into 4 x 4 = 16 records, as the
original's ``WorldStrat`` dataset does, each with ``spot`` (263 px, one date) and the time series
``s2`` (39 px).

Source layout (``--src``): the Zenodo / Kaggle release unpacked (``hr_dataset.tar.gz``,
``lr_dataset_l2a.tar.gz``, ``metadata.csv``, ``stratified_train_val_test_split.csv``)::

    metadata.csv                         one row per (AOI, revisit): first column the AOI name,
                                         then ``n`` (revisit number), ``lowres_date`` and
                                         ``highres_date`` (YYYY-MM-DD), ...
    stratified_train_val_test_split.csv  columns ``tile`` (AOI name) and ``split``
    hr_dataset/<AOI>/<AOI>_ps.tiff       pan-sharpened SPOT: 4 bands R G B NIR, 12-bit values
                                         (uint16), about 1054 x 1054 px
    lr_dataset/<AOI>/L2A/<AOI>-<n>-L2A_data.tiff
                                         Sentinel-2 L2A revisit n: 12 bands B1 B2 B3 B4 B5 B6 B7
                                         B8 B8A B9 B11 B12 (float32 reflectance), about 160 px

The split file as published (``worldstrat/worldstrat`` ``pretrained_model/``, also on Zenodo) has
3,928 rows for 3,890 AOIs: 27 AOIs are listed twice under ``train``, 7 under ``train`` and ``val``,
4 under ``train`` and ``test``. Repeated rows are dropped, and an AOI listed under several splits
is kept in one only, the first of ``test``, ``val``, other held-out names (alphabetically),
``train``: an evaluation AOI never appears in training. The counts are logged.

``metadata.csv`` may list revisits that the release does not ship (the Kaggle "core" release
ships 8 of the 16 L2A revisits listed per AOI; a Zenodo AOI can lack one). As the original, a
listed revisit whose file is absent is skipped; the absent revisits are counted in the log per
split, and an AOI with no revisit at all is an error (``--on-error``). Revisit files that
``metadata.csv`` does not list are not read (their dates are unknown).

Per AOI, as the original: every present revisit listed in ``metadata.csv`` is resized to 158 x
158 px (bilinear, half-pixel centres, no antialiasing: PyTorch ``F.interpolate(mode="bilinear")``),
the revisits are stacked in revisit order, and both images are cut into a 4 x 4 grid of
``side // 4`` px tiles (39 px for Sentinel-2, 263 px for SPOT; a SPOT image whose tiles would not
be 263 px is reported as an error). Tile (r, c) is record ``<AOI>_<r>_<c>``. ``s2`` is float32
(resampled); ``spot`` keeps the file's uint16. Dates: day of year of ``lowres_date`` per revisit,
of ``highres_date`` for SPOT.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np

from data_prep import common
from ramen_jax import cli
from ramen_jax.data import catalog

GRID = 4  # tiles per side
S2_RESAMPLED_SIDE = 158
DEFAULT_SPLITS = ("train", "val")
SPLIT_FILE = "stratified_train_val_test_split.csv"
HELD_OUT_FIRST = ("test", "val")  # an AOI listed under several splits stays in the first of these

DATASET = common.DatasetSpec(
    name="worldstrat",
    description="WorldStrat: SPOT 6/7 (1.5 m) and Sentinel-2 L2A revisits, 4 x 4 tiles per AOI.",
    homepage="https://github.com/worldstrat/worldstrat",
    modalities=catalog.WORLDSTRAT,
    chunk_size=25,  # AOIs: 400 records
)
SPOT, S2 = DATASET.modalities


class WorldStrat(common.ChunkBuilder, skip_registration=True):
    """TFDS builder of the ``worldstrat`` records (one instance writes one chunk)."""

    name = "worldstrat"
    DATASET = DATASET


def bilinear_source_positions(in_size: int, out_size: int):
    """Lower / upper source index and upper weight of every output index.

    Rounded like PyTorch's CPU kernel: a float32 scale, the half-pixel position computed in
    double and stored as float32, the weight taken in float32. The result then matches
    ``F.interpolate`` to a float32 ulp or two (its own summation order is not reproduced).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    position = np.float32(np.maximum(np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5, 0))
    lower = np.minimum(position.astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, position - lower.astype(np.float32)


def resize_bilinear(image: np.ndarray, side: int) -> np.ndarray:
    """``[C, H, W]`` -> float32 ``[C, side, side]``, as ``F.interpolate(mode="bilinear")``."""
    row_low, row_high, row_weight = bilinear_source_positions(image.shape[1], side)
    col_low, col_high, col_weight = bilinear_source_positions(image.shape[2], side)
    pixels = image.astype(np.float64)
    rows = (
        pixels[:, row_low] * (1 - row_weight)[:, None] + pixels[:, row_high] * row_weight[:, None]
    )
    resized = rows[:, :, col_low] * (1 - col_weight) + rows[:, :, col_high] * col_weight
    return resized.astype(np.float32)


def tile(image: np.ndarray, row: int, col: int) -> np.ndarray:
    """Tile (row, col) of a GRID x GRID cut of ``[..., H, W]``, remainder pixels dropped."""
    height, width = image.shape[-2] // GRID, image.shape[-1] // GRID
    return image[..., row * height : (row + 1) * height, col * width : (col + 1) * width]


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as file:
        header, *rows = list(csv.reader(file))
    return header, rows


def split_rank(split: str) -> tuple:
    """Sort key of the splits an AOI may be listed under: the first one keeps it."""
    if split in HELD_OUT_FIRST:
        return (0, HELD_OUT_FIRST.index(split), split)
    return (1 if split != common.TRAIN else 2, 0, split)


def read_split_file(path: Path) -> dict[str, list[str]]:
    """{split: [AOI, ...]} with every AOI in one split only (see the module doc); logs counts."""
    header, rows = read_csv_rows(path)
    try:
        tile_column, split_column = header.index("tile"), header.index("split")
    except ValueError:
        raise common.SourceError(path, f"no 'tile' and 'split' columns in {header}") from None
    listed = defaultdict(list)  # AOI -> splits, in file order, repeats included
    for row in rows:
        listed[row[tile_column]].append(row[split_column])
    splits = defaultdict(list)
    repeated_rows, multi_split = 0, defaultdict(int)
    for aoi, names in listed.items():
        distinct = sorted(set(names), key=split_rank)
        repeated_rows += len(names) - len(distinct)
        if len(distinct) > 1:
            multi_split["+".join(sorted(distinct, key=split_rank, reverse=True))] += 1
        splits[distinct[0]].append(aoi)
    common.log.info(
        "%s: %d rows, %d AOIs; %d repeated rows dropped; %d AOIs listed under several splits "
        "kept in the held-out one only (%s)",
        path,
        len(rows),
        len(listed),
        repeated_rows,
        sum(multi_split.values()),
        ", ".join(f"{pair}: {count}" for pair, count in sorted(multi_split.items())) or "none",
    )
    return splits


class WorldStratSource(common.Source):
    """AOIs of a split; an item is an AOI name, giving GRID x GRID examples."""

    examples_per_item = GRID * GRID

    def __init__(self, src: Path, split_file: Path | None = None):
        self.src = Path(src)
        self.revisits, self.highres_date = self._read_metadata(self.src / "metadata.csv")
        self.splits = read_split_file(split_file or self.src / SPLIT_FILE)
        self._present: dict[str, list] = {}  # AOI -> its listed revisits whose file exists

    @staticmethod
    def _read_metadata(path: Path):
        """{AOI: [(n, lowres day of year), ...] sorted by n}, {AOI: highres day of year}."""
        header, rows = read_csv_rows(path)
        n, lowres, highres = (header.index(name) for name in ("n", "lowres_date", "highres_date"))
        revisits, highres_date = defaultdict(dict), {}
        for row in rows:
            aoi = row[0]  # the AOI is the first (index) column, whatever its header
            # A repeated (AOI, n) row would stack one revisit twice: its first date is kept.
            revisits[aoi].setdefault(int(float(row[n])), day_of_year(row[lowres]))
            highres_date.setdefault(aoi, day_of_year(row[highres]))
        return {aoi: sorted(visits.items()) for aoi, visits in revisits.items()}, highres_date

    def items(self, split: str) -> list[str]:
        aois = sorted(self.splits[split])
        unknown = [aoi for aoi in aois if aoi not in self.revisits]
        if unknown:
            # The original joins the split with metadata.csv, which drops these AOIs as well.
            common.log.warning("%d %s AOIs have no metadata rows; ignored", len(unknown), split)
        aois = [aoi for aoi in aois if aoi in self.revisits]
        listed = sum(len(self.revisits[aoi]) for aoi in aois)
        present = {aoi: self.present_revisits(aoi) for aoi in aois}
        absent = listed - sum(len(visits) for visits in present.values())
        common.log.info(
            "worldstrat %s: %d AOIs; %d of %d revisits listed in metadata.csv are absent and "
            "skipped (%d AOIs lack one or more, %d lack all: those are errors)",
            split,
            len(aois),
            absent,
            listed,
            sum(len(present[aoi]) < len(self.revisits[aoi]) for aoi in aois),
            sum(not visits for visits in present.values()),
        )
        return aois

    def present_revisits(self, aoi: str) -> list[tuple[int, int]]:
        """(n, day of year) of the listed revisits whose file exists; checked once per AOI."""
        if aoi not in self._present:
            self._present[aoi] = [
                (n, day) for n, day in self.revisits[aoi] if self._revisit_path(aoi, n).is_file()
            ]
        return self._present[aoi]

    def describe(self, aoi: str) -> str:
        return f"AOI {aoi}"

    def examples(self, aoi: str):
        revisits = self.present_revisits(aoi)
        if not revisits:
            raise common.SourceError(
                self.src / "lr_dataset" / aoi / "L2A",
                f"none of the {len(self.revisits[aoi])} revisits metadata.csv lists is present",
            )
        s2 = np.stack(
            [resize_bilinear(self._revisit(aoi, n), S2_RESAMPLED_SIDE) for n, _ in revisits]
        )
        s2_dates = np.array([day for _, day in revisits], np.int32)
        spot_path = self.src / "hr_dataset" / aoi / f"{aoi}_ps.tiff"
        spot = common.as_stored_dtype(common.read_geotiff(spot_path), SPOT.dtype, spot_path)
        if tile(spot, 0, 0).shape != (len(SPOT.channels), SPOT.side, SPOT.side):
            raise common.SourceError(spot_path, f"shape {spot.shape}: tiles are not {SPOT.side} px")
        spot_dates = np.array([self.highres_date[aoi]], np.int32)
        for row in range(GRID):
            for col in range(GRID):
                example = {
                    "spot": common.channels_last(tile(spot, row, col))[None],
                    "spot_dates": spot_dates,
                    "s2": common.channels_last(tile(s2, row, col)),
                    "s2_dates": s2_dates,
                    "id": f"{aoi}_{row}_{col}",
                }
                yield example["id"], example

    def _revisit_path(self, aoi: str, n: int) -> Path:
        return self.src / "lr_dataset" / aoi / "L2A" / f"{aoi}-{n}-L2A_data.tiff"

    def _revisit(self, aoi: str, n: int) -> np.ndarray:
        path = self._revisit_path(aoi, n)
        image = common.read_geotiff(path)
        if len(image) != len(S2.channels):
            raise common.SourceError(path, f"{len(image)} bands, expected {len(S2.channels)}")
        return image


def day_of_year(text: str) -> int:
    return common.day_of_year(date.fromisoformat(text.strip()[:10]))


def parse_args(argv):
    parser = cli.OneLineParser(
        prog="python -m data_prep.worldstrat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_common_arguments(parser)
    parser.add_argument(
        "--split-file",
        type=Path,
        default=None,
        help=f"CSV with columns tile, split (default: SRC/{SPLIT_FILE})",
    )
    parser.add_argument(
        "--splits",
        default=",".join(DEFAULT_SPLITS),
        help="comma-separated splits to write (default: train,val)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return common.run(
        WorldStrat,
        lambda a: WorldStratSource(a.src, a.split_file),
        lambda a: a.splits.split(","),
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
