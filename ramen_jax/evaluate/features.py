"""Frozen-encoder features of an evaluation split, and the missing-modality / band variants.

``split_features`` encodes a ``Split`` in device batches with ``FrozenEncoder`` and reduces
each requested block's per-pixel maps (PANGAEA layout ``[B, k * D, s, s]``) to

- ``pool="mean"``: the mean over all tokens of all modalities, ``[N, D]`` per block;
- ``pool="cls"``: the class embedding ``[N, D]`` per block;
- ``pool="pixels"``: per-pixel features averaged over the modalities, ``[N, s, s, D]``
  (segmentation),

concatenated over blocks. Averaging over modalities (rather than concatenating them) keeps the
feature width independent of which modalities are present, so a probe trained with every
modality can be applied when one is missing (``robustness`` report).

``without_modality`` / ``with_channels`` build the reduced inputs: RAMEN describes channels
explicitly, so a missing band is *removed* from the modality's description (not zero-filled)
and a missing modality is simply not encoded; the token grid stays that of the full dataset's
reference modality.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from ramen_jax.encode.progress import Progress
from ramen_jax.encode.runner import FrozenEncoder
from ramen_jax.evaluate.datasets import Split

POOLS = ("mean", "cls", "pixels")


@dataclasses.dataclass(frozen=True)
class View:
    """Which modalities (and channels) of the data the encoder sees."""

    specs: tuple  # the ModalitySpecs encoded (subset / channel subsets of the data's)
    channels: dict  # name -> indices of the data's channels kept
    reference: object  # ModalitySpec fixing the token grid

    @classmethod
    def full(cls, specs: Sequence) -> View:
        return cls(tuple(specs), {s.name: np.arange(s.num_channels) for s in specs}, specs[0])


def without_modality(view: View, name: str) -> View:
    kept = tuple(s for s in view.specs if s.name != name)
    return View(kept, {s.name: view.channels[s.name] for s in kept}, view.reference)


def with_channels(view: View, name: str, keep: np.ndarray) -> View:
    """``view`` where modality ``name`` keeps only the channels at positions ``keep``."""
    keep = np.sort(np.asarray(keep))
    specs = tuple(
        dataclasses.replace(s, channels=tuple(s.channels[i] for i in keep)) if s.name == name else s
        for s in view.specs
    )
    channels = dict(view.channels)
    channels[name] = view.channels[name][keep]
    return View(specs, channels, view.reference)


def _pool(encoded, pool: str, num_modalities: int, embed_dim: int) -> np.ndarray:
    if pool == "cls":
        return encoded.cls.reshape(len(encoded.cls), -1)
    parts = []
    for maps in encoded.maps:
        batch, _, side, _ = maps.shape
        grids = maps.reshape(batch, num_modalities, embed_dim, side, side).mean(axis=1)
        if pool == "mean":
            parts.append(grids.mean(axis=(2, 3)))
        else:
            parts.append(grids.transpose(0, 2, 3, 1))
    return np.concatenate(parts, axis=-1)


def split_features(
    encoder: FrozenEncoder,
    split: Split,
    view: View,
    effective_gsd: float,
    *,
    pool: str = "mean",
    blocks: Sequence[int] | None = None,
    batch_size: int = 32,
    label: str = "features",
    progress: bool = True,
) -> tuple[np.ndarray, float]:
    """``(features, seconds)``: features of every sample (see module docstring) and the wall
    time of encoding them, measured after a first (compiling) batch that is not counted.

    Every batch is padded to ``batch_size`` samples, so all splits and the last partial batch
    share one compilation per view and GSD.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
    names = [s.name for s in view.specs]

    def encode(index):
        pixels = {n: split.pixels[n][index][..., view.channels[n]] for n in names}
        return encoder.encode(
            pixels,
            view.specs,
            effective_gsd,
            dates={n: split.dates[n][index] for n in names},
            time_valid={n: split.time_valid[n][index] for n in names},
            reference=view.reference,
            blocks=blocks,
            pad_to=batch_size,
        )

    starts = range(0, len(split), batch_size)
    encode(slice(0, batch_size))  # compile outside the timed loop
    bar = Progress(len(split), label, enabled=progress)
    outputs = []
    start_time = time.perf_counter()
    for start in starts:
        encoded = encode(slice(start, start + batch_size))
        outputs.append(_pool(encoded, pool, len(names), encoder.embed_dim))
        bar.update(len(encoded.cls))
    elapsed = time.perf_counter() - start_time
    bar.close()
    return np.concatenate(outputs), elapsed
