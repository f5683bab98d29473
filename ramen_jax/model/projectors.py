"""Channel projectors: turn a modality's channel descriptors into a ``[C, D]`` projection matrix.

- ``SpectralProjector`` (optical): sin-cos code of the raw wavelength in nm -> ``ProjectorMlp``.
- ``KeyedProjector`` (sar, dem): one learned vector per key (``asc_vv``... / ``dsm``...)
  -> ``ProjectorMlp``. Unknown keys are rejected when the modality is declared
  (``ramen_jax.sensors``), and again here with the valid list.

``build_projectors`` creates one projector per modality *kind* present in the model config:
which projector a modality uses is decided by its declared kind, never by its name.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from ramen_jax import sensors
from ramen_jax.model.encodings import sincos_1d
from ramen_jax.model.layers import ProjectorMlp, normal_init, param


class SpectralProjector(nnx.Module):
    def __init__(self, features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.features = features
        self.mlp = ProjectorMlp(features, rngs=rngs, param_dtype=param_dtype)

    def sincos(self, wavelengths: Sequence[float], dtype) -> jnp.ndarray:
        return sincos_1d(jnp.asarray(wavelengths, dtype), self.features, dtype)

    def __call__(self, wavelengths: Sequence[float], dtype=jnp.float32) -> jnp.ndarray:
        return self.mlp(self.sincos(wavelengths, dtype))


class KeyedProjector(nnx.Module):
    """Learned per-key vectors (one ``nnx.Param`` each, as in the original) through an MLP."""

    def __init__(self, kind: str, features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.kind = kind
        self.keys = sensors.KEYED_KINDS[kind]
        for key in self.keys:
            setattr(self, key, param(rngs, normal_init(0.02), (features,), ("embed",), param_dtype))
        self.mlp = ProjectorMlp(features, rngs=rngs, param_dtype=param_dtype)

    def embeddings(self, keys: Sequence[str], dtype) -> jnp.ndarray:
        unknown = [k for k in keys if k.lower() not in self.keys]
        if unknown:
            raise sensors.ModalityError(
                f"unknown {self.kind} key(s) {unknown}; valid keys are {list(self.keys)}"
            )
        return jnp.stack([getattr(self, k.lower())[...].astype(dtype) for k in keys])

    def __call__(self, keys: Sequence[str], dtype=jnp.float32) -> jnp.ndarray:
        return self.mlp(self.embeddings(keys, dtype))


PROJECTOR_NAMES = {
    sensors.OPTICAL: "spectral_projector",
    sensors.SAR: "radar_projector",
    sensors.DEM: "dem_projector",
}


def build_projectors(
    owner: nnx.Module, kinds: Sequence[str], features: int, rngs: nnx.Rngs, param_dtype=jnp.float32
) -> None:
    """Attaches ``spectral_projector`` (always, as the original) and one keyed projector per
    keyed kind in ``kinds`` to ``owner``."""
    owner.spectral_projector = SpectralProjector(features, rngs=rngs, param_dtype=param_dtype)
    for kind in (sensors.SAR, sensors.DEM):
        if kind in kinds:
            setattr(
                owner,
                PROJECTOR_NAMES[kind],
                KeyedProjector(kind, features, rngs=rngs, param_dtype=param_dtype),
            )


def projection_matrix(owner: nnx.Module, spec: sensors.ModalitySpec, dtype) -> jnp.ndarray:
    """``[C, D]`` matrix that right-multiplies the channel axis of ``spec``'s pixels."""
    name = PROJECTOR_NAMES[spec.kind]
    projector = getattr(owner, name, None)
    if projector is None:
        raise sensors.ModalityError(
            f"modality {spec.name!r} is {spec.kind}, but this model has no {name} "
            f"(it was built for kinds without {spec.kind}); add a {spec.kind} modality to the "
            "model config"
        )
    return projector(spec.channels, dtype)
