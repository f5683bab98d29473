"""What every training step draws: dataset, effective GSD, kept modalities, and which samples.

As in the original, one dataset, one effective GSD (uniform over the dataset's list) and one
random non-empty ordered subset of its modalities (size uniform in ``1..n``, then a uniform
sample) are drawn per step and shared by the whole batch; the dataset follows the configured
mixing rule (``ramen_jax.data.mixing``: every batch once per epoch, or i.i.d. weights). Draws
are a pure function of ``(seed, step)`` (and the data sizes) so every host of a multi-host job
plans the same step without communicating, and a resumed run plans exactly what an
uninterrupted one would.

Samples: each dataset is read as a stream of epochs, reshuffled every epoch
(``permutation(seed, dataset, epoch)``). The ``k``-th step that draws dataset ``d`` takes stream
positions ``[k * B, (k + 1) * B)`` of the global batch ``B``, where ``k`` is the number of
earlier steps that drew ``d``. With ``"epoch"`` mixing a stream epoch is the dataset's full
batches of one mixing epoch (the rest of the permutation is dropped, as the original's
``drop_last``); with ``"weights"`` it is the whole split. A process reads the rows its devices
hold (``BatchShards``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from ramen_jax.data import mixing as mixing_lib


@dataclasses.dataclass(frozen=True)
class StepDraw:
    step: int
    dataset: int  # index into the dataset list
    effective_gsd: float
    kept: tuple  # modality indices, in token order
    draw: int  # how many earlier steps drew this dataset


@dataclasses.dataclass(frozen=True)
class DatasetDraws:
    """What the plan needs to know about one dataset."""

    gsds: tuple
    num_modalities: int
    weight: float
    batches_per_epoch: int = 1  # full global batches per epoch (``"epoch"`` mixing)


class StepPlan:
    def __init__(self, datasets: Sequence[DatasetDraws], seed: int, mixing: str = "weights"):
        if not datasets:
            raise ValueError("no dataset configured")
        self.datasets = tuple(datasets)
        self.seed = int(seed)
        self.mixing_name = mixing
        self.mixing = mixing_lib.make_mixing(
            mixing,
            [d.weight for d in datasets],
            self.seed,
            [d.batches_per_epoch for d in datasets],
        )

    def _rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0x5EED, step])

    def __call__(self, step: int) -> StepDraw:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        index, draw = self.mixing(step)
        rng = self._rng(step)
        if self.mixing_name == "weights":  # its dataset draw came first from this stream
            rng.choice(len(self.datasets), p=self.mixing.probabilities)
        spec = self.datasets[index]
        gsd = float(spec.gsds[int(rng.integers(len(spec.gsds)))])
        size = int(rng.integers(1, spec.num_modalities + 1))
        kept = tuple(int(i) for i in rng.choice(spec.num_modalities, size, replace=False))
        return StepDraw(step, index, gsd, kept, draw)


class SampleStream:
    """Endless, epoch-reshuffled order over ``num_samples`` items of one dataset; an epoch
    reads the first ``samples_per_epoch`` items of its permutation (default: all)."""

    def __init__(self, num_samples: int, seed: int, dataset_index: int, samples_per_epoch: int = 0):
        if num_samples < 1:
            raise ValueError("a dataset needs at least one sample")
        if not 0 <= samples_per_epoch <= num_samples:
            raise ValueError(f"samples_per_epoch {samples_per_epoch} outside 0..{num_samples}")
        self.num_samples = num_samples
        self.samples_per_epoch = samples_per_epoch or num_samples
        self.seed = seed
        self.dataset_index = dataset_index

    @functools.lru_cache(maxsize=4)  # noqa: B019
    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0x57E4, self.dataset_index, epoch])
        return rng.permutation(self.num_samples)

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.samples_per_epoch)
        return int(self._permutation(epoch)[offset])


@dataclasses.dataclass(frozen=True)
class BatchShards:
    """Which rows of every global batch this process loads: shards ``[first, stop)`` of the
    ``count`` equal shards the batch is split into over the mesh's batch axes.

    A process loads exactly the rows its devices hold: with the batch split over all devices
    that is its own slice; with a mesh axis across processes that does not split the batch
    (e.g. ``tensor`` spanning hosts) several processes load the same rows, as a replicated
    array requires.
    """

    first: int = 0
    stop: int = 1
    count: int = 1

    def __post_init__(self):
        if not 0 <= self.first < self.stop <= self.count:
            raise ValueError(f"batch shards [{self.first}, {self.stop}) of {self.count}")

    def positions(self, draw: int, global_batch: int) -> range:
        """Stream positions this process reads for the ``draw``-th batch of a dataset."""
        if global_batch % self.count:
            raise ValueError(
                f"global batch {global_batch} is not divisible by {self.count} batch shards"
            )
        per_shard = global_batch // self.count
        start = draw * global_batch + self.first * per_shard
        return range(start, start + (self.stop - self.first) * per_shard)
