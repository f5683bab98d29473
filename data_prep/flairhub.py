"""FLAIR-HUB -> RAMEN ArrayRecord records (``python -m data_prep.flairhub``).

Owns reading the published FLAIR-HUB release (IGNF, 102.4 m x 102.4 m patches over France) and
turning each patch into one record with the modalities ``aerial`` and ``dem`` (512 px at 0.2 m,
one date) and the time series ``s2`` and ``s1_des`` (10 px at 10.24 m).

Source layout (``--src``): the published ``<DOMAIN-YEAR>_<MODALITY>.zip`` archives and
``GLOBAL_ALL_MTD.zip`` unzipped side by side (or the toy release unzipped)::

    GLOBAL_ALL_MTD/                         full release; the toy has D004-2021_ALL_MTD/ ... instead
      GLOBAL_AERIAL_MTD_DATES.gpkg          patch_id, date ("YYYYMMDD")
      GLOBAL_SENTINEL2_MTD_DATES.gpkg       patch_id, acquisition_dates ('{"1": "YYYYMMDD", ...}')
      GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg  same, for the Sentinel-1 descending series
    D004-2021_AERIAL_RGBI/<ROI>/D004-2021_AERIAL_RGBI_<ROI>_<row>-<col>.tif
    D004-2021_DEM_ELEV/..., D004-2021_SENTINEL2_TS/..., D004-2021_SENTINEL2_MSK-SC/...,
    D004-2021_SENTINEL1-DESC_TS/...        (same naming for every modality and domain)

Dates (``data_prep.flairhub_dates``): the date GeoPackages are searched in every ``*_ALL_MTD``
folder of ``--metadata-dir`` (default ``--src``): ``GLOBAL_ALL_MTD/GLOBAL_<STEM>_MTD_DATES.gpkg``
(full release) and ``<DOMAIN-YEAR>_ALL_MTD/<DOMAIN-YEAR>_<STEM>_MTD_DATES.gpkg`` (toy release,
Sentinel dates keyed by ``zone_id``), with the release's stems (``AERIAL``, ``SENTINEL2``,
``SENTINEL1-DESC``) or the original RAMEN code's (``AERIAL_RGBI``, ``SENTINEL2_TS``,
``SENTINEL1-DESC_TS``). ``--dates-file NAME=GPKG`` names the files of a modality instead. The
Sentinel dates are required when a split CSV lists that series (the run stops at start, naming
the file it looked for); the aerial dates are optional, as for IGNF's loader, which reads none:
without them ``aerial`` and ``dem`` are dated [1] (logged).

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
``gpkg_contents`` that has a key and a value column).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from data_prep import common, flairhub_dates
from ramen_jax import cli
from ramen_jax.data import catalog

COLUMNS = {
    "aerial": "AERIAL_RGBI",
    "dem": "DEM_ELEV",
    "s2": "SENTINEL2_TS",
    "s2_mask": "SENTINEL2_MSK-SC",
    "s1_des": "SENTINEL1-DESC_TS",
}
SNOW, CLOUD = 0, 1  # bands of one date in SENTINEL2_MSK-SC
MAX_CLOUD, MAX_SNOW, MAX_FRACTION_COVERED = 1, 1, 0.05

DATASET = common.DatasetSpec(
    name="flairhub",
    description="FLAIR-HUB: aerial RGBI, DEM, Sentinel-2 and Sentinel-1 descending series.",
    homepage="https://github.com/IGNF/FLAIR-HUB",
    modalities=catalog.FLAIRHUB,
    chunk_size=200,
)
MODALITIES = {modality.name: modality for modality in DATASET.modalities}


class FlairHub(common.ChunkBuilder, skip_registration=True):
    """TFDS builder of the ``flairhub`` records (one instance writes one chunk)."""

    name = "flairhub"
    DATASET = DATASET


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


class FlairHubSource(common.Source):
    """Patches listed in the split CSVs; an item is one CSV row."""

    def __init__(
        self,
        src: Path,
        split_files: dict[str, Path],
        metadata_dir: Path | None = None,
        date_files: dict[str, list[Path]] | None = None,
    ):
        self.src = Path(src)
        self.rows = {split: read_split_csv(path) for split, path in split_files.items()}
        metadata_dir = Path(metadata_dir or self.src)
        self.dates: dict[str, flairhub_dates.DateTable | None] = {}
        for name in flairhub_dates.FILE_STEMS:
            files = (date_files or {}).get(name) or flairhub_dates.find_date_files(
                metadata_dir, name
            )
            self.dates[name] = flairhub_dates.DateTable(name, files) if files else None
            if files:
                common.log.info("flairhub: %s", self.dates[name].describe())
            elif name == "aerial":
                common.log.warning(
                    "flairhub: no aerial date GeoPackage under %s: aerial and dem are dated [1]",
                    metadata_dir,
                )
            elif self._listed(COLUMNS[name]):
                stem = flairhub_dates.FILE_STEMS[name][0]
                raise common.SourceError(
                    metadata_dir / "GLOBAL_ALL_MTD" / f"GLOBAL_{stem}_MTD_DATES.gpkg",
                    f"missing, and no *_ALL_MTD folder holds {name} dates; "
                    f"give them with --dates-file {name}=GPKG",
                )

    def _listed(self, column: str) -> bool:
        """Whether any split CSV row lists a file in ``column``."""
        return any((row[column] or "").strip() for rows in self.rows.values() for row in rows)

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
            else (data, self._dates(row, "s1_des", len(data)))
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
        return data[keep], self._dates(row, "s2", len(data))[keep]

    def _aerial_date(self, row: dict) -> np.ndarray:
        if self.dates["aerial"] is None:
            return np.full((1,), common.NO_DATE, np.int32)
        return self._dates(row, "aerial", 1)

    def _dates(self, row: dict, name: str, steps: int) -> np.ndarray:
        days, path = self.dates[name].days(row["patch_id"])
        if len(days) != steps:
            raise common.SourceError(
                path, f"{len(days)} {name} dates for patch {row['patch_id']}, its image has {steps}"
            )
        return np.array(days, np.int32)


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


def parse_date_files(values: list[str]) -> dict[str, list[Path]]:
    date_files = defaultdict(list)
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or name not in flairhub_dates.FILE_STEMS or not path:
            raise argparse.ArgumentTypeError(
                f"--dates-file expects NAME=GPKG with NAME in {sorted(flairhub_dates.FILE_STEMS)},"
                f" got {value!r}"
            )
        date_files[name].append(Path(path))
    return dict(date_files)


def parse_args(argv):
    parser = cli.OneLineParser(
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
    parser.add_argument(
        "--metadata-dir",
        type=Path,
        default=None,
        help="folder holding GLOBAL_ALL_MTD/ or <DOMAIN-YEAR>_ALL_MTD/ folders (default: SRC)",
    )
    parser.add_argument(
        "--dates-file",
        action="append",
        default=[],
        metavar="NAME=GPKG",
        help="date GeoPackage of aerial, s2 or s1_des, read instead of searching "
        "--metadata-dir (repeatable, also for one modality)",
    )
    args = parser.parse_args(argv)
    try:
        args.split_file = parse_split_files(args.split_file)
        args.dates_file = parse_date_files(args.dates_file)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return common.run(
        FlairHub,
        lambda a: FlairHubSource(a.src, a.split_file, a.metadata_dir, a.dates_file),
        lambda a: list(a.split_file),
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
