"""Closed sets of batch shapes: token buckets chosen per dataset from the step distribution.

Every step of a dataset has a token count ``L = k * s^2`` (k kept modalities, s the grid side of
the drawn GSD) and a time-series token count ``N``. XLA compiles the step once per distinct
shape, so both are padded up to a bucket ``(L_b, N_b)`` from a small per-dataset set.

``choose_buckets`` starts from one bucket per distinct ``(L, N)`` and greedily merges the pair
whose merge (component-wise max) adds the least expected padded work, until at most
``max_buckets`` remain. The expected work is weighted by the exact probability of each step
signature under the original's sampling: GSD uniform over the dataset's list, subset size ``k``
uniform in ``1..n``, then a uniform subset of that size.

Time buckets: the original pads a batch's series to the batch's longest (no cap). Here every
series of a step is padded to the smallest of the dataset's time buckets that holds the longest
series of the step's *global* batch (``choose_time_buckets``: at most ``max_buckets`` sizes, the
largest the dataset's longest series, chosen by dynamic programming to minimise the expected
slots of a batch maximum). A dataset's step shapes are token buckets x time buckets:
``split_shape_budget`` splits its shape budget between the two where the sum of the expected
token padding and the expected time padding (past each batch's longest) is lowest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from ramen_jax import geometry
from ramen_jax.sensors import ModalitySpec


@dataclasses.dataclass(frozen=True)
class Bucket:
    tokens: int
    series: int

    def fits(self, tokens: int, series: int) -> bool:
        return tokens <= self.tokens and series <= self.series


def step_distribution(
    modalities: Sequence[ModalitySpec], gsds: Sequence[float], reference: ModalitySpec | None = None
) -> dict[tuple[int, int], float]:
    """Probability of each ``(L, N)`` under the original's per-step draw."""
    reference = reference or modalities[0]
    n = len(modalities)
    probs: dict[tuple[int, int], float] = {}
    for gsd in gsds:
        side = geometry.grid_side(reference.side, reference.gsd, gsd)
        for k in range(1, n + 1):
            subsets = list(combinations(modalities, k))
            for subset in subsets:
                key = (k * side * side, sum(side * side for m in subset if m.time_series))
                p = 1.0 / len(gsds) / n / len(subsets)
                probs[key] = probs.get(key, 0.0) + p
    return probs


def _cost(bucket: Bucket, series_weight: float) -> float:
    return bucket.tokens + series_weight * bucket.series


def choose_buckets(
    distribution: dict[tuple[int, int], float], max_buckets: int, series_weight: float = 1.0
) -> list[Bucket]:
    """Greedy merge of exact signatures into at most ``max_buckets`` buckets."""
    groups = [(Bucket(*key), [key]) for key in sorted(distribution)]

    def expected(bucket, members):
        return sum(distribution[m] for m in members) * _cost(bucket, series_weight)

    while len(groups) > max_buckets:
        best = None
        for i, j in combinations(range(len(groups)), 2):
            (a, ma), (b, mb) = groups[i], groups[j]
            merged = Bucket(max(a.tokens, b.tokens), max(a.series, b.series))
            extra = expected(merged, ma + mb) - expected(a, ma) - expected(b, mb)
            if best is None or extra < best[0]:
                best = (extra, i, j, merged)
        _, i, j, merged = best
        members = groups[i][1] + groups[j][1]
        groups = [g for k, g in enumerate(groups) if k not in (i, j)] + [(merged, members)]
    return sorted((b for b, _ in groups), key=lambda b: (b.tokens, b.series))


def batch_max_distribution(steps, batch: int) -> dict[int, float]:
    """Probability of each value of the largest of ``batch`` samples drawn from ``steps`` (with
    replacement: the epoch permutations are close to it for batches much smaller than a split)."""
    values, counts = np.unique(np.asarray(steps, np.int64), return_counts=True)
    below = np.cumsum(counts) / counts.sum()
    at_most = below ** int(batch)
    probs = np.diff(np.concatenate([[0.0], at_most]))
    return {int(v): float(p) for v, p in zip(values, probs, strict=True) if p > 0}


def choose_time_buckets(steps, batch: int, max_buckets: int) -> tuple[int, ...]:
    """At most ``max_buckets`` slot counts minimising the expected slots per batch (exact DP)."""
    distribution = batch_max_distribution(steps, batch)
    values = sorted(distribution)
    top = int(np.max(steps))
    values = [v for v in values if v < top] + [top]  # the largest always exists
    probs = [distribution.get(v, 0.0) for v in values]
    n, k = len(values), max(1, min(max_buckets, len(values)))
    prefix = np.concatenate([[0.0], np.cumsum(probs)])

    def cost(i, j):  # values[i..j] padded to values[j]
        return (prefix[j + 1] - prefix[i]) * values[j]

    best = {(0, j): (cost(0, j), (j,)) for j in range(n)}
    for used in range(1, k):
        for j in range(n):
            options = [
                (best[(used - 1, i)][0] + cost(i + 1, j), best[(used - 1, i)][1] + (j,))
                for i in range(j)
                if (used - 1, i) in best
            ]
            if options:
                best[(used, j)] = min(options)
    _, chosen = min(best[(used, n - 1)] for used in range(k) if (used, n - 1) in best)
    return tuple(values[j] for j in chosen)


def time_padding_fraction(steps, batch: int, time_buckets: Sequence[int]) -> float:
    """Expected share of a batch's date slots past its longest series (the original pads to
    the longest; the buckets add this)."""
    distribution = batch_max_distribution(steps, batch)
    padded = sum(p * pick_time_bucket(time_buckets, v) for v, p in distribution.items())
    real = sum(p * v for v, p in distribution.items())
    return 1.0 - real / padded if padded else 0.0


def split_shape_budget(
    distribution: dict, steps, batch: int, max_shapes: int, max_time_buckets: int
) -> tuple[list[Bucket], tuple[int, ...]]:
    """Token buckets and time buckets of a dataset whose step shapes are their product: the
    split of ``max_shapes`` that minimises the expected token padding fraction plus the
    expected time padding fraction past each batch's longest series."""
    best = None
    for count in range(1, max(1, min(max_time_buckets, max_shapes)) + 1):
        time_buckets = choose_time_buckets(steps, batch, count)
        tokens = choose_buckets(distribution, max(1, max_shapes // len(time_buckets)))
        cost = padding_fraction(distribution, tokens)
        cost += time_padding_fraction(steps, batch, time_buckets)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, tokens, time_buckets)
    return best[1], best[2]


def pick_time_bucket(time_buckets: Sequence[int], steps: int) -> int:
    fitting = [b for b in time_buckets if b >= steps]
    if not fitting:
        raise ValueError(f"no time bucket holds {steps} dates; time buckets: {list(time_buckets)}")
    return min(fitting)


def pick_bucket(buckets: Sequence[Bucket], tokens: int, series: int) -> Bucket:
    """Smallest bucket (by padded work) that holds the step."""
    fitting = [b for b in buckets if b.fits(tokens, series)]
    if not fitting:
        raise ValueError(
            f"no bucket holds {tokens} tokens / {series} series tokens; buckets: {list(buckets)}"
        )
    return min(fitting, key=lambda b: (_cost(b, 1.0), b.tokens))


def padding_fraction(
    distribution: dict[tuple[int, int], float], buckets: Sequence[Bucket]
) -> float:
    """Expected fraction of padded token slots in the main sequence."""
    padded = sum(p * pick_bucket(buckets, *key).tokens for key, p in distribution.items())
    real = sum(p * key[0] for key, p in distribution.items())
    return 1.0 - real / padded if padded else 0.0


def max_grid_side(reference: ModalitySpec, gsds: Sequence[float]) -> int:
    return max(geometry.grid_side(reference.side, reference.gsd, g) for g in gsds)
