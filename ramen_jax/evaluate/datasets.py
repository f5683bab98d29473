"""Labelled evaluation data: normalised samples for the frozen encoder, labels, train/test split.

Sources (``DATASETS``, chosen with ``--data``):

- ``demo``: the six real BigEarthNet patches bundled with ``bigearthnet-common``
  (``ramen_jax.data.demo``): S2 at 10/20/60 m as three modalities plus S1, labels = the
  patch's 19-class multi-hot vector (multi-label). Many random crops (with flips) are cut from
  each patch; the split is **by patch** (``test_patches`` whole patches are held out), so no
  crop of a test patch is seen in training. Normalisation statistics come from the training
  patches only. Six patches (four distinct label sets in training) only demonstrate the
  machinery; the numbers mean nothing about the model.
- ``records``: any dataset written by ``data_prep`` (the format of ``ramen_jax.data.records``),
  read through ``ramen_jax.data.sources.RecordSource`` (its ``stats.json``, per-product
  statistics included). The modalities come from ``ramen_jax.data.catalog`` (found by the
  dataset's name in ``dataset_info.json``) or from a JSON
  description ``{name: {kind, channels, gsd, side[, time_series]}}``. Labels are read from
  ``label_key``.

Tasks (``infer_task``): a scalar label is multi-class (negative = unlabelled: the sample is
left out), a 0/1 vector multi-label, a 2-D (or ``[1, H, W, 1]``) array segmentation
(``ignore_label`` and negative values are ignored pixels).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from ramen_jax import sensors, storage
from ramen_jax.data import catalog, demo, pipeline, records
from ramen_jax.data.sources import DemoSource, RecordSource
from ramen_jax.encode.inputs import EncodeError

MULTILABEL, MULTICLASS, SEGMENTATION = "multilabel", "multiclass", "segmentation"


@dataclasses.dataclass
class Split:
    """``pixels[m]`` float32 ``[N, T, H, H, C]`` (normalised), ``dates``/``time_valid``
    ``[N, T]``, ``labels`` ``[N, K]`` / ``[N]`` / ``[N, H, W]``, ``groups`` ``[N]`` (source id)."""

    pixels: dict
    dates: dict
    time_valid: dict
    labels: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> Split:
        def pick(tree):
            return {k: v[index] for k, v in tree.items()}

        return Split(
            pick(self.pixels),
            pick(self.dates),
            pick(self.time_valid),
            self.labels[index],
            self.groups[index],
        )


@dataclasses.dataclass
class EvalData:
    name: str
    specs: tuple  # ModalitySpec in batch order; specs[0] fixes the token grid
    task: str
    num_classes: int
    train: Split
    test: Split
    note: str = ""


def infer_task(label) -> str:
    label = np.asarray(label)
    if label.ndim == 0:
        return MULTICLASS
    if label.ndim == 1 and np.isin(label, (0, 1)).all():
        return MULTILABEL
    if np.squeeze(label).ndim == 2:
        return SEGMENTATION
    raise EncodeError(f"cannot tell the task from a label of shape {label.shape}; give --task")


def _stack(prepared: list[dict], labels: list, groups: list, specs) -> Split:
    fields = [{}, {}, {}]
    for spec in specs:
        for i, field in enumerate(fields):
            field[spec.name] = np.stack([p[spec.name][i] for p in prepared])
    return Split(*fields, np.stack(labels), np.asarray(groups))


def load_demo(
    *, crops_per_patch: int = 32, crop_fraction: float = 0.5, test_patches: int = 2, seed=0, **_
) -> EvalData:
    patches = demo.load_bigearthnet_patches()
    if not 1 <= test_patches < len(patches):
        raise EncodeError(f"test_patches must be in 1..{len(patches) - 1}, got {test_patches}")
    rng = np.random.default_rng([seed, 0xE7A1])
    order = rng.permutation(len(patches))
    test_ids = set(order[:test_patches].tolist())
    stats = demo.normalisation_stats([p for i, p in enumerate(patches) if i not in test_ids])
    specs = tuple(
        sensors.modality_from_dict(name, d)
        for name, d in DemoSource.modalities(crop_fraction).items()
    )
    splits = {True: ([], [], []), False: ([], [], [])}
    for index, patch in enumerate(patches):
        prepared, labels, groups = splits[index in test_ids]
        for _ in range(crops_per_patch):
            crop = demo.random_crop_flip(patch, rng, crop_fraction)
            prepared.append(pipeline.prepare_sample(crop, specs, stats, rng, where=patch["id"]))
            labels.append(patch["label_vector"])
            groups.append(index)
    return EvalData(
        name="bigearthnet-demo",
        specs=specs,
        task=MULTILABEL,
        num_classes=len(demo.DEMO_LABELS),
        train=_stack(*splits[False], specs),
        test=_stack(*splits[True], specs),
        note=f"{len(patches)} BigEarthNet patches, {len(patches) - test_patches} for training: "
        "demonstrates the machinery only",
    )


def catalog_specs(data_dir, max_time_steps: int) -> tuple:
    """Modality specs of a converted dataset, from ``ramen_jax.data.catalog`` (looked up by the
    name in its ``dataset_info.json``)."""
    info_path = storage.as_path(data_dir) / records.INFO_FILES[-1]
    if not info_path.is_file():
        raise EncodeError(f"{data_dir} is not a data_prep dataset (no {records.INFO_FILES[-1]})")
    name = json.loads(info_path.read_text())["name"]
    if name not in catalog.DATASETS:
        raise EncodeError(
            f"unknown dataset {name!r} (known: {sorted(catalog.DATASETS)}); pass --modalities"
        )
    return tuple(m.spec(max_time_steps) for m in catalog.DATASETS[name])


def _label_of(sample: dict, label_key: str, where: str):
    if label_key not in sample:
        keys = sorted(k for k in sample if not k.endswith("_dates"))
        raise EncodeError(f"{where}: no label {label_key!r} in the records (keys: {keys})")
    return np.asarray(sample[label_key])


def load_split_samples(source, specs, label_key, task, *, max_samples, rng, ignore_label, where):
    """Prepared samples and labels of one split of a RecordSource-like source."""
    count = len(source)
    indices = np.arange(count)
    if max_samples and max_samples < count:
        indices = np.sort(rng.choice(count, max_samples, replace=False))
    prepared, labels, groups = [], [], []
    for index in indices:
        sample = source.load(int(index), rng)
        label = _label_of(sample, label_key, where)
        if task == MULTICLASS and label < 0:
            continue
        if task == SEGMENTATION:
            label = np.squeeze(label).astype(np.int64)
            label = np.where(label == ignore_label, -1, label)
        prepared.append(
            pipeline.prepare_sample(sample, specs, source.stats(sample), rng, f"{where}[{index}]")
        )
        labels.append(label)
        groups.append(int(index))
    if not prepared:
        raise EncodeError(f"{where}: no labelled sample")
    return _stack(prepared, labels, groups, specs)


def load_records(
    *,
    data_dir,
    label_key: str,
    train_split: str = "train",
    test_split: str = "val",
    task: str | None = None,
    modalities=None,
    max_samples: int | None = None,
    max_time_steps: int = 16,
    ignore_label: int = -1,
    seed: int = 0,
    cache_dir: str | None = None,
    **_,
) -> EvalData:
    if not data_dir or not label_key:
        raise EncodeError("records datasets need --data-dir and --label-key (the label field)")
    if modalities:
        described = json.loads(storage.read_text(modalities))
        specs = tuple(
            sensors.modality_from_dict(k, {"max_time_steps": max_time_steps, **v})
            for k, v in described.items()
        )
    else:
        specs = catalog_specs(data_dir, max_time_steps)
    rng = np.random.default_rng([seed, 0x5EC0])
    # one source per split: a dataset at a URL is checked against its local copy once
    sources = {
        split: RecordSource(data_dir, split, cache_dir=cache_dir)
        for split in (train_split, test_split)
    }
    first = sources[train_split].load(0, rng)
    task = task or infer_task(_label_of(first, label_key, str(data_dir)))
    splits = {}
    for split in (train_split, test_split):
        splits[split] = load_split_samples(
            sources[split],
            specs,
            label_key,
            task,
            max_samples=max_samples,
            rng=rng,
            ignore_label=ignore_label,
            where=f"{data_dir}:{split}",
        )
    train, test = splits[train_split], splits[test_split]
    labels = np.concatenate(
        [train.labels.reshape(len(train), -1), test.labels.reshape(len(test), -1)]
    )
    num_classes = labels.shape[1] if task == MULTILABEL else int(labels.max()) + 1
    return EvalData(storage.as_path(data_dir).name, specs, task, num_classes, train, test)


DATASETS = {"demo": load_demo, "records": load_records}
