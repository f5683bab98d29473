"""Sensor and modality registry: how any input channel is described to RAMEN.

RAMEN never identifies a sensor by name inside the model. Every modality is described by
a *kind* and per-channel descriptors:

- ``optical``: central wavelength in nm (a float), encoded with a sin-cos code;
- ``sar``: orbit + polarisation key (``asc_vv``, ``des_vh``, ...), a learned vector each;
- ``dem``: elevation type key (``dsm``, ``dtm``, ``slope``), a learned vector each.

plus its ground sampling distance (GSD, metres/pixel), native side in pixels and whether it
is a time series. ``ModalitySpec`` carries that description; configs build them with
``modality(...)`` and the encode API builds them from ``SENSOR_PRESETS``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

OPTICAL, SAR, DEM = "optical", "sar", "dem"
KINDS = (OPTICAL, SAR, DEM)

# Keys with a learned embedding in the original checkpoints, in state_dict order.
SAR_KEYS = ("asc_vv", "asc_vh", "asc_hv", "asc_hh", "des_vv", "des_vh", "des_hv", "des_hh")
DEM_KEYS = ("dsm", "dtm", "slope")
KEYED_KINDS = {SAR: SAR_KEYS, DEM: DEM_KEYS}


# Central wavelengths accepted for optical channels, in nm: from the near ultraviolet (300 nm,
# where the atmosphere stops passing sunlight) to the far end of the thermal infrared window
# (15000 nm; Landsat's TIRS bands sit at 10900 and 12000 nm). Spectral Earth-observation
# sensors measure within it; a value outside is a unit slip (micrometres, GHz) or a typo.
WAVELENGTH_RANGE_NM = (300.0, 15000.0)


class ModalityError(ValueError):
    """A modality description or an input array that RAMEN cannot use."""


def check_gsd(gsd, what: str) -> float:
    """``gsd`` as a float, or a ``ModalityError`` naming ``what`` unless it is finite and > 0."""
    try:
        value = float(gsd)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ModalityError(f"{what}: GSD {gsd} m is not a ground distance; give a finite GSD > 0")
    return value


def check_wavelengths(channels: Sequence, what: str) -> tuple[float, ...]:
    """Optical channels as floats; a ``ModalityError`` for any outside ``WAVELENGTH_RANGE_NM``."""
    low, high = WAVELENGTH_RANGE_NM
    values = tuple(float(c) for c in channels)
    bad = [c for c in values if not low <= c <= high]  # NaN fails both comparisons
    if bad:
        raise ModalityError(
            f"{what}: wavelength(s) {[f'{c:g}' for c in bad]} nm outside {low:g}-{high:g} nm, "
            "the range spectral sensors measure (near ultraviolet to thermal infrared); "
            "give central wavelengths in nm"
        )
    return values


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """Static description of one input modality of a dataset.

    Attributes:
      name: the modality's name in the dataset (``s2``, ``aerial``...); free text.
      kind: one of ``KINDS``; decides which channel projector is used.
      channels: wavelengths in nm (optical) or keys (sar / dem), one per input channel.
      gsd: native ground sampling distance in metres per pixel.
      side: native side of the (square) input in pixels.
      time_series: True if the modality carries several dates per sample (L-TAE path).
      max_time_steps: for a time series, the most dates a sample keeps (longer series are
        sub-sampled), 0 for no cap; ``ramen_jax.data.pipeline.build_datasets`` sets it to the
        dataset's largest time bucket. Always 1 for a single-date modality.
    """

    name: str
    kind: str
    channels: tuple
    gsd: float
    side: int
    time_series: bool = False
    max_time_steps: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ModalityError(
                f"modality {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}"
            )
        if not self.channels:
            raise ModalityError(f"modality {self.name!r}: no channels declared")
        if self.kind == OPTICAL:
            bad = [c for c in self.channels if not isinstance(c, (int, float))]
            if bad:
                raise ModalityError(
                    f"optical modality {self.name!r}: channels must be wavelengths in nm, got {bad}"
                )
            channels = check_wavelengths(self.channels, f"optical modality {self.name!r}")
            object.__setattr__(self, "channels", channels)
        else:
            valid = KEYED_KINDS[self.kind]
            keys = tuple(str(c).lower() for c in self.channels)
            unknown = [c for c in keys if c not in valid]
            if unknown:
                raise ModalityError(
                    f"{self.kind} modality {self.name!r}: unknown channel key(s) {unknown}; "
                    f"valid keys are {list(valid)}"
                )
            object.__setattr__(self, "channels", keys)
        check_gsd(self.gsd, f"modality {self.name!r}")
        if int(self.side) < 1:
            raise ModalityError(f"modality {self.name!r}: side must be >= 1, got {self.side}")
        object.__setattr__(self, "gsd", float(self.gsd))
        object.__setattr__(self, "side", int(self.side))
        steps = max(0, int(self.max_time_steps)) if self.time_series else 1
        object.__setattr__(self, "max_time_steps", steps)

    @property
    def num_channels(self) -> int:
        return len(self.channels)


def modality(
    name: str,
    kind: str,
    channels: Sequence,
    gsd: float,
    side: int,
    time_series: bool = False,
    max_time_steps: int = 1,
) -> ModalitySpec:
    return ModalitySpec(name, kind, tuple(channels), gsd, side, time_series, max_time_steps)


def modality_from_dict(name: str, d: Mapping) -> ModalitySpec:
    """Builds a spec from a config mapping with keys kind, channels, gsd, side[, time_series]."""
    missing = [k for k in ("kind", "channels", "gsd", "side") if k not in d]
    if missing:
        raise ModalityError(f"modality {name!r}: missing field(s) {missing} in config")
    return ModalitySpec(
        name=name,
        kind=d["kind"],
        channels=tuple(d["channels"]),
        gsd=d["gsd"],
        side=d["side"],
        time_series=bool(d.get("time_series", False)),
        max_time_steps=int(d.get("max_time_steps", 1)),
    )


@dataclasses.dataclass(frozen=True)
class SensorPreset:
    """A named sensor: kind, band names and the descriptor (wavelength or key) of each band."""

    kind: str
    bands: Mapping[str, object]  # band name -> wavelength (nm) or key
    default_gsd: float
    band_gsd: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def channels(self, band_names: Sequence[str] | None = None) -> tuple:
        names = list(self.bands) if band_names is None else list(band_names)
        lookup = {k.upper(): v for k, v in self.bands.items()}
        unknown = [b for b in names if b.upper() not in lookup]
        if unknown:
            raise ModalityError(f"unknown band(s) {unknown}; this sensor has {list(self.bands)}")
        return tuple(lookup[b.upper()] for b in names)


_S2 = {
    "B01": 443.0,
    "B02": 490.0,
    "B03": 560.0,
    "B04": 665.0,
    "B05": 705.0,
    "B06": 740.0,
    "B07": 783.0,
    "B08": 842.0,
    "B8A": 865.0,
    "B09": 945.0,
    "B10": 1370.0,
    "B11": 1610.0,
    "B12": 2190.0,
}
_S2_GSD = {b: 10.0 for b in ("B02", "B03", "B04", "B08")}
_S2_GSD.update({b: 20.0 for b in ("B05", "B06", "B07", "B8A", "B11", "B12")})
_S2_GSD.update({b: 60.0 for b in ("B01", "B09", "B10")})

# Landsat 8/9 OLI reflective bands (thermal TIRS bands are not reflectance: left out).
_LANDSAT_OLI = SensorPreset(
    OPTICAL,
    {
        "B1": 443.0,
        "B2": 482.0,
        "B3": 561.0,
        "B4": 655.0,
        "B5": 865.0,
        "B6": 1609.0,
        "B7": 2201.0,
        "B8": 590.0,
        "B9": 1373.0,
    },
    30.0,
    {"B8": 15.0},
)

SENSOR_PRESETS: dict[str, SensorPreset] = {
    "sentinel2": SensorPreset(OPTICAL, _S2, 10.0, _S2_GSD),
    "sentinel1_asc": SensorPreset(
        SAR, {"VV": "asc_vv", "VH": "asc_vh", "HH": "asc_hh", "HV": "asc_hv"}, 10.0
    ),
    "sentinel1_des": SensorPreset(
        SAR, {"VV": "des_vv", "VH": "des_vh", "HH": "des_hh", "HV": "des_hv"}, 10.0
    ),
    # Landsat 8 and 9 carry the same OLI instrument design: one preset, both names.
    "landsat8": _LANDSAT_OLI,
    "landsat9": _LANDSAT_OLI,
    "landsat7": SensorPreset(
        OPTICAL,
        {
            "B1": 485.0,
            "B2": 560.0,
            "B3": 660.0,
            "B4": 835.0,
            "B5": 1650.0,
            "B7": 2220.0,
            "B8": 710.0,
        },
        30.0,
        {"B8": 15.0},
    ),
    "aerial_rgbi": SensorPreset(OPTICAL, {"R": 640.0, "G": 560.0, "B": 480.0, "NIR": 810.0}, 0.2),
    "spot_rgbi": SensorPreset(OPTICAL, {"R": 665.0, "G": 560.0, "B": 490.0, "NIR": 835.0}, 1.5),
    "dem": SensorPreset(DEM, {"DSM": "dsm", "DTM": "dtm", "SLOPE": "slope"}, 10.0),
}


def sensor_preset(name: str) -> SensorPreset:
    try:
        return SENSOR_PRESETS[name.lower()]
    except KeyError:
        raise ModalityError(
            f"unknown sensor {name!r}; known sensors: {sorted(SENSOR_PRESETS)} "
            "(or describe the channels explicitly with wavelengths / keys)"
        ) from None
