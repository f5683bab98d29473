"""Command line of ``ramen_jax.evaluate``: frozen-encoder probes and reports.

::

    python -m ramen_jax.evaluate --checkpoint CKPT --out DIR                 # bundled demo data
    python -m ramen_jax.evaluate --checkpoint CKPT --out DIR --data records \\
        --data-dir data/mmearth --label-key biome --test-split val

Writes (``--reports``, default all): ``DIR/curve.csv`` + ``DIR/curve.png`` (label-efficiency
curve), ``DIR/robustness.csv`` (missing modalities / bands), ``DIR/cost.csv`` (tokens, time
and metric per output GSD), and ``DIR/run.json`` (settings, data sizes, device, compilations);
prints each table. ``CKPT``, ``DIR``, ``--data-dir`` and ``--modalities`` may be URLs
(``gs://...``); a records dataset at a URL is copied to a local cache first
(``ramen_jax.data.staging``). Bad input ends with exit status 1 and one ``error: ...`` line.
See docs/evaluate.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax

from ramen_jax import cli, logs, sensors, storage
from ramen_jax.batch import LayoutError
from ramen_jax.data import staging
from ramen_jax.data.pipeline import BatchError
from ramen_jax.data.sources import SourceConfigError
from ramen_jax.encode import inputs
from ramen_jax.encode.runner import FrozenEncoder
from ramen_jax.evaluate import datasets, outputs, probes, reports
from ramen_jax.model.weights import ModelCheckpointError, load_encoder_weights

_USER_ERRORS = (
    inputs.EncodeError,
    sensors.ModalityError,
    ModelCheckpointError,
    LayoutError,
    BatchError,
    SourceConfigError,
    OSError,
)
REPORTS = ("curve", "robustness", "cost")


def _ints(text: str) -> list:
    return [reports.ALL_LABELS if v == "all" else int(v) for v in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _gsd(text: str) -> float:
    try:
        return sensors.check_gsd(text, "output")
    except sensors.ModalityError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _gsds(text: str) -> list[float]:
    return [_gsd(v) for v in text.split(",")]


def _fractions(text: str) -> list[float]:
    values = _floats(text)
    bad = [v for v in values if not 0 <= v < 1]
    if bad:
        raise argparse.ArgumentTypeError(
            f"band fractions {bad} outside [0, 1): a fraction of the bands to remove, e.g. 0.25"
        )
    return values


def _parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(
        prog="python -m ramen_jax.evaluate",
        description="k-NN / linear probes on frozen RAMEN features: label-efficiency curve, "
        "missing-modality report, cost per output GSD.",
    )
    p.add_argument("--checkpoint", required=True, help="model directory or training workdir")
    p.add_argument("--step", type=int, help="training workdir step (default: latest)")
    p.add_argument("--out", required=True, help="output directory (or gs://... URL)")
    p.add_argument("--reports", default=",".join(REPORTS), help="any of curve,robustness,cost")
    data = p.add_argument_group("data")
    data.add_argument("--data", choices=sorted(datasets.DATASETS), default="demo")
    data.add_argument(
        "--crops-per-patch", type=cli.positive_int, default=32, help="demo: crops per patch"
    )
    data.add_argument("--crop-fraction", type=float, default=0.5, help="demo: crop side / patch")
    data.add_argument(
        "--test-patches", type=cli.positive_int, default=2, help="demo: held-out patches"
    )
    data.add_argument("--data-dir", help="records: a data_prep output directory (or URL)")
    data.add_argument(
        "--cache-dir",
        default=staging.DEFAULT_CACHE_DIR,
        help="records: where a --data-dir URL is copied (ArrayRecord reads local files only)",
    )
    data.add_argument("--label-key", help="records: the label field")
    data.add_argument("--task", choices=sorted(probes.TASKS), help="default: from the labels")
    data.add_argument("--train-split", default="train")
    data.add_argument("--test-split", default="val")
    data.add_argument("--modalities", help="records: JSON file describing the modalities")
    data.add_argument(
        "--max-samples", type=cli.positive_int, default=2000, help="records: per split"
    )
    data.add_argument(
        "--max-time-steps", type=cli.positive_int, default=16, help="time series slots"
    )
    data.add_argument("--ignore-label", type=int, default=-1, help="segmentation: ignored value")
    model = p.add_argument_group("features and probes")
    model.add_argument("--gsd", type=_gsd, default=60.0, help="output GSD of the features, m")
    model.add_argument(
        "--cost-gsds", type=_gsds, default=[30.0, 60.0, 120.0], help="GSDs of the cost table"
    )
    model.add_argument("--blocks", help="0-based blocks, e.g. 3,5,7,11 (default: last)")
    model.add_argument("--use", help="modalities to encode, e.g. s2_10m,s2_20m (default: all)")
    model.add_argument(
        "--pool", choices=("mean", "cls"), default="mean", help="classification features"
    )
    model.add_argument("--probes", default="knn,linear", help="any of knn,linear")
    model.add_argument("--k", type=cli.positive_int, default=20, help="k-NN neighbours")
    model.add_argument("--weight-decay", type=float, default=1e-3, help="linear probe L2")
    model.add_argument("--linear-steps", type=cli.positive_int, default=500, help="gradient steps")
    model.add_argument(
        "--label-counts",
        type=_ints,
        default=_ints("10,50,200,500,all"),
        help="training labels per curve point (default 10,50,200,500,all)",
    )
    model.add_argument("--draws", type=cli.positive_int, default=5, help="draws per label count")
    model.add_argument(
        "--drop-fractions", type=_fractions, default=[0.25, 0.5], help="band fractions removed"
    )
    model.add_argument(
        "--robustness-draws", type=cli.positive_int, default=3, help="draws per fraction"
    )
    model.add_argument(
        "--batch-size", type=cli.positive_int, default=32, help="samples per device batch"
    )
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--quiet", action="store_true", help="no progress lines")
    model.add_argument("--verbose", action="store_true", help="show the libraries' INFO logs")
    return p


def _load_data(args) -> datasets.EvalData:
    return datasets.DATASETS[args.data](
        crops_per_patch=args.crops_per_patch,
        crop_fraction=args.crop_fraction,
        test_patches=args.test_patches,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        label_key=args.label_key,
        task=args.task,
        train_split=args.train_split,
        test_split=args.test_split,
        modalities=args.modalities,
        max_samples=args.max_samples,
        max_time_steps=args.max_time_steps,
        ignore_label=args.ignore_label,
        seed=args.seed,
    )


def _selected(text: str | None, data: datasets.EvalData) -> tuple | None:
    if not text:
        return None
    names = tuple(n.strip() for n in text.split(","))
    known = [s.name for s in data.specs]
    if any(n not in known for n in names):
        raise inputs.EncodeError(f"--use {text}: the data's modalities are {known}")
    return names


def run(args) -> list[str]:
    chosen = [r.strip() for r in args.reports.split(",")]
    unknown = [r for r in chosen if r not in REPORTS] + [
        p for p in args.probes.split(",") if p not in probes.PROBES
    ]
    if unknown:
        raise inputs.EncodeError(f"unknown report(s) or probe(s) {unknown}")
    start = time.perf_counter()
    data = _load_data(args)
    encoder = FrozenEncoder(load_encoder_weights(args.checkpoint, args.step))
    ev = reports.Evaluation(
        encoder,
        data,
        args.gsd,
        pool=args.pool,
        blocks=tuple(int(b) for b in args.blocks.split(",")) if args.blocks else None,
        batch_size=args.batch_size,
        probe_names=tuple(args.probes.split(",")),
        options=probes.ProbeOptions(
            k=args.k, weight_decay=args.weight_decay, steps=args.linear_steps
        ),
        progress=not args.quiet,
        seed=args.seed,
        modalities=_selected(args.use, data),
    )
    storage.makedirs(args.out)
    title = f"{data.name}, {data.task}, g={args.gsd:g} m. {data.note}".strip()
    lines = [f"{title} | train {len(data.train)}, test {len(data.test)} | {encoder.source}"]
    metric = probes.TASKS[data.task].primary
    made = {
        "curve": lambda: reports.label_efficiency(ev, args.label_counts, args.draws),
        "robustness": lambda: reports.robustness(ev, args.drop_fractions, args.robustness_draws),
        "cost": lambda: reports.cost_table(ev, args.cost_gsds),
    }
    columns = {
        "curve": reports.CURVE_COLUMNS,
        "robustness": reports.ROBUSTNESS_COLUMNS,
        "cost": reports.COST_COLUMNS,
    }
    for name in chosen:
        rows = made[name]()
        csv_path = outputs.write_csv(storage.join(args.out, f"{name}.csv"), rows, columns[name])
        if name == "curve":
            outputs.plot_curve(storage.join(args.out, "curve.png"), rows, metric, title)
        lines += [f"\n{name} ({csv_path})", outputs.text_table(rows, columns[name])]
    summary = {
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "data": {
            "name": data.name,
            "task": data.task,
            "classes": data.num_classes,
            "train": len(data.train),
            "test": len(data.test),
            "note": data.note,
        },
        "encoder": encoder.source,
        "device": str(jax.devices()[0].device_kind),
        "devices": jax.device_count(),
        "compilations": encoder.compiles,
        "seconds": round(time.perf_counter() - start, 1),
    }
    storage.write_text(storage.join(args.out, "run.json"), json.dumps(summary, indent=1) + "\n")
    return lines


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(verbose=args.verbose)
    try:
        for line in run(args):
            print(line)
    except _USER_ERRORS as e:
        return cli.report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
