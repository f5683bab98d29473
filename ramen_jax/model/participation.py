"""Which parameters take part in a step, so untouched ones are left alone by the optimiser.

In PyTorch a parameter that does not take part in the forward pass has no gradient, and AdamW
skips it entirely: no moment update, no weight decay, no step count. The parameters concerned
are the projectors of kinds not kept in the step, the learned vectors of SAR/DEM keys not
present, and the temporal modules (encoder L-TAE, decoder temporal block) when no kept modality
is a time series. ``participating`` returns, per parameter path, a boolean scalar computed from
the step's (static) modality specs and (traced) kept flags, for ``training.optimizer``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax.numpy as jnp

from ramen_jax import sensors
from ramen_jax.model.projectors import PROJECTOR_NAMES

_KIND_OF_PROJECTOR = {name: kind for kind, name in PROJECTOR_NAMES.items()}
_TEMPORAL_MODULES = {
    ("encoder", "ltae"),
    ("decoder", "temporal_block"),
    ("decoder", "temporal_norm"),
}


def participating(paths: Iterable[tuple], specs: Sequence[sensors.ModalitySpec], kept) -> dict:
    """``{path: bool scalar}`` for every parameter path; ``kept`` is bool ``[len(specs)]``."""
    kept = jnp.asarray(kept)
    always = jnp.asarray(True)

    def any_kept(predicate):
        hits = [kept[m] for m, spec in enumerate(specs) if predicate(spec)]
        return jnp.any(jnp.stack(hits)) if hits else jnp.asarray(False)

    series = any_kept(lambda s: s.time_series)
    flags = {}
    for path in paths:
        module = path[1] if len(path) > 1 else None
        if (path[0], module) in _TEMPORAL_MODULES:
            flags[path] = series
        elif module in _KIND_OF_PROJECTOR:
            kind = _KIND_OF_PROJECTOR[module]
            key = path[2]
            if kind in sensors.KEYED_KINDS and key in sensors.KEYED_KINDS[kind]:
                flags[path] = any_kept(lambda s, k=kind, c=key: s.kind == k and c in s.channels)
            else:
                flags[path] = any_kept(lambda s, k=kind: s.kind == k)
        else:
            flags[path] = always
    return flags
