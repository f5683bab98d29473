"""Which dataset each training step draws, and how many earlier steps drew it.

Two rules, chosen by ``config.data.mixing`` (``MIXINGS``); both are pure functions of
``(seed, step)`` plus the data sizes, with random access to any step:

- ``"epoch"`` (the paper config's default), as the original's ``MultiBatchDataLoader`` with
  ``cycle=False``: within an epoch every dataset's batches are used exactly once; each step
  draws among the datasets that still have batches in this epoch, with probability
  proportional to their weights (uniform for the paper's equal weights); the epoch ends when
  all are used. A dataset has ``len(split) // global_batch`` batches per epoch (the original's
  loaders drop the last partial batch). The original draws at random and retries when the
  drawn loader turns out to be empty; drawing directly among the non-exhausted ones has the
  same distribution. An epoch's whole order is generated at once from ``(seed, epoch)`` and
  cached, so any step is found with a divmod.
- ``"weights"``: every step draws a dataset i.i.d. with the configured weights; the draw count
  is computed in cached blocks of steps.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import numpy as np

BLOCK = 4096  # steps per block of cached draw counts ("weights")


def epoch_batches(num_samples: int, global_batch: int) -> int:
    """Batches of a dataset per epoch: full global batches only (``drop_last``). A split
    smaller than one global batch (a handful of stand-in samples) still gives one batch, read
    from its endless reshuffled stream, rather than never being drawn."""
    return max(1, num_samples // global_batch)


def _checked_weights(weights: Sequence[float], strictly_positive: bool) -> np.ndarray:
    weights = np.asarray(weights, np.float64)
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"dataset weights must be >= 0 with a positive sum, got {weights}")
    if strictly_positive and np.any(weights == 0):
        raise ValueError(
            f"data.mixing='epoch' uses every dataset's batches each epoch: weights must be > 0, "
            f"got {weights} (leave a dataset out of the config instead)"
        )
    return weights / weights.sum()


class WeightedMixing:
    """``"weights"``: i.i.d. draws with the configured weights."""

    def __init__(self, weights: Sequence[float], seed: int, batches_per_epoch=None):
        del batches_per_epoch  # an endless stream per dataset: no epoch structure
        self.probabilities = _checked_weights(weights, strictly_positive=False)
        self.seed = int(seed)
        self._blocks: list = []
        self._lock = threading.Lock()  # Grain prepares several steps in threads

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def step_shares(self) -> np.ndarray:
        """Expected share of steps per dataset: the weights."""
        return self.probabilities

    def _dataset_of(self, step: int) -> int:
        rng = np.random.default_rng([self.seed, 0x5EED, step])
        return int(rng.choice(len(self.probabilities), p=self.probabilities))

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(draw counts before ``block``, dataset of each step of ``block``), cached."""
        with self._lock:
            while len(self._blocks) <= block:
                start = len(self._blocks) * BLOCK
                choices = np.array([self._dataset_of(s) for s in range(start, start + BLOCK)])
                counts = np.zeros(len(self.probabilities), np.int64)
                if self._blocks:
                    previous_counts, previous_choices = self._blocks[-1]
                    counts = previous_counts + np.bincount(
                        previous_choices, minlength=len(self.probabilities)
                    )
                self._blocks.append((counts, choices))
            return self._blocks[block]

    def __call__(self, step: int) -> tuple[int, int]:
        block, offset = divmod(step, BLOCK)
        counts, choices = self._block(block)
        index = int(choices[offset])
        return index, int(counts[index] + np.count_nonzero(choices[:offset] == index))


class EpochMixing:
    """``"epoch"``: every batch once per epoch, drawn among the datasets not yet exhausted."""

    def __init__(self, weights: Sequence[float], seed: int, batches_per_epoch: Sequence[int]):
        self.probabilities = _checked_weights(weights, strictly_positive=True)
        self.batches_per_epoch = np.asarray(batches_per_epoch, np.int64)
        if self.batches_per_epoch.shape != self.probabilities.shape:
            raise ValueError("one batches-per-epoch count per dataset")
        if np.any(self.batches_per_epoch < 1):
            raise ValueError(f"every dataset needs >= 1 batch per epoch: {batches_per_epoch}")
        self.seed = int(seed)
        self.steps_per_epoch = int(self.batches_per_epoch.sum())

    def step_shares(self) -> np.ndarray:
        """Share of steps per dataset (exact over whole epochs): its batches per epoch."""
        return self.batches_per_epoch / self.steps_per_epoch

    @functools.lru_cache(maxsize=4)  # noqa: B019 (bounded; steps arrive in order, a few epochs)
    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset of each step of ``epoch``, its batch number within the epoch).

        Generated phase by phase: while ``k`` datasets remain, steps draw among those ``k``
        until one of them reaches its count; that one drops out and the next phase begins.
        A phase ends within the sum of the remaining counts, so one vector of draws that long
        always suffices."""
        rng = np.random.default_rng([self.seed, 0xE90C, epoch])
        remaining = self.batches_per_epoch.copy()
        alive = np.arange(len(remaining))
        pieces = []
        while len(alive):
            p = self.probabilities[alive] / self.probabilities[alive].sum()
            picks = rng.choice(len(alive), size=int(remaining[alive].sum()), p=p)
            taken = np.cumsum(picks[:, None] == np.arange(len(alive)), axis=0)
            end = int(np.argmax(np.any(taken >= remaining[alive], axis=1)))
            pieces.append(alive[picks[: end + 1]])
            remaining[alive] -= taken[end]
            alive = alive[remaining[alive] > 0]
        order = np.concatenate(pieces)
        within = np.empty_like(order)
        for dataset in range(len(remaining)):
            at = np.flatnonzero(order == dataset)
            within[at] = np.arange(len(at))
        return order, within

    def __call__(self, step: int) -> tuple[int, int]:
        epoch, offset = divmod(step, self.steps_per_epoch)
        order, within = self.epoch_order(epoch)
        index = int(order[offset])
        return index, int(epoch * self.batches_per_epoch[index] + within[offset])


MIXINGS = {"epoch": EpochMixing, "weights": WeightedMixing}


def make_mixing(name: str, weights, seed: int, batches_per_epoch):
    if name not in MIXINGS:
        raise ValueError(f"data.mixing={name!r}: use one of {sorted(MIXINGS)}")
    return MIXINGS[name](weights, seed, batches_per_epoch)
