"""GeoTIFF in and out for ``ramen_jax.encode``, and putting all modalities on one footprint.

Reading (``read_modality``): one file per modality, all its bands; a time series of T dates
is one file of ``T x C`` bands, date-major (the C channels of date 1, then of date 2, ...).
Nodata becomes NaN (then 0 after normalisation, as the original does with missing values).
The file must be north-up with square pixels in a projected CRS (metres): its pixel size is
the modality's GSD. A URL (``gs://...``) is downloaded to a temporary file first.

Alignment (``align_to_reference``): the first modality is the *reference*: its footprint is
the scene. Every other modality is brought onto that footprint at (about) its own GSD, so the
model still sees each sensor at its native resolution. If its grid already lines up (same CRS,
same pixel size, an integer pixel offset) this is an exact crop / NaN-pad; otherwise (another
CRS, a shifted or different grid) it is reprojected with bilinear resampling
(``rasterio.warp.reproject``). Plain arrays (no georeference) are not moved: they must cover
the reference's footprint already (``check_footprints``), and georeferenced and plain inputs
cannot be mixed.

Writing (``write_maps``): float32, one band per embedding channel (band-interleaved, written in
row blocks so a memory-mapped map is never read whole), band descriptions ``<modality>:<d>``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import rasterio
import rasterio.warp
from affine import Affine
from rasterio.windows import Window

from ramen_jax import storage
from ramen_jax.encode.inputs import EncodeError, ModalityInput, describe_channels, from_array

WRITE_ROWS = 256


def _pixel_size(transform: Affine, where: str) -> float:
    if transform.b != 0 or transform.d != 0 or transform.e >= 0:
        raise EncodeError(
            f"{where}: rotated or south-up grid {tuple(transform)[:6]}; warp it first"
        )
    if not math.isclose(transform.a, -transform.e, rel_tol=1e-6):
        raise EncodeError(
            f"{where}: non-square pixels ({transform.a} x {-transform.e}); resample it to "
            "square pixels first (e.g. gdalwarp -tr)"
        )
    return float(transform.a)


def read_modality(
    name: str,
    path,
    *,
    sensor: str | None = None,
    bands: Sequence[str] | None = None,
    channels: Sequence | None = None,
    gsd: float | None = None,
    dates: Sequence | None = None,
) -> ModalityInput:
    """A ``ModalityInput`` from one GeoTIFF (see module docstring)."""
    path = storage.as_path(path)
    if not path.is_file():
        raise EncodeError(f"modality {name!r}: input file {path} does not exist")
    _, descriptors, _, band_names = describe_channels(sensor, bands, channels)
    steps = len(dates) if dates else 1
    with storage.local_copy(path) as local, rasterio.open(local) as raster:
        if raster.count != steps * len(descriptors):
            raise EncodeError(
                f"modality {name!r}: {path.name} has {raster.count} band(s) but "
                f"{len(descriptors)} channel(s) x {steps} date(s) were declared ({band_names})"
            )
        data = raster.read(out_dtype="float32", masked=True).filled(np.nan)
        crs, transform = raster.crs, raster.transform
    georeferenced = crs is not None and transform != Affine.identity()
    if georeferenced:
        if crs.is_geographic:
            raise EncodeError(
                f"modality {name!r}: {path.name} is in a geographic CRS ({crs}); GSDs need "
                "metres: reproject it to a projected CRS (e.g. its UTM zone)"
            )
        pixel = _pixel_size(transform, path.name)
        if gsd is not None and not math.isclose(gsd, pixel, rel_tol=1e-6):
            raise EncodeError(
                f"modality {name!r}: GSD {gsd} given but {path.name} has {pixel} m pixels"
            )
        gsd = pixel
    pixels = data.reshape(steps, len(descriptors), *data.shape[1:]).transpose(0, 2, 3, 1)
    return from_array(
        name,
        pixels,
        gsd=gsd,
        sensor=sensor,
        bands=bands,
        channels=channels,
        dates=dates,
        crs=crs if georeferenced else None,
        transform=transform if georeferenced else None,
    )


def check_footprints(inputs: Sequence[ModalityInput]) -> None:
    """Plain arrays must cover the reference's ground extent (to the nearest pixel)."""
    reference = inputs[0]
    extent = np.array(reference.shape) * reference.gsd
    for modality in inputs[1:]:
        expected = np.round(extent / modality.gsd).astype(int)
        if tuple(expected) != modality.shape:
            raise EncodeError(
                f"modality {modality.name!r} is {modality.shape[0]} x {modality.shape[1]} px at "
                f"{modality.gsd} m, but the reference {reference.name!r} covers "
                f"{extent[0]:g} m x {extent[1]:g} m ({expected[0]} x {expected[1]} px at "
                f"{modality.gsd} m): crop them to the same ground, or give GeoTIFFs"
            )


def _crop_or_pad(pixels: np.ndarray, row: int, col: int, rows: int, cols: int) -> np.ndarray:
    out = np.full((pixels.shape[0], rows, cols, pixels.shape[-1]), np.nan, np.float32)
    src_rows = slice(max(row, 0), min(row + rows, pixels.shape[1]))
    src_cols = slice(max(col, 0), min(col + cols, pixels.shape[2]))
    if src_rows.start < src_rows.stop and src_cols.start < src_cols.stop:
        out[
            :,
            src_rows.start - row : src_rows.stop - row,
            src_cols.start - col : src_cols.stop - col,
        ] = pixels[:, src_rows, src_cols]
    return out


def _align(modality: ModalityInput, reference: ModalityInput) -> ModalityInput:
    extent_rows = reference.shape[0] * reference.gsd
    extent_cols = reference.shape[1] * reference.gsd
    rows = max(1, round(extent_rows / modality.gsd))
    cols = max(1, round(extent_cols / modality.gsd))
    origin = reference.transform
    target = Affine(extent_cols / cols, 0, origin.c, 0, -extent_rows / rows, origin.f)
    source = modality.transform
    first_row = (target.f - source.f) / source.e  # the footprint's first row in the source
    first_col = (target.c - source.c) / source.a
    same_grid = (
        modality.crs == reference.crs
        and math.isclose(source.a, target.a, rel_tol=1e-9)
        and math.isclose(source.e, target.e, rel_tol=1e-9)
        and abs(first_row - round(first_row)) < 1e-6
        and abs(first_col - round(first_col)) < 1e-6
    )
    if same_grid:
        pixels = _crop_or_pad(modality.pixels, round(first_row), round(first_col), rows, cols)
    else:
        steps, _, _, channels = modality.pixels.shape
        bands_first = modality.pixels.transpose(0, 3, 1, 2).reshape(-1, *modality.shape)
        warped = np.full((steps * channels, rows, cols), np.nan, np.float32)
        rasterio.warp.reproject(
            bands_first.astype(np.float32),
            warped,
            src_transform=source,
            src_crs=modality.crs,
            src_nodata=np.nan,
            dst_transform=target,
            dst_crs=reference.crs,
            dst_nodata=np.nan,
            resampling=rasterio.warp.Resampling.bilinear,
        )
        pixels = warped.reshape(steps, channels, rows, cols).transpose(0, 2, 3, 1)
    gsd = 0.5 * (target.a - target.e)
    return dataclasses.replace(
        modality, pixels=pixels, gsd=gsd, crs=reference.crs, transform=target
    )


def align_to_reference(inputs: Sequence[ModalityInput]) -> list[ModalityInput]:
    """All modalities on the reference's footprint (see module docstring)."""
    georeferenced = [m.georeferenced for m in inputs]
    if not any(georeferenced):
        check_footprints(inputs)
        return list(inputs)
    if not all(georeferenced):
        plain = [m.name for m in inputs if not m.georeferenced]
        raise EncodeError(
            f"modalities {plain} have no georeference while others do: give every modality as "
            "a GeoTIFF, or every one as a plain array covering the same ground"
        )
    return [inputs[0]] + [_align(m, inputs[0]) for m in inputs[1:]]


def write_maps(
    path, maps, crs, transform: Affine, descriptions: Sequence[str], nodata: float | None = None
) -> None:
    """Writes ``maps`` ``[C, H, W]`` (array or memory map) as a float32 GeoTIFF; ``nodata``
    (e.g. NaN) is declared as the bands' nodata value."""
    channels, height, width = maps.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": channels,
        "dtype": "float32",
        "crs": crs,
        "transform": transform,
        "interleave": "band",
        "BIGTIFF": "IF_SAFER",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as raster:
        for start in range(0, height, WRITE_ROWS):
            stop = min(start + WRITE_ROWS, height)
            window = Window(0, start, width, stop - start)
            raster.write(np.asarray(maps[:, start:stop], np.float32), window=window)
        for band, description in enumerate(descriptions, start=1):
            raster.set_band_description(band, description)
