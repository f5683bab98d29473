"""data_prep.mmearth on a small HDF5 file written in the published MMEarth64 layout.

The layout comes from ``data_prep.standins.write_mmearth`` (as MMEarth-data's
``convert_to_h5.py``: gzip, one row per HDF5 chunk): datasets ``sentinel2`` uint16
[N, 13, 64, 64] (B8A before B8, zeros in B10 for L2A), ``sentinel1`` float32 [N, 8, 64, 64]
(-inf for a band not acquired: HH HV of most acquired orbits, every band of a missing orbit),
``aster`` int16 [N, 2, 64, 64], ``biome`` uint8 one-hot [N, 14], ``metadata`` compound (tile_id
S100, S2_type S10), the release's other datasets and json sidecars (``_tile_info.json`` keyed by
tile id, with ``S2_DATE``). Values must round-trip exactly; statistics are compared with numpy at
rtol 1e-9.
"""

import json
import logging

import h5py
import numpy as np

from data_prep import common, mmearth, standins
from tests.test_data_prep_statistics import original_patch_stats

ROWS = 12
L2A_ROWS = {0, 3, 4, 8, 11}


def write_mmearth(directory, rows=ROWS, with_s2_type=True):
    """The release's layout (``data_prep.standins``) with this test's tiles: L2A rows
    ``L2A_ROWS``, biomes 0 and 5 alternating, odd rows without the descending orbit, one NaN."""
    l2a_rows = [row for row in sorted(L2A_ROWS) if row < rows]
    arrays = standins.mmearth_arrays(rows, seed=7, l2a_rows=l2a_rows)
    arrays["sentinel1"][1::2, 4:] = -np.inf  # descending orbit not acquired
    arrays["sentinel1"][2, 0, 5, 5] = np.nan
    arrays["biome"] = np.zeros((rows, 14), np.uint8)
    arrays["biome"][np.arange(rows), np.arange(rows) % 2 * 5] = 1  # biomes 0 and 5
    s2_types = ["l2a" if row in L2A_ROWS else "l1c" for row in range(rows)]
    s2_dates = standins.mmearth_s2_dates(rows, seed=7)
    path = standins.write_mmearth(
        directory,
        arrays,
        [f"tile_{row:03d}" for row in range(rows)],
        s2_types=s2_types if with_s2_type else None,
        s2_dates=s2_dates,
    )
    days = [day.timetuple().tm_yday for day in s2_dates]
    return path, {
        "s2": arrays["sentinel2"],
        "s1": arrays["sentinel1"],
        "aster": arrays["aster"],
        "s2_days": days,
    }


def convert(src, out, *extra):
    return mmearth.main(["--src", str(src), "--out", str(out), "--chunk-size", "4", *extra])


def records(out, split):
    source = common.load_split(out, split)
    return [source[i] for i in range(len(source))]


def test_records_hold_the_h5_rows(tmp_path):
    _, data = write_mmearth(tmp_path)
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": list(range(9)), "val": [9, 10, 11], "test": []}))
    assert convert(tmp_path, tmp_path / "out", "--split-file", str(split_file)) == 0
    train = records(tmp_path / "out", "train")
    assert len(train) == 9 and len(records(tmp_path / "out", "val")) == 3
    for record in train:
        row = int(record["id"].decode().split("_")[1])
        assert record["s2"].shape == (1, 64, 64, 13) and record["s2"].dtype == np.uint16
        # Wavelength order: record band 7 is B8 (842 nm, HDF5 band 8), band 8 is B8A (865 nm).
        h5_order = [0, 1, 2, 3, 4, 5, 6, 8, 7, 9, 10, 11, 12]
        np.testing.assert_array_equal(record["s2"][0], data["s2"][row][h5_order].transpose(1, 2, 0))
        np.testing.assert_array_equal(record["s1"][0], data["s1"][row].transpose(1, 2, 0))
        np.testing.assert_array_equal(record["dem"][0], data["aster"][row].transpose(1, 2, 0))
        assert record["s1"].dtype == np.float32 and record["dem"].dtype == np.int16
        np.testing.assert_array_equal(record["s2_dates"], [data["s2_days"][row]])
        for name in ("s1", "dem"):  # not recorded in the release
            np.testing.assert_array_equal(record[name + "_dates"], np.array([1], np.int32))
        assert record["s2_product"].decode() == ("l2a" if row in L2A_ROWS else "l1c")
        assert record["biome"] == row % 2 * 5


def test_statistics_keep_l1c_and_l2a_apart(tmp_path):
    _, data = write_mmearth(tmp_path)
    split_file = tmp_path / "splits.json"
    train_rows = list(range(10))
    split_file.write_text(json.dumps({"train": train_rows}))
    assert (
        convert(tmp_path, tmp_path / "out", "--split-file", str(split_file), "--splits", "train")
        == 0
    )
    stats = common.load_stats(tmp_path / "out")
    assert set(stats) == {"s2_l1c", "s2_l2a", "s1", "dem"}
    order = [0, 1, 2, 3, 4, 5, 6, 8, 7, 9, 10, 11, 12]
    l1c = [r for r in train_rows if r not in L2A_ROWS]
    l2a = [r for r in train_rows if r in L2A_ROWS]
    for key, rows in (("s2_l1c", l1c), ("s2_l2a", l2a)):
        # The original's files are in the HDF5 band order; stats.json in the records' order.
        expected = original_patch_stats(data["s2"][rows][:, None], skip_zero_planes=True)
        published = json.loads((tmp_path / "out" / f"NORM_{key}_patch.json").read_text())
        np.testing.assert_allclose(published["mean"], expected["mean"], rtol=1e-9)
        np.testing.assert_allclose(published["std"], expected["std"], rtol=1e-9)
        np.testing.assert_allclose(stats[key]["mean"], np.take(expected["mean"], order), rtol=1e-9)
        np.testing.assert_allclose(stats[key]["std"], np.take(expected["std"], order), rtol=1e-9)
        assert stats[key]["count"] == len(rows)
    # B10 of L2A is all zero: never observed
    assert stats["s2_l2a"]["mean"][10] == 0.0 and stats["s2_l2a"]["std"][10] == 1.0
    s1 = original_patch_stats(data["s1"][train_rows][:, None], skip_zero_planes=True)
    np.testing.assert_allclose(stats["s1"]["mean"], s1["mean"], rtol=1e-9)
    np.testing.assert_allclose(stats["s1"]["std"], s1["std"], rtol=1e-9)


def test_default_split_is_stratified_by_biome_and_deterministic(tmp_path):
    write_mmearth(tmp_path, rows=40)
    source = mmearth.MMEarthSource(tmp_path)
    train, val = source.items("train"), source.items("val")
    assert sorted(train + val) == list(range(40))
    assert sorted(val) == val and len(val) == 4
    assert sum(row % 2 for row in val) == 2  # 10 % of each of the two biomes
    assert val == mmearth.MMEarthSource(tmp_path).items("val")


def test_product_falls_back_to_the_b10_rule(tmp_path):
    write_mmearth(tmp_path, rows=6, with_s2_type=False)
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": list(range(6))}))
    assert (
        convert(tmp_path, tmp_path / "out", "--split-file", str(split_file), "--splits", "train")
        == 0
    )
    for record in records(tmp_path / "out", "train"):
        row = int(record["id"].decode().split("_")[1])
        assert record["s2_product"].decode() == ("l2a" if row in L2A_ROWS else "l1c")


def corrupt_row(path, dataset, row):
    with h5py.File(path, "r") as h5:
        chunk = h5[dataset].id.get_chunk_info(row)
    with open(path, "r+b") as file:
        file.seek(chunk.byte_offset)
        file.write(b"\xff" * chunk.size)


def test_corrupt_row_stops_or_is_skipped(tmp_path, caplog, capsys):
    path, _ = write_mmearth(tmp_path)
    corrupt_row(path, "sentinel2", 5)
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": list(range(ROWS))}))
    args = ("--split-file", str(split_file), "--splits", "train")
    assert convert(tmp_path, tmp_path / "stop", *args) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: stopped on a source error") and f"{path} row 5" in line
    assert not (tmp_path / "stop" / "dataset_info.json").exists()
    caplog.clear()
    assert convert(tmp_path, tmp_path / "skip", *args, "--on-error", "skip") == 0
    assert f"{path} row 5" in caplog.text
    ids = sorted(record["id"].decode() for record in records(tmp_path / "skip", "train"))
    assert ids == [f"tile_{row:03d}" for row in range(ROWS) if row != 5]


def test_s2_dates_come_from_the_tile_info_file(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="data_prep")
    _, data = write_mmearth(tmp_path)
    info_path = tmp_path / f"{standins.MMEARTH_NAME}_tile_info.json"
    info = json.loads(info_path.read_text())
    # The release's tile_info (as read by TorchGeo's MMEarth) is keyed by tile id.
    assert info["tile_003"]["S2_DATE"] == standins.mmearth_s2_dates(ROWS, seed=7)[3].isoformat()
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": list(range(ROWS))}))
    args = ("--split-file", str(split_file), "--splits", "train")
    assert convert(tmp_path, tmp_path / "out", *args) == 0
    days = {r["id"].decode(): r["s2_dates"].tolist() for r in records(tmp_path / "out", "train")}
    assert days == {f"tile_{row:03d}": [data["s2_days"][row]] for row in range(ROWS)}
    assert f"mmearth: S2 dates of {ROWS} tiles from {info_path}" in caplog.text

    # --tile-info names the file; a tile it lacks is an error of that tile.
    moved = tmp_path / "elsewhere.json"
    del info["tile_005"]
    moved.write_text(json.dumps(info, indent=4))
    info_path.unlink()
    out = tmp_path / "moved"
    assert convert(tmp_path, out, *args, "--tile-info", str(moved), "--on-error", "skip") == 0
    assert len(records(out, "train")) == ROWS - 1
    assert f"{moved}: no entry for tile tile_005" in caplog.text

    # Without any tile_info file every date is 1, said once.
    caplog.clear()
    assert convert(tmp_path, tmp_path / "undated", *args) == 0
    assert all(r["s2_dates"].tolist() == [1] for r in records(tmp_path / "undated", "train"))
    assert caplog.text.count("every date is stored as 1") == 1
