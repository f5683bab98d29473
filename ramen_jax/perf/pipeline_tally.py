"""The measurements of ``python -m ramen_jax.perf.data_bench``: the real input pipeline drawn
batch by batch, tallied per dataset (speed, token / series / date padding, distinct batch
shapes, step shares), and the table and JSON line it prints.

Padding fraction: padded token slots / all token slots over the N batches. A batch of B samples
whose layout has L token slots, V of them valid (``layout.token_valid``), holds B * L slots
of which B * (L - V) are padding; samples are what the accelerator processes, so larger batches
weigh more. The same for the time-series sub-sequence (``ts_valid``).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time

import numpy as np

from ramen_jax.batch import HostBatch
from ramen_jax.data import pipeline
from ramen_jax.perf import data_location

BenchError = data_location.MissingDataError  # the bench cannot run on what the config names


@dataclasses.dataclass
class DatasetTally:
    """What the bench saw of one dataset."""

    data: str  # "real", "stand-in" or "configured" (a non-records source, as configured)
    where: str
    buckets: int = 0
    expected_step_share: float = 0.0  # what the mixing rule gives it in the long run
    steps: int = 0
    samples: int = 0
    token_slots: int = 0
    padded_token_slots: int = 0
    series_slots: int = 0
    padded_series_slots: int = 0
    signatures: set = dataclasses.field(default_factory=set)
    series: tuple = ()  # time-series modalities
    time_buckets: tuple = ()
    date_slots: int = 0
    padded_date_slots: int = 0
    beyond_longest_slots: int = 0  # padding past the batch's longest series
    dates: dict = dataclasses.field(default_factory=dict)  # modality -> valid dates per sample

    def add(self, host: HostBatch) -> None:
        batch = host.batch
        rows, layout = batch.batch_size, batch.layout
        self.steps += 1
        self.samples += rows
        self.token_slots += rows * layout.token_valid.size
        self.padded_token_slots += rows * int(np.count_nonzero(~layout.token_valid))
        self.series_slots += rows * layout.ts_valid.size
        self.padded_series_slots += rows * int(np.count_nonzero(~layout.ts_valid))
        self.signatures.add(pipeline.signature(host))
        for name in self.series:
            valid = np.asarray(batch.time_valid[name])
            counts = valid.sum(axis=1)
            self.dates.setdefault(name, []).extend(int(c) for c in counts)
            self.date_slots += valid.size
            self.padded_date_slots += int(np.count_nonzero(~valid))
            self.beyond_longest_slots += valid.shape[0] * (valid.shape[1] - int(counts.max()))

    def time_steps(self) -> dict:
        return {
            name: {"min": min(c), "median": float(np.median(c)), "max": max(c)}
            for name, c in self.dates.items()
        }

    def summary(self) -> dict:
        return {
            "data": self.data,
            "path": self.where,
            "steps": self.steps,
            "samples": self.samples,
            "distinct_shapes": len(self.signatures),
            "buckets": self.buckets,
            "padding_fraction": fraction(self.padded_token_slots, self.token_slots),
            "series_padding_fraction": fraction(self.padded_series_slots, self.series_slots),
            "time_buckets": list(self.time_buckets),
            "time_padding_fraction": fraction(self.padded_date_slots, self.date_slots),
            "time_bucket_padding_fraction": fraction(self.beyond_longest_slots, self.date_slots),
        }


def fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def locate_data(config, say) -> dict[str, DatasetTally]:
    """What the bench reads of every dataset of ``config.data``, said out loud."""
    located = data_location.locate_data(config, say)
    return {name: DatasetTally(kind, where) for name, (kind, where) in located.items()}


def measure(config, tallies: dict, batches: int, num_workers: int, progress) -> float:
    """Draws ``batches`` batches through the real iterator; returns the seconds it took."""
    datasets = pipeline.build_datasets(config.data, batch_shards=1)
    for dataset in datasets:
        tally = tallies[dataset.name]
        tally.buckets = len(dataset.buckets)
        tally.series = tuple(s.name for s in dataset.specs if s.time_series)
        tally.time_buckets = dataset.time_buckets if tally.series else ()
    step_batches = pipeline.StepBatches(
        datasets,
        seed=config.seed,
        mask_ratio=config.model.get("mask_ratio", 0.75),
        mixing=config.data.get("mixing", "weights"),
    )
    for dataset, share in zip(datasets, step_batches.plan.mixing.step_shares(), strict=True):
        tallies[dataset.name].expected_step_share = float(share)
    iterator = pipeline.make_iterator(step_batches, batches, num_workers=num_workers)
    start = time.perf_counter()
    try:
        for index in range(batches):
            batch = next(iterator)
            tallies[batch.dataset].add(batch)
            progress(index + 1, time.perf_counter() - start)
        return time.perf_counter() - start
    finally:
        iterator.close()  # stops prefetch threads and worker processes now


def report(tallies: dict, batches: int, seconds: float, num_workers: int) -> dict:
    per_dataset = {name: tally.summary() for name, tally in tallies.items()}
    samples = sum(t.samples for t in tallies.values())
    return {
        "batches": batches,
        "seconds": round(seconds, 3),
        "batches_per_s": batches / seconds,
        "samples_per_s": samples / seconds,
        "padding_fraction": fraction(
            sum(t.padded_token_slots for t in tallies.values()),
            sum(t.token_slots for t in tallies.values()),
        ),
        "series_padding_fraction": fraction(
            sum(t.padded_series_slots for t in tallies.values()),
            sum(t.series_slots for t in tallies.values()),
        ),
        "distinct_shapes": len(set().union(*(t.signatures for t in tallies.values()))),
        "num_workers": num_workers,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "per_dataset": per_dataset,
        "dataset_step_share": {name: t.steps / batches for name, t in tallies.items()},
        "expected_step_share": {name: t.expected_step_share for name, t in tallies.items()},
        "time_padding_fraction": fraction(
            sum(t.padded_date_slots for t in tallies.values()),
            sum(t.date_slots for t in tallies.values()),
        ),
        "time_bucket_padding_fraction": fraction(
            sum(t.beyond_longest_slots for t in tallies.values()),
            sum(t.date_slots for t in tallies.values()),
        ),
        "time_steps": {
            f"{name}/{modality}": numbers
            for name, t in tallies.items()
            for modality, numbers in t.time_steps().items()
        },
    }


TABLE_HEADER = ("dataset", "data", "steps", "samples", "shapes", "buckets", "padding", "ts pad")


def table_row(name: str, data: str, numbers: dict) -> tuple:
    return (
        name,
        data,
        str(numbers["steps"]),
        str(numbers["samples"]),
        str(numbers["distinct_shapes"]),
        str(numbers["buckets"]),
        f"{numbers['padding_fraction']:.1%}",
        f"{numbers['series_padding_fraction']:.1%}",
    )


def aligned(rows: list[tuple]) -> list[str]:
    """Text columns: the first two left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def table(result: dict) -> str:
    per_dataset = result["per_dataset"]
    total = {
        **result,
        "steps": result["batches"],
        "samples": sum(d["samples"] for d in per_dataset.values()),
        "buckets": "",
    }
    rows = [TABLE_HEADER]
    rows += [table_row(name, d["data"], d) for name, d in per_dataset.items()]
    rows.append(table_row("all", "", total))
    lines = aligned(rows)
    lines.insert(1, "-" * len(lines[0]))
    lines.append(
        f"{result['batches']} batches in {result['seconds']:.1f} s: "
        f"{result['batches_per_s']:.2f} batches/s, {result['samples_per_s']:.1f} samples/s "
        f"(num_workers {result['num_workers']}, peak RSS {result['peak_rss_mb']:.0f} MB)"
    )
    return "\n".join(lines)


def progress_printer(batches: int, tallies: dict, stream=sys.stderr):
    every = max(1, batches // 20)

    def progress(done: int, elapsed: float) -> None:
        if done % every and done != batches:
            return
        shapes = len(set().union(*(t.signatures for t in tallies.values())))
        print(
            f"[bench] {done}/{batches} batches, {done / elapsed:.2f} batches/s, "
            f"{shapes} distinct shapes",
            file=stream,
            flush=True,
        )

    return progress


def run_bench(config, batches: int, num_workers: int = 0, out=sys.stdout) -> dict:
    """Runs the benchmark, prints its report to ``out`` (JSON last) and returns the result."""

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    tallies = locate_data(config, say)
    seconds = measure(config, tallies, batches, num_workers, progress_printer(batches, tallies))
    result = report(tallies, batches, seconds, num_workers)
    say(table(result))
    say(json.dumps(result))
    return result
