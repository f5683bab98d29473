"""``ramen_jax.encode``: embeddings from any sensor at any output GSD (API; CLI in __main__).

Python API::

    from ramen_jax import encode

    encoder = encode.load_encoder("ckpt/ramen_base")  # model directory or training workdir
    s2 = encode.read_modality("s2", "s2.tif", sensor="sentinel2", bands=["B02", "B03", "B04"])
    s1 = encode.read_modality("s1", "s1.tif", sensor="sentinel1_asc")  # aligned onto s2
    result = encode.encode_scene(encoder, [s2, s1], effective_gsd=40, blocks=[3, 5, 7, 11])
    encode.write_outputs(result, "out/scene_g40m")  # GeoTIFF + .npy + class embeddings

    # Batches of equal-size samples (normalised pixels), PANGAEA's per-block layout:
    batch = encoder.encode({"s2": pixels}, [spec], effective_gsd=40, blocks=[3, 5, 7, 11])
    batch.maps[0]  # [B, k * D, s, s]; batch.cls: [B, n_blocks, D]

Weights are read by ``ramen_jax.model.weights``. Modules: ``runner`` (``FrozenEncoder``:
devices, jit, PANGAEA layout), ``inputs`` (describing modalities, normalisation), ``geotiff``
(reading, aligning, writing), ``tiling`` (tiles and seamless blending), ``scene``
(``encode_scene``), ``progress``. See docs/encode.md.
"""

from ramen_jax.encode.geotiff import align_to_reference, read_modality
from ramen_jax.encode.inputs import (
    SCENE_STATS,
    EncodeError,
    ModalityInput,
    from_array,
    normalise_inputs,
    read_stats_file,
)
from ramen_jax.encode.runner import EncodedBatch, FrozenEncoder, pangaea_layout
from ramen_jax.encode.scene import SceneEmbeddings, encode_scene, write_outputs
from ramen_jax.model.weights import EncoderWeights, load_encoder_weights


def load_encoder(path, *, step: int | None = None, **options) -> FrozenEncoder:
    """A ``FrozenEncoder`` from a model directory or a training workdir (latest or ``step``)."""
    return FrozenEncoder(load_encoder_weights(path, step), **options)


__all__ = [
    "SCENE_STATS",
    "EncodeError",
    "EncodedBatch",
    "EncoderWeights",
    "FrozenEncoder",
    "ModalityInput",
    "SceneEmbeddings",
    "align_to_reference",
    "encode_scene",
    "from_array",
    "load_encoder",
    "load_encoder_weights",
    "normalise_inputs",
    "pangaea_layout",
    "read_modality",
    "read_stats_file",
    "write_outputs",
]
