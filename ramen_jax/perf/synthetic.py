"""Synthetic batches for the benchmarks: a step's real shapes and layout, made-up values.

The batch's structure comes from ``ramen_jax.training.precompile.shape_batch`` (the arrays a
step of that shape receives, as ``ShapeDtypeStruct``s); this module only puts numbers in them,
chosen by dtype, so it never restates which arrays a batch holds.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ramen_jax.batch import HostBatch
from ramen_jax.training import precompile

DATE_SPACING_DAYS = 20  # dates 1 x 20, 2 x 20, ...: a valid, increasing series


def filled(host: HostBatch, rng: np.random.Generator) -> HostBatch:
    """``host`` with each abstract array of its batch replaced by values: normal pixels
    (float), dates ``DATE_SPACING_DAYS`` apart (int), every date valid (bool). Concrete leaves
    (the layout) are kept as they are."""

    def value(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        if np.issubdtype(leaf.dtype, np.floating):
            return rng.standard_normal(leaf.shape, np.float32).astype(leaf.dtype)
        if np.issubdtype(leaf.dtype, np.integer):
            rows, slots = leaf.shape
            dates = np.arange(1, slots + 1, dtype=leaf.dtype) * DATE_SPACING_DAYS
            return np.tile(dates, (rows, 1))
        return np.ones(leaf.shape, leaf.dtype)

    return dataclasses.replace(host, batch=jax.tree.map(value, host.batch))


def random_batch(batches, index: int, gsd: float, kept: tuple, rng) -> HostBatch:
    """This process's rows of a batch of dataset ``index`` drawn at ``gsd`` keeping modalities
    ``kept`` (its real layout, bucket padding included), series at the largest time bucket."""
    dataset = batches.datasets[index]
    rows = len(batches.shards.positions(0, dataset.global_batch))
    layout = batches.layout(index, gsd, kept)
    shapes = precompile.shape_batch(dataset, layout, rows, max(dataset.time_buckets))
    return filled(shapes, rng)
