"""The published datasets' modalities, described once.

Owns what each modality of the MMEarth64, FLAIR-HUB and WorldStrat records (and of the bundled
BigEarthNet demo patches, ``BIGEARTHNET_DEMO``) holds: kind,
channel descriptors (wavelength in nm, or SAR / DEM key), native GSD, side in pixels, the dtype
the records store and whether it is a time series. Every user reads it from here: the
converters (``data_prep.<name>`` write exactly these modalities), the paper's config
(``configs/base.py`` derives its modality entries from it), and evaluation
(``ramen_jax.evaluate.datasets`` looks a converted dataset up by the name in its
``dataset_info.json``). To add a dataset, add its entry to ``DATASETS`` and write its converter
in ``data_prep/``.

Channel descriptors are kept as written (integer wavelengths stay integers) so the config values
derived from them are exactly those typed into a config; ``StoredModality.spec`` validates them
through ``ramen_jax.sensors.ModalitySpec`` when the catalog is imported.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ramen_jax import sensors
from ramen_jax.data.records import NO_DATE


@dataclasses.dataclass(frozen=True)
class StoredModality:
    """One modality as a dataset's records store it: ``[T, side, side, C]`` arrays of ``dtype``
    (T = 1 unless ``time_series``) and ``T`` int32 days of year."""

    name: str
    kind: str
    channels: tuple
    gsd: float
    side: int
    dtype: type
    time_series: bool = False

    def __post_init__(self):
        self.spec()  # a description the model cannot use is refused here, not at training

    def spec(self, max_time_steps: int = 1) -> sensors.ModalitySpec:
        """The model's description of this modality."""
        return sensors.modality(
            self.name,
            self.kind,
            self.channels,
            self.gsd,
            self.side,
            self.time_series,
            max_time_steps,
        )

    @property
    def shape(self) -> tuple:
        return (None if self.time_series else 1, self.side, self.side, len(self.channels))

    def missing(self) -> tuple[np.ndarray, np.ndarray]:
        """Data and dates stored for a sample that lacks this modality: zeros, one time step."""
        zeros = np.zeros((1, self.side, self.side, len(self.channels)), self.dtype)
        return zeros, np.full((1,), NO_DATE, np.int32)


OPTICAL, SAR, DEM = sensors.OPTICAL, sensors.SAR, sensors.DEM

# Sentinel-2 bands in wavelength order (B8 842 nm before B8A 865 nm).
S2_13 = (443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1370, 1610, 2190)
S2_12 = tuple(c for c in S2_13 if c != 1370)  # L2A without the cirrus band B10
S2_L2A_10 = tuple(c for c in S2_12 if c not in (443, 945))  # FLAIR-HUB: no B01, B09

MMEARTH = (
    StoredModality("s2", OPTICAL, S2_13, 10, 64, np.uint16),
    StoredModality(
        "s1",
        SAR,
        ("asc_vv", "asc_vh", "asc_hh", "asc_hv", "des_vv", "des_vh", "des_hh", "des_hv"),
        10,
        64,
        np.float32,
    ),
    StoredModality("dem", DEM, ("dsm", "slope"), 10, 64, np.int16),
)
FLAIRHUB = (
    StoredModality("aerial", OPTICAL, (640, 560, 480, 810), 0.2, 512, np.uint8),
    StoredModality("dem", DEM, ("dsm", "dtm"), 0.2, 512, np.float32),
    StoredModality("s2", OPTICAL, S2_L2A_10, 10.24, 10, np.uint16, time_series=True),
    StoredModality("s1_des", SAR, ("des_vv", "des_vh"), 10.24, 10, np.float32, time_series=True),
)
WORLDSTRAT = (
    StoredModality("spot", OPTICAL, (665, 560, 490, 835), 1.5, 263, np.uint16),
    StoredModality("s2", OPTICAL, S2_12, 10, 39, np.float32, time_series=True),
)

# The six BigEarthNet patches bundled with ``bigearthnet-common`` (read by
# ``ramen_jax.data.demo``): 1200 m x 1200 m of Sentinel-2 L2A (raw DN) at 10, 20 and 60 m as three
# modalities, and Sentinel-1 backscatter (dB) at 10 m. One patch's Sentinel-1 is really
# ascending; the modality needs one static set of keys, so it takes the majority's (descending).
DEMO_PATCH_SIZE_M = 1200
BIGEARTHNET_DEMO = (
    StoredModality("s2_10m", OPTICAL, (490, 560, 665, 842), 10, 120, np.uint16),
    StoredModality("s2_20m", OPTICAL, (705, 740, 783, 865, 1610, 2190), 20, 60, np.uint16),
    StoredModality("s2_60m", OPTICAL, (443, 945), 60, 20, np.uint16),
    StoredModality("s1", SAR, ("des_vv", "des_vh"), 10, 120, np.float32),
)


def demo_crop_sides(crop_fraction: float) -> dict[str, int]:
    """Side of each demo modality after ``ramen_jax.data.demo.random_crop_flip`` keeps
    ``crop_fraction`` of the patch side: the crop is chosen on the coarsest (60 m) grid, so a
    side is the coarse pixels kept times the modality's pixels per coarse pixel."""
    coarse = min(m.side for m in BIGEARTHNET_DEMO)
    kept = max(1, round(coarse * crop_fraction))
    return {m.name: kept * (m.side // coarse) for m in BIGEARTHNET_DEMO}


# Converted (records) datasets by the name their converter gives them.
DATASETS: dict[str, tuple[StoredModality, ...]] = {
    "mmearth": MMEARTH,
    "flairhub": FLAIRHUB,
    "worldstrat": WORLDSTRAT,
}


def modalities_of(dataset: str) -> tuple[StoredModality, ...]:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise KeyError(f"unknown dataset {dataset!r}; the catalog has {sorted(DATASETS)}") from None
