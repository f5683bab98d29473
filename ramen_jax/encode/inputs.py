"""Describing the imagery to encode: one ``ModalityInput`` per modality, and its normalisation.

A modality is raw pixels ``[T, H, W, C]`` plus what RAMEN needs to know about them:

- its channels, described in one of two ways (``describe_channels``):
  a sensor preset of ``ramen_jax.sensors.SENSOR_PRESETS`` by name (``sentinel2``,
  ``sentinel1_asc``, ``landsat8``, ``aerial_rgbi``, ``dem``...) with an optional band list
  (default: all the preset's bands, in the preset's order), or explicit descriptors
  (wavelengths in nm, SAR keys such as ``asc_vv``, DEM keys ``dsm``/``dtm``/``slope``; the kind
  is inferred from them);
- its ground sampling distance (explicit, else the GeoTIFF's pixel size, else the preset's GSD of
  the chosen bands when they share one);
- optional dates (day of year, one per time step; a time series has T > 1) and, for GeoTIFFs,
  its CRS and geotransform.

The channel count of the pixels must equal the number of declared channels. Normalisation
(``normalise_inputs``): per channel ``(x - mean) / std`` with NaN/inf -> 0, from given
statistics (``{name: (mean, std)}``, e.g. the training data's ``stats.json``) or, by default
(``"scene"``), from the finite pixels of the whole scene being encoded (all dates), so that
every tile of a large scene is normalised alike.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence

import numpy as np

from ramen_jax import sensors, storage
from ramen_jax.data.pipeline import normalise

SCENE_STATS = "scene"


class EncodeError(ValueError):
    """Input that cannot be encoded as asked (the message says what to change)."""


def infer_kind(channels: Sequence) -> str:
    """optical for wavelengths, sar / dem for their keys; mixed descriptors are refused."""
    kinds = set()
    for channel in channels:
        if isinstance(channel, (int, float)) and not isinstance(channel, bool):
            kinds.add(sensors.OPTICAL)
            continue
        key = str(channel).lower()
        matches = [kind for kind, keys in sensors.KEYED_KINDS.items() if key in keys]
        if not matches:
            raise sensors.ModalityError(
                f"channel {channel!r} is neither a wavelength (nm) nor a known key "
                f"({', '.join(sensors.SAR_KEYS + sensors.DEM_KEYS)})"
            )
        kinds.add(matches[0])
    if len(kinds) != 1:
        raise sensors.ModalityError(
            f"channels {list(channels)} mix kinds {sorted(kinds)}: give one modality per kind"
        )
    return kinds.pop()


def describe_channels(
    sensor: str | None = None, bands: Sequence[str] | None = None, channels: Sequence | None = None
) -> tuple[str, tuple, float | None, str]:
    """``(kind, channel descriptors, preset GSD or None, human-readable band names)``."""
    if sensor is not None:
        if channels is not None:
            raise sensors.ModalityError("give a sensor (with bands) or channels, not both")
        preset = sensors.sensor_preset(sensor)
        names = list(preset.bands) if bands is None else [str(b) for b in bands]
        descriptors = preset.channels(names)
        band_gsds = {preset.band_gsd.get(b.upper(), preset.default_gsd) for b in names}
        gsd = band_gsds.pop() if len(band_gsds) == 1 else None
        return preset.kind, descriptors, gsd, f"{sensor} bands {','.join(names)}"
    if bands is not None:
        raise sensors.ModalityError("band names need a sensor preset (or give channels)")
    if not channels:
        raise sensors.ModalityError(
            "describe the channels: a sensor preset (with optional bands) or explicit channels "
            "(wavelengths in nm, SAR or DEM keys)"
        )
    channels = [parse_descriptor(c) for c in channels]
    return infer_kind(channels), tuple(channels), None, ",".join(map(str, channels))


def parse_descriptor(value):
    """``"842"`` or 842 -> 842.0 (a wavelength); anything else is a key, lower-cased."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value).lower()


def parse_dates(values: Sequence) -> np.ndarray:
    """Day-of-year ints or ISO dates (``2021-06-01``) -> int32 day of year."""
    out = []
    for value in values:
        text = str(value)
        if text.isdigit():
            day = int(text)
        else:
            try:
                day = datetime.date.fromisoformat(text).timetuple().tm_yday
            except ValueError:
                raise EncodeError(
                    f"date {text!r} is neither a day of year nor YYYY-MM-DD"
                ) from None
        if not 1 <= day <= 366:
            raise EncodeError(f"day of year {day} outside 1..366")
        out.append(day)
    return np.asarray(out, np.int32)


@dataclasses.dataclass
class ModalityInput:
    """One modality of a scene (see module docstring). ``pixels``: ``[T, H, W, C]``."""

    name: str
    pixels: np.ndarray
    kind: str
    channels: tuple
    gsd: float
    dates: np.ndarray
    crs: object = None  # rasterio CRS, for GeoTIFF inputs
    transform: object = None  # affine.Affine of the pixels, for GeoTIFF inputs
    band_names: str = ""

    @property
    def steps(self) -> int:
        return self.pixels.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[2]

    @property
    def georeferenced(self) -> bool:
        return self.transform is not None


def from_array(
    name: str,
    pixels,
    *,
    gsd: float | None = None,
    sensor: str | None = None,
    bands: Sequence[str] | None = None,
    channels: Sequence | None = None,
    dates: Sequence | None = None,
    crs=None,
    transform=None,
) -> ModalityInput:
    """A modality from a NumPy array ``[H, W, C]`` or ``[T, H, W, C]`` (channels last)."""
    kind, descriptors, preset_gsd, band_names = describe_channels(sensor, bands, channels)
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4:
        raise EncodeError(
            f"modality {name!r}: pixels must be [H, W, C] or [T, H, W, C], got {pixels.shape}"
        )
    if pixels.shape[-1] != len(descriptors):
        raise EncodeError(
            f"modality {name!r}: the data has {pixels.shape[-1]} channel(s) but "
            f"{len(descriptors)} were declared ({band_names})"
        )
    gsd = gsd if gsd is not None else preset_gsd
    if gsd is None:
        raise EncodeError(f"modality {name!r}: give its GSD (metres per pixel)")
    gsd = sensors.check_gsd(gsd, f"modality {name!r}")
    check_has_valid_pixels(name, pixels)
    steps = pixels.shape[0]
    dates = np.ones(steps, np.int32) if dates is None else parse_dates(dates)
    if dates.shape != (steps,):
        raise EncodeError(f"modality {name!r}: {len(dates)} date(s) for {steps} time step(s)")
    sensors.modality(name, kind, descriptors, gsd, 1)  # validates kind, keys and GSD
    return ModalityInput(
        name, pixels, kind, descriptors, float(gsd), dates, crs, transform, band_names
    )


def check_has_valid_pixels(name: str, pixels: np.ndarray) -> None:
    """A modality must hold at least one finite pixel value: an all-nodata (NaN) modality would
    be encoded as zeros and give embeddings that look normal but describe nothing."""
    if not any(np.isfinite(pixels[t]).any() for t in range(pixels.shape[0])):
        raise EncodeError(
            f"modality {name!r} has no valid pixel (every value is nodata / NaN / inf) on the "
            "scene's footprint; leave it out, or give a file with data there"
        )


def spec_for(modality: ModalityInput, side: int) -> sensors.ModalitySpec:
    """The model's description of ``modality`` cut into square tiles of ``side`` pixels."""
    series = modality.steps > 1
    return sensors.modality(
        modality.name, modality.kind, modality.channels, modality.gsd, side, series, modality.steps
    )


def scene_statistics(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of the finite pixels, over all dates.

    A channel without any finite pixel gets mean 0 and std 1. One channel at a time, so a large
    scene never needs a float64 copy of all its bands.
    """
    means, stds = [], []
    for channel in range(pixels.shape[-1]):
        values = np.asarray(pixels[..., channel], np.float64)
        values = values[np.isfinite(values)]
        means.append(values.mean() if values.size else 0.0)
        stds.append(values.std() if values.size else 1.0)
    return np.asarray(means), np.asarray(stds)


def read_stats_file(path) -> dict:
    """``{name: (mean, std)}`` from a JSON file ``{name: {"mean": [...], "std": [...]}}``
    (the format of ``data_prep``'s ``stats.json``); ``path`` may be a URL."""
    path = storage.as_path(path)
    if not path.is_file():
        raise EncodeError(f"statistics file {path} does not exist")
    try:
        data = json.loads(path.read_text())
        return {
            str(key): (np.asarray(v["mean"], np.float64), np.asarray(v["std"], np.float64))
            for key, v in data.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise EncodeError(
            f'statistics file {path} is not JSON of the form {{name: {{"mean": [...], '
            f'"std": [...]}}}} ({type(error).__name__}: {error})'
        ) from None


def normalise_inputs(
    inputs: Sequence[ModalityInput], stats: Mapping | str | None = SCENE_STATS
) -> list[ModalityInput]:
    """Copies of ``inputs`` with float32 normalised pixels (see module docstring).

    ``stats``: ``"scene"``, a mapping ``{name: (mean, std)}`` (modalities it lacks fall back to
    scene statistics), or None for pixels that are already normalised.
    """
    out = []
    for modality in inputs:
        if stats is None:
            mean, std = 0.0, 1.0
        elif stats != SCENE_STATS and modality.name in stats:
            mean, std = (np.asarray(v, np.float64) for v in stats[modality.name])
            if mean.shape != (len(modality.channels),) or std.shape != mean.shape:
                raise EncodeError(
                    f"statistics of {modality.name!r} have {mean.size} / {std.size} values for "
                    f"{len(modality.channels)} channels"
                )
        else:
            mean, std = scene_statistics(modality.pixels)
        out.append(dataclasses.replace(modality, pixels=normalise(modality.pixels, mean, std)))
    return out
