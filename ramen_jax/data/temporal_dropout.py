"""Temporal dropout: a random subset of a time series' dates, drawn again at every load.

As the original's FLAIR-HUB loader (``temporal_dropout: 0.3`` for ``s2``, ``s1_asc`` and
``s1_des``, on every load of the train and validation splits; off for WorldStrat in its
pretraining config): a series of ``N > 1`` dates keeps ``max(1, int(N * (1 - fraction)))`` of
them, chosen uniformly without replacement. The kept dates stay in temporal order (the
original keeps them in the random order it drew them in; the L-TAE pools over dates with
attention and date encodings, which no order enters). Configured per modality
(``modalities.<m>.temporal_dropout``); the generator comes from ``(seed, step, sample)`` so a
resumed run drops the same dates.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def kept_count(num_dates: int, fraction: float) -> int:
    """Dates a series of ``num_dates`` keeps (the original's arithmetic, float rounding too)."""
    return max(1, int(num_dates * (1 - fraction)))


def fractions_of(modalities_config) -> dict[str, float]:
    """``{modality: fraction}`` of the modalities with a temporal dropout, checked."""
    out = {}
    for name, modality in modalities_config.items():
        fraction = float(modality.get("temporal_dropout", 0.0) or 0.0)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"modality {name!r}: temporal_dropout {fraction} is outside [0, 1)")
        if fraction > 0:
            out[name] = fraction
    return out


def drop_dates(sample: dict, fractions: Mapping[str, float], rng: np.random.Generator) -> dict:
    """``sample`` with each listed modality's series cut to its kept dates (a new dict)."""
    out = dict(sample)
    for name, fraction in fractions.items():
        if name not in sample or f"{name}_dates" not in sample:
            continue
        pixels, dates = np.asarray(sample[name]), np.asarray(sample[f"{name}_dates"])
        if len(dates) <= 1 or pixels.shape[0] != len(dates):  # as the original: left alone
            continue
        keep = np.sort(rng.choice(len(dates), kept_count(len(dates), fraction), replace=False))
        out[name], out[f"{name}_dates"] = pixels[keep], dates[keep]
    return out
