"""Reconstruction previews: input / masked input / reconstruction per modality, as PNG.

For the first sample of a batch and each kept modality, at its native GSD and first valid date:
the per-pixel-normalised target (what the loss compares against), the same with hidden tokens
greyed out, and the reconstruction. Optical modalities show the channels nearest to red, green
and blue (665/560/490 nm) when they have three or more, otherwise the first channel in grey;
SAR/DEM show their first channel. All three panels share one contrast stretch (2-98 %).
PNGs are encoded in memory and written whole (``storage.write_bytes``), in a local directory or
under a workdir URL alike.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ramen_jax import sensors, storage
from ramen_jax.model.loss import normalised_target

RGB_NM = (665.0, 560.0, 490.0)
MIN_PANEL = 128


def display_channels(spec: sensors.ModalitySpec) -> list[int]:
    if spec.kind == sensors.OPTICAL and spec.num_channels >= 3:
        channels = np.asarray(spec.channels)
        picks = [int(np.argmin(np.abs(channels - nm))) for nm in RGB_NM]
        if len(set(picks)) == 3:
            return picks
    return [0]


def _stretch(images: list[np.ndarray]) -> list[np.ndarray]:
    ref = images[0]
    lo, hi = np.percentile(ref, 2), np.percentile(ref, 98)
    scale = hi - lo if hi > lo else 1.0
    return [np.clip((im - lo) / scale, 0, 1) for im in images]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return (image * 255).round().astype(np.uint8)


def modality_panels(spec, pixels, recon, hidden) -> np.ndarray:
    """pixels/recon ``[H, H, C]`` (one date), hidden ``[H, H]`` in {0, 1} -> RGB uint8 strip."""
    picks = display_channels(spec)
    target = normalised_target(np.asarray(pixels, np.float32), xp=np)[..., picks]
    recon = np.asarray(recon, np.float32)[..., picks]
    target, recon = _stretch([target, recon])
    masked = np.where(hidden[..., None] > 0, 0.5, target)
    panels = [_to_uint8(p) for p in (target, masked, recon)]
    gap = np.full((target.shape[0], max(2, target.shape[0] // 32), 3), 255, np.uint8)
    strip = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    zoom = max(1, int(np.ceil(MIN_PANEL / target.shape[0])))
    return strip.repeat(zoom, axis=0).repeat(zoom, axis=1)


def write_previews(
    directory: str, step: int, specs, batch: dict, recon: dict, hidden: dict
) -> list[str]:
    """Writes ``<directory>/step_<step>_<modality>.png`` for kept modalities; returns paths.

    ``batch`` is the host batch; ``recon[m]`` ``[T, H, H, C]`` and ``hidden[m]`` ``[H, H]`` are
    the first sample's reconstruction and native hidden-pixel mask.
    """
    storage.makedirs(directory)
    paths = []
    kept = batch["layout"]["kept"]
    for m, spec in enumerate(specs):
        if not kept[m]:
            continue
        t = int(np.argmax(batch["time_valid"][spec.name][0]))
        strip = modality_panels(
            spec, batch["pixels"][spec.name][0, t], recon[spec.name][t], hidden[spec.name]
        )
        path = storage.join(directory, f"step_{step:07d}_{spec.name}.png")
        png = io.BytesIO()
        Image.fromarray(strip).save(png, format="PNG")
        storage.write_bytes(path, png.getvalue())
        paths.append(path)
    return paths
