"""data_prep.flairhub on small files written in the published FLAIR-HUB layout.

The layout comes from ``data_prep.standins``: GeoTIFFs in EPSG:2154 (Lambert-93) with the
release's naming (``<DOMAIN-YEAR>_<MODALITY>/<ROI>/<DOMAIN-YEAR>_<MODALITY>_<ROI>_<row>-<col>.tif``)
at full size (aerial and DEM 512 px, Sentinel
10 px); GeoPackages in GLOBAL_ALL_MTD/ written as SQLite with the GeoPackage tables
(``gpkg_contents``, ``gpkg_geometry_columns``, a feature table with a GPKG geometry blob); split
CSVs with the published column set and ``../`` paths. Values must round-trip exactly; statistics
are compared with numpy at rtol 1e-9.
"""

import json

import numpy as np
import pytest

from data_prep import common, flairhub, standins
from tests.test_data_prep_statistics import original_patch_stats

CLEAR, CLOUDY_5PX, CLOUDY_6PX, SNOWY = range(4)
P1, P2, P3 = "D006-2020_FF-S1-14_5-5", "D006-2020_FF-S1-14_5-6", "D012-2019_AF-S1-27_5-10"
S2_DATES = {"3": "20210420", "1": "20210101", "2": "20210215", "4": "20210601"}  # keys unsorted
S2_DAYS = [1, 46, 110, 152]
S1_DATES = {"1": "20210105", "2": "20210117", "3": "20210129"}


def mask_series(kinds):
    """SENTINEL2_MSK-SC bands [T x (snow, cloud), 10, 10] for a list of per-date conditions."""
    mask = np.zeros((len(kinds), 2, 10, 10), np.uint8)
    for step, kind in enumerate(kinds):
        if kind == CLOUDY_5PX:
            mask[step, 1].flat[:5] = 60
        elif kind == CLOUDY_6PX:
            mask[step, 1].flat[:6] = 60
        elif kind == SNOWY:
            mask[step, 0].flat[:30] = 80
            mask[step, 1].flat[:50] = 40
        elif kind == "cloudy, 10 px snow":
            mask[step, 0].flat[:10] = 90
            mask[step, 1].flat[:50] = 70
        elif kind == "cloudy":
            mask[step, 1].flat[:50] = 70
    return mask.reshape(-1, 10, 10)


def patch_files(src, patch, seed, masks, with_s1=True):
    """Writes one patch's GeoTIFFs; returns its CSV row and the arrays (S1 even if not written)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "AERIAL_RGBI": rng.integers(0, 256, (4, 512, 512)).astype(np.uint8),
        "DEM_ELEV": rng.normal(300, 40, (2, 512, 512)).astype(np.float32),
        "SENTINEL2_TS": rng.integers(0, 10000, (4 * 10, 10, 10)).astype(np.uint16),
        "SENTINEL2_MSK-SC": mask_series(masks),
        "SENTINEL1-DESC_TS": rng.normal(-15, 3, (3 * 2, 10, 10)).astype(np.float32),
    }
    written = {c: bands for c, bands in arrays.items() if with_s1 or c != "SENTINEL1-DESC_TS"}
    return standins.write_flairhub_patch(src, patch, written), arrays


DATE_TABLES = {
    "aerial": [(P1, "20210715"), (P2, "20210715"), (P3, "20190602")],
    "s2": [(P1, json.dumps(S2_DATES)), (P2, json.dumps(S2_DATES)), (P3, json.dumps(S2_DATES))],
    "s1_des": [(P1, json.dumps(S1_DATES)), (P3, json.dumps(S1_DATES))],
}


def write_flairhub(src):
    """Two train patches (comma CSV) and one val patch (semicolon CSV, as the original's); dates
    in the full release's GLOBAL_ALL_MTD."""
    p1, a1 = patch_files(src, P1, 1, [CLEAR, CLOUDY_5PX, CLOUDY_6PX, SNOWY])
    p2, a2 = patch_files(src, P2, 2, ["cloudy, 10 px snow", "cloudy", "cloudy", "cloudy"], False)
    p3, a3 = patch_files(src, P3, 3, [SNOWY] * 4)
    standins.write_flairhub_csv(src / "TRAIN.csv", [p1, p2])
    standins.write_flairhub_csv(src / "VALID.csv", [p3], delimiter=";")
    standins.write_flairhub_dates(src, DATE_TABLES, layout="release")
    return {P1: a1, P2: a2, P3: a3}


def convert(src, out, *extra, splits=("train=TRAIN.csv", "val=VALID.csv")):
    args = ["--src", str(src), "--out", str(out)]
    for split in splits:
        name, csv = split.split("=")
        args += ["--split-file", f"{name}={src / csv}"]
    return flairhub.main([*args, *extra])


def read(out, split):
    source = common.load_split(out, split)
    return {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}


def channels_last(bands, channels):
    return bands.reshape(-1, channels, *bands.shape[1:]).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(source folder, output folder, arrays written per patch), converted once per module."""
    src = tmp_path_factory.mktemp("flairhub")
    arrays = write_flairhub(src)
    assert convert(src, src / "out") == 0
    return src, src / "out", arrays


def test_records_hold_the_patches_with_filtered_sentinel2(converted):
    _, out, arrays = converted
    train, val = read(out, "train"), read(out, "val")
    assert sorted(train) == [P1, P2] and sorted(val) == [P3]
    records = {**train, **val}
    for patch, written in arrays.items():
        record = records[patch]
        assert record["aerial"].dtype == np.uint8 and record["dem"].dtype == np.float32
        np.testing.assert_array_equal(record["aerial"], channels_last(written["AERIAL_RGBI"], 4))
        np.testing.assert_array_equal(record["dem"], channels_last(written["DEM_ELEV"], 2))
    summer = np.array([196], np.int32)
    for patch in (P1, P2):
        np.testing.assert_array_equal(records[patch]["aerial_dates"], summer)
        np.testing.assert_array_equal(records[patch]["dem_dates"], summer)
    np.testing.assert_array_equal(records[P3]["dem_dates"], [153])

    s2 = {patch: channels_last(a["SENTINEL2_TS"], 10) for patch, a in arrays.items()}
    # P1: a date with 5 % cloudy pixels passes, 6 % does not, nor does a snowy one.
    np.testing.assert_array_equal(records[P1]["s2"], s2[P1][[0, 1]])
    np.testing.assert_array_equal(records[P1]["s2_dates"], S2_DAYS[:2])
    # P2: every date cloudy -> fall back to the snow-free dates.
    np.testing.assert_array_equal(records[P2]["s2"], s2[P2][[1, 2, 3]])
    np.testing.assert_array_equal(records[P2]["s2_dates"], S2_DAYS[1:])
    # P3: nothing passes -> no Sentinel-2 for this patch.
    np.testing.assert_array_equal(records[P3]["s2"], np.zeros((1, 10, 10, 10), np.uint16))
    np.testing.assert_array_equal(records[P3]["s2_dates"], [1])

    np.testing.assert_array_equal(
        records[P1]["s1_des"], channels_last(arrays[P1]["SENTINEL1-DESC_TS"], 2)
    )
    np.testing.assert_array_equal(records[P1]["s1_des_dates"], [5, 17, 29])
    np.testing.assert_array_equal(records[P2]["s1_des"], np.zeros((1, 10, 10, 2), np.float32))
    np.testing.assert_array_equal(records[P2]["s1_des_dates"], [1])


def test_statistics_cover_train_only_and_skip_missing_modalities(converted):
    _, out, arrays = converted
    stats = common.load_stats(out)
    assert set(stats) == {"aerial", "dem", "s2", "s1_des"}
    aerial = original_patch_stats([arrays[p]["AERIAL_RGBI"][None] for p in (P1, P2)])
    s2 = original_patch_stats(
        [
            arrays[P1]["SENTINEL2_TS"].reshape(4, 10, 10, 10)[[0, 1]],
            arrays[P2]["SENTINEL2_TS"].reshape(4, 10, 10, 10)[[1, 2, 3]],
        ]
    )
    s1 = original_patch_stats([arrays[P1]["SENTINEL1-DESC_TS"].reshape(3, 2, 10, 10)])
    for key, expected in (("aerial", aerial), ("s2", s2), ("s1_des", s1)):
        np.testing.assert_allclose(stats[key]["mean"], expected["mean"], rtol=1e-9)
        np.testing.assert_allclose(stats[key]["std"], expected["std"], rtol=1e-9)
    assert stats["s1_des"]["count"] == 1 and stats["aerial"]["count"] == 2


def test_missing_file_stops_or_is_skipped(converted, tmp_path, caplog, capsys):
    src = converted[0]
    rows = (src / "TRAIN.csv").read_text().splitlines()
    broken = rows[2].replace("DEM_ELEV_FF-S1-14_5-6.tif", "DEM_ELEV_FF-S1-14_9-9.tif")
    (src / "BROKEN.csv").write_text("\n".join([rows[0], rows[1], broken]) + "\n")
    missing = src / "D006-2020_DEM_ELEV/FF-S1-14/D006-2020_DEM_ELEV_FF-S1-14_9-9.tif"
    assert convert(src, tmp_path / "stop", splits=["train=BROKEN.csv"]) == 1
    (line,) = capsys.readouterr().err.splitlines()  # one line, as every command's mistakes
    assert line.startswith("error: stopped on a source error") and str(missing) in line
    caplog.clear()
    assert convert(src, tmp_path / "skip", "--on-error", "skip", splits=["train=BROKEN.csv"]) == 0
    assert str(missing) in caplog.text
    assert sorted(read(tmp_path / "skip", "train")) == [P1]


def test_clear_dates_threshold_is_95_percent_of_pixels():
    mask = mask_series([CLEAR, CLOUDY_5PX, CLOUDY_6PX, SNOWY]).reshape(4, 2, 10, 10)
    np.testing.assert_array_equal(flairhub.clear_dates(mask), [True, True, False, False])
    mask = mask_series(["cloudy, 10 px snow", "cloudy"]).reshape(2, 2, 10, 10)
    np.testing.assert_array_equal(flairhub.clear_dates(mask), [False, True])


EXPECTED_DATES = {  # patch -> dates of aerial (and dem), of every Sentinel-2 step, of Sentinel-1
    P1: ([196], S2_DAYS, [5, 17, 29]),
    P2: ([196], S2_DAYS, None),
    P3: ([153], S2_DAYS, [5, 17, 29]),
}


def assert_dates_of_every_patch(source, aerial_dated=True):
    for rows in source.rows.values():
        for row in rows:
            aerial, s2, s1 = EXPECTED_DATES[row["patch_id"]]
            np.testing.assert_array_equal(
                source._aerial_date(row), aerial if aerial_dated else [common.NO_DATE]
            )
            np.testing.assert_array_equal(source._dates(row, "s2", 4), s2)
            if s1 is not None:
                np.testing.assert_array_equal(source._dates(row, "s1_des", 3), s1)


@pytest.mark.parametrize("layout", sorted(standins.FLAIRHUB_DATE_LAYOUTS))
def test_every_published_metadata_layout_gives_the_same_dates(converted, tmp_path, layout):
    """release: GLOBAL_ALL_MTD/GLOBAL_SENTINEL2_MTD_DATES.gpkg ...; original: the names the
    original RAMEN code asks for (GLOBAL_SENTINEL2_TS_MTD_DATES.gpkg ...); toy: one
    <DOMAIN-YEAR>_ALL_MTD folder per domain, Sentinel dates keyed by zone_id."""
    src = converted[0]
    standins.write_flairhub_dates(tmp_path, DATE_TABLES, layout=layout)
    split_files = {"train": src / "TRAIN.csv", "val": src / "VALID.csv"}
    assert_dates_of_every_patch(flairhub.FlairHubSource(src, split_files, metadata_dir=tmp_path))


def test_dates_files_can_be_named_and_mixed_across_layouts(converted, tmp_path):
    src = converted[0]
    standins.write_flairhub_dates(tmp_path / "a", {"aerial": DATE_TABLES["aerial"]}, "original")
    standins.write_flairhub_dates(tmp_path / "b", DATE_TABLES, "toy")
    named = {
        "aerial": [tmp_path / "a/GLOBAL_ALL_MTD/GLOBAL_AERIAL_RGBI_MTD_DATES.gpkg"],
        "s2": sorted((tmp_path / "b").glob("*_ALL_MTD/*_SENTINEL2_MTD_DATES.gpkg")),
        "s1_des": sorted((tmp_path / "b").glob("*_ALL_MTD/*_SENTINEL1-DESC_MTD_DATES.gpkg")),
    }
    assert len(named["s2"]) == 2  # D006-2020 and D012-2019
    split_files = {"train": src / "TRAIN.csv", "val": src / "VALID.csv"}
    nowhere = tmp_path / "empty"
    source = flairhub.FlairHubSource(src, split_files, metadata_dir=nowhere, date_files=named)
    assert_dates_of_every_patch(source)


def test_toy_layout_converts_with_metadata_dir_flag(converted, tmp_path):
    src = converted[0]
    standins.write_flairhub_dates(tmp_path / "mtd", DATE_TABLES, layout="toy")
    assert convert(src, tmp_path / "out", "--metadata-dir", str(tmp_path / "mtd")) == 0
    records = {**read(tmp_path / "out", "train"), **read(tmp_path / "out", "val")}
    np.testing.assert_array_equal(records[P1]["s2_dates"], S2_DAYS[:2])
    np.testing.assert_array_equal(records[P1]["s1_des_dates"], [5, 17, 29])
    np.testing.assert_array_equal(records[P3]["dem_dates"], [153])


def test_sentinel_dates_alone_are_enough_as_for_ignfs_loader(converted, tmp_path, caplog):
    src = converted[0]
    sentinel_only = {name: DATE_TABLES[name] for name in ("s2", "s1_des")}
    standins.write_flairhub_dates(tmp_path / "mtd", sentinel_only, layout="release")
    out = tmp_path / "out"
    assert convert(src, out, "--metadata-dir", str(tmp_path / "mtd")) == 0
    records = read(out, "train")
    np.testing.assert_array_equal(records[P1]["aerial_dates"], [common.NO_DATE])
    np.testing.assert_array_equal(records[P1]["dem_dates"], [common.NO_DATE])
    np.testing.assert_array_equal(records[P1]["s2_dates"], S2_DAYS[:2])
    assert "no aerial date GeoPackage under" in caplog.text


def test_missing_sentinel_dates_stop_at_start_naming_the_file(converted, tmp_path, capsys):
    src = converted[0]
    standins.write_flairhub_dates(tmp_path / "mtd", {"aerial": DATE_TABLES["aerial"]})
    assert convert(src, tmp_path / "out", "--metadata-dir", str(tmp_path / "mtd")) == 1
    errors = capsys.readouterr().err.splitlines()
    expected = tmp_path / "mtd" / "GLOBAL_ALL_MTD" / "GLOBAL_SENTINEL2_MTD_DATES.gpkg"
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert f"{expected}: missing" in errors[0] and "--dates-file s2=GPKG" in errors[0]
