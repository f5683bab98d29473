"""ramen_jax.evaluate: metrics, probes on separable problems, and the reports end to end.

Probes must solve well-separated synthetic problems (accuracy / mAP / mIoU >= 0.95) and fall to
chance when the labels are shuffled, so a probe that ignores its features or misaligns rows
fails. Metrics are checked on hand-computed cases. The CLI must run on the bundled BigEarthNet
patches (tiny random model) and on a data_prep dataset (MMEarth layout, ``--label-key biome``)
and write CSVs with the documented columns and rows, and a PNG plot.
"""

import csv
import json

import numpy as np
import pytest
from test_data_prep_mmearth import convert, write_mmearth
from test_encode import TINY, save_encoder

from ramen_jax import sensors
from ramen_jax.encode import load_encoder
from ramen_jax.evaluate import __main__ as cli
from ramen_jax.evaluate import datasets, metrics, probes, reports


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("evaluate") / "model"
    save_encoder(directory)
    return directory


def test_metrics_on_hand_computed_cases():
    assert np.isclose(metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]), 5 / 6)
    assert np.isclose(metrics.average_precision([0.5, 0.5, 0.1], [0, 1, 0]), 0.5)  # tie: 1 step
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.4, 0.3]])
    targets = np.array([[1, 0], [0, 1], [0, 0]])
    assert metrics.mean_average_precision(scores, targets) == 1.0
    assert np.isclose(metrics.micro_f1(scores >= 0.35, targets), 2 * 2 / (2 * 2 + 1))
    assert np.isclose(
        metrics.mean_iou(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3), np.mean([1 / 2, 2 / 3])
    )


def _clusters(rng, count, classes=4, width=16):
    centres = np.random.default_rng(99).normal(size=(classes, width)) * 3
    labels = rng.integers(0, classes, count)
    return (centres[labels] + rng.normal(size=(count, width))).astype(np.float32), labels


@pytest.mark.parametrize("probe", sorted(probes.PROBES))
def test_probes_solve_separable_problems(probe):
    rng = np.random.default_rng(0)
    train_x, train_y = _clusters(rng, 200)
    test_x, test_y = _clusters(rng, 300)
    run = probes.evaluate_probe
    assert run("multiclass", probe, train_x, train_y, test_x, test_y, 4)["accuracy"] >= 0.95
    shuffled = run("multiclass", probe, train_x, rng.permutation(train_y), test_x, test_y, 4)
    assert shuffled["accuracy"] < 0.6

    features = rng.normal(size=(400, 16)).astype(np.float32)
    multi_hot = (features[:, :5] > 0).astype(np.float32)  # label j <=> feature j > 0
    if probe == "linear":  # linearly separable, far from any neighbour-based rule's reach
        result = run(
            "multilabel", probe, features[:200], multi_hot[:200], features[200:], multi_hot[200:], 5
        )
        assert result["mAP"] >= 0.95 and result["F1_micro"] >= 0.9

    labels = rng.integers(0, 3, (40, 16, 16))
    grid = probes.labels_to_grid(labels, 8)
    pixel_features = np.eye(3)[grid] * 2 + rng.normal(size=(40, 8, 8, 3)) * 0.3
    result = run(
        "segmentation", probe, pixel_features[:20], labels[:20], pixel_features[20:], labels[20:], 3
    )
    assert result["mIoU"] >= 0.95


def test_labels_to_grid_majority_vote():
    labels = np.array([[[0, 0, 1, 1], [0, 2, 1, -1], [2, 2, -1, -1], [2, 0, -1, -1]]])
    np.testing.assert_array_equal(probes.labels_to_grid(labels, 2), [[[0, 1], [2, -1]]])


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_probe_command_on_the_bundled_patches(model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "--checkpoint",
        model_dir,
        "--out",
        out,
        "--crops-per-patch",
        "6",
        "--use",
        "s2_10m,s1",
        "--gsd",
        "120",
        "--cost-gsds",
        "120",
        "--label-counts",
        "4,all",
        "--draws",
        "2",
        "--drop-fractions",
        "0.5",
        "--robustness-draws",
        "1",
        "--batch-size",
        "12",
        "--quiet",
    ]
    assert cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    curve = _rows(out / "curve.csv")
    assert list(curve[0]) == list(reports.CURVE_COLUMNS)
    assert {(r["probe"], r["labels"], r["metric"]) for r in curve} == {
        (p, n, m) for p in ("knn", "linear") for n in ("4", "24") for m in ("mAP", "F1_micro")
    }
    assert {r["draws"] for r in curve if r["labels"] == "4"} == {"2"}
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    robustness = _rows(out / "robustness.csv")
    assert list(robustness[0]) == list(reports.ROBUSTNESS_COLUMNS)
    conditions = [
        "all modalities, all bands",
        "without s2_10m",
        "without s1",
        "50% of bands removed",
    ]
    assert list(dict.fromkeys(r["condition"] for r in robustness)) == conditions
    assert len(robustness) == 2 * len(conditions) * 2
    assert all(float(r["delta"]) == 0 for r in robustness if r["condition"] == conditions[0])
    cost = _rows(out / "cost.csv")
    assert list(cost[0]) == list(reports.COST_COLUMNS) and len(cost) == 4
    assert {(r["grid_side"], r["tokens"]) for r in cost} == {("5", "50")}  # 600 m at 120 m
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["train"] == 24 and run["data"]["test"] == 12
    assert "demonstrates the machinery only" in capsys.readouterr().out


def test_probe_command_on_a_data_prep_dataset(model_dir, tmp_path, capsys):
    write_mmearth(tmp_path, rows=16)
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": list(range(10)), "val": list(range(10, 16))}))
    assert convert(tmp_path, tmp_path / "records", "--split-file", str(split_file)) == 0
    argv = [
        "--checkpoint",
        model_dir,
        "--out",
        tmp_path / "out",
        "--data",
        "records",
        "--data-dir",
        tmp_path / "records",
        "--label-key",
        "biome",
        "--use",
        "s2,s1",
        "--gsd",
        "160",
        "--reports",
        "curve",
        "--label-counts",
        "all",
        "--batch-size",
        "10",
        "--quiet",
    ]
    assert cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    curve = _rows(tmp_path / "out" / "curve.csv")
    assert {(r["probe"], r["labels"], r["metric"]) for r in curve} == {
        ("knn", "10", "accuracy"),
        ("linear", "10", "accuracy"),
    }
    argv[argv.index("biome")] = "no_such_label"
    assert cli.main([str(a) for a in argv]) == 1
    assert "no label 'no_such_label'" in capsys.readouterr().err


class _SegmentationSource:
    """A RecordSource stand-in: 64 px optical images whose label is a bright/dark mask."""

    def __init__(self, count, seed):
        rng = np.random.default_rng(seed)
        self.masks = (rng.random((count, 4, 4)) > 0.5).repeat(16, axis=1).repeat(16, axis=2)

    def __len__(self):
        return len(self.masks)

    def load(self, index, rng):
        mask = self.masks[index]
        image = np.where(mask[..., None], 2.0, -2.0) + rng.normal(size=(64, 64, 3)) * 0.1
        return {
            "img": image[None].astype(np.float32),
            "img_dates": np.ones(1, np.int32),
            "mask": mask.astype(np.int64),
        }

    def stats(self, sample):
        return {"img": (np.zeros(3), np.ones(3))}


def test_segmentation_probe_through_the_encoder(model_dir):
    specs = (sensors.modality("img", "optical", [490, 560, 665], 10, 64),)
    rng = np.random.default_rng(0)
    splits = [
        datasets.load_split_samples(
            _SegmentationSource(n, seed),
            specs,
            "mask",
            datasets.SEGMENTATION,
            max_samples=None,
            rng=rng,
            ignore_label=-1,
            where="fake",
        )
        for n, seed in ((12, 1), (6, 2))
    ]
    data = datasets.EvalData("fake", specs, datasets.SEGMENTATION, 2, *splits)
    ev = reports.Evaluation(load_encoder(model_dir), data, 40.0, batch_size=6, progress=False)
    features, _ = ev.features("train")
    assert features.shape == (12, 16, 16, TINY.embed_dim) and ev.pool == "pixels"
    rows = reports.label_efficiency(ev, [reports.ALL_LABELS], draws=1)
    miou = {r["probe"]: r["mean"] for r in rows if r["metric"] == "mIoU"}
    assert miou["knn"] >= 0.9 and miou["linear"] >= 0.9, miou
