"""The batch contract: what one training step reads, as typed pytrees.

A step's inputs are a ``Batch``: per modality name, the per-sample arrays (``pixels[m]``
float32 ``[B, T_m, H_m, H_m, C_m]``, ``dates[m]`` int32 ``[B, T_m]`` and ``time_valid[m]``
bool ``[B, T_m]``, ``T_m = 1`` without a time series) and the step's token ``Layout``, shared
by every sample. Both are frozen dataclasses registered as JAX pytrees whose fields are all
pytree data (arrays), so ``jax.jit`` traces one program per set of shapes and reuses it when
only the values change. Derived sizes are properties (``Layout.grid_pad``,
``Layout.length``, ``Layout.series_length``, ``Batch.batch_size``, ``Batch.time_slots``):
no reader re-derives them. The input pipeline yields a ``HostBatch``: the ``Batch`` of this
process plus the host-only facts (``dataset`` name, ``step`` index) that choose the compiled
program; it is not a pytree and never enters a jitted function (only ``.batch`` does).

The layout. For one step (one dataset, one effective GSD ``g``, one ordered subset of kept
modalities, shared by the whole batch as in the original) ``build_layout`` returns NumPy
arrays that tell the model, without any dataset-specific code:

- the flat token sequence: kept modalities in kept order, each ``s x s`` grid row-major
  (``token_modality``, ``token_cell``, ``token_row``, ``token_col``, ``token_valid``), padded to
  ``token_bucket`` slots (``Layout.length``);
- the time-series sub-sequence (``ts_*``), padded to ``series_bucket`` slots
  (``Layout.series_length``);
- per modality (inputs are square, so one matrix serves rows and columns): native <-> grid
  resampling matrices ``enc_resize [pad, H]`` / ``dec_resize [H, pad]`` (exact compositions of
  the original's ``F.interpolate`` calls), the nearest-neighbour mask upsampling index
  ``mask_index [H]``, and the grid -> token
  index (``grid_token`` / ``grid_series``; sentinel = sequence length);
- gate scales (``enc_scale = gsd / g``, ``dec_scale = g / gsd``), kept flags and kept rank,
  ``effective_gsd`` and ``num_keep = int(L * (1 - mask_ratio))``.

``s = int(side0 * gsd0 / g)`` comes from the dataset's *reference* (first) modality, as in the
original, whatever subset is kept. Grids are stored padded to ``grid_pad >= s`` so that every
GSD of a dataset shares array shapes; padded rows/columns of the matrices are zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from ramen_jax import geometry
from ramen_jax.sensors import ModalitySpec


class LayoutError(ValueError):
    """Kept modalities or padded sizes that no layout can hold."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every token of a step comes from (module docstring); arrays only."""

    token_modality: np.ndarray  # [L] int32: modality index (batch order) of each slot
    token_cell: np.ndarray  # [L] int32: padded-grid cell ``row * grid_pad + col``
    token_row: np.ndarray  # [L] int32
    token_col: np.ndarray  # [L] int32
    token_valid: np.ndarray  # [L] bool: False on padding slots
    ts_token: np.ndarray  # [S] int32: token slot of each series slot (L on padding)
    ts_modality: np.ndarray  # [S] int32
    ts_cell: np.ndarray  # [S] int32
    ts_valid: np.ndarray  # [S] bool
    kept: np.ndarray  # [M] bool, per modality of the batch
    kept_rank: np.ndarray  # [M] int32: position in the kept order (M if not kept)
    enc_scale: np.ndarray  # [M] float: gsd / effective_gsd
    dec_scale: np.ndarray  # [M] float: effective_gsd / gsd
    effective_gsd: np.ndarray  # [] float32, metres per token
    num_keep: np.ndarray  # [] int32: visible tokens per sample
    enc_resize: dict  # name -> [grid_pad, H] native -> grid
    dec_resize: dict  # name -> [H, grid_pad] grid -> native
    mask_index: dict  # name -> [H] int32: grid row/column of each native row/column
    grid_token: dict  # name -> [grid_pad**2] int32: token slot of each cell (L: none)
    grid_series: dict  # name -> [grid_pad**2] int32, time-series modalities only (S: none)

    @property
    def grid_pad(self) -> int:
        """Side of the padded token grid (every GSD of the dataset shares it)."""
        return next(iter(self.enc_resize.values())).shape[0]

    @property
    def length(self) -> int:
        """Token slots ``L`` (the token bucket), padding included."""
        return self.token_valid.shape[0]

    @property
    def series_length(self) -> int:
        """Time-series token slots ``S`` (the series bucket), padding included."""
        return self.ts_valid.shape[0]

    def replace(self, **changes) -> Layout:
        return dataclasses.replace(self, **changes)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """The inputs of one step: per-sample arrays by modality name, and the step's layout.

    ``layout`` is None only in the micro-batches that gradient accumulation scans over
    (``ramen_jax.training.step``), which put the shared layout back before the forward."""

    pixels: dict  # name -> float32 [B, T_m, H_m, H_m, C_m]
    dates: dict  # name -> int32 [B, T_m]
    time_valid: dict  # name -> bool [B, T_m]: False on time padding
    layout: Layout | None

    @property
    def batch_size(self) -> int:
        return next(iter(self.pixels.values())).shape[0]

    @property
    def time_slots(self) -> int:
        """Slots of the time axis of the batch's series (1 without a time series)."""
        return max(x.shape[1] for x in self.pixels.values())

    def map_samples(self, fn: Callable) -> Batch:
        """``fn`` applied to every per-sample (batch-major) array; the layout unchanged."""
        return dataclasses.replace(
            self,
            pixels=jax.tree.map(fn, self.pixels),
            dates=jax.tree.map(fn, self.dates),
            time_valid=jax.tree.map(fn, self.time_valid),
        )

    def replace(self, **changes) -> Batch:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class HostBatch:
    """One step's batch of this process as the pipeline yields it (not a pytree).

    ``dataset`` names the dataset the step draws from (it picks the compiled program) and
    ``step`` is the pipeline index (-1 for the abstract shapes compiled ahead of time); neither
    enters a jitted function, so a new step index never retraces."""

    dataset: str
    batch: Batch
    step: int = -1


def _pad_to(matrix: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), matrix.dtype)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def sequence_lengths(specs: Sequence[ModalitySpec], kept: Sequence[str], side: int):
    """(tokens, time-series tokens) of a step before padding."""
    by_name = {s.name: s for s in specs}
    tokens = len(kept) * side * side
    series = sum(side * side for name in kept if by_name[name].time_series)
    return tokens, series


def build_layout(
    specs: Sequence[ModalitySpec],
    kept: Sequence[str],
    effective_gsd: float,
    *,
    reference: ModalitySpec | None = None,
    grid_pad: int | None = None,
    token_bucket: int | None = None,
    series_bucket: int | None = None,
    mask_ratio: float = 0.75,
    dtype=np.float32,
) -> Layout:
    """Builds the layout arrays of one step (see module docstring).

    Args:
      specs: the modalities present in the batch arrays, in batch order.
      kept: names of the kept modalities, in token order (a non-empty subset of ``specs``).
      effective_gsd: metres per token.
      reference: modality defining the grid side (default: ``specs[0]``).
      grid_pad, token_bucket, series_bucket: padded sizes (default: no padding).
      dtype: dtype of the float arrays; the matrices' weights are computed in this dtype's
        arithmetic, as PyTorch does for a model of that dtype.
    """
    names = [s.name for s in specs]
    unknown = [k for k in kept if k not in names]
    if not kept or unknown or len(set(kept)) != len(kept):
        raise LayoutError(
            f"kept modalities {list(kept)} must be a non-empty subset of {names} without repeats"
        )
    reference = reference or specs[0]
    side = geometry.grid_side(reference.side, reference.gsd, effective_gsd)
    if side < 1:
        raise LayoutError(
            f"effective GSD {effective_gsd} m is coarser than the whole {reference.name!r} "
            f"input ({reference.side} px at {reference.gsd} m): no token left"
        )
    pad = grid_pad or side
    tokens, series = sequence_lengths(specs, kept, side)
    token_bucket = token_bucket or tokens
    series_bucket = series if series_bucket is None else series_bucket
    if pad < side or token_bucket < tokens or series_bucket < series:
        raise LayoutError(
            f"padded sizes (grid {pad}, tokens {token_bucket}, series "
            f"{series_bucket}) smaller than the step's ({side}, {tokens}, {series})"
        )

    rows, cols = np.divmod(np.arange(side * side), side)
    layout = Layout(
        token_modality=np.zeros(token_bucket, np.int32),
        token_cell=np.zeros(token_bucket, np.int32),
        token_row=np.zeros(token_bucket, np.int32),
        token_col=np.zeros(token_bucket, np.int32),
        token_valid=np.zeros(token_bucket, bool),
        ts_token=np.full(series_bucket, token_bucket, np.int32),
        ts_modality=np.zeros(series_bucket, np.int32),
        ts_cell=np.zeros(series_bucket, np.int32),
        ts_valid=np.zeros(series_bucket, bool),
        kept=np.array([n in kept for n in names]),
        kept_rank=np.array([kept.index(n) if n in kept else len(names) for n in names], np.int32),
        enc_scale=np.array([s.gsd / effective_gsd for s in specs], dtype),
        dec_scale=np.array([effective_gsd / s.gsd for s in specs], dtype),
        effective_gsd=np.asarray(effective_gsd, np.float32),
        num_keep=np.asarray(int(tokens * (1 - mask_ratio)), np.int32),
        enc_resize={},
        dec_resize={},
        mask_index={},
        grid_token={},
        grid_series={},
    )
    cells = rows * pad + cols
    offset = series_offset = 0
    for spec in specs:
        m = names.index(spec.name)
        grid_token = np.full(pad * pad, token_bucket, np.int32)
        grid_series = np.full(pad * pad, series_bucket, np.int32)
        if spec.name in kept:
            start = kept.index(spec.name) * side * side
            span = slice(start, start + side * side)
            layout.token_modality[span] = m
            layout.token_cell[span] = cells
            layout.token_row[span] = rows
            layout.token_col[span] = cols
            layout.token_valid[span] = True
            grid_token[cells] = np.arange(start, start + side * side)
            offset += side * side
            if spec.time_series:
                ts = slice(series_offset, series_offset + side * side)
                layout.ts_token[ts] = np.arange(start, start + side * side)
                layout.ts_modality[ts] = m
                layout.ts_cell[ts] = cells
                layout.ts_valid[ts] = True
                grid_series[cells] = np.arange(ts.start, ts.stop)
                series_offset += side * side
        native = spec.side
        enc = geometry.encoder_resize(native, spec.gsd, effective_gsd, side, dtype)
        dec = geometry.decoder_resize(side, spec.gsd, effective_gsd, native, dtype)
        layout.enc_resize[spec.name] = _pad_to(enc, pad, native).astype(dtype)
        layout.dec_resize[spec.name] = _pad_to(dec, native, pad).astype(dtype)
        layout.mask_index[spec.name] = geometry.nearest_index(side, native).astype(np.int32)
        layout.grid_token[spec.name] = grid_token
        if spec.time_series:
            layout.grid_series[spec.name] = grid_series
    return layout
