"""Cutting a scene into square tiles on the output grid, and blending the tiles' maps seamlessly.

The output grid covers the reference modality's footprint with pixels of the effective GSD
``g`` (its upper-left corner is the reference's). Tiles are squares of ``tile`` output pixels
that overlap by ``overlap`` pixels; the last tile of a row or column is moved back to end at
the grid's edge (so it may overlap more).

Exact tiles: a tile must start and end on a pixel boundary of *every* modality, so that each
modality's tile is an integer window of its native pixels (no resampling beyond the model's
own). Tile origins and sides are therefore multiples of the *lattice unit*, the smallest
``k`` for which ``k * g / gsd_m`` is an integer for every modality (1 when every GSD divides
``g``; 3 for 60 m bands at g = 40 m). The output grid is cut to whole units (at most ``unit - 1``
pixels lost at the bottom/right edges).

One pass: a square scene whose token grid ``s = int(side * gsd / g)`` (the model's rule) fits
in one tile is encoded whole, exactly as the model encodes a sample; its output pixel is then
``side * gsd / s`` metres (``g`` whenever ``g`` divides the footprint).

Blending: each tile's map is weighted by ``w(i) * w(j)`` where ``w`` rises linearly from
``0.5 / overlap`` at the tile's edge to 1 at ``overlap`` pixels inside (a taper), and the
weighted sum is divided by the summed weights. Weights never vanish, so a pixel covered by one
tile gets exactly that tile's value (tile interiors and scene borders); where tiles overlap
the result moves continuously from one tile to the next instead of jumping at a seam.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from ramen_jax import geometry
from ramen_jax.encode.inputs import EncodeError

MAX_LATTICE_UNIT = 1000
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class TilePlan:
    rows: int  # output grid, pixels
    cols: int
    tile: int  # tile side, output pixels
    overlap: int
    origins: tuple  # ((row, col), ...) of each tile, output pixels
    pixel_size: float  # metres per output pixel

    def window(self, origin: tuple[int, int], gsd: float) -> tuple[int, int, int]:
        """``(row, col, side)`` of a tile in the pixels of a modality of this GSD."""
        scale = self.pixel_size / gsd
        return round(origin[0] * scale), round(origin[1] * scale), round(self.tile * scale)


def lattice_unit(effective_gsd: float, gsds: Sequence[float]) -> int | None:
    """Smallest k >= 1 with ``k * g / gsd`` an integer for every gsd (None if > the limit)."""
    for k in range(1, MAX_LATTICE_UNIT + 1):
        ratios = [k * effective_gsd / gsd for gsd in gsds]
        if all(abs(r - round(r)) < _EPS * max(1.0, r) for r in ratios):
            return k
    return None


def _starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _exact_side(side: int, unit: int, reference_gsd: float, effective_gsd: float) -> int:
    """The largest multiple of ``unit`` up to ``side`` whose tile the model's grid rule maps to
    exactly ``side`` tokens (float truncation in ``int(side0 * gsd0 / g)`` can lose one)."""
    for candidate in range(side, 0, -unit):
        native = round(candidate * effective_gsd / reference_gsd)
        if geometry.grid_side(native, reference_gsd, effective_gsd) == candidate:
            return candidate
    raise EncodeError(f"no tile size fits output GSD {effective_gsd:g} m exactly")


def plan_tiles(
    reference_shape: tuple[int, int],
    reference_gsd: float,
    gsds: Sequence[float],
    effective_gsd: float,
    tile: int,
    overlap: int | None = None,
) -> TilePlan:
    """Tiles covering the reference footprint (see module docstring).

    ``gsds``: every modality's GSD (reference included); ``tile``/``overlap`` in output pixels
    (default overlap: a quarter of the tile).
    """
    if tile < 1 or (overlap is not None and overlap < 0):
        raise EncodeError(f"tile ({tile}) must be >= 1 and overlap ({overlap}) >= 0")
    height, width = reference_shape
    extent = (height * reference_gsd, width * reference_gsd)
    rows, cols = (int(math.floor(e / effective_gsd + _EPS)) for e in extent)
    if min(rows, cols) < 1:
        raise EncodeError(
            f"output GSD {effective_gsd:g} m is coarser than the scene ({extent[0]:g} m x "
            f"{extent[1]:g} m): not one output pixel fits; choose a GSD of at most "
            f"{min(extent):g} m"
        )
    side = geometry.grid_side(height, reference_gsd, effective_gsd)
    if height == width and 1 <= side <= tile:
        return TilePlan(side, side, side, 0, ((0, 0),), extent[0] / side)
    unit = lattice_unit(effective_gsd, gsds)
    if unit is None or unit > min(rows, cols):
        raise EncodeError(
            f"output GSD {effective_gsd:g} m does not line up with the input GSDs {list(gsds)} "
            f"within the scene: tiles could not start on every modality's pixel boundaries; "
            "choose a GSD that is a multiple of (or divides) the input GSDs"
        )
    rows, cols = rows // unit * unit, cols // unit * unit
    longest = max(unit, min(tile, rows, cols) // unit * unit)
    side = _exact_side(longest, unit, reference_gsd, effective_gsd)
    overlap = side // 4 if overlap is None else int(overlap)
    overlap = min(-(-overlap // unit) * unit, side - unit)
    stride = side - overlap
    origins = tuple(
        (r, c) for r in _starts(rows, side, stride) for c in _starts(cols, side, stride)
    )
    return TilePlan(rows, cols, side, overlap, origins, float(effective_gsd))


def taper(tile: int, overlap: int) -> np.ndarray:
    """``[tile, tile]`` blending weights: linear ramps over ``overlap`` pixels at every edge."""
    if overlap <= 0:
        return np.ones((tile, tile), np.float32)
    index = np.arange(tile) + 0.5
    ramp = np.minimum(1.0, np.minimum(index, tile - index) / overlap)
    return np.outer(ramp, ramp).astype(np.float32)


def in_memory(shape: tuple) -> np.ndarray:
    return np.zeros(shape, np.float32)


class Blender:
    """Accumulates weighted tile maps; ``finish`` divides by the summed weights in place.

    ``channels``: channels of each map (one per block). ``allocate(index, shape)`` returns a
    zeroed float32 array per block (e.g. a memory-mapped ``.npy`` for scenes larger than RAM).
    """

    def __init__(
        self,
        plan: TilePlan,
        channels: Sequence[int],
        allocate: Callable[[int, tuple], np.ndarray] | None = None,
    ):
        self.plan = plan
        allocate = allocate or (lambda index, shape: in_memory(shape))
        self.sums = [allocate(i, (c, plan.rows, plan.cols)) for i, c in enumerate(channels)]
        self.weight = np.zeros((plan.rows, plan.cols), np.float32)
        self.tile_weight = taper(plan.tile, plan.overlap)

    def add(self, origin: tuple[int, int], maps: Sequence[np.ndarray]) -> None:
        """``maps``: one ``[C, tile, tile]`` array per block."""
        rows = slice(origin[0], origin[0] + self.plan.tile)
        cols = slice(origin[1], origin[1] + self.plan.tile)
        for total, tile_map in zip(self.sums, maps, strict=True):
            total[:, rows, cols] += tile_map * self.tile_weight
        self.weight[rows, cols] += self.tile_weight

    def finish(self, rows_per_step: int = 256) -> list[np.ndarray]:
        if not np.all(self.weight > 0):
            raise AssertionError("tiles do not cover the output grid")  # a planning bug
        for total in self.sums:
            for start in range(0, self.plan.rows, rows_per_step):
                stop = start + rows_per_step
                total[:, start:stop] /= self.weight[start:stop]
        return self.sums
