"""Reconstruction previews show optical modalities in true colour.

A Sentinel-2-like patch (13 bands, vegetation and bare soil): the input panel must be the
modality's red/green/blue bands (665/560/490 nm) in the input's own units, each under its
2-98 % stretch (the previews used to show the per-pixel standardised target, whose colours
say nothing about the scene: the test's soil came out dark, vegetation bright), and a perfect
reconstruction of that target must render exactly as the input (within one grey level).
"""

import numpy as np

from ramen_jax import sensors
from ramen_jax.model.loss import normalised_target
from ramen_jax.training import previews

S2_13 = [443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1370, 1610, 2190]
VEGETATION = [0.04, 0.03, 0.08, 0.04, 0.12, 0.3, 0.38, 0.42, 0.43, 0.3, 0.01, 0.2, 0.1]
SOIL = [0.08, 0.1, 0.15, 0.2, 0.22, 0.24, 0.25, 0.26, 0.27, 0.25, 0.01, 0.33, 0.3]


def test_true_colour_panels():
    spec = sensors.modality("s2", "optical", S2_13, 10.0, 8)
    assert previews.display_channels(spec) == [3, 2, 1]  # 665, 560, 490 nm
    pixels = np.empty((8, 8, 13), np.float32)
    pixels[:, :4], pixels[:, 4:] = VEGETATION, SOIL
    pixels += np.random.default_rng(0).normal(0, 0.002, pixels.shape).astype(np.float32)
    recon = normalised_target(pixels, xp=np)  # what a perfect model outputs
    hidden = np.zeros((8, 8))
    strip = previews.modality_panels(spec, pixels, recon, hidden).astype(int)
    zoom = strip.shape[0] // 8
    width = 8 * zoom
    gap = (strip.shape[1] - 3 * width) // 2
    target = strip[:, :width]
    reconstruction = strip[:, 2 * (width + gap) :]
    np.testing.assert_allclose(reconstruction, target, atol=1)
    rgb = pixels[..., [3, 2, 1]]
    lo, hi = np.percentile(rgb.reshape(-1, 3), [2, 98], axis=0)
    expected = np.clip((rgb - lo) / (hi - lo), 0, 1) * 255
    np.testing.assert_allclose(target[::zoom, ::zoom], expected, atol=1)
    vegetation, soil = target[0, 0], target[0, -1]
    assert (soil > vegetation).all()  # bare soil is brighter in every visible band


def test_optical_modality_without_visible_bands_is_grey():
    spec = sensors.modality("s2_60m", "optical", [443, 945, 1375], 60.0, 4)
    assert previews.display_channels(spec) == [0]
