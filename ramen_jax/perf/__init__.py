"""Performance measurement helpers (FLOP counts) used by ``python -m ramen_jax.bench``."""
