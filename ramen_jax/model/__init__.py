"""The RAMEN model in Flax NNX (see docs/model.md).

Parameters carry logical sharding names as metadata only: the training code applies shardings
explicitly (``jax.eval_shape`` -> shardings -> ``jit(init, out_shardings=...)``), so Flax's
eager variable sharding (which needs a mesh at construction) is turned off here.
"""

import flax

flax.config.update("flax_always_shard_variable", False)
