"""FLAIR-HUB -> RAMEN ArrayRecord records (``python -m data_prep.flairhub``).

Owns reading the published FLAIR-HUB release (IGNF, 102.4 m x 102.4 m patches over France) and
turning each patch into one record with the modalities ``aerial`` and ``dem`` (512 px at 0.2 m,
one date) and the time series ``s2`` and ``s1_des`` (10 px at 10.24 m).

Source layout (``--src``): the published ``<DOMAIN-YEAR>_<MODALITY>.zip`` archives and
``GLOBAL_ALL_MTD.zip`` unzipped side by side::

    GLOBAL_ALL_MTD/
      GLOBAL_AERIAL_MTD_DATES.gpkg          patch_id, date ("YYYYMMDD")
      GLOBAL_SENTINEL2_MTD_DATES.gpkg       patch_id, acquisition_dates ('{"1": "YYYYMMDD", ...}')
      GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg  same, for the Sentinel-1 descending series
    D004-2021_AERIAL_RGBI/<ROI>/D004-2021_AERIAL_RGBI_<ROI>_<row>-<col>.tif
    D004-2021_DEM_ELEV/..., D004-2021_SENTINEL2_TS/..., D004-2021_SENTINEL2_MSK-SC/...,
    D004-2021_SENTINEL1-DESC_TS/...        (same naming for every modality and domain)

Split files (``--split-file NAME=CSV``, repeatable): the published split CSVs (e.g.
``FLAIR-HUB_TOY-DATASET_TRAIN.csv``; comma or semicolon separated) with a ``patch_id`` column and
one column of relative paths per modality (``AERIAL_RGBI``, ``DEM_ELEV``, ``SENTINEL2_TS``,
``SENTINEL2_MSK-SC``, ``SENTINEL1-DESC_TS``, e.g. ``../D006-2020_AERIAL_RGBI/FF-S1-14/...tif``).
Paths are taken relative to ``--src`` once their leading ``../`` are dropped. An empty cell means
the patch lacks that modality: it is stored as zeros (one time step, dates [1]).

GeoTIFF contents (bands first; band order as read by the IGNF FLAIR-HUB loader, dtypes as
public FLAIR-HUB loaders describe them; any file dtype that converts losslessly is accepted):

- ``AERIAL_RGBI``: 4 bands R G B NIR, uint8, 512 x 512 -> ``aerial``.
- ``DEM_ELEV``: 2 bands DSM, DTM, float32, 512 x 512 -> ``dem``; dated like the aerial image.
- ``SENTINEL2_TS``: T x 10 bands (B2 B3 B4 B5 B6 B7 B8 B8A B11 B12 per date), uint16, 10 x 10.
- ``SENTINEL2_MSK-SC``: T x 2 bands (snow, cloud probability in %), 10 x 10. A date is kept if at
  least 95 % of its pixels have cloud <= 1 and snow <= 1; if no date passes, dates with at least
  95 % snow-free pixels are kept (the original's ``filter_time_series``). A patch whose dates are
  all rejected has no ``s2`` (zeros).
- ``SENTINEL1-DESC_TS``: T x 2 bands (VV, VH), float32, 10 x 10 -> ``s1_des``.

GeoPackages are read with the standard ``sqlite3`` module (the layer is the table listed in
``gpkg_contents`` that has the needed columns).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sqlite3
import sys
from datetime import datetime
from pathlib import Path, PurePosixPath

import numpy as np

from data_prep import common

MTD_DIR = "GLOBAL_ALL_MTD"
DATE_TABLES = {  # modality -> (GeoPackage in MTD_DIR, column)
    "aerial": ("GLOBAL_AERIAL_MTD_DATES.gpkg", "date"),
    "s2": ("GLOBAL_SENTINEL2_MTD_DATES.gpkg", "acquisition_dates"),
    "s1_des": ("GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg", "acquisition_dates"),
}
COLUMNS = {
    "aerial": "AERIAL_RGBI",
    "dem": "DEM_ELEV",
    "s2": "SENTINEL2_TS",
    "s2_mask": "SENTINEL2_MSK-SC",
    "s1_des": "SENTINEL1-DESC_TS",
}
SNOW, CLOUD = 0, 1  # bands of one date in SENTINEL2_MSK-SC
MAX_CLOUD, MAX_SNOW, MAX_FRACTION_COVERED = 1, 1, 0.05

SPEC = common.DatasetSpec(
    name="flairhub",
    description="FLAIR-HUB: aerial RGBI, DEM, Sentinel-2 and Sentinel-1 descending series.",
    homepage="https://github.com/IGNF/FLAIR-HUB",
    modalities=(
        common.Modality("aerial", (640, 560, 480, 810), gsd=0.2, side=512, dtype=np.uint8),
        common.Modality("dem", ("dsm", "dtm"), gsd=0.2, side=512, dtype=np.float32),
        common.Modality(
            "s2",
            (490, 560, 665, 705, 740, 783, 842, 865, 1610, 2190),
            gsd=10.24,
            side=10,
            dtype=np.uint16,
            time_series=True,
        ),
        common.Modality(
            "s1_des", ("des_vv", "des_vh"), gsd=10.24, side=10, dtype=np.float32, time_series=True
        ),
    ),
    chunk_size=200,
)
MODALITIES = {modality.name: modality for modality in SPEC.modalities}


class FlairHub(common.ChunkBuilder, skip_registration=True):
    """TFDS builder of the ``flairhub`` records (one instance writes one chunk)."""

    name = "flairhub"
    SPEC = SPEC


def read_gpkg_column(path: Path, column: str) -> dict[str, str]:
    """``{patch_id: column value}`` from the GeoPackage layer holding both columns."""
    if not path.is_file():
        raise common.SourceError(path, "missing GeoPackage")
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            for (table,) in db.execute("SELECT table_name FROM gpkg_contents"):
                names = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
                if {"patch_id", column} <= names:
                    return dict(db.execute(f'SELECT patch_id, "{column}" FROM "{table}"'))
    except sqlite3.Error as error:
        raise common.SourceError(path, f"not a readable GeoPackage: {error}") from error
    raise common.SourceError(path, f"no layer with columns patch_id and {column}")


def read_split_csv(path: Path) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8-sig")
    header = text.partition("\n")[0]
    reader = csv.DictReader(io.StringIO(text), delimiter=";" if ";" in header else ",")
    rows = list(reader)
    missing = {"patch_id", *COLUMNS.values()} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return rows


def clear_dates(mask: np.ndarray) -> np.ndarray:
    """Boolean [T]: dates of a ``[T, 2 (snow, cloud), H, W]`` mask series kept for Sentinel-2."""
    needed = (1 - MAX_FRACTION_COVERED) * mask.shape[2] * mask.shape[3]
    clear = (mask[:, CLOUD] <= MAX_CLOUD) & (mask[:, SNOW] <= MAX_SNOW)
    keep = clear.sum(axis=(1, 2)) >= needed
    if not keep.any():
        keep = (mask[:, SNOW] <= MAX_SNOW).sum(axis=(1, 2)) >= needed
    return keep


def yyyymmdd_day_of_year(text: str) -> int:
    return common.day_of_year(datetime.strptime(str(text), "%Y%m%d").date())


class FlairHubSource(common.Source):
    """Patches listed in the split CSVs; an item is one CSV row."""

    def __init__(self, src: Path, split_files: dict[str, Path]):
        self.src = Path(src)
        self.rows = {split: read_split_csv(path) for split, path in split_files.items()}
        self.date_files = {
            name: self.src / MTD_DIR / file for name, (file, _) in DATE_TABLES.items()
        }
        self.date_tables = {
            name: read_gpkg_column(self.date_files[name], column)
            for name, (_, column) in DATE_TABLES.items()
        }

    def items(self, split: str) -> list[dict]:
        return self.rows[split]

    def describe(self, row: dict) -> str:
        return f"patch {row['patch_id']}"

    def examples(self, row: dict):
        example = {"id": row["patch_id"]}
        for name in ("aerial", "dem"):  # the DEM is dated like the aerial image, as originally
            data = self._modality(row, name)
            example[name], example[name + "_dates"] = (
                MODALITIES[name].missing() if data is None else (data, self._aerial_date(row))
            )
        example["s2"], example["s2_dates"] = self._sentinel2(row)
        data = self._modality(row, "s1_des")
        example["s1_des"], example["s1_des_dates"] = (
            MODALITIES["s1_des"].missing()
            if data is None
            else (data, self._series_dates(row, "s1_des", len(data)))
        )
        yield row["patch_id"], example

    def _path(self, row: dict, column: str) -> Path | None:
        cell = (row[column] or "").strip()
        if not cell:
            return None
        parts = PurePosixPath(cell).parts
        while parts and parts[0] in ("..", "."):
            parts = parts[1:]
        return self.src.joinpath(*parts)

    def _modality(self, row: dict, name: str) -> np.ndarray | None:
        """``[T, H, W, C]`` in the record dtype, or None where the CSV cell is empty."""
        modality = MODALITIES[name]
        path = self._path(row, COLUMNS[name])
        if path is None:
            return None
        series = read_series(path, len(modality.channels), modality.side)
        if len(series) != 1 and not modality.time_series:
            raise common.SourceError(path, f"{len(series) * len(modality.channels)} bands")
        return common.as_stored_dtype(common.channels_last(series), modality.dtype, path)

    def _sentinel2(self, row: dict):
        data = self._modality(row, "s2")
        if data is None:
            return MODALITIES["s2"].missing()
        mask_path = self._path(row, COLUMNS["s2_mask"])
        if mask_path is None:
            raise common.SourceError(self._path(row, COLUMNS["s2"]), "no SENTINEL2_MSK-SC listed")
        mask = read_series(mask_path, 2, MODALITIES["s2"].side)
        if len(mask) != len(data):
            raise common.SourceError(mask_path, f"{len(mask)} mask dates for {len(data)} images")
        keep = clear_dates(mask)
        if not keep.any():
            return MODALITIES["s2"].missing()
        return data[keep], self._series_dates(row, "s2", len(data))[keep]

    def _aerial_date(self, row: dict) -> np.ndarray:
        return np.array([yyyymmdd_day_of_year(self._dates_entry("aerial", row))], np.int32)

    def _series_dates(self, row: dict, name: str, steps: int) -> np.ndarray:
        by_step = json.loads(self._dates_entry(name, row))
        dates = [yyyymmdd_day_of_year(by_step[key]) for key in sorted(by_step, key=int)]
        if len(dates) != steps:
            raise common.SourceError(
                self.date_files[name],
                f"{len(dates)} dates for patch {row['patch_id']}, its image has {steps}",
            )
        return np.array(dates, np.int32)

    def _dates_entry(self, name: str, row: dict) -> str:
        patch, table = row["patch_id"], self.date_tables[name]
        # The IGNF loader keys dates by patch id; another public loader keys the Sentinel
        # dates by ROI (the first two parts of the id): accept both.
        entry = table.get(patch, table.get("_".join(patch.split("_")[:2])))
        if entry is None:
            raise common.SourceError(self.date_files[name], f"no {name} date for patch {patch}")
        return entry


def read_series(path: Path, channels: int, side: int) -> np.ndarray:
    """A GeoTIFF of T x ``channels`` bands as ``[T, channels, side, side]``."""
    bands = common.read_geotiff(path)
    if not len(bands) or len(bands) % channels or bands.shape[1:] != (side, side):
        raise common.SourceError(
            path, f"bands {list(bands.shape)} are not [T x {channels}, {side}, {side}]"
        )
    return bands.reshape(-1, channels, side, side)


def parse_split_files(values: list[str]) -> dict[str, Path]:
    split_files = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not name or not path:
            raise argparse.ArgumentTypeError(f"--split-file expects NAME=CSV, got {value!r}")
        split_files[name] = Path(path)
    return split_files


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.flairhub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_common_arguments(parser)
    parser.add_argument(
        "--split-file",
        action="append",
        required=True,
        metavar="NAME=CSV",
        help="split name and its CSV, e.g. train=FLAIR-HUB_TRAIN.csv (repeat per split)",
    )
    args = parser.parse_args(argv)
    try:
        args.split_file = parse_split_files(args.split_file)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return common.run(
        FlairHub,
        lambda a: FlairHubSource(a.src, a.split_file),
        lambda a: list(a.split_file),
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
