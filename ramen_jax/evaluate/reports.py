"""The three evaluation reports over a frozen encoder: rows of plain dicts, ready for CSV.

- ``label_efficiency``: probe metrics with 10 / 50 / 200 / 500 / all training labels (a label =
  one labelled training sample, or one labelled image for segmentation), ``draws`` random
  draws per count (one for "all": every draw would be the same set), mean and std over
  draws. Counts at or above the training-set size collapse into "all".
- ``robustness``: probes fitted once on the full training features (every modality, every
  band), then scored on test features with each modality removed and with a fraction of each
  modality's bands removed (rounded up; random bands, ``draws`` draws, at least one band kept;
  modalities with a single channel are left whole); ``delta`` is the change from the full
  input.
- ``cost_table``: per output GSD, the token grid side, tokens per sample, encoding time per
  test sample (after compilation, on the current devices) and the probes' metrics with all
  labels.

Features are computed once per (split, modalities/bands, GSD) and cached (``Evaluation``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from ramen_jax import geometry
from ramen_jax.encode.runner import FrozenEncoder
from ramen_jax.evaluate import probes
from ramen_jax.evaluate.datasets import SEGMENTATION, EvalData
from ramen_jax.evaluate.features import View, split_features, with_channels, without_modality

CURVE_COLUMNS = ("probe", "labels", "draws", "metric", "mean", "std")
ROBUSTNESS_COLUMNS = ("condition", "probe", "metric", "mean", "std", "delta")
COST_COLUMNS = ("gsd", "grid_side", "tokens", "encode_ms_per_sample", "probe", "metric", "value")
ALL_LABELS = None


@dataclasses.dataclass
class Evaluation:
    encoder: FrozenEncoder
    data: EvalData
    effective_gsd: float
    pool: str = "mean"
    blocks: tuple | None = None
    batch_size: int = 32
    probe_names: tuple = ("knn", "linear")
    options: probes.ProbeOptions = probes.ProbeOptions()
    progress: bool = True
    seed: int = 0
    modalities: tuple | None = None  # the data's modalities to encode (default: all)
    _cache: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.data.task == SEGMENTATION:
            self.pool = "pixels"

    @property
    def full_view(self) -> View:
        """Every (selected) modality with every band; the grid stays the data's first one's."""
        view = View.full(self.data.specs)
        for spec in self.data.specs:
            if self.modalities is not None and spec.name not in self.modalities:
                view = without_modality(view, spec.name)
        return view

    def features(self, split: str, view: View | None = None, gsd: float | None = None):
        """``(features, seconds)`` of the ``"train"`` or ``"test"`` split (cached)."""
        view = view or self.full_view
        gsd = float(gsd or self.effective_gsd)
        key = (split, view.specs, gsd)
        if key not in self._cache:
            self._cache[key] = split_features(
                self.encoder,
                getattr(self.data, split),
                view,
                gsd,
                pool=self.pool,
                blocks=self.blocks,
                batch_size=self.batch_size,
                label=f"encode {split} g={gsd:g} m",
                progress=self.progress,
            )
        return self._cache[key]

    def fit(self, probe: str, train_x, index=None):
        labels = self.data.train.labels
        index = np.arange(len(labels)) if index is None else index
        return probes.fit_probe(
            self.data.task,
            probe,
            train_x[index],
            labels[index],
            self.data.num_classes,
            self.options,
            rng=np.random.default_rng(self.seed),
            pad_samples=len(labels),
        )

    def score(self, predict, test_x) -> dict:
        return probes.score_probe(
            self.data.task, predict, test_x, self.data.test.labels, self.data.num_classes
        )


def _summary_rows(prefix: dict, results: Sequence[dict]) -> list[dict]:
    rows = []
    for metric in results[0]:
        values = np.array([r[metric] for r in results], np.float64)
        rows.append({**prefix, "metric": metric, "mean": values.mean(), "std": values.std()})
    return rows


def label_efficiency(ev: Evaluation, counts: Sequence, draws: int = 5) -> list[dict]:
    train_x, _ = ev.features("train")
    test_x, _ = ev.features("test")
    total = len(train_x)
    sizes = sorted({total if c is ALL_LABELS else min(int(c), total) for c in counts})
    rows = []
    for probe in ev.probe_names:
        for size in sizes:
            repeats = 1 if size == total else draws
            results = []
            for draw in range(repeats):
                rng = np.random.default_rng([ev.seed, size, draw])
                index = np.sort(rng.choice(total, size, replace=False))
                results.append(ev.score(ev.fit(probe, train_x, index), test_x))
            prefix = {"probe": probe, "labels": size, "draws": repeats}
            rows.extend(_summary_rows(prefix, results))
    return rows


def _band_views(view: View, fraction: float, rng: np.random.Generator) -> View:
    for spec in view.specs:
        channels = spec.num_channels
        if channels < 2:
            continue
        keep = max(1, channels - math.ceil(channels * fraction - 1e-9))
        view = with_channels(view, spec.name, rng.choice(channels, keep, replace=False))
    return view


def robustness(
    ev: Evaluation, fractions: Sequence[float] = (0.25, 0.5), draws: int = 3
) -> list[dict]:
    full = ev.full_view
    train_x, _ = ev.features("train", full)
    conditions = [("all modalities, all bands", [full])]
    if len(full.specs) > 1:
        conditions += [(f"without {s.name}", [without_modality(full, s.name)]) for s in full.specs]
    for fraction in fractions:
        views = [
            _band_views(full, fraction, np.random.default_rng([ev.seed, round(fraction * 1000), d]))
            for d in range(draws)
        ]
        conditions.append((f"{fraction:.0%} of bands removed", views))
    rows = []
    for probe in ev.probe_names:
        predict = ev.fit(probe, train_x)
        baseline = {}
        for condition, views in conditions:
            results = [ev.score(predict, ev.features("test", view)[0]) for view in views]
            for row in _summary_rows({"condition": condition, "probe": probe}, results):
                baseline.setdefault(row["metric"], row["mean"])
                rows.append({**row, "delta": row["mean"] - baseline[row["metric"]]})
    return rows


def cost_table(ev: Evaluation, gsds: Sequence[float]) -> list[dict]:
    view = ev.full_view
    rows = []
    for gsd in gsds:
        side = geometry.grid_side(view.reference.side, view.reference.gsd, gsd)
        train_x, _ = ev.features("train", gsd=gsd)
        test_x, seconds = ev.features("test", gsd=gsd)
        prefix = {
            "gsd": gsd,
            "grid_side": side,
            "tokens": len(view.specs) * side * side,
            "encode_ms_per_sample": 1000 * seconds / len(test_x),
        }
        for probe in ev.probe_names:
            for metric, value in ev.score(ev.fit(probe, train_x), test_x).items():
                rows.append({**prefix, "probe": probe, "metric": metric, "value": value})
    return rows
