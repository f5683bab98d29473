"""``FrozenEncoder``: a RAMEN encoder placed on the available devices, encoding sample batches.

One batch = equal-shape samples of the same modalities (``pixels[m]`` float32
``[B, T, H, H, C]``, already normalised per channel; square, channels last). For each requested
block the encoder returns

- the class embedding ``cls`` ``[B, n_blocks, D]``;
- per-pixel maps ``[B, k * D, s, s]`` (k = number of modalities, s = token grid side):
  PANGAEA's ``RAMEN_Encoder`` layout, i.e. the k modalities' ``s x s`` token grids concatenated
  along channels in the given order (channel ``i * D + d`` = feature d of modality i).

Blocks are 0-based; the default is the last block, whose output carries the final norm (then
the maps are the full encoder's tokens). As in PANGAEA, intermediate blocks come without it.

Devices: the batch is split over a 1-D ``data`` mesh of all local devices (parameters
replicated); a batch is padded up to a multiple of the device count and the padding dropped.
One XLA compilation per distinct (modalities, blocks, shapes); ``compiles`` counts them.
Attention: the default of the devices' platform, resolved as for training
(``ModelConfig.for_platform``: chunked einsum on CPU, cuDNN on GPU where it applies, the splash
kernel on TPU), whatever ``attention_impl`` the training run used; ``attention_impl=`` chooses
another.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from ramen_jax import sensors
from ramen_jax.batch import Batch, Layout, build_layout
from ramen_jax.encode.inputs import EncodeError
from ramen_jax.model import attention as attention_lib
from ramen_jax.model import build as build_lib
from ramen_jax.model.weights import ENCODER, EncoderWeights

DATA_AXIS = "data"


def pangaea_layout(tokens, num_modalities: int, side: int):
    """``[B, k * s * s, D]`` patch tokens (modality-major, row-major grids) ->
    ``[B, k * D, s, s]``, the per-block output of PANGAEA's RAMEN encoder."""
    batch, _, width = tokens.shape
    grids = tokens.reshape(batch, num_modalities, side * side, width)
    return grids.transpose(0, 1, 3, 2).reshape(batch, num_modalities * width, side, side)


@dataclasses.dataclass(frozen=True)
class EncodedBatch:
    cls: np.ndarray  # [B, n_blocks, D]
    maps: list  # one [B, k * D, s, s] per block
    blocks: tuple


def _forward(graphdef, specs, blocks, side, params, batch_stats, batch):
    encoder = build_lib.merge_model(graphdef, params, batch_stats)
    outputs = encoder.block_outputs(batch, specs, blocks)
    cls = jnp.stack([out[:, 0] for out in outputs], axis=1).astype(jnp.float32)
    maps = tuple(
        pangaea_layout(out[:, 1:].astype(jnp.float32), len(specs), side) for out in outputs
    )
    return cls, maps


class FrozenEncoder:
    """Encoder weights on devices plus a jitted forward per batch signature."""

    def __init__(
        self, weights: EncoderWeights, *, dtype=jnp.float32, devices=None, attention_impl=""
    ):
        devices = list(devices if devices is not None else jax.local_devices())
        self.mesh = jax.make_mesh(
            (len(devices),), (DATA_AXIS,), devices=devices, axis_types=(AxisType.Auto,)
        )
        platform = attention_lib.platform_of(self.mesh)
        self.config = dataclasses.replace(
            weights.config, attention_impl=attention_impl, remat=False
        ).for_platform(platform)
        self.source = weights.source
        abstract = build_lib.abstract(self.config, dtype=dtype, platform=platform)
        self.graphdef = nnx.split(abstract.encoder, nnx.Param, nnx.BatchStat)[0]
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self._replicated = replicated

        def place(tree):
            return jax.device_put(jax.tree.map(_as_float32, tree), replicated)

        self.params = place(weights.params[ENCODER])
        self.batch_stats = place(weights.batch_stats.get(ENCODER, {}))
        self._signatures: set = set()

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def compiles(self) -> int:
        return len(self._signatures)

    def last_block(self) -> int:
        return self.config.depth - 1

    def check_blocks(self, blocks: Sequence[int] | None) -> tuple:
        blocks = (self.last_block(),) if not blocks else tuple(int(b) for b in blocks)
        bad = [b for b in blocks if not 0 <= b <= self.last_block()]
        if bad:
            raise EncodeError(
                f"block indices {bad} out of range: this encoder has blocks 0..{self.last_block()}"
            )
        return blocks

    def check_specs(self, specs: Sequence[sensors.ModalitySpec]) -> None:
        """Every modality's kind must have a projector in this model."""
        for spec in specs:
            if spec.kind not in self.config.kinds:
                raise sensors.ModalityError(
                    f"modality {spec.name!r} is {spec.kind} {list(spec.channels)}, but this model "
                    f"has no {spec.kind} projector (only {', '.join(self.config.kinds)})"
                )

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one entry per batch signature, bounded)
    def _compiled(self, specs: tuple, blocks: tuple, side: int):
        forward = functools.partial(_forward, self.graphdef, specs, blocks, side)
        return jax.jit(attention_lib.under_mesh(self.mesh, forward))

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def layout(self, specs: tuple, effective_gsd: float, reference: sensors.ModalitySpec) -> Layout:
        layout = build_layout(
            specs, [s.name for s in specs], effective_gsd, reference=reference, dtype=np.float32
        )
        return jax.device_put(layout, self._replicated)

    def encode(
        self,
        pixels: dict,
        specs: Sequence[sensors.ModalitySpec],
        effective_gsd: float,
        *,
        dates: dict | None = None,
        time_valid: dict | None = None,
        reference: sensors.ModalitySpec | None = None,
        blocks: Sequence[int] | None = None,
        pad_to: int = 0,
    ) -> EncodedBatch:
        """Encodes one batch (see module docstring).

        ``pixels[m]``: normalised float32 ``[B, T, H, H, C]`` for every spec, in ``specs`` order
        (all of them are encoded). ``dates[m]`` int32 ``[B, T]`` day of year and
        ``time_valid[m]`` bool ``[B, T]`` default to 1 and True. ``reference`` fixes the token
        grid (default ``specs[0]``; pass the full dataset's first modality when it is dropped).
        ``pad_to``: pad a short batch to this size, so that a last partial batch reuses the
        full batches' compilation.
        """
        specs = tuple(specs)
        self.check_specs(specs)
        blocks = self.check_blocks(blocks)
        for spec in specs:
            shape = np.shape(pixels[spec.name]) if spec.name in pixels else None
            if (
                shape is None
                or len(shape) != 5
                or shape[2:] != (spec.side, spec.side, spec.num_channels)
            ):
                raise EncodeError(
                    f"pixels of modality {spec.name!r}: shape {shape}, expected [B, T, "
                    f"{spec.side}, {spec.side}, {spec.num_channels}] as its spec declares"
                )
        reference = reference or specs[0]
        layout = self.layout(specs, float(effective_gsd), reference)
        side = layout.grid_pad
        count = np.shape(next(iter(pixels.values())))[0]
        padded = -(-max(count, pad_to) // self.num_devices) * self.num_devices

        def batch_array(array, dtype):
            array = np.asarray(array, dtype)
            if padded > count:
                pad = np.zeros((padded - count, *array.shape[1:]), dtype)
                array = np.concatenate([array, pad])
            return jax.device_put(array, self._batch_sharding)

        batch = Batch(pixels={}, dates={}, time_valid={}, layout=layout)
        for spec in specs:
            steps = np.shape(pixels[spec.name])[1]
            default_dates = np.ones((count, steps), np.int32)
            default_valid = np.ones((count, steps), bool)
            batch.pixels[spec.name] = batch_array(pixels[spec.name], np.float32)
            batch.dates[spec.name] = batch_array(
                (dates or {}).get(spec.name, default_dates), np.int32
            )
            batch.time_valid[spec.name] = batch_array(
                (time_valid or {}).get(spec.name, default_valid), bool
            )
        shapes = tuple(v.shape for v in batch.pixels.values())
        self._signatures.add((specs, blocks, side, shapes))
        cls, maps = self._compiled(specs, blocks, side)(self.params, self.batch_stats, batch)
        return EncodedBatch(np.asarray(cls)[:count], [np.asarray(m)[:count] for m in maps], blocks)


def _as_float32(leaf):
    leaf = np.asarray(leaf)
    return leaf.astype(np.float32) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
