"""Analytic FLOPs of one MAE training step, from the model config and the step's layout.

Counts the matrix products (2 FLOPs per multiply-add) of the forward pass exactly as the code
computes them (flat tokens incl. padding, the refactored decoder head), and takes the backward
pass as twice the forward (the usual 3x rule for matmul-dominated training). Elementwise work
(norms, softmax, the loss, the optimiser) is left out; ``python -m ramen_jax.perf.step_bench``
reports XLA's own count of everything next to it as a cross-check.
"""

from __future__ import annotations

from ramen_jax.batch import Layout
from ramen_jax.model.ltae import KEY_WIDTH
from ramen_jax.model.mae import ModelConfig


def _attention_block(tokens: int, width: int, mlp_ratio: float) -> int:
    """Multiply-adds of one pre-norm transformer block over ``tokens`` tokens."""
    dense = (4 + 2 * mlp_ratio) * width * width * tokens  # qkv 3, proj 1, mlp 2 * ratio
    attention = 2 * tokens * tokens * width  # scores and weighted values
    return int(dense + attention)


def forward_macs(config: ModelConfig, specs, layout: Layout, pixels: dict) -> dict:
    """Multiply-adds per forward pass, by part, for one batch (``pixels`` gives B and T)."""
    batch = next(iter(pixels.values())).shape[0]
    length, series = layout.length, layout.series_length
    kept = int(length * (1 - config.mask_ratio))
    d, dd, r = config.embed_dim, config.decoder_dim, config.mlp_ratio
    pad = layout.grid_pad
    steps = max((pixels[s.name].shape[1] for s in specs if s.time_series), default=1)
    channels = sum(s.num_channels for s in specs)
    series_channels = sum(s.num_channels for s in specs if s.time_series)
    parts = {"resize": 0, "embed": 0, "ltae": 0, "encoder": 0, "decoder": 0, "head": 0}
    for spec in specs:
        t, h, c = pixels[spec.name].shape[1], spec.side, spec.num_channels
        per_image = pad * h * h * c + pad * pad * h * c  # rows then columns
        parts["resize"] += 2 * batch * t * per_image  # to the grid, and back for the loss
    parts["embed"] = batch * length * (channels * d + 4 * d * d)
    if series:
        parts["embed"] += batch * series * steps * (series_channels * d + 4 * d * d)
        parts["ltae"] = batch * series * (steps * (d * d + d * 16 * KEY_WIDTH) + 5 * d * d)
    parts["encoder"] = batch * config.depth * _attention_block(kept + 1, d, r)
    parts["decoder"] = batch * (
        (kept + 1) * d * dd + config.decoder_depth * _attention_block(length + 1, dd, r)
    )
    if series:
        parts["decoder"] += batch * series * _attention_block(steps, dd, r)
    parts["head"] = batch * (length * dd * channels + series * steps * dd * series_channels)
    return {k: int(v) for k, v in parts.items()}


def train_step_flops(config: ModelConfig, specs, layout: Layout, pixels: dict) -> int:
    """Forward + backward (2x forward) FLOPs of one step."""
    return 3 * 2 * sum(forward_macs(config, specs, layout, pixels).values())
