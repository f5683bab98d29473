"""What every training step draws: dataset, effective GSD, kept modalities, and which samples.

As in the original, one dataset, one effective GSD (uniform over the dataset's list) and one
random non-empty ordered subset of its modalities (size uniform in ``1..n``, then a uniform
sample) are drawn per step and shared by the whole batch; the dataset is drawn with the
configured weights. Draws are a pure function of ``(seed, step)`` so every host of a multi-host
job plans the same step without communicating, and a resumed run plans exactly what an
uninterrupted one would.

Samples: each dataset is read as an endless stream, reshuffled every epoch
(``permutation(seed, dataset, epoch)``). The ``k``-th step that draws dataset ``d`` takes stream
positions ``[k * B, (k + 1) * B)`` of the global batch ``B``, where ``k`` is the number of
earlier steps that drew ``d`` (computed in blocks and cached, so random access to any step is
cheap). A process reads the rows its devices hold (``BatchShards``).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Sequence

import numpy as np

BLOCK = 4096  # steps per block of cached draw counts


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


class StepPlan:
    def __init__(self, datasets: Sequence[DatasetDraws], seed: int):
        if not datasets:
            raise ValueError("no dataset configured")
        weights = np.array([d.weight for d in datasets], np.float64)
        if np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"dataset weights must be >= 0 with a positive sum, got {weights}")
        self.datasets = tuple(datasets)
        self.probabilities = weights / weights.sum()
        self.seed = int(seed)
        self._blocks: list = []
        self._lock = threading.Lock()  # Grain prepares several steps in threads

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0x5EED, step])

    def _dataset_of(self, step: int) -> int:
        return int(self._rng(step).choice(len(self.datasets), p=self.probabilities))

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(draw counts before ``block``, dataset of each step of ``block``), cached."""
        with self._lock:
            while len(self._blocks) <= block:
                start = len(self._blocks) * BLOCK
                choices = np.array([self._dataset_of(s) for s in range(start, start + BLOCK)])
                counts = np.zeros(len(self.datasets), np.int64)
                if self._blocks:
                    previous_counts, previous_choices = self._blocks[-1]
                    counts = previous_counts + np.bincount(
                        previous_choices, minlength=len(self.datasets)
                    )
                self._blocks.append((counts, choices))
            return self._blocks[block]

    def __call__(self, step: int) -> StepDraw:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        block, offset = divmod(step, BLOCK)
        counts, choices = self._block(block)
        counts = counts + np.bincount(choices[:offset], minlength=len(self.datasets))
        rng = self._rng(step)
        index = int(rng.choice(len(self.datasets), p=self.probabilities))
        spec = self.datasets[index]
        gsd = float(spec.gsds[int(rng.integers(len(spec.gsds)))])
        size = int(rng.integers(1, spec.num_modalities + 1))
        kept = tuple(int(i) for i in rng.choice(spec.num_modalities, size, replace=False))
        return StepDraw(step, index, gsd, kept, int(counts[index]))


class SampleStream:
    """Endless, epoch-reshuffled order over ``num_samples`` items of one dataset."""

    def __init__(self, num_samples: int, seed: int, dataset_index: int):
        if num_samples < 1:
            raise ValueError("a dataset needs at least one sample")
        self.num_samples = num_samples
        self.seed = seed
        self.dataset_index = dataset_index

    @functools.lru_cache(maxsize=4)  # noqa: B019
    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0x57E4, self.dataset_index, epoch])
        return rng.permutation(self.num_samples)

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
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
