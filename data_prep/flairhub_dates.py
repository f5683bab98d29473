"""Acquisition dates of FLAIR-HUB patches, read from the release's GeoPackages in every layout.

Owns finding the date GeoPackages of a modality (``aerial``, ``s2``, ``s1_des``) under a metadata
folder, reading them (with the standard ``sqlite3`` module: a GeoPackage is an SQLite file) and
looking a patch up in them. Every layout that the official and original loaders read is
accepted, and files of several layouts are merged (the first file holding a key wins):

    GLOBAL_ALL_MTD/GLOBAL_<STEM>_MTD_DATES.gpkg              full release (GLOBAL_ALL_MTD.zip)
    <DOMAIN-YEAR>_ALL_MTD/<DOMAIN-YEAR>_<STEM>_MTD_DATES.gpkg toy release, a folder per domain

``<STEM>`` is the release's name (``AERIAL``, ``SENTINEL2``, ``SENTINEL1-DESC``: IGNF's FLAIR-HUB
loader reads the Sentinel ones) or the modality's full name that the original RAMEN ``FLAIRHUB``
class asks for (``AERIAL_RGBI``, ``SENTINEL2_TS``, ``SENTINEL1-DESC_TS``). A GeoPackage's layer
holds a key column, ``patch_id`` (``D006-2020_FF-S1-14_5-5``) or ``zone_id`` (the patch's zone,
its first two parts: ``D006-2020_FF-S1-14``; the toy release keys Sentinel dates so), and a value
column, ``date`` (``YYYYMMDD``) or ``acquisition_dates`` (JSON ``{"1": "YYYYMMDD", ...}``). A
patch is looked up by its id, then by its zone.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from data_prep import common

MTD_SUFFIX = "_ALL_MTD"
FILE_STEMS = {  # modality -> the stems its GeoPackage is named with, release name first
    "aerial": ("AERIAL", "AERIAL_RGBI"),
    "s2": ("SENTINEL2", "SENTINEL2_TS"),
    "s1_des": ("SENTINEL1-DESC", "SENTINEL1-DESC_TS"),
}
KEY_COLUMNS = ("patch_id", "zone_id")
VALUE_COLUMNS = ("date", "acquisition_dates")


def zone_of(patch_id: str) -> str:
    return "_".join(patch_id.split("_")[:2])


def find_date_files(metadata_dir: Path, name: str) -> list[Path]:
    """The GeoPackages of modality ``name`` in every ``*_ALL_MTD`` folder of ``metadata_dir``."""
    found = []
    for folder in sorted(Path(metadata_dir).glob(f"*{MTD_SUFFIX}")):
        prefix = folder.name[: -len(MTD_SUFFIX)]
        for stem in FILE_STEMS[name]:
            path = folder / f"{prefix}_{stem}_MTD_DATES.gpkg"
            if path.is_file():
                found.append(path)
    return found


def read_gpkg(path: Path) -> dict[str, dict[str, str]]:
    """``{key column: {key: value}}`` of the first layer with a key and a value column."""
    if not path.is_file():
        raise common.SourceError(path, "missing GeoPackage")
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            for (table,) in db.execute("SELECT table_name FROM gpkg_contents"):
                names = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
                keys = [column for column in KEY_COLUMNS if column in names]
                value = next((column for column in VALUE_COLUMNS if column in names), None)
                if keys and value:
                    return {
                        key: {
                            str(k): str(v)
                            for k, v in db.execute(f'SELECT "{key}", "{value}" FROM "{table}"')
                            if k is not None and v is not None
                        }
                        for key in keys
                    }
    except sqlite3.Error as error:
        raise common.SourceError(path, f"not a readable GeoPackage: {error}") from error
    raise common.SourceError(
        path, f"no layer with a column of {KEY_COLUMNS} and a column of {VALUE_COLUMNS}"
    )


class DateTable:
    """The dates of one modality, merged from its GeoPackages."""

    def __init__(self, name: str, files: Iterable[Path]):
        self.name, self.files = name, tuple(files)
        self.by_patch: dict[str, tuple[str, Path]] = {}
        self.by_zone: dict[str, tuple[str, Path]] = {}
        for path in self.files:
            columns = read_gpkg(path)
            for key, value in columns.get("patch_id", {}).items():
                self.by_patch.setdefault(key, (value, path))
            for key, value in columns.get("zone_id", {}).items():
                self.by_zone.setdefault(key, (value, path))

    def describe(self) -> str:
        files = ", ".join(str(path) for path in self.files[:2])
        if len(self.files) > 2:
            files += f" and {len(self.files) - 2} more"
        return (
            f"{self.name} dates of {len(self.by_patch)} patches and {len(self.by_zone)} zones "
            f"from {files}"
        )

    def days(self, patch_id: str) -> tuple[list[int], Path]:
        """Day of year of every acquisition of the patch, and the file they come from."""
        entry = self.by_patch.get(patch_id) or self.by_zone.get(zone_of(patch_id))
        if entry is None:
            where = self.files[0] if len(self.files) == 1 else f"{len(self.files)} GeoPackages"
            raise common.SourceError(where, f"no {self.name} date for patch {patch_id}")
        value, path = entry
        try:
            return days_of_year(value), path
        except (ValueError, TypeError, KeyError) as error:
            raise common.SourceError(path, f"bad dates for patch {patch_id}: {value!r}") from error


def days_of_year(value: str) -> list[int]:
    """``YYYYMMDD`` -> [day]; JSON ``{"1": "YYYYMMDD", ...}`` -> days in step order."""
    text = value.strip()
    if text.startswith("{"):
        by_step = json.loads(text)
        return [yyyymmdd_day_of_year(by_step[step]) for step in sorted(by_step, key=int)]
    return [yyyymmdd_day_of_year(text)]


def yyyymmdd_day_of_year(text) -> int:
    day = datetime.strptime(str(text).strip().replace("-", ""), "%Y%m%d").date()
    return common.day_of_year(day)
