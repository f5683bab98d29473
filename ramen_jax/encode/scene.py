"""Encoding a whole scene: align, normalise, tile, encode in device batches, blend, write.

``encode_scene(encoder, inputs, effective_gsd)`` returns ``SceneEmbeddings``: per requested
block a per-pixel map ``[k * D, rows, cols]`` at the output GSD (PANGAEA's channel layout:
modality i's features are channels ``i * D ... i * D + D - 1``, modalities in input order), the
class embedding of every tile, the tiles' origins, and the output geotransform (upper-left
corner of the reference modality, pixel size = output GSD) and CRS for georeferenced input.

``write_outputs(result, prefix)`` writes, next to the maps' ``PREFIX_block<b>.npy``:
``PREFIX_block<b>.tif`` (georeferenced input only), ``PREFIX_cls.npy`` ``[tiles, blocks, D]``
and ``PREFIX_meta.json`` (blocks, modalities, band layout, GSD, transform, CRS, tiles). With
``output=PREFIX`` the maps are accumulated directly in memory-mapped ``.npy`` files, so a scene
larger than RAM can be encoded.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from affine import Affine

from ramen_jax import sensors
from ramen_jax.encode import geotiff, tiling
from ramen_jax.encode.inputs import (
    SCENE_STATS,
    EncodeError,
    ModalityInput,
    check_has_valid_pixels,
    normalise_inputs,
    spec_for,
)
from ramen_jax.encode.progress import Progress
from ramen_jax.encode.runner import FrozenEncoder


@dataclasses.dataclass
class SceneEmbeddings:
    maps: list  # per block: float32 [k * D, rows, cols] (array or np.memmap)
    cls: np.ndarray  # [tiles, blocks, D]
    tile_origins: np.ndarray  # [tiles, 2] (row, col) in output pixels
    tile_size: int  # output pixels
    blocks: tuple
    modalities: tuple
    embed_dim: int
    effective_gsd: float  # requested
    pixel_size: float  # metres per output pixel (= effective_gsd unless one pass rounds)
    crs: object = None
    transform: Affine | None = None
    overlap: int = 0  # output pixels
    tiling: str = ""  # the effective tiling, in words
    nodata_pixels: int = 0  # output pixels with no valid input in their footprint (NaN)

    def band_descriptions(self) -> list[str]:
        return [f"{name}:{d}" for name in self.modalities for d in range(self.embed_dim)]


def _tile_batch(inputs, plan: tiling.TilePlan, origins) -> dict:
    """``{name: [B, T, side, side, C]}``: each modality's window of every tile in ``origins``."""
    out = {}
    for modality in inputs:
        windows = []
        for origin in origins:
            row, col, side = plan.window(origin, modality.gsd)
            window = np.zeros((modality.steps, side, side, modality.pixels.shape[-1]), np.float32)
            crop = modality.pixels[:, row : row + side, col : col + side]
            window[:, : crop.shape[1], : crop.shape[2]] = crop  # zero beyond a ragged edge
            windows.append(window)
        out[modality.name] = np.stack(windows)
    return out


def _memmap_allocator(prefix: pathlib.Path, blocks: Sequence[int]):
    def allocate(index: int, shape: tuple) -> np.ndarray:
        path = block_path(prefix, blocks[index], ".npy")
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)

    return allocate


def block_path(prefix, block: int, suffix: str) -> pathlib.Path:
    prefix = pathlib.Path(prefix)
    return prefix.with_name(f"{prefix.name}_block{block}{suffix}")


def encode_scene(
    encoder: FrozenEncoder,
    inputs: Sequence[ModalityInput],
    effective_gsd: float,
    *,
    blocks: Sequence[int] | None = None,
    tile: int = 32,
    overlap: int | None = None,
    stats: Mapping | str | None = SCENE_STATS,
    batch_size: int = 8,
    output=None,
    progress: bool = True,
) -> SceneEmbeddings:
    """Embeddings of a scene at ``effective_gsd`` metres per output pixel.

    Args:
      inputs: the modalities (``inputs.from_array`` / ``geotiff.read_modality``); the first is
        the reference whose footprint is the scene.
      blocks: 0-based block indices (default: the last block, with the final norm).
      tile, overlap: tile side and overlap in output pixels (``tiling``).
      stats: normalisation (``inputs.normalise_inputs``); default per-scene statistics.
      batch_size: tiles per device batch (rounded up to a multiple of the device count).
      output: path prefix; if given, maps are accumulated in ``PREFIX_block<b>.npy`` memmaps.
    """
    if not inputs:
        raise EncodeError("no modality to encode")
    names = [m.name for m in inputs]
    if len(set(names)) != len(names):
        raise EncodeError(f"modality names must be unique, got {names}")
    blocks = encoder.check_blocks(blocks)
    effective_gsd = sensors.check_gsd(effective_gsd, "output")
    aligned = geotiff.align_to_reference(inputs)
    for modality in aligned:
        check_has_valid_pixels(modality.name, modality.pixels)
    reference = aligned[0]
    plan = tiling.plan_tiles(
        reference.shape, reference.gsd, [m.gsd for m in aligned], effective_gsd, tile, overlap
    )
    valid = np.zeros((plan.rows, plan.cols), bool)
    for modality in aligned:
        finite = np.zeros(modality.shape, bool)
        for step in range(modality.steps):
            finite |= np.isfinite(modality.pixels[step]).any(axis=-1)
        valid |= tiling.valid_footprints(finite, modality.gsd, plan.pixel_size, valid.shape)
    inputs = normalise_inputs(aligned, stats)
    reference = inputs[0]
    specs = tuple(spec_for(m, plan.window((0, 0), m.gsd)[2]) for m in inputs)
    encoder.check_specs(specs)
    width = len(specs) * encoder.embed_dim
    allocate = _memmap_allocator(pathlib.Path(output), blocks) if output is not None else None
    blender = tiling.Blender(plan, [width] * len(blocks), allocate)
    dates = {m.name: m.dates for m in inputs}
    batch_size = max(1, min(batch_size, len(plan.origins)))
    cls = []
    bar = Progress(len(plan.origins), f"encode g={effective_gsd:g} m tiles", enabled=progress)
    for start in range(0, len(plan.origins), batch_size):
        origins = plan.origins[start : start + batch_size]
        pixels = _tile_batch(inputs, plan, origins)
        batch_dates = {k: np.broadcast_to(v, (len(origins), len(v))) for k, v in dates.items()}
        encoded = encoder.encode(
            pixels, specs, effective_gsd, dates=batch_dates, blocks=blocks, pad_to=batch_size
        )
        for i, origin in enumerate(origins):
            blender.add(origin, [m[i] for m in encoded.maps])
        cls.append(encoded.cls)
        bar.update(len(origins))
    bar.close()
    transform = None
    if reference.georeferenced:
        corner = reference.transform
        transform = Affine(plan.pixel_size, 0, corner.c, 0, -plan.pixel_size, corner.f)
    return SceneEmbeddings(
        maps=blender.finish(valid),
        cls=np.concatenate(cls),
        tile_origins=np.asarray(plan.origins, np.int64),
        tile_size=plan.tile,
        overlap=plan.overlap,
        tiling=plan.describe(),
        nodata_pixels=int(valid.size - valid.sum()),
        blocks=blocks,
        modalities=tuple(names),
        embed_dim=encoder.embed_dim,
        effective_gsd=float(effective_gsd),
        pixel_size=plan.pixel_size,
        crs=reference.crs,
        transform=transform,
    )


def write_outputs(result: SceneEmbeddings, prefix, formats=("tif", "npy")) -> list[pathlib.Path]:
    """Writes the scene's files (see module docstring); returns their paths."""
    prefix = pathlib.Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for block, maps in zip(result.blocks, result.maps, strict=True):
        npy = block_path(prefix, block, ".npy")
        accumulated_here = (
            isinstance(maps, np.memmap) and pathlib.Path(maps.filename) == npy.absolute()
        )
        if "tif" in formats and result.transform is not None:
            tif = block_path(prefix, block, ".tif")
            geotiff.write_maps(
                tif, maps, result.crs, result.transform, result.band_descriptions(), nodata=np.nan
            )
            written.append(tif)
        if "npy" in formats:
            if accumulated_here:
                maps.flush()  # encode_scene(output=prefix) accumulated the maps in this file
            else:
                np.save(npy, maps)
            written.append(npy)
        elif accumulated_here:
            npy.unlink()  # only the accumulator; the mapping stays valid until released
    cls_path = prefix.with_name(prefix.name + "_cls.npy")
    np.save(cls_path, result.cls)
    meta = {
        "blocks": list(result.blocks),
        "modalities": list(result.modalities),
        "embed_dim": result.embed_dim,
        "channels": "modality-major: channel i * embed_dim + d is feature d of modality i",
        "effective_gsd": result.effective_gsd,
        "pixel_size": result.pixel_size,
        "shape": list(result.maps[0].shape),
        "crs": result.crs.to_string() if result.crs is not None else None,
        "transform": list(result.transform)[:6] if result.transform is not None else None,
        "tile_size": result.tile_size,
        "overlap": result.overlap,
        "nodata": "NaN",
        "nodata_pixels": result.nodata_pixels,
        "tile_origins": result.tile_origins.tolist(),
    }
    meta_path = prefix.with_name(prefix.name + "_meta.json")
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return written + [cls_path, meta_path]


def summary_line(result: SceneEmbeddings, modalities: int, destination: str, seconds: float) -> str:
    """One line per output GSD: grid, channels, blocks, effective tiling, nodata, time, files."""
    channels, rows, cols = result.maps[0].shape
    note = "" if result.transform is not None else " (no GeoTIFF: input not georeferenced)"
    nodata = f", {result.nodata_pixels} nodata px" if result.nodata_pixels else ""
    return (
        f"g={result.effective_gsd:g} m: {rows} x {cols} px of {result.pixel_size:g} m{nodata}, "
        f"{channels} channels ({modalities} x {result.embed_dim}), blocks "
        f"{list(result.blocks)}, {result.tiling}, {seconds:.1f} s -> {destination}_*{note}"
    )
