"""Tests for ramen_jax.data.demo: the bundled BigEarthNet S2/S1 demo patches.

Facts about the archives (ids, dates, labels, orbit) are written out here from an independent
look at the files, so a loader that reads the wrong band, date or pair fails. Float tolerances are
stated where used.
"""

import io
import json
import tarfile
from datetime import datetime
from importlib import resources

import numpy as np
import pytest
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from ramen_jax.data import demo

EXPECTED_IDS = [
    "S2A_MSIL2A_20170613T101031_87_48",
    "S2A_MSIL2A_20170617T113321_36_85",
    "S2A_MSIL2A_20170617T113321_4_55",
    "S2A_MSIL2A_20171221T112501_56_35",
    "S2B_MSIL2A_20170924T93020_69_24",
    "S2B_MSIL2A_20180204T94161_57_38",
]
# (S2 day of year, S1 day of year, S1 orbit): the S1 of 69_24 was acquired the day after.
EXPECTED_DATES_AND_ORBIT = {
    "S2A_MSIL2A_20170613T101031_87_48": (164, 164, "ascending"),
    "S2A_MSIL2A_20170617T113321_36_85": (168, 168, "descending"),
    "S2A_MSIL2A_20170617T113321_4_55": (168, 168, "descending"),
    "S2A_MSIL2A_20171221T112501_56_35": (355, 355, "descending"),
    "S2B_MSIL2A_20170924T93020_69_24": (267, 268, "descending"),
    "S2B_MSIL2A_20180204T94161_57_38": (35, 35, "descending"),
}
EXPECTED_SHAPES = {
    "s2_10m": (1, 120, 120, 4),
    "s2_20m": (1, 60, 60, 6),
    "s2_60m": (1, 20, 20, 2),
    "s1": (1, 120, 120, 2),
}
EXPECTED_WAVELENGTHS = {
    "s2_10m": [490, 560, 665, 842],
    "s2_20m": [705, 740, 783, 865, 1610, 2190],
    "s2_60m": [443, 945],
}


@pytest.fixture(scope="module")
def patches():
    return demo.load_bigearthnet_patches()


def _s1_metadata_by_name():
    data = resources.files("bigearthnet_common").joinpath(demo.S1_ARCHIVE).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:bz2") as archive:
        return {
            member.name.split("/")[1]: json.load(archive.extractfile(member))
            for member in archive.getmembers()
            if member.name.endswith("_labels_metadata.json")
        }


# ----------------------------------------------------------------------------- loading


def test_six_patches_sorted_by_s2_name(patches):
    assert [p["id"] for p in patches] == EXPECTED_IDS


def test_shapes_dtypes_and_value_ranges(patches):
    for patch in patches:
        for name, shape in EXPECTED_SHAPES.items():
            assert patch[name].shape == shape, (patch["id"], name)
            assert patch[name].dtype == np.float32
            assert np.isfinite(patch[name]).all()
            assert patch[f"{name}_dates"].shape == (1,)
            assert patch[f"{name}_dates"].dtype == np.int32
        s2 = np.concatenate([patch[g].ravel() for g in demo.S2_GROUP_BANDS])
        assert s2.min() >= 0 and np.array_equal(s2, np.round(s2)), "S2 L2A raw DN are uint16"
        assert patch["s1"].min() > -60 and patch["s1"].max() < 30, "S1 backscatter in dB"


def test_bands_are_distinct_real_images(patches):
    # A loader that read one band file for every channel would give identical channels.
    for patch in patches:
        for name in EXPECTED_SHAPES:
            channels = patch[name][0].reshape(-1, patch[name].shape[-1]).T
            assert len({c.tobytes() for c in channels}) == len(channels), (patch["id"], name)
            assert channels.std(axis=1).min() > 0


def test_ground_footprints_agree(patches):
    for name, modality in demo.DEMO_MODALITIES.items():
        assert modality["side"] * modality["gsd"] == 1200, name
        assert patches[0][name].shape[1] * modality["gsd"] == 1200, name
    assert 120 * 10 == 60 * 20 == 20 * 60 == demo.PATCH_SIZE_M


def test_demo_modalities_describe_the_arrays(patches):
    modalities = demo.DEMO_MODALITIES
    assert set(modalities) == set(EXPECTED_SHAPES)
    for name, wavelengths in EXPECTED_WAVELENGTHS.items():
        assert modalities[name]["kind"] == "optical"
        assert modalities[name]["channels"] == wavelengths
    assert modalities["s1"]["kind"] == "sar"
    assert modalities["s1"]["channels"] == ["des_vv", "des_vh"]
    for name, modality in modalities.items():
        assert modality["time_series"] is False
        assert (1, modality["side"], modality["side"], len(modality["channels"])) == (
            EXPECTED_SHAPES[name]
        )


def test_s1_pairs_with_the_s2_patch_its_metadata_names(patches):
    s1_metadata = _s1_metadata_by_name()
    assert len(s1_metadata) == 6
    for patch in patches:
        assert s1_metadata[patch["s1_id"]]["corresponding_s2_patch"] == patch["id"]
        # Both names end with the same BigEarthNet tile row/column.
        assert patch["s1_id"].split("_")[-2:] == patch["id"].split("_")[-2:]
    assert len({p["s1_id"] for p in patches}) == 6


def test_dates_and_orbits(patches):
    for patch in patches:
        s2_day, s1_day, orbit = EXPECTED_DATES_AND_ORBIT[patch["id"]]
        for group in demo.S2_GROUP_BANDS:
            assert patch[f"{group}_dates"].tolist() == [s2_day]
        assert patch["s1_dates"].tolist() == [s1_day]
        assert patch["s1_orbit"] == orbit


def test_orbit_direction_from_local_solar_time():
    assert demo.s1_orbit_direction(datetime(2017, 6, 13, 16, 50), 13.7) == "ascending"
    assert demo.s1_orbit_direction(datetime(2017, 6, 17, 6, 47), -8.6) == "descending"
    assert demo.s1_orbit_direction(datetime(2017, 9, 25, 4, 32), 27.5) == "descending"
    # Local time wraps around midnight: 02:00 UTC at 80 W is 20:40 the previous evening.
    assert demo.s1_orbit_direction(datetime(2017, 9, 25, 2, 0), -80.0) == "ascending"


def test_labels_and_multi_hot(patches):
    assert len(demo.DEMO_LABELS) == 19
    assert list(demo.DEMO_LABELS) == sorted(demo.DEMO_LABELS)
    for patch in patches:
        assert patch["labels"], patch["id"]
        vector = patch["label_vector"]
        assert vector.dtype == np.float32 and vector.shape == (19,)
        assert set(np.unique(vector)) <= {0.0, 1.0} and vector.sum() >= 1
    lake_patch = patches[EXPECTED_IDS.index("S2B_MSIL2A_20170924T93020_69_24")]
    assert lake_patch["labels"] == [
        "Coniferous forest",
        "Mixed forest",
        "Transitional woodland/shrub",
        "Peatbogs",
        "Water bodies",
    ]
    hot = {demo.DEMO_LABELS[i] for i in np.flatnonzero(lake_patch["label_vector"])}
    assert hot == {
        "Coniferous forest",
        "Mixed forest",
        "Transitional woodland, shrub",
        "Inland wetlands",
        "Inland waters",
    }


def test_labels_without_a_19_class_target_are_dropped_and_unknown_ones_raise():
    vector = demo.nineteen_class_vector(["Airports", "Continuous urban fabric", "Rice fields"])
    hot = {demo.DEMO_LABELS[i] for i in np.flatnonzero(vector)}
    assert hot == {"Urban fabric", "Arable land"}
    with pytest.raises(demo.DemoDataError, match="Lava"):
        demo.nineteen_class_vector(["Lava"])


def _archive_band(archive_name: str, patch: str, band: str) -> np.ndarray:
    data = resources.files("bigearthnet_common").joinpath(archive_name).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:bz2") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(f"{patch}_{band}.tif"))
        with MemoryFile(archive.extractfile(member).read()) as memory_file:
            with memory_file.open() as dataset:
                return dataset.read(1)


def test_channels_hold_the_named_band_files(patches):
    patch = patches[4]
    for group, band, channel in (("s2_10m", "B08", 3), ("s2_20m", "B8A", 3), ("s2_60m", "B01", 0)):
        expected = _archive_band(demo.S2_ARCHIVE, patch["id"], band)
        np.testing.assert_array_equal(patch[group][0, ..., channel], expected)
    np.testing.assert_array_equal(
        patch["s1"][0, ..., 1], _archive_band(demo.S1_ARCHIVE, patch["s1_id"], "VH")
    )


def test_cache_returns_read_only_arrays(patches):
    again = demo.load_bigearthnet_patches()
    assert again[0]["s2_10m"] is patches[0]["s2_10m"]
    with pytest.raises(ValueError):
        again[0]["s2_10m"][0, 0, 0, 0] = 1.0


def _geotiff_bytes(side: int, gsd: float, north_up: bool = True) -> bytes:
    row_step = -gsd if north_up else gsd
    transform = Affine(gsd, 0.0, 404400.0, 0.0, row_step, 5342400.0)
    profile = dict(driver="GTiff", width=side, height=side, count=1, dtype="uint16")
    with MemoryFile() as memory_file:
        with memory_file.open(**profile, crs="EPSG:32633", transform=transform) as dataset:
            dataset.write(np.arange(side * side, dtype=np.uint16).reshape(1, side, side))
        return memory_file.read()


def test_read_band_checks_the_geotransform():
    array, grid = demo.read_band(_geotiff_bytes(60, 20.0), "good_B05.tif", 20, 60)
    assert array.shape == (60, 60) and array.dtype == np.float32 and array[0, 1] == 1
    assert grid == demo.RasterGrid("EPSG:32633", (404400.0, 5342400.0))
    # Right side in pixels, wrong pixel size: only the geotransform check can see it.
    with pytest.raises(demo.DemoDataError, match="coarse_B02.tif: geotransform.*10 m"):
        demo.read_band(_geotiff_bytes(120, 20.0), "coarse_B02.tif", 10, 120)
    with pytest.raises(demo.DemoDataError, match="flipped_B02.tif: geotransform"):
        demo.read_band(_geotiff_bytes(120, 10.0, north_up=False), "flipped_B02.tif", 10, 120)
    with pytest.raises(demo.DemoDataError, match="small_B02.tif: 1 band"):
        demo.read_band(_geotiff_bytes(60, 10.0), "small_B02.tif", 10, 120)


# ----------------------------------------------------------------------------- normalisation


def test_stats_match_numpy(patches):
    stats = demo.normalisation_stats(patches)
    assert set(stats) == set(EXPECTED_SHAPES)
    for name, (mean, std) in stats.items():
        pixels = np.concatenate([p[name].reshape(-1, p[name].shape[-1]) for p in patches])
        pixels = pixels.astype(np.float64)
        np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-12)


def test_stats_are_per_channel_over_all_patches():
    # Channel c of patch k holds 10c + k: mean 10c + 0.5, population std 0.5 (exact in float64).
    synthetic = [
        {"s2_60m": np.broadcast_to(np.array([0.0, 10.0]) + k, (1, 20, 20, 2)).astype(np.float32)}
        for k in (0, 1)
    ]
    mean, std = demo.normalisation_stats(synthetic)["s2_60m"]
    np.testing.assert_array_equal(mean, [0.5, 10.5])
    np.testing.assert_array_equal(std, [0.5, 0.5])


def test_normalise_standardises_and_zeroes_non_finite(patches):
    stats = demo.normalisation_stats(patches)
    normalised = [demo.normalise(p, stats) for p in patches]
    for name in EXPECTED_SHAPES:
        pixels = np.concatenate([n[name].reshape(-1, n[name].shape[-1]) for n in normalised])
        assert pixels.dtype == np.float32
        np.testing.assert_allclose(pixels.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(pixels.std(axis=0), 1.0, atol=1e-4)
    assert normalised[0]["id"] == patches[0]["id"]

    sample = {"s1": np.array([[[[np.nan, 1.0], [np.inf, 2.0], [-np.inf, 3.0]]]], np.float32)}
    stats = {"s1": (np.array([0.0, 2.0]), np.array([0.0, 2.0]))}
    out = demo.normalise(sample, stats)["s1"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], 0.0)  # NaN, +inf, -inf and a zero std -> 0
    np.testing.assert_array_equal(out[0, 0, :, 1], [-0.5, 0.0, 0.5])


# ----------------------------------------------------------------------------- crop and flip


def _ground_coordinate_sample() -> dict:
    """Pixel (i, j) of each modality holds the ground (row, col) of its centre, in metres."""
    sample = {"id": "synthetic", "s1_dates": np.array([7], np.int32)}
    for name, modality in demo.DEMO_MODALITIES.items():
        gsd, side = modality["gsd"], modality["side"]
        centres = (np.arange(side) + 0.5) * gsd
        rows, cols = np.meshgrid(centres, centres, indexing="ij")
        sample[name] = np.stack([rows, cols], axis=-1)[None]
    return sample


def _block_means(image: np.ndarray, block: int) -> np.ndarray:
    _, height, width, channels = image.shape
    blocks = image.reshape(1, height // block, block, width // block, block, channels)
    return blocks.mean(axis=(2, 4))


def test_crop_flip_lands_on_the_same_ground_in_every_modality():
    sample = _ground_coordinate_sample()
    flips_seen, corners_seen = set(), set()
    for seed in range(24):
        out = demo.random_crop_flip(sample, np.random.default_rng(seed), crop_fraction=0.5)
        coarse = out["s2_60m"]
        assert coarse.shape == (1, 10, 10, 2)
        assert out["s2_20m"].shape == (1, 30, 30, 2)
        assert out["s2_10m"].shape == out["s1"].shape == (1, 60, 60, 2)
        for name, ratio in (("s2_10m", 6), ("s2_20m", 3), ("s1", 6)):
            # Each block of fine pixels is centred on the coarse pixel at the same position.
            # Coordinates are multiples of 5 m; tolerance 1e-9 m.
            np.testing.assert_allclose(_block_means(out[name], ratio), coarse, atol=1e-9)
        top_left_corner = coarse.min(axis=(0, 1, 2)) - 30.0
        assert np.all(top_left_corner % 60.0 == 0), "the 60 m offset is an integer"
        corners_seen.add(tuple(top_left_corner))
        flips_seen.add(
            (coarse[0, 0, 0, 0] > coarse[0, -1, 0, 0], coarse[0, 0, 0, 1] > coarse[0, 0, -1, 1])
        )
        assert out["id"] == "synthetic" and out["s1_dates"] is sample["s1_dates"]
    assert flips_seen == {(False, False), (False, True), (True, False), (True, True)}
    assert len(corners_seen) > 5, "the crop position is random"


def test_crop_flip_is_deterministic_for_a_seed(patches):
    first = demo.random_crop_flip(patches[0], np.random.default_rng(3), crop_fraction=0.25)
    second = demo.random_crop_flip(patches[0], np.random.default_rng(3), crop_fraction=0.25)
    assert first["s2_60m"].shape == (1, 5, 5, 2) and first["s2_20m"].shape == (1, 15, 15, 6)
    assert first["s2_10m"].shape == (1, 30, 30, 4) and first["s1"].shape == (1, 30, 30, 2)
    for name in EXPECTED_SHAPES:
        np.testing.assert_array_equal(first[name], second[name])
    others = [
        demo.random_crop_flip(patches[0], np.random.default_rng(seed), crop_fraction=0.25)
        for seed in (4, 5, 6)
    ]
    assert any(not np.array_equal(o["s2_10m"], first["s2_10m"]) for o in others)


def test_full_crop_keeps_every_pixel_and_bad_fractions_raise(patches):
    out = demo.random_crop_flip(patches[1], np.random.default_rng(0), crop_fraction=1.0)
    for name in EXPECTED_SHAPES:
        assert out[name].shape == patches[1][name].shape
        np.testing.assert_array_equal(
            np.sort(out[name], axis=None), np.sort(patches[1][name], axis=None)
        )
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="crop_fraction"):
            demo.random_crop_flip(patches[1], np.random.default_rng(0), crop_fraction=bad)
