"""Closed sets of batch shapes: token buckets chosen per dataset from the step distribution.

Every step of a dataset has a token count ``L = k * s^2`` (k kept modalities, s the grid side of
the drawn GSD) and a time-series token count ``N``. XLA compiles the step once per distinct
shape, so both are padded up to a bucket ``(L_b, N_b)`` from a small per-dataset set.

``choose_buckets`` starts from one bucket per distinct ``(L, N)`` and greedily merges the pair
whose merge (component-wise max) adds the least expected padded work, until at most
``max_buckets`` remain. The expected work is weighted by the exact probability of each step
signature under the original's sampling: GSD uniform over the dataset's list, subset size ``k``
uniform in ``1..n``, then a uniform subset of that size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from itertools import combinations

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
