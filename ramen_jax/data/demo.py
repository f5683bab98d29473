"""Bundled real demo data: six BigEarthNet Sentinel-2 L2A patches and their Sentinel-1 pairs.

Owns: reading the example archives shipped inside the ``bigearthnet-common`` package
(``BigEarthNet-S2-Example.tar.bz2``, ``BigEarthNet-S1-Example.tar.bz2``) entirely in memory (no
network, nothing written to disk; ``bigearthnet_common.example_data`` and ``.base`` are never
imported because they create folders under $HOME), the modality description of these patches
for a model config (``DEMO_MODALITIES``), the label vocabulary (``DEMO_LABELS``), per-channel
normalisation, and a ground-aligned random crop + flip for all modalities at once.

What the archives hold (checked on load, a mismatch raises naming the file):

- Sentinel-2 L2A: one uint16 GeoTIFF per band (reflectance x 10000, kept as raw DN here), pixel
  size 10 m (B02 B03 B04 B08, 120 x 120 px), 20 m (B05 B06 B07 B8A B11 B12, 60 x 60 px), 60 m
  (B01 B09, 20 x 20 px); all bands of a patch share one UTM CRS and upper-left corner, which equals
  the ``coordinates`` in the patch's ``*_labels_metadata.json``. Every group covers 1200 m x 1200 m.
- Sentinel-1 GRD: float32 VV and VH backscatter in dB, 10 m, 120 x 120 px, on exactly the grid of
  the S2 patch named by ``corresponding_s2_patch`` in its metadata json.
- Orbit direction is not in the metadata; it follows from the acquisition time. Sentinel-1 flies a
  dawn-dusk sun-synchronous orbit (ascending node at 18:00 local solar time), so a pass near 18:00
  local is ascending and one near 06:00 is descending. Five pairs are descending; the S1 patch of
  ``S2A_MSIL2A_20170613T101031_87_48`` (16:50 UTC at 13.7 E, about 17:45 local) is ascending. The
  modality needs one static set of channel keys, so ``DEMO_MODALITIES["s1"]`` uses the majority
  (``des_vv``, ``des_vh``) for all six; each sample records its true orbit in ``"s1_orbit"``.
- Dates: day of year from the metadata acquisition time, cross-checked with the date in the
  product name (two S2 names have a truncated time field, e.g. ``20170924T93020``, so the name is
  not parsed beyond its date).
- Labels: the original 43-class CORINE labels; ``label_vector`` uses the 19-class BigEarthNet
  nomenclature through the package's own 43 -> 19 mapping (labels without a 19-class target,
  such as "Road and rail networks", are dropped from the vector, not from ``"labels"``).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
import tarfile
from datetime import datetime
from importlib import resources

import numpy as np
import rasterio.warp
from bigearthnet_common.constants import NEW_LABELS, OLD2NEW_LABELS_DICT
from rasterio.io import MemoryFile

from ramen_jax.data import catalog

S2_ARCHIVE = "BigEarthNet-S2-Example.tar.bz2"
S1_ARCHIVE = "BigEarthNet-S1-Example.tar.bz2"
PATCH_SIZE_M = catalog.DEMO_PATCH_SIZE_M

# The modalities (channels, GSD, side) are described in ``ramen_jax.data.catalog``; here, the
# archive's band files of each, in the catalog's channel order.
S2_GROUP_BANDS = {
    "s2_10m": ("B02", "B03", "B04", "B08"),
    "s2_20m": ("B05", "B06", "B07", "B8A", "B11", "B12"),
    "s2_60m": ("B01", "B09"),
}
S1_POLARISATIONS = ("VV", "VH")
_CATALOG = {modality.name: modality for modality in catalog.BIGEARTHNET_DEMO}
S2_GROUP_GSD = {group: _CATALOG[group].gsd for group in S2_GROUP_BANDS}
S1_GSD = _CATALOG["s1"].gsd

DEMO_MODALITIES = {
    m.name: {
        "kind": m.kind,
        "channels": list(m.channels),
        "gsd": m.gsd,
        "side": m.side,
        "time_series": m.time_series,
    }
    for m in catalog.BIGEARTHNET_DEMO
}

# The 19-class BigEarthNet nomenclature, sorted (the package's and torchgeo's order).
DEMO_LABELS = tuple(sorted(NEW_LABELS))


class DemoDataError(ValueError):
    """The bundled archives do not hold what this module expects."""


@dataclasses.dataclass(frozen=True)
class RasterGrid:
    """Where a band lies on the ground: CRS and the upper-left corner of its first pixel."""

    crs: str
    upper_left: tuple[float, float]


# ----------------------------------------------------------------------------- archive reading


def _archive_files_by_patch(archive_name: str) -> dict[str, dict[str, bytes]]:
    """{patch name: {file name: bytes}} for an archive laid out as root/patch/file."""
    data = resources.files("bigearthnet_common").joinpath(archive_name).read_bytes()
    patches: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:bz2") as archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            patches.setdefault(parts[1], {})[parts[2]] = archive.extractfile(member).read()
    return patches


def read_band(tif_bytes: bytes, file_name: str, gsd: float, side: int) -> tuple:
    """Reads a one-band GeoTIFF; checks its pixel size (gsd, north-up) and its side.

    Returns (float32 [side, side] array, RasterGrid). Raises DemoDataError naming the file.
    """
    with MemoryFile(tif_bytes) as memory_file, memory_file.open() as dataset:
        transform = dataset.transform
        pixel = (transform.a, transform.b, transform.d, transform.e)
        if pixel != (gsd, 0.0, 0.0, -gsd):
            raise DemoDataError(
                f"{file_name}: geotransform pixel size/rotation {pixel}, expected a north-up "
                f"{gsd} m grid ({gsd}, 0, 0, {-gsd})"
            )
        if dataset.count != 1 or dataset.shape != (side, side):
            raise DemoDataError(
                f"{file_name}: {dataset.count} band(s) of {dataset.shape} px, "
                f"expected 1 band of ({side}, {side}) px at {gsd} m"
            )
        grid = RasterGrid(dataset.crs.to_string(), (transform.c, transform.f))
        return dataset.read(1).astype(np.float32), grid


def _stack_bands(files: dict[str, bytes], patch: str, bands, gsd: int) -> tuple:
    """[1, H, W, C] float32 of the named bands, and the grid they share."""
    arrays, grids = [], set()
    for band in bands:
        file_name = f"{patch}_{band}.tif"
        if file_name not in files:
            raise DemoDataError(f"{patch}: missing {file_name}")
        array, grid = read_band(files[file_name], file_name, gsd, PATCH_SIZE_M // gsd)
        arrays.append(array)
        grids.add(grid)
    if len(grids) != 1:
        raise DemoDataError(f"{patch}: bands {bands} lie on different grids {grids}")
    return np.stack(arrays, axis=-1)[None], grids.pop()


def _metadata(files: dict[str, bytes], patch: str) -> dict:
    file_name = f"{patch}_labels_metadata.json"
    if file_name not in files:
        raise DemoDataError(f"{patch}: missing {file_name}")
    return json.loads(files[file_name])


def _acquisition_time(metadata: dict, patch: str) -> datetime:
    """Metadata acquisition time, checked against the YYYYMMDD date in the product name."""
    stamp = metadata.get("acquisition_date") or metadata.get("acquisition_time")
    acquired = datetime.fromisoformat(stamp)
    name_date = re.search(r"_(\d{8})T", patch)
    if name_date is None or name_date.group(1) != acquired.strftime("%Y%m%d"):
        raise DemoDataError(f"{patch}: metadata acquisition time {stamp} disagrees with the name")
    return acquired


def day_of_year(when: datetime) -> np.ndarray:
    return np.array([when.timetuple().tm_yday], dtype=np.int32)


# ----------------------------------------------------------------------------- orbit and labels


def s1_orbit_direction(acquired_utc: datetime, longitude_deg: float) -> str:
    """'ascending' or 'descending' from local solar time (passes near 18:00 / 06:00)."""
    utc_hours = acquired_utc.hour + acquired_utc.minute / 60 + acquired_utc.second / 3600
    local_solar_hour = (utc_hours + longitude_deg / 15.0) % 24.0
    return "ascending" if local_solar_hour >= 12.0 else "descending"


def _patch_centre_longitude(grid: RasterGrid) -> float:
    half = PATCH_SIZE_M / 2
    x, y = grid.upper_left[0] + half, grid.upper_left[1] - half
    longitudes, _ = rasterio.warp.transform(grid.crs, "EPSG:4326", [x], [y])
    return float(longitudes[0])


def nineteen_class_vector(labels, patch: str = "") -> np.ndarray:
    """Multi-hot float32 over DEMO_LABELS from the original 43-class labels."""
    unknown = [label for label in labels if label not in OLD2NEW_LABELS_DICT]
    if unknown:
        raise DemoDataError(f"{patch}: labels {unknown} are not BigEarthNet 43-class labels")
    vector = np.zeros(len(DEMO_LABELS), dtype=np.float32)
    for label in labels:
        if OLD2NEW_LABELS_DICT[label] is not None:
            vector[DEMO_LABELS.index(OLD2NEW_LABELS_DICT[label])] = 1.0
    return vector


# ----------------------------------------------------------------------------- patches


def _s1_patch_by_s2_name(s1_files: dict[str, dict[str, bytes]]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for s1_patch, files in s1_files.items():
        s2_patch = _metadata(files, s1_patch)["corresponding_s2_patch"]
        if s2_patch in pairs:
            raise DemoDataError(f"{s2_patch}: paired with {pairs[s2_patch]} and {s1_patch}")
        pairs[s2_patch] = s1_patch
    return pairs


def _check_grid_matches(grid: RasterGrid, expected: RasterGrid, what: str) -> None:
    if grid != expected:
        raise DemoDataError(f"{what}: grid {grid} differs from the S2 patch grid {expected}")


def _load_pair(s2_patch: str, s2_files: dict, s1_patch: str, s1_files: dict) -> dict:
    s2_metadata = _metadata(s2_files, s2_patch)
    sample: dict = {"id": s2_patch, "s1_id": s1_patch}
    s2_date = day_of_year(_acquisition_time(s2_metadata, s2_patch))
    grids = []
    for group, bands in S2_GROUP_BANDS.items():
        sample[group], grid = _stack_bands(s2_files, s2_patch, bands, S2_GROUP_GSD[group])
        sample[f"{group}_dates"] = s2_date.copy()
        grids.append(grid)
    corner = s2_metadata["coordinates"]
    _check_grid_matches(grids[1], grids[0], f"{s2_patch} 20 m bands")
    _check_grid_matches(grids[2], grids[0], f"{s2_patch} 60 m bands")
    _check_grid_matches(
        RasterGrid(grids[0].crs, (float(corner["ulx"]), float(corner["uly"]))),
        grids[0],
        f"{s2_patch} metadata coordinates",
    )
    sample["s1"], s1_grid = _stack_bands(s1_files, s1_patch, S1_POLARISATIONS, S1_GSD)
    _check_grid_matches(s1_grid, grids[0], s1_patch)
    s1_acquired = _acquisition_time(_metadata(s1_files, s1_patch), s1_patch)
    sample["s1_dates"] = day_of_year(s1_acquired)
    sample["s1_orbit"] = s1_orbit_direction(s1_acquired, _patch_centre_longitude(s1_grid))
    sample["labels"] = list(s2_metadata["labels"])
    sample["label_vector"] = nineteen_class_vector(sample["labels"], s2_patch)
    return sample


def _freeze(sample: dict) -> dict:
    for value in sample.values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)  # the per-process cache is shared by every caller
    return sample


@functools.cache
def _load_all_pairs() -> tuple[dict, ...]:
    s2_files = _archive_files_by_patch(S2_ARCHIVE)
    s1_files = _archive_files_by_patch(S1_ARCHIVE)
    s1_by_s2 = _s1_patch_by_s2_name(s1_files)
    missing = sorted(set(s2_files) - set(s1_by_s2))
    if missing:
        raise DemoDataError(f"no Sentinel-1 patch names these Sentinel-2 patches: {missing}")
    return tuple(
        _freeze(_load_pair(name, s2_files[name], s1_by_s2[name], s1_files[s1_by_s2[name]]))
        for name in sorted(s2_files)
    )


def load_bigearthnet_patches() -> list[dict]:
    """The six demo patches, sorted by S2 patch name (cached per process; arrays read-only).

    Each dict: ``s2_10m`` [1,120,120,4], ``s2_20m`` [1,60,60,6], ``s2_60m`` [1,20,20,2] (raw L2A
    DN), ``s1`` [1,120,120,2] (VV, VH in dB), all float32 channels-last; ``<modality>_dates`` int32
    [1] day of year; ``labels`` (43-class strings), ``label_vector`` (float32 over DEMO_LABELS);
    ``id`` (S2 patch), ``s1_id`` (paired S1 patch), ``s1_orbit`` ('ascending' / 'descending').
    """
    return [dict(sample) for sample in _load_all_pairs()]


# ----------------------------------------------------------------------------- normalisation


def normalisation_stats(patches, modalities=DEMO_MODALITIES) -> dict:
    """{modality: (mean [C], std [C])} float64 over all pixels and patches; non-finite skipped.

    std is the population standard deviation (ddof=0).
    """
    stats = {}
    for name in modalities:
        if name not in patches[0]:
            continue
        pixels = np.concatenate(
            [np.asarray(p[name], np.float64).reshape(-1, p[name].shape[-1]) for p in patches]
        )
        pixels = np.where(np.isfinite(pixels), pixels, np.nan)
        stats[name] = (np.nanmean(pixels, axis=0), np.nanstd(pixels, axis=0))
    return stats


def normalise(sample: dict, stats: dict) -> dict:
    """A copy of ``sample`` with each modality in ``stats`` as float32 (x - mean) / std.

    NaN and +-inf (from the input, or from a zero std) become 0.
    """
    normalised = dict(sample)
    for name, (mean, std) in stats.items():
        if name in sample:
            with np.errstate(divide="ignore", invalid="ignore"):
                scaled = (np.asarray(sample[name], np.float64) - mean) / std
            normalised[name] = np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0).astype(
                np.float32
            )
    return normalised


# ----------------------------------------------------------------------------- augmentation


def _pixels_per_coarse_pixel(sample: dict, modalities: dict) -> dict[str, int]:
    """{modality: how many of its pixels span one pixel of the coarsest modality}."""
    present = [name for name in modalities if name in sample]
    if not present:
        raise ValueError(f"sample has none of the modalities {list(modalities)}")
    coarsest_gsd = max(modalities[name]["gsd"] for name in present)
    ratios = {}
    for name in present:
        ratio = coarsest_gsd / modalities[name]["gsd"]
        if ratio != int(ratio):
            raise ValueError(
                f"{name}: GSD {modalities[name]['gsd']} does not divide {coarsest_gsd}"
            )
        ratios[name] = int(ratio)
    return ratios


def _coarse_side(sample: dict, ratios: dict[str, int]) -> int:
    """Side of the sample on the coarsest grid; checks every modality covers the same ground."""
    sides = {name: sample[name].shape[1:3] for name in ratios}
    coarse_sides = {name: side[0] // ratios[name] for name, side in sides.items()}
    side = next(iter(coarse_sides.values()))
    for name, (height, width) in sides.items():
        if height != width or height != side * ratios[name]:
            raise ValueError(f"modalities do not cover the same square ground area: {sides}")
    return side


def random_crop_flip(
    sample: dict, rng: np.random.Generator, crop_fraction: float, modalities=DEMO_MODALITIES
) -> dict:
    """Same random square ground crop and the same random flips for every modality.

    ``crop_fraction`` (0, 1] is the crop side over the full side. The crop is chosen on the
    coarsest grid (60 m here) so its offset is an integer there; finer grids use exactly
    ratio x that offset and side (6x at 10 m, 3x at 20 m). Then rows (vertical flip) and
    columns (horizontal flip) are each reversed with probability 1/2. Arrays are [T, H, W, C];
    other entries are passed through. Deterministic given ``rng``: it draws two offsets, then
    two flips.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    ratios = _pixels_per_coarse_pixel(sample, modalities)
    full_side = _coarse_side(sample, ratios)
    crop_side = max(1, round(full_side * crop_fraction))
    row, col = rng.integers(0, full_side - crop_side + 1, size=2)
    flip_rows, flip_cols = rng.random(2) < 0.5
    augmented = dict(sample)
    for name, ratio in ratios.items():
        rows = slice(row * ratio, (row + crop_side) * ratio)
        cols = slice(col * ratio, (col + crop_side) * ratio)
        crop = np.asarray(sample[name])[:, rows, cols, :]
        if flip_rows:
            crop = crop[:, ::-1]
        if flip_cols:
            crop = crop[:, :, ::-1]
        augmented[name] = np.ascontiguousarray(crop)
    return augmented
