"""``python -m ramen_jax.convert``: see ``ramen_jax.convert.cli``."""

import sys

from ramen_jax.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
