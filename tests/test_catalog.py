"""ramen_jax.data.catalog: each published dataset's modalities, described once.

The paper config derives its modality entries from the catalog; the expectations below are the
values configs/base.py held when it still wrote them out by hand, so a change to the catalog that
would change a training run's inputs fails here. The converters write exactly the catalog's
modalities, and evaluation reads a converted dataset's modalities from it. The encode API's
sensor presets follow the same rule: two names for the same sensor share one definition.
"""

import itertools
import json

import numpy as np
import pytest

from configs import base
from data_prep import flairhub, mmearth, worldstrat
from ramen_jax import sensors
from ramen_jax.data import catalog, records
from ramen_jax.encode.inputs import EncodeError
from ramen_jax.evaluate import datasets as eval_datasets

# (kind, channels, gsd, side, time_series, max_time_steps, temporal_dropout) per modality.
EXPECTED = {
    "flairhub": {
        "aerial": ("optical", [640, 560, 480, 810], 0.2, 512, False, 0, 0.0),
        "dem": ("dem", ["dsm", "dtm"], 0.2, 512, False, 0, 0.0),
        "s2": (
            "optical",
            [490, 560, 665, 705, 740, 783, 842, 865, 1610, 2190],
            10.24,
            10,
            True,
            0,
            0.3,
        ),
        "s1_des": ("sar", ["des_vv", "des_vh"], 10.24, 10, True, 0, 0.3),
    },
    "mmearth": {
        "dem": ("dem", ["dsm", "slope"], 10.0, 64, False, 0, 0.0),
        "s2": (
            "optical",
            [443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1370, 1610, 2190],
            10.0,
            64,
            False,
            0,
            0.0,
        ),
        "s1": (
            "sar",
            ["asc_vv", "asc_vh", "asc_hh", "asc_hv", "des_vv", "des_vh", "des_hh", "des_hv"],
            10.0,
            64,
            False,
            0,
            0.0,
        ),
    },
    "worldstrat": {
        "spot": ("optical", [665, 560, 490, 835], 1.5, 263, False, 0, 0.0),
        "s2": (
            "optical",
            [443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1610, 2190],
            10.0,
            39,
            True,
            0,
            0.0,
        ),
    },
}
FIELDS = ("kind", "channels", "gsd", "side", "time_series", "max_time_steps", "temporal_dropout")


def test_paper_config_modalities_are_the_ones_it_always_had():
    datasets = base.get_config().data.datasets
    assert sorted(datasets) == sorted(EXPECTED)
    for name, modalities in EXPECTED.items():
        configured = datasets[name].modalities
        assert sorted(configured) == sorted(modalities), name
        for modality, values in modalities.items():
            entry = configured[modality]
            assert sorted(entry) == sorted(FIELDS)
            for field, value in zip(FIELDS, values, strict=True):
                got = entry[field]
                assert got == value and type(got) is type(value), (name, modality, field, got)
                if field == "channels":  # integer wavelengths stay integers
                    assert [type(c) for c in got] == [type(c) for c in value]


def test_demo_config_modalities_are_the_ones_it_always_had():
    modalities = base.get_config("debug").data.datasets.bigearthnet.modalities
    expected = {  # (channels, gsd, side) at the default crop of 0.6 of the 1200 m patch
        "s2_10m": ([490, 560, 665, 842], 10.0, 72),
        "s2_20m": ([705, 740, 783, 865, 1610, 2190], 20.0, 36),
        "s2_60m": ([443, 945], 60.0, 12),
        "s1": (["des_vv", "des_vh"], 10.0, 72),
    }
    assert sorted(modalities) == sorted(expected)
    for name, (channels, gsd, side) in expected.items():
        entry = modalities[name]
        assert (entry.channels, entry.gsd, entry.side) == (channels, gsd, side), name
        assert [type(c) for c in entry.channels] == [type(c) for c in channels]
        assert type(entry.gsd) is float and not entry.time_series and entry.max_time_steps == 0
    assert catalog.demo_crop_sides(1.0) == {m.name: m.side for m in catalog.BIGEARTHNET_DEMO}
    assert catalog.demo_crop_sides(0.25) == {"s2_10m": 30, "s2_20m": 15, "s2_60m": 5, "s1": 30}


def test_demo_band_files_are_the_catalogs_wavelengths():
    from ramen_jax.data import demo

    sentinel2 = sensors.sensor_preset("sentinel2")
    for group, bands in demo.S2_GROUP_BANDS.items():
        assert sentinel2.channels(bands) == tuple(
            map(float, demo.DEMO_MODALITIES[group]["channels"])
        )
    for modality in catalog.BIGEARTHNET_DEMO:
        assert modality.side * modality.gsd == catalog.DEMO_PATCH_SIZE_M


@pytest.mark.parametrize(
    "converter,name", [(mmearth, "mmearth"), (flairhub, "flairhub"), (worldstrat, "worldstrat")]
)
def test_converters_write_the_catalogs_modalities(converter, name):
    assert converter.DATASET.name == name
    assert converter.DATASET.modalities is catalog.modalities_of(name)
    features = converter.DATASET.features()
    for modality in catalog.modalities_of(name):
        feature = features[modality.name]
        assert feature.shape == modality.shape
        assert feature.np_dtype == np.dtype(modality.dtype)
        assert features[modality.name + records.DATES_SUFFIX].shape == modality.shape[:1]


def test_catalog_specs_validate_and_carry_the_time_cap():
    s2 = {m.name: m for m in catalog.FLAIRHUB}["s2"]
    spec = s2.spec(max_time_steps=12)
    assert spec == sensors.modality("s2", "optical", s2.channels, 10.24, 10, True, 12)
    with pytest.raises(sensors.ModalityError, match="unknown channel key"):
        catalog.StoredModality("x", "sar", ("up_vv",), 10, 4, np.float32)
    with pytest.raises(sensors.ModalityError, match="outside"):
        catalog.StoredModality("x", "optical", (0.49,), 10, 4, np.float32)


def test_evaluation_reads_a_converted_datasets_modalities_from_the_catalog(tmp_path):
    info = tmp_path / records.INFO_FILES[-1]
    info.write_text(json.dumps({"name": "worldstrat"}))
    specs = eval_datasets.catalog_specs(tmp_path, max_time_steps=7)
    assert [s.name for s in specs] == ["spot", "s2"]
    assert specs[1].time_series and specs[1].max_time_steps == 7 and specs[1].side == 39
    assert specs[0].max_time_steps == 1
    info.write_text(json.dumps({"name": "elsewhere"}))
    with pytest.raises(EncodeError, match="unknown dataset 'elsewhere'"):
        eval_datasets.catalog_specs(tmp_path, max_time_steps=7)
    with pytest.raises(EncodeError, match="not a data_prep dataset"):
        eval_datasets.catalog_specs(tmp_path / "absent", max_time_steps=7)
    with pytest.raises(KeyError, match="unknown dataset"):
        catalog.modalities_of("elsewhere")


def test_each_sensor_preset_is_defined_once():
    definitions = list({id(p): p for p in sensors.SENSOR_PRESETS.values()}.values())
    for first, second in itertools.combinations(definitions, 2):
        assert first != second, "two presets with the same bands: name one an alias of the other"
    landsat8 = sensors.sensor_preset("landsat8")
    assert sensors.sensor_preset("LANDSAT9") is landsat8
    assert landsat8.channels(["B4", "B8"]) == (655.0, 590.0) and landsat8.band_gsd == {"B8": 15.0}
