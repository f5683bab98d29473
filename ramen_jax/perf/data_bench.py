r"""Input-pipeline benchmark: how fast, how padded, how many batch shapes.

  python -m data_prep.standins --config configs/base.py --workdir DIR  # where data is absent
  python -m ramen_jax.perf.data_bench --config configs/base.py --batches 2000 \
      [--flagfile=DIR/standins.flags] [--num_workers K]

Measures the real pipeline (``pipeline.build_datasets`` -> ``StepBatches`` -> ``make_iterator``,
tallied by ``ramen_jax.perf.pipeline_tally``) in one process, with the global batch = the
per-device batch (one batch shard): batches/s, samples/s, the token padding fraction, the number of
distinct batch shapes (``pipeline.signature``, what XLA compiles for) overall and per dataset,
and the steps each dataset drew. Progress goes to stderr; stdout gets one line per dataset
saying which data it reads, a table, and as its last line one JSON object (``batches``,
``seconds``, ``batches_per_s``, ``samples_per_s``, ``padding_fraction``,
``series_padding_fraction``, ``distinct_shapes``, ``num_workers``, ``peak_rss_mb``,
``per_dataset``, and per dataset ``dataset_step_share``, the share of the measured steps it
drew, beside ``expected_step_share``, the share the mixing rule gives it in the long run: its
full batches per epoch over the epoch's steps with ``data.mixing="epoch"``, its weight with
``"weights"``; ``time_steps``: ``dataset/modality`` -> min, median, max valid dates per sample
of every time series; ``time_padding_fraction``: padded date slots over all date slots of the
series, and ``time_bucket_padding_fraction`` the part of them past the batch's longest series,
the cost of time buckets over the original's padding to the batch's longest; per dataset the
same and its ``time_buckets``).

Data: every ``records`` dataset is read from its ``source.path``, and the bench says whether
that is real data or a synthetic stand-in (written in the dataset's published layout and
converted by ``python -m data_prep.standins``, whose overrides point the config at it). A
records dataset whose path is absent stops the run with one line naming that command
(``ramen_jax.perf.data_location``). Nothing is ever silently replaced by something else.
Padding fractions are defined in ``ramen_jax.perf.pipeline_tally``.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from ramen_jax import cli
from ramen_jax.perf import pipeline_tally

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/base.py.")
_BATCHES = flags.DEFINE_integer("batches", None, "Batches to draw.", lower_bound=1)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "Grain worker processes (0: prepare batches in this process).", lower_bound=0
)
flags.mark_flags_as_required(["config", "batches"])


def main(argv) -> None:
    if len(argv) > 1:
        sys.exit(cli.report(f"unexpected arguments: {argv[1:]}", cli.USAGE_EXIT_CODE))
    logging.getLogger("absl").setLevel(logging.WARNING)  # TFDS logs as it opens records
    try:
        pipeline_tally.run_bench(_CONFIG.value, _BATCHES.value, _NUM_WORKERS.value)
    except pipeline_tally.BenchError as error:
        sys.exit(cli.report(error))


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_absl_flags(argv, _CONFIG))
