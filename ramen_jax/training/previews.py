"""Reconstruction previews: input / masked input / reconstruction per modality, as PNG.

For the first sample of a batch and each kept modality, at its native GSD and first valid date:
the per-pixel-normalised target (what the loss compares against), the same with hidden tokens
greyed out, and the reconstruction. Optical modalities with a channel within ``RGB_TOLERANCE_NM``
of red, green and blue (665/560/490 nm) show those three as true colour; otherwise the first
channel in grey, as SAR/DEM. The model reconstructs the per-pixel standardised target (each
pixel's channels minus their mean, over their std): shown as such, a vegetated pixel's high
near infrared makes every visible channel negative and the picture magenta. So both panels are
mapped back with the input pixel's own channel mean and std (the reconstruction in input
units), and each display channel gets its own contrast stretch (2-98 % of the input), shared
by the three panels.
PNGs are encoded in memory and written whole (``storage.write_bytes``), in a local directory or
under a workdir URL alike.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ramen_jax import sensors, storage
from ramen_jax.batch import Batch
from ramen_jax.model.loss import TARGET_EPS

RGB_NM = (665.0, 560.0, 490.0)
RGB_TOLERANCE_NM = 60.0
MIN_PANEL = 128


def display_channels(spec: sensors.ModalitySpec) -> list[int]:
    if spec.kind == sensors.OPTICAL and spec.num_channels >= 3:
        channels = np.asarray(spec.channels)
        picks = [int(np.argmin(np.abs(channels - nm))) for nm in RGB_NM]
        close = all(
            abs(channels[i] - nm) <= RGB_TOLERANCE_NM for i, nm in zip(picks, RGB_NM, strict=True)
        )
        if len(set(picks)) == 3 and close:
            return picks
    return [0]


def _stretch(images: list[np.ndarray]) -> list[np.ndarray]:
    """Per display channel, the 2-98 % range of ``images[0]`` mapped to [0, 1] in every image.
    Batch pixels are standardised per channel with the dataset's statistics, so one stretch
    for all three would tint the picture by those statistics (purple on the demo data); a
    stretch per channel balances it, as an automatic true-colour rendering does."""
    ref = images[0].reshape(-1, images[0].shape[-1])
    lo, hi = np.percentile(ref, 2, axis=0), np.percentile(ref, 98, axis=0)
    scale = np.where(hi > lo, hi - lo, 1.0)
    return [np.clip((im - lo) / scale, 0, 1) for im in images]


def in_input_units(pixels: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """The reconstruction of the per-pixel standardised target, mapped back with each input
    pixel's channel mean and std (the inverse of ``normalised_target``)."""
    x = np.nan_to_num(np.asarray(pixels, np.float32))
    if x.shape[-1] == 1:
        return recon
    mean = x.mean(axis=-1, keepdims=True)
    std = np.sqrt(np.square(x - mean).sum(axis=-1, keepdims=True) / (x.shape[-1] - 1))
    return recon * np.sqrt(std**2 + TARGET_EPS) + mean


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return (image * 255).round().astype(np.uint8)


def modality_panels(spec, pixels, recon, hidden) -> np.ndarray:
    """pixels/recon ``[H, H, C]`` (one date), hidden ``[H, H]`` in {0, 1} -> RGB uint8 strip."""
    picks = display_channels(spec)
    target = np.nan_to_num(np.asarray(pixels, np.float32))[..., picks]
    recon = in_input_units(pixels, np.asarray(recon, np.float32))[..., picks]
    target, recon = _stretch([target, recon])
    masked = np.where(hidden[..., None] > 0, 0.5, target)
    panels = [_to_uint8(p) for p in (target, masked, recon)]
    gap = np.full((target.shape[0], max(2, target.shape[0] // 32), 3), 255, np.uint8)
    strip = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    zoom = max(1, int(np.ceil(MIN_PANEL / target.shape[0])))
    return strip.repeat(zoom, axis=0).repeat(zoom, axis=1)


def write_previews(
    directory: str, step: int, specs, batch: Batch, recon: dict, hidden: dict
) -> list[str]:
    """Writes ``<directory>/step_<step>_<modality>.png`` for kept modalities; returns paths.

    ``batch`` is the host batch; ``recon[m]`` ``[T, H, H, C]`` and ``hidden[m]`` ``[H, H]`` are
    the first sample's reconstruction and native hidden-pixel mask.
    """
    storage.makedirs(directory)
    paths = []
    kept = batch.layout.kept
    for m, spec in enumerate(specs):
        if not kept[m]:
            continue
        t = int(np.argmax(batch.time_valid[spec.name][0]))
        strip = modality_panels(
            spec, batch.pixels[spec.name][0, t], recon[spec.name][t], hidden[spec.name]
        )
        path = storage.join(directory, f"step_{step:07d}_{spec.name}.png")
        png = io.BytesIO()
        Image.fromarray(strip).save(png, format="PNG")
        storage.write_bytes(path, png.getvalue())
        paths.append(path)
    return paths
