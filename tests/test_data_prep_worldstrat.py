"""data_prep.worldstrat on small files written in the published WorldStrat layout.

Written with ``data_prep.standins``: ``metadata.csv`` with the AOI as unnamed first (index)
column and one row per revisit, ``stratified_train_val_test_split.csv`` with the release's
columns, ``hr_dataset/<AOI>/<AOI>_ps.tiff`` (4 bands uint16, 1054 px: the size that gives the
263 px tiles), and ``lr_dataset/<AOI>/L2A/<AOI>-<n>-L2A_data.tiff`` (12 bands float32). SPOT
tiles must match exactly; Sentinel-2 tiles match PyTorch's bilinear ``F.interpolate`` at rtol
1e-6 (float32 rounding).
"""

import json
import logging

import numpy as np
import pytest

from data_prep import common, standins, worldstrat
from tests.test_data_prep_statistics import original_patch_stats

AOIS = {"Amnesty POI-12-3-1": "train", "UNHCR-SSDs008823": "val", "Landcover-1": "test"}
REVISITS = {  # n -> lowres date; written out of order on purpose
    3: "2019-05-20",
    1: "2019-04-02",
    2: "2019-04-27",
}
HIGHRES_DATE = "2019-05-02"


def write_worldstrat(src, hr_side=1054):
    """Every AOI: a SPOT ramp (exact values to compare tiles with) and random revisits."""
    rng = np.random.default_rng(3)
    images = {}
    for aoi in AOIS:
        rows, cols = np.mgrid[0:hr_side, 0:hr_side]
        spot = np.stack([(rows * 3 + cols * 5 + band * 7) % 4096 for band in range(4)])
        spot = spot.astype(np.uint16)
        revisits = {n: rng.uniform(0, 0.6, (12, 160, 160)).astype(np.float32) for n in REVISITS}
        standins.write_worldstrat_aoi(src, aoi, spot, revisits)
        images[aoi] = (spot, revisits)
    standins.write_worldstrat_tables(
        src,
        revisit_dates=dict.fromkeys(AOIS, REVISITS),
        highres_dates=dict.fromkeys(AOIS, HIGHRES_DATE),
        splits=AOIS,
    )
    return images


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    src = tmp_path_factory.mktemp("worldstrat")
    images = write_worldstrat(src)
    assert worldstrat.main(["--src", str(src), "--out", str(src / "out")]) == 0
    return src, src / "out", images


def read(out, split):
    source = common.load_split(out, split)
    return {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}


def test_every_aoi_gives_16_tiles_with_dates(converted):
    _, out, _ = converted
    train, val = read(out, "train"), read(out, "val")
    expected = [f"Amnesty POI-12-3-1_{r}_{c}" for r in range(4) for c in range(4)]
    assert sorted(train) == expected
    assert len(val) == 16
    for record in train.values():
        assert record["spot"].shape == (1, 263, 263, 4) and record["spot"].dtype == np.uint16
        assert record["s2"].shape == (3, 39, 39, 12) and record["s2"].dtype == np.float32
        np.testing.assert_array_equal(record["spot_dates"], [122])  # 2019-05-02
        np.testing.assert_array_equal(record["s2_dates"], [92, 117, 140])  # ordered by n


def test_tiles_are_cut_as_the_original(converted):
    _, out, images = converted
    spot, revisits = images["Amnesty POI-12-3-1"]
    torch = pytest.importorskip("torch")
    lr = torch.from_numpy(np.stack([revisits[n] for n in (1, 2, 3)]))
    resized = torch.nn.functional.interpolate(
        lr, size=(158, 158), mode="bilinear", align_corners=False
    ).numpy()
    records = read(out, "train")
    for r in range(4):
        for c in range(4):
            record = records[f"Amnesty POI-12-3-1_{r}_{c}"]
            expected_spot = spot[:, r * 263 : (r + 1) * 263, c * 263 : (c + 1) * 263]
            np.testing.assert_array_equal(record["spot"][0], expected_spot.transpose(1, 2, 0))
            expected_s2 = resized[:, :, r * 39 : (r + 1) * 39, c * 39 : (c + 1) * 39]
            np.testing.assert_allclose(
                record["s2"], expected_s2.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-7
            )


def test_bilinear_resize_reproduces_a_linear_ramp():
    # Bilinear interpolation is exact on a linear function; borders clamp to the edge pixels.
    ramp = np.arange(160, dtype=np.float64)[None, :, None] * np.ones((1, 1, 7))
    resized = worldstrat.resize_bilinear(ramp, 158)
    centres = np.clip((np.arange(158) + 0.5) * 160 / 158 - 0.5, 0, 159)
    np.testing.assert_allclose(resized[0, :, 0], centres, rtol=1e-6)
    assert np.all(resized[:, :, 1:] == resized[:, :, :1])


def test_statistics_cover_the_train_tiles(converted):
    _, out, images = converted
    spot, revisits = images["Amnesty POI-12-3-1"]
    stats = common.load_stats(out)
    tiles = [
        spot[:, r * 263 : (r + 1) * 263, c * 263 : (c + 1) * 263]
        for r in range(4)
        for c in range(4)
    ]
    expected = original_patch_stats([t[None] for t in tiles])
    np.testing.assert_allclose(stats["spot"]["mean"], expected["mean"], rtol=1e-9)
    np.testing.assert_allclose(stats["spot"]["std"], expected["std"], rtol=1e-9)
    assert stats["spot"]["count"] == 16 and set(stats) == {"spot", "s2"}


def test_bad_sources_stop_or_are_skipped(tmp_path, caplog, capsys):
    write_worldstrat(tmp_path)
    corrupt = (
        tmp_path
        / "lr_dataset"
        / "Amnesty POI-12-3-1"
        / "L2A"
        / "Amnesty POI-12-3-1-2-L2A_data.tiff"
    )
    corrupt.write_bytes(b"II*\x00 truncated")  # a present but unreadable revisit is an error
    assert worldstrat.main(["--src", str(tmp_path), "--out", str(tmp_path / "stop")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: stopped on a source error") and str(corrupt) in line
    small = tmp_path / "hr_dataset" / "UNHCR-SSDs008823" / "UNHCR-SSDs008823_ps.tiff"
    standins.write_geotiff(small, np.zeros((4, 1000, 1000), np.uint16), 1.5, standins.UTM_33N)
    caplog.clear()
    args = ["--src", str(tmp_path), "--out", str(tmp_path / "skip"), "--on-error", "skip"]
    assert worldstrat.main([*args, "--splits", "train,val,test"]) == 0
    assert str(corrupt) in caplog.text and f"{small}: shape (4, 1000, 1000)" in caplog.text
    # Only the test AOI was readable: the other splits are left out, and so are statistics.
    info = json.loads((tmp_path / "skip" / "dataset_info.json").read_text())
    assert [split["name"] for split in info["splits"]] == ["test"]
    assert len(read(tmp_path / "skip", "test")) == 16
    assert common.load_stats(tmp_path / "skip") == {}


# The published split file (worldstrat/worldstrat, pretrained_model/) has 3,928 rows for 3,890
# AOIs: repeated train rows, and AOIs listed under train and val or train and test.
PUBLISHED_LIKE_ROWS = [
    *AOIS.items(),
    ("Amnesty POI-12-3-1", "train"),  # repeated row
    ("UNHCR-SSDs008823", "train"),  # also under val
    ("Landcover-1", "train"),  # also under test
]


def test_split_file_repeats_and_cross_split_rows_are_resolved(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="data_prep")
    write_worldstrat(tmp_path)
    standins.write_worldstrat_tables(
        tmp_path,
        revisit_dates=dict.fromkeys(AOIS, REVISITS),
        highres_dates=dict.fromkeys(AOIS, HIGHRES_DATE),
        splits=PUBLISHED_LIKE_ROWS,
    )
    args = ["--src", str(tmp_path), "--out", str(tmp_path / "out"), "--on-error", "skip"]
    assert worldstrat.main([*args, "--splits", "train,val,test"]) == 0
    aois = {
        split: {key.rsplit("_", 2)[0] for key in read(tmp_path / "out", split)}
        for split in ("train", "val", "test")
    }
    assert aois == {
        "train": {"Amnesty POI-12-3-1"},
        "val": {"UNHCR-SSDs008823"},
        "test": {"Landcover-1"},
    }
    assert len(read(tmp_path / "out", "train")) == 16  # the repeated row gives no second copy
    assert (
        "6 rows, 3 AOIs; 1 repeated rows dropped; 2 AOIs listed under several splits kept in the "
        "held-out one only (train+test: 1, train+val: 1)" in caplog.text
    )


def test_an_aoi_in_several_splits_stays_in_the_first_held_out_split(tmp_path):
    rows = [
        ("a", "train"),
        ("a", "val"),
        ("b", "val"),
        ("b", "test"),
        ("c", "train"),
        ("c", "extra"),
        ("d", "train"),
        ("d", "train"),
        ("e", "test"),
        ("e", "train"),
    ]
    standins.write_worldstrat_tables(tmp_path, {}, {}, rows)
    splits = worldstrat.read_split_file(tmp_path / worldstrat.SPLIT_FILE)
    assert {name: sorted(aois) for name, aois in splits.items()} == {
        "val": ["a"],
        "test": ["b", "e"],
        "extra": ["c"],
        "train": ["d"],
    }


def test_listed_revisits_without_files_are_skipped_and_counted(tmp_path, caplog, capsys):
    """metadata.csv lists 5 revisits per AOI, 3 are shipped; Landcover-1 ships none."""
    caplog.set_level(logging.INFO, logger="data_prep")
    write_worldstrat(tmp_path)
    listed = {**REVISITS, 4: "2019-06-01", 5: "2019-06-11"}
    standins.write_worldstrat_tables(
        tmp_path,
        revisit_dates=dict.fromkeys(AOIS, listed),
        highres_dates=dict.fromkeys(AOIS, HIGHRES_DATE),
        splits=AOIS,
    )
    no_revisits = tmp_path / "lr_dataset" / "Landcover-1" / "L2A"
    for path in no_revisits.iterdir():
        path.unlink()
    args = ["--src", str(tmp_path), "--on-error", "skip", "--splits", "train,val,test"]
    assert worldstrat.main([*args, "--out", str(tmp_path / "skip")]) == 0
    train = read(tmp_path / "skip", "train")
    assert len(train) == 16 and len(read(tmp_path / "skip", "val")) == 16
    for record in train.values():
        assert record["s2"].shape == (3, 39, 39, 12)
        np.testing.assert_array_equal(record["s2_dates"], [92, 117, 140])
    info = json.loads((tmp_path / "skip" / "dataset_info.json").read_text())
    assert [split["name"] for split in info["splits"]] == ["train", "val"]
    log = caplog.text
    assert "worldstrat train: 1 AOIs; 2 of 5 revisits listed in metadata.csv are absent" in log
    assert "worldstrat test: 1 AOIs; 5 of 5 revisits listed" in log and "1 lack all" in log
    assert f"{no_revisits}: none of the 5 revisits metadata.csv lists is present" in log

    # Stop: the AOI without any revisit ends the run, with one line naming its folder.
    caplog.clear()
    assert (
        worldstrat.main(
            ["--src", str(tmp_path), "--out", str(tmp_path / "stop"), "--splits", "test"]
        )
        == 1
    )
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and str(no_revisits) in errors[0]


def test_skip_run_that_keeps_no_aoi_fails_without_finishing(tmp_path, capsys):
    write_worldstrat(tmp_path)
    no_revisits = tmp_path / "lr_dataset" / "Landcover-1" / "L2A"
    for path in no_revisits.iterdir():
        path.unlink()
    out = tmp_path / "out"
    args = ["--src", str(tmp_path), "--out", str(out), "--on-error", "skip", "--splits", "test"]
    assert worldstrat.main(args) == 1
    assert not (out / "dataset_info.json").exists() and not list(out.glob("*array_record*"))
    errors = capsys.readouterr().err.splitlines()  # the skip warnings are log records
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert "no examples written, all 1 source items were skipped" in errors[0]
    assert str(no_revisits) in errors[0]
