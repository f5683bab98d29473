r"""Small synthetic stand-ins for the pretraining datasets, in their published on-disk layouts.

  python -m data_prep.standins --config configs/base.py --workdir DIR
  python -m ramen_jax.perf.data_bench --config configs/base.py --batches 200 \
      --flagfile=DIR/standins.flags

The command writes a stand-in for every ``records`` dataset of the config whose
``source.path`` is absent (a dataset whose path exists is left as it is), converts it with the
dataset's own converter, caches both under ``DIR`` (reused by later runs), and prints the
``--config.data.datasets.<name>.source.path=...`` overrides that point the config at them, also
written to ``DIR/standins.flags`` for absl's ``--flagfile``. The measurement tools read them as
they read any records and say that they are stand-ins (``records.STANDIN_FILE``); they never
write data themselves.

Owns the *writers* of each release's layout, the one place the converter tests and the
stand-in command learn it from:

- MMEarth64: ``write_mmearth`` (the HDF5 file of ``data_1M_v001_64`` with every dataset of the
  release, plus its ``_splits.json``, ``_band_stats.json`` and ``_tile_info.json`` sidecars);
- FLAIR-HUB: ``write_geotiff``, ``write_flairhub_patch`` (the GeoTIFFs of one patch, named as the
  release), ``write_flairhub_csv`` (split CSV), ``write_gpkg`` / ``write_flairhub_dates`` (the
  date GeoPackages, written as SQLite, in each of ``FLAIRHUB_DATE_LAYOUTS``);
- WorldStrat: ``write_worldstrat_aoi`` (SPOT + Sentinel-2 L2A revisits) and
  ``write_worldstrat_tables`` (``metadata.csv``, ``stratified_train_val_test_split.csv``).

and the stand-ins themselves: a handful of samples of plausible random data (textured fields,
not constants) with the release's sides, bands, dtypes and time-series lengths, so that the
converted records have the paper's native shapes (FLAIR-HUB aerial/DEM 512 px at 0.2 m and 10 px
Sentinel series; MMEarth 64 px; WorldStrat 263 px SPOT tiles and 39 px Sentinel-2 series). They
carry the quirks of the published files that a converter must survive: MMEarth's -inf HH/HV
inside acquired Sentinel-1 orbits and per-tile ``S2_DATE``; FLAIR-HUB dates in the toy release's
per-domain folders keyed by zone; WorldStrat revisits listed in ``metadata.csv`` but not shipped
(8 of 16, as the Kaggle core release) and a split file that repeats an AOI and lists one under
two splits.
``build_standin(name, root, split)`` writes one (once) and converts it with the ``data_prep``
converter; the pipeline repeats the few samples as an endless stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sqlite3
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path

import h5py
import numpy as np
import rasterio
import rasterio.crs
import rasterio.transform

from data_prep import common, flairhub, flairhub_dates, mmearth, worldstrat
from ramen_jax import cli, storage
from ramen_jax.data import records

STANDIN_VERSION = 2  # bump when a stand-in's content changes: caches are keyed by it


def textured(rng, shape, mean, spread, cells=8) -> np.ndarray:
    """float64 ``[..., side, side]`` field: blocky low-frequency structure plus pixel noise."""
    *lead, side, _ = shape
    coarse = rng.normal(0.0, 1.0, (*lead, cells, cells))
    block = -(-side // cells)
    field = np.repeat(np.repeat(coarse, block, axis=-2), block, axis=-1)[..., :side, :side]
    mean = np.reshape(mean, (-1,) + (1,) * 2) if np.ndim(mean) else mean
    spread = np.reshape(spread, (-1,) + (1,) * 2) if np.ndim(spread) else spread
    return mean + spread * (0.8 * field + 0.2 * rng.normal(0.0, 1.0, shape))


def day_sequence(rng, year: int, steps: int) -> list[date]:
    """``steps`` distinct acquisition days of ``year``, in order."""
    days = np.sort(rng.choice(365, steps, replace=False))
    return [date(year, 1, 1) + timedelta(days=int(d)) for d in days]


# ----------------------------------------------------------------------------------- MMEarth64

MMEARTH_NAME = "data_1M_v001_64"
MMEARTH_SIDE = 64
# HDF5 band order B1 B2 B3 B4 B5 B6 B7 B8A B8 B9 B10 B11 B12: typical top-of-atmosphere DN.
S2_BAND_MEANS = (1500, 1300, 1200, 1150, 1450, 2000, 2300, 2500, 2400, 800, 30, 1900, 1300)
S1_DB_MEANS = (-12.0, -19.0, -10.0, -20.0) * 2  # VV VH HH HV, ascending then descending
MMEARTH_S2_BANDS = (
    "B1",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6",
    "B7",
    "B8A",
    "B8",
    "B9",
    "B10",
    "B11",
    "B12",
)
# Per-tile vectors and maps of the release that RAMEN does not read (written for fidelity).
MMEARTH_OTHER_MAPS = {
    "canopy_height_eth": (2, np.int8),
    "dynamic_world": (1, np.uint8),
    "esa_worldcover": (1, np.uint8),
    "sentinel2_cloudmask": (1, np.uint16),
    "sentinel2_cloudprod": (1, np.uint16),
    "sentinel2_scl": (1, np.uint16),
}
WORLDCOVER_CLASSES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)


def one_hot(rng, rows: int, classes: int, dtype) -> np.ndarray:
    out = np.zeros((rows, classes), dtype)
    out[np.arange(rows), rng.integers(0, classes, rows)] = 1
    return out


def cyclic(radians: np.ndarray) -> np.ndarray:
    """The release's (sin, cos) encoding of latitude, longitude and month: float32 [N, 2]."""
    return np.stack([np.sin(radians), np.cos(radians)], axis=1).astype(np.float32)


def mmearth_s2_dates(rows: int, seed: int) -> list[date]:
    """The Sentinel-2 acquisition day of every tile (``S2_DATE`` of the tile_info file)."""
    rng = np.random.default_rng([seed, 1])
    return [date(2020, 1, 1) + timedelta(days=int(day)) for day in rng.integers(0, 366, rows)]


def mmearth_arrays(rows: int, seed: int, l2a_rows: Sequence[int] = ()) -> dict:
    """Every HDF5 dataset of the release except ``metadata``, channels first, for ``rows`` tiles.

    Rows in ``l2a_rows`` are Sentinel-2 L2A (band B10 all zero). Sentinel-1 as the release
    stores it: -inf where a band was not acquired. An acquired orbit holds one dual-polarisation
    pair, VV+VH (HH HV -inf) for nine tiles in ten, HH+HV (VV VH -inf) otherwise; about a quarter
    of the tiles miss one orbit entirely. ``month`` encodes the month of ``mmearth_s2_dates``.
    """
    rng = np.random.default_rng(seed)
    maps = (rows, MMEARTH_SIDE, MMEARTH_SIDE)
    s2 = textured(rng, (rows, 13, *maps[1:]), S2_BAND_MEANS, np.array(S2_BAND_MEANS) * 0.3)
    s2 = np.clip(s2, 1, 10000).astype(np.uint16)
    s2[list(l2a_rows), 10] = 0
    s1 = textured(rng, (rows, 8, *maps[1:]), S1_DB_MEANS, 3.0).astype(np.float32)
    for row in range(rows):
        for orbit in (0, 4):
            missing_pair = (2, 3) if rng.random() < 0.9 else (0, 1)  # VV VH HH HV
            s1[row, [orbit + band for band in missing_pair]] = -np.inf
    for row in np.flatnonzero(rng.random(rows) < 0.25):
        orbit = rng.integers(2)
        s1[row, 4 * orbit : 4 * orbit + 4] = -np.inf
    months = np.array([day.month for day in mmearth_s2_dates(rows, seed)])
    elevation = textured(rng, maps, rng.uniform(0, 2000, (rows, 1, 1)), 150)
    slope = np.clip(textured(rng, maps, 8, 6), 0, 70)
    arrays = {
        "sentinel2": s2,
        "sentinel1": s1,
        "aster": np.stack([elevation, slope], axis=1).astype(np.int16),
        "biome": one_hot(rng, rows, 14, np.uint8),
        "eco_region": one_hot(rng, rows, 846, np.uint16),
        "era5": rng.normal(10, 8, (rows, 12)).astype(np.float32),
        "lat": cyclic(np.radians(rng.uniform(-55, 70, rows))),
        "lon": cyclic(np.radians(rng.uniform(-180, 180, rows))),
        "month": cyclic(months / 12 * 2 * np.pi),  # as MMEarth-data: angle 2 pi m / 12
    }
    for name, (bands, dtype) in MMEARTH_OTHER_MAPS.items():
        if name == "esa_worldcover":
            values = rng.choice(WORLDCOVER_CLASSES, (rows, bands, *maps[1:]))
        else:
            values = rng.integers(0, 10, (rows, bands, *maps[1:]))
        arrays[name] = values.astype(dtype)
    return arrays


def write_mmearth(
    directory,
    arrays: Mapping[str, np.ndarray],
    tile_ids: Sequence[str],
    *,
    s2_types: Sequence[str] | None = None,
    splits: Mapping[str, Sequence[int]] | None = None,
    s2_dates: Sequence[date] | None = None,
) -> Path:
    """Writes ``data_1M_v001_64.h5`` and its json sidecars into ``directory``; returns the h5.

    As MMEarth-data's ``convert_to_h5.py``: one gzip-compressed HDF5 chunk per row, and a
    ``metadata`` compound (``tile_id``, plus ``S2_type`` unless ``s2_types`` is None, as in
    files without it). ``splits`` defaults to every row in ``train``; ``s2_dates`` (the
    tile_info's ``S2_DATE``) to the 15th of each row's encoded ``month``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = len(tile_ids)
    fields = [("tile_id", "S100")] + ([("S2_type", "S10")] if s2_types is not None else [])
    metadata = np.zeros(rows, dtype=fields)
    metadata["tile_id"] = [tile.encode() for tile in tile_ids]
    if s2_types is not None:
        metadata["S2_type"] = [kind.encode() for kind in s2_types]
    path = directory / f"{MMEARTH_NAME}.h5"
    with h5py.File(path, "w") as h5:
        for name, data in {**arrays, "metadata": metadata}.items():
            h5.create_dataset(name, data=data, chunks=(1, *data.shape[1:]), compression="gzip")
    products = s2_types or ["l2a" if not np.any(s2[10]) else "l1c" for s2 in arrays["sentinel2"]]
    splits = splits or {"train": list(range(rows)), "val": [], "test": []}
    sidecars = {
        "splits": {name: [int(row) for row in members] for name, members in splits.items()},
        "band_stats": mmearth_band_stats(arrays, products),
        "tile_info": mmearth_tile_info(arrays, tile_ids, products, s2_dates),
    }
    for suffix, content in sidecars.items():
        (directory / f"{MMEARTH_NAME}_{suffix}.json").write_text(json.dumps(content, indent=1))
    return path


def from_cyclic(encoded: np.ndarray) -> np.ndarray:
    """Angles (radians, in (-pi, pi]) of (sin, cos) rows."""
    return np.arctan2(encoded[:, 0].astype(np.float64), encoded[:, 1])


def mmearth_tile_info(arrays: Mapping[str, np.ndarray], tile_ids, products, s2_dates=None) -> dict:
    """``_tile_info.json``, keyed by tile id: Sentinel-2 date and product, CRS, position and
    the bands each modality holds (a Sentinel-1 orbit lists its acquired pair, or is None)."""
    lat, lon = np.degrees(from_cyclic(arrays["lat"])), np.degrees(from_cyclic(arrays["lon"]))
    if s2_dates is None:
        months = np.round(from_cyclic(arrays["month"]) / (2 * np.pi) * 12).astype(int) % 12
        s2_dates = [date(2020, month or 12, 15) for month in months]
    info = {}
    for row, tile in enumerate(tile_ids):
        acquired = np.isfinite(arrays["sentinel1"][row]).any(axis=(1, 2))
        orbits = {
            f"sentinel1_{orbit}": [
                band for k, band in enumerate(("VV", "VH", "HH", "HV")) if acquired[start + k]
            ]
            or None
            for orbit, start in (("asc", 0), ("desc", 4))
        }
        info[tile] = {
            "S2_DATE": s2_dates[row].isoformat(),
            "S2_type": products[row],
            "CRS": f"EPSG:{32600 + int((lon[row] + 180) // 6) + 1}",
            "lat": float(lat[row]),
            "lon": float(lon[row]),
            "BANDS": {"sentinel2": list(MMEARTH_S2_BANDS), **orbits, "aster": ["b1", "slope"]},
        }
    return info


def mmearth_band_stats(arrays: Mapping[str, np.ndarray], products: Sequence[str]) -> dict:
    """``_band_stats.json``: mean / std / min / max per band over the finite values."""
    s2 = arrays["sentinel2"]
    per_modality = {
        "sentinel2_l1c": s2[[p == "l1c" for p in products]],
        "sentinel2_l2a": s2[[p == "l2a" for p in products]],
        **{name: arrays[name] for name in ("sentinel1", "aster", "era5", "canopy_height_eth")},
        **{name: arrays[name] for name in ("lat", "lon", "month")},
    }
    stats = {}
    for name, data in per_modality.items():
        bands = np.moveaxis(data.astype(np.float64), 1, 0).reshape(data.shape[1], -1)
        summary = {"mean": [], "std": [], "min": [], "max": []}
        for band in bands:
            finite = band[np.isfinite(band)]
            finite = finite if finite.size else np.zeros(1)
            summary["mean"].append(float(finite.mean()))
            summary["std"].append(float(finite.std()))
            summary["min"].append(float(finite.min()))
            summary["max"].append(float(finite.max()))
        stats[name] = summary
    return stats


def mmearth_standin(directory, rows: int = 16, seed: int = 0) -> Path:
    """A few MMEarth64 tiles, half of them L2A; returns the published ``_splits.json``."""
    rng = np.random.default_rng(seed)
    l2a = sorted(rng.choice(rows, rows // 2, replace=False).tolist())
    arrays = mmearth_arrays(rows, seed, l2a)
    test_rows = max(1, rows // 8)
    write_mmearth(
        directory,
        arrays,
        [f"tile_{seed}_{row:05d}" for row in range(rows)],
        s2_types=["l2a" if row in l2a else "l1c" for row in range(rows)],
        s2_dates=mmearth_s2_dates(rows, seed),
        splits={
            "train": list(range(rows - test_rows)),
            "val": [],  # empty in the release as well
            "test": list(range(rows - test_rows, rows)),
        },
    )
    return Path(directory) / f"{MMEARTH_NAME}_splits.json"


# ----------------------------------------------------------------------------------- FLAIR-HUB

FLAIRHUB_CSV_COLUMNS = (
    "patch_id,AERIAL-RLT_PAN,AERIAL_LABEL-COSIA,AERIAL_RGBI,ALL_LABEL-LPIS,DEM_ELEV,"
    "SENTINEL1-ASC_TS,SENTINEL1-DESC_TS,SENTINEL2_MSK-SC,SENTINEL2_TS,SPOT_RGBI"
).split(",")
LAMBERT93 = 2154
FLAIRHUB_DATE_COLUMNS = {"aerial": "date", "s2": "acquisition_dates", "s1_des": "acquisition_dates"}
# The metadata layouts in which FLAIR-HUB dates are published or asked for: layout -> (the
# GeoPackage's stem per table, whether Sentinel rows are keyed by zone_id in per-domain folders).
FLAIRHUB_DATE_LAYOUTS = {
    "release": ({"aerial": "AERIAL", "s2": "SENTINEL2", "s1_des": "SENTINEL1-DESC"}, False),
    "original": (
        {"aerial": "AERIAL_RGBI", "s2": "SENTINEL2_TS", "s1_des": "SENTINEL1-DESC_TS"},
        False,
    ),
    "toy": ({"aerial": "AERIAL", "s2": "SENTINEL2", "s1_des": "SENTINEL1-DESC"}, True),
}
S2_L2A_MEANS = (450, 700, 650, 1100, 2100, 2500, 2700, 2800, 2000, 1200)  # B2..B12 as stored


def write_geotiff(
    path, bands: np.ndarray, pixel_size: float, epsg: int, origin=(843000.0, 6519000.0)
):
    """``[bands, H, W]`` as a north-up GeoTIFF in ``epsg`` at ``pixel_size`` metres."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = rasterio.transform.Affine(pixel_size, 0, origin[0], 0, -pixel_size, origin[1])
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=bands.shape[2],
        height=bands.shape[1],
        count=bands.shape[0],
        dtype=bands.dtype,
        crs=rasterio.crs.CRS.from_epsg(epsg),
        transform=transform,
    ) as raster:
        raster.write(bands)


def gpkg_point(x, y, srs_id=LAMBERT93) -> bytes:
    """GeoPackage binary geometry: 'GP', version 0, little-endian without envelope, WKB point."""
    return b"GP" + struct.pack("<BBi", 0, 1, srs_id) + struct.pack("<BIdd", 1, 1, x, y)


def write_gpkg(path, key: str, column: str, rows: Sequence[tuple[str, str]]) -> None:
    """A GeoPackage (SQLite) whose one point layer holds the columns ``key`` and ``column``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layer = path.stem
    db = sqlite3.connect(path)
    db.executescript(
        f"""
        PRAGMA application_id = 1196444487;
        PRAGMA user_version = 10400;
        CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY,
          organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL,
          definition TEXT NOT NULL, description TEXT);
        INSERT INTO gpkg_spatial_ref_sys VALUES ('RGF93 v1 / Lambert-93', 2154, 'EPSG', 2154,
          'undefined', NULL);
        CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY,
          data_type TEXT NOT NULL, identifier TEXT UNIQUE, description TEXT DEFAULT '',
          last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
          min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER);
        CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
          geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL,
          m TINYINT NOT NULL, PRIMARY KEY (table_name, column_name));
        CREATE TABLE "{layer}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom POINT,
          "{key}" TEXT, "{column}" TEXT);
        INSERT INTO gpkg_contents (table_name, data_type, identifier, srs_id)
          VALUES ('{layer}', 'features', '{layer}', 2154);
        INSERT INTO gpkg_geometry_columns VALUES ('{layer}', 'geom', 'POINT', 2154, 0, 0);
        """
    )
    db.executemany(
        f'INSERT INTO "{layer}" (geom, "{key}", "{column}") VALUES (?, ?, ?)',
        [
            (gpkg_point(843000.0 + i, 6519000.0), patch, value)
            for i, (patch, value) in enumerate(rows)
        ],
    )
    db.commit()
    db.close()


def write_flairhub_patch(src, patch_id: str, arrays: Mapping[str, np.ndarray]) -> dict:
    """Writes the GeoTIFFs of one patch (``{CSV column: [bands, H, W]}``); returns its CSV row.

    Files follow the release's naming ``<DOMAIN-YEAR>_<MODALITY>/<ROI>/<DOMAIN-YEAR>_<MODALITY>_
    <ROI>_<row>-<col>.tif`` (512 px images at 0.2 m, Sentinel patches at 10.24 m, Lambert-93);
    the row lists them as ``../`` paths, as the published split CSVs do.
    """
    domain, roi, position = patch_id.split("_")
    row = dict.fromkeys(FLAIRHUB_CSV_COLUMNS, "")
    row["patch_id"] = patch_id
    for column, bands in arrays.items():
        relative = f"{domain}_{column}/{roi}/{domain}_{column}_{roi}_{position}.tif"
        pixel_size = 0.2 if bands.shape[1] == 512 else 10.24
        write_geotiff(Path(src) / relative, bands, pixel_size, LAMBERT93)
        row[column] = "../" + relative
    return row


def write_flairhub_csv(path, rows: Sequence[Mapping[str, str]], delimiter: str = ",") -> None:
    lines = [delimiter.join(FLAIRHUB_CSV_COLUMNS)]
    lines += [delimiter.join(row[column] for column in FLAIRHUB_CSV_COLUMNS) for row in rows]
    Path(path).write_text("\n".join(lines) + "\n")


def write_flairhub_dates(
    metadata_dir, tables: Mapping[str, Sequence[tuple[str, str]]], layout: str = "release"
) -> None:
    """Date GeoPackages in one of ``FLAIRHUB_DATE_LAYOUTS``; ``tables``: ``aerial`` / ``s2`` /
    ``s1_des`` -> rows of (patch id, value): ``YYYYMMDD`` for aerial, ``{"1": "YYYYMMDD", ...}``
    JSON for series. ``release`` and ``original`` write ``GLOBAL_ALL_MTD/GLOBAL_<stem>_MTD_DATES
    .gpkg`` keyed by ``patch_id``; ``toy`` writes ``<DOMAIN-YEAR>_ALL_MTD/<DOMAIN-YEAR>_<stem>_
    MTD_DATES.gpkg`` per domain, with one Sentinel row per zone keyed by ``zone_id`` (its first
    patch's value)."""
    stems, per_domain = FLAIRHUB_DATE_LAYOUTS[layout]
    for name, rows in tables.items():
        by_file: dict[str, dict[str, str]] = {}
        for patch, value in rows:
            domain = patch.split("_")[0] if per_domain else "GLOBAL"
            key = flairhub_dates.zone_of(patch) if per_domain and name != "aerial" else patch
            by_file.setdefault(domain, {}).setdefault(key, value)
        key_column = "zone_id" if per_domain and name != "aerial" else "patch_id"
        for prefix, values in by_file.items():
            path = (
                Path(metadata_dir) / f"{prefix}_ALL_MTD" / f"{prefix}_{stems[name]}_MTD_DATES.gpkg"
            )
            write_gpkg(path, key_column, FLAIRHUB_DATE_COLUMNS[name], list(values.items()))


def flairhub_patch_arrays(rng, s2_steps: int, s1_steps: int) -> dict:
    """Plausible content of one patch: RGBI uint8, DSM/DTM float32, Sentinel series."""
    dtm = textured(rng, (1, 512, 512), rng.uniform(50, 900), 15)
    canopy = np.clip(textured(rng, (1, 512, 512), 4, 6, cells=32), 0, 35)
    cloudy = rng.random(s2_steps) < 0.35
    cloud = np.where(cloudy[:, None, None], rng.integers(30, 100, (s2_steps, 10, 10)), 0)
    snow = np.where(rng.random((s2_steps, 1, 1)) < 0.05, 90, 0) * np.ones((1, 10, 10), int)
    s2 = textured(rng, (s2_steps, 10, 10, 10), S2_L2A_MEANS, np.array(S2_L2A_MEANS) * 0.25, 2)
    return {
        "AERIAL_RGBI": np.clip(textured(rng, (4, 512, 512), 110, 45, 32), 0, 255).astype(np.uint8),
        "DEM_ELEV": np.concatenate([dtm + canopy, dtm]).astype(np.float32),
        "SENTINEL2_TS": np.clip(s2, 1, 10000).astype(np.uint16).reshape(-1, 10, 10),
        "SENTINEL2_MSK-SC": np.stack([snow, cloud], 1).astype(np.uint8).reshape(-1, 10, 10),
        "SENTINEL1-DESC_TS": textured(rng, (s1_steps, 2, 10, 10), (-11.0, -18.0), 2.5, 2)
        .astype(np.float32)
        .reshape(-1, 10, 10),
    }


def flairhub_split_files(src) -> dict[str, Path]:
    return {"train": Path(src) / "FLAIR-HUB_TRAIN.csv", "val": Path(src) / "FLAIR-HUB_VALID.csv"}


def flairhub_standin(
    src, train: int = 4, val: int = 1, seed: int = 0, layout: str = "toy"
) -> dict[str, Path]:
    """A few FLAIR-HUB patches; returns ``{split: CSV}`` (train comma-, val semicolon-separated).

    Yearly Sentinel series of a few tens of dates (Sentinel-2 20..60 with about a third cloudy,
    Sentinel-1 descending 25..60) as in the release, so both exceed the pipeline's time slots.
    Dates in metadata ``layout`` (default: the toy release's per-domain folders, whose Sentinel
    dates are keyed by zone).
    """
    rng = np.random.default_rng(seed)
    src = Path(src)
    domains = ("D006-2020", "D012-2019", "D030-2021")
    rows, dates = [], {"aerial": [], "s2": [], "s1_des": []}
    for index in range(train + val):
        domain = domains[index % len(domains)]
        patch = f"{domain}_AB-S1-{10 + index}_{index // 4}-{index % 4}"
        year = int(domain.split("-")[1])
        s2_steps, s1_steps = int(rng.integers(20, 61)), int(rng.integers(25, 61))
        rows.append(
            write_flairhub_patch(src, patch, flairhub_patch_arrays(rng, s2_steps, s1_steps))
        )
        aerial_day = date(year, 6, 1) + timedelta(days=int(rng.integers(0, 90)))
        dates["aerial"].append((patch, aerial_day.strftime("%Y%m%d")))
        for name, steps in (("s2", s2_steps), ("s1_des", s1_steps)):
            days = day_sequence(rng, year, steps)
            series = {str(k + 1): day.strftime("%Y%m%d") for k, day in enumerate(days)}
            dates[name].append((patch, json.dumps(series)))
    write_flairhub_dates(src, dates, layout)
    splits = flairhub_split_files(src)
    write_flairhub_csv(splits["train"], rows[:train])
    write_flairhub_csv(splits["val"], rows[train:], delimiter=";")
    return splits


# ---------------------------------------------------------------------------------- WorldStrat

WORLDSTRAT_SPOT_SIDE = 1054  # 4 x 263 px tiles
WORLDSTRAT_LISTED_REVISITS = 16  # metadata.csv lists 16 L2A revisits per AOI ...
WORLDSTRAT_REVISITS = 8  # ... of which the Kaggle "core" release ships 8
UTM_33N = 32633
S2_REFLECTANCE_MEANS = (0.03, 0.05, 0.07, 0.08, 0.12, 0.2, 0.23, 0.25, 0.26, 0.27, 0.2, 0.13)


def write_worldstrat_aoi(src, aoi: str, spot: np.ndarray, revisits: Mapping[int, np.ndarray]):
    """``hr_dataset/<AOI>/<AOI>_ps.tiff`` and ``lr_dataset/<AOI>/L2A/<AOI>-<n>-L2A_data.tiff``."""
    src = Path(src)
    write_geotiff(src / "hr_dataset" / aoi / f"{aoi}_ps.tiff", spot, 1.5, UTM_33N, (5e5, 4649776))
    for n, image in revisits.items():
        path = src / "lr_dataset" / aoi / "L2A" / f"{aoi}-{n}-L2A_data.tiff"
        write_geotiff(path, image, 10, UTM_33N, (5e5, 4649776))


def write_worldstrat_tables(
    src,
    revisit_dates: Mapping[str, Mapping[int, str]],
    highres_dates: Mapping[str, str],
    splits: Mapping[str, str] | Sequence[tuple[str, str]],
) -> None:
    """``metadata.csv`` (AOI as unnamed first column, one row per listed revisit ``n``, ISO dates,
    whether or not its file is written) and ``stratified_train_val_test_split.csv`` (``tile`` and
    ``split`` among the release's columns). ``splits`` is ``{AOI: split}`` or the file's rows as
    (AOI, split) pairs: the published file repeats some AOIs, under one split or two."""
    metadata = [",n,lowres_date,highres_date,cloud_cover,lon,lat"]
    for aoi, revisits in revisit_dates.items():
        for n, lowres in revisits.items():
            metadata.append(f"{aoi},{n},{lowres},{highres_dates[aoi]},12.5,31.1,-2.4")
    Path(src, "metadata.csv").write_text("\n".join(metadata) + "\n")
    rows = list(splits.items()) if isinstance(splits, Mapping) else list(splits)
    split = [",tile,IPCC Class,SMOD,source,joint_class,split"]
    split += [
        f"{i * 16},{aoi},Settlement,23,X,X/Settlement/23,{name}"
        for i, (aoi, name) in enumerate(rows)
    ]
    Path(src, worldstrat.SPLIT_FILE).write_text("\n".join(split) + "\n")


def worldstrat_standin(src, seed: int = 0) -> Path:
    """Two AOIs (train, val): 12-bit SPOT 1054 px and float32 L2A revisits of about 160 px.

    With the published files' quirks: ``metadata.csv`` lists 16 revisits per AOI of which 8 are
    written (as the Kaggle core release), and the split file repeats the train AOI and lists the
    val AOI under train as well.
    """
    rng = np.random.default_rng(seed)
    train, val = "Landcover-1043", "ASMSpotter-1-1-1"
    revisit_dates, highres_dates = {}, {}
    for aoi in (train, val):
        spot = textured(rng, (4, WORLDSTRAT_SPOT_SIDE, WORLDSTRAT_SPOT_SIDE), 900, 300, 32)
        side = int(rng.integers(156, 165))
        revisits = {
            n: np.clip(
                textured(rng, (12, side, side), S2_REFLECTANCE_MEANS, 0.03, 16), 0, 1
            ).astype(np.float32)
            for n in range(1, WORLDSTRAT_REVISITS + 1)
        }
        write_worldstrat_aoi(src, aoi, np.clip(spot, 0, 4095).astype(np.uint16), revisits)
        highres = date(2019, 3, 1) + timedelta(days=int(rng.integers(0, 200)))
        offsets = rng.choice(np.arange(-60, 61), WORLDSTRAT_LISTED_REVISITS, replace=False)
        revisit_dates[aoi] = {
            n: (highres + timedelta(days=int(offset))).isoformat()
            for n, offset in enumerate(np.sort(offsets), start=1)
        }
        highres_dates[aoi] = highres.isoformat()
    split_rows = [(train, "train"), (val, "val"), (train, "train"), (val, "train")]
    write_worldstrat_tables(src, revisit_dates, highres_dates, split_rows)
    return Path(src) / worldstrat.SPLIT_FILE


# ------------------------------------------------------------------------ write and convert


@dataclasses.dataclass(frozen=True)
class StandIn:
    """How to write one dataset's stand-in and read it back with its converter."""

    layout: str  # the published release it imitates
    builder: type  # the converter's ChunkBuilder
    write: Callable[[Path], object]  # writes the published layout into a folder
    make_source: Callable[[Path], common.Source]  # the converter's reader of that folder


STANDINS = {
    "mmearth": StandIn(
        "MMEarth64 HDF5 release (data_1M_v001_64) and its json sidecars",
        mmearth.MMEarth,
        mmearth_standin,
        lambda src: mmearth.MMEarthSource(src, src / f"{MMEARTH_NAME}_splits.json"),
    ),
    "flairhub": StandIn(
        "FLAIR-HUB GeoTIFF patches, GeoPackage dates and split CSVs",
        flairhub.FlairHub,
        flairhub_standin,
        lambda src: flairhub.FlairHubSource(src, flairhub_split_files(src)),
    ),
    "worldstrat": StandIn(
        "WorldStrat SPOT images, Sentinel-2 L2A revisits, metadata and split CSVs",
        worldstrat.WorldStrat,
        worldstrat_standin,
        worldstrat.WorldStratSource,
    ),
}


def build_standin(name: str, root, split: str = common.TRAIN) -> Path:
    """Stand-in ``name`` under ``root``; returns the folder of its converted records.

    ``root/source`` holds the published layout (written once: ``source.partial`` is renamed
    when complete) and ``root/records/<split>`` that split converted by the dataset's own
    converter (resumable; a finished conversion is left as it is), marked as a stand-in by
    ``records.STANDIN_FILE``. Stand-ins are written with a fixed seed, so every cache holds the
    same data.
    """
    standin = STANDINS[name]
    root = Path(root)
    source = root / "source"
    if not source.is_dir():
        partial = root / "source.partial"
        shutil.rmtree(partial, ignore_errors=True)
        standin.write(partial)
        os.replace(partial, source)
    converted = root / "records" / split
    common.convert(standin.builder, standin.make_source(source), converted, [split])
    marker = {"layout": standin.layout, "version": STANDIN_VERSION}
    common.write_json_atomic(converted / records.STANDIN_FILE, marker)
    return converted


class MissingStandInError(RuntimeError):
    """A records dataset of the config has no data and no stand-in of its name."""


def standin_paths(config, workdir, say) -> dict[str, str]:
    """Writes (once, cached under ``workdir``) the stand-in of every ``records`` dataset of
    ``config.data`` whose ``source.path`` is absent; returns ``{dataset: converted records}``
    for them. A dataset whose path exists is left as it is."""
    paths = {}
    for name, dataset in config.data.datasets.items():
        source = dataset.source
        if source.get("type") != "records":
            say(f"{name}: '{source.get('type')}' source, nothing to write")
            continue
        if storage.as_path(source.path).exists():  # a local path or a URL
            say(f"{name}: data exists at {source.path}, left as it is")
            continue
        if name not in STANDINS:
            raise MissingStandInError(
                f"{name}: no data at {source.path} and no stand-in for a dataset of that name; "
                f"convert it with data_prep (stand-ins exist for {sorted(STANDINS)})"
            )
        root = Path(workdir) / f"standins-v{STANDIN_VERSION}" / name
        say(
            f"{name}: NO DATA at {source.path}; writing a SYNTHETIC STAND-IN in the published "
            f"layout ({STANDINS[name].layout}), converted with data_prep.{name}, cached in {root}"
        )
        converted = build_standin(name, root, source.get("split", common.TRAIN))
        paths[name] = os.fspath(converted)
    return paths


def point_at_standins(config, workdir, say) -> list[str]:
    """``standin_paths`` as the ``--config`` overrides that point the config at them."""
    return [
        f"--config.data.datasets.{name}.source.path={path}"
        for name, path in standin_paths(config, workdir, say).items()
    ]


FLAGFILE = "standins.flags"


def write_overrides(config, workdir, say) -> Path:
    """``point_at_standins``, then its overrides written to ``workdir/standins.flags`` (one
    flag a line, an absl ``--flagfile``) and printed to stdout; returns the file."""
    overrides = point_at_standins(config, workdir, say)
    flagfile = Path(workdir) / FLAGFILE
    flagfile.parent.mkdir(parents=True, exist_ok=True)
    flagfile.write_text("".join(line + "\n" for line in overrides))
    say(f"{len(overrides)} override(s) written to {flagfile} (pass --flagfile={flagfile})")
    print("\n".join(overrides), flush=True)
    return flagfile


def main() -> None:
    """``python -m data_prep.standins --config CONFIG --workdir DIR``; progress on stderr."""
    # absl flags are defined here, not on import: the converter tests import this module beside
    # commands that define flags of the same names.
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/base.py.")
    workdir = flags.DEFINE_string(
        "workdir", None, "Cache of the stand-ins (written and converted once, reused later)."
    )

    def run(argv) -> None:
        if len(argv) > 1:
            sys.exit(cli.report(f"unexpected arguments: {argv[1:]}", cli.USAGE_EXIT_CODE))
        if config.value is None or workdir.value is None:
            sys.exit(cli.report("--config and --workdir are required", cli.USAGE_EXIT_CODE))
        logging.getLogger("data_prep").setLevel(logging.INFO)  # conversion progress
        logging.getLogger("absl").setLevel(logging.WARNING)  # TFDS logs every chunk twice

        def say(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        try:
            write_overrides(config.value, workdir.value, say)
        except MissingStandInError as error:
            sys.exit(cli.report(error))

    app.run(run, flags_parser=lambda argv: cli.parse_absl_flags(argv, config))


if __name__ == "__main__":
    main()
