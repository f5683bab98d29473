"""How loud the libraries under the project are: WARNING by default, INFO on request.

Orbax, absl, JAX and TFDS log at INFO level through Python's ``logging`` (absl's handler):
about 150 lines in the demo run, between the progress lines the user reads. The command lines
call ``configure`` once: libraries' INFO logs stay off unless ``verbose`` (``--verbose``, or
absl's ``-v`` / ``--verbosity`` in the absl-flag commands), and ``quiet`` (``encode --quiet``)
keeps only errors.
"""

from __future__ import annotations

import logging

from absl import logging as absl_logging

LIBRARY_LOGGERS = ("absl", "orbax", "jax", "tensorflow", "tensorflow_datasets", "grain", "etils")


def configure(*, verbose: bool = False, quiet: bool = False) -> int:
    """Sets the libraries' log level (INFO if ``verbose``, ERROR if ``quiet``, else WARNING)."""
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    absl_logging.set_verbosity(
        {logging.INFO: "info", logging.WARNING: "warning"}.get(level, "error")
    )
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    return level


def configure_from_absl_flags(flag_values, verbose: bool = False) -> int:
    """``configure`` for an ``absl.app`` command: absl's own ``-v``/``--verbosity``, when given,
    wins; otherwise ``verbose`` decides."""
    if flag_values["verbosity"].present:
        return absl_logging.get_verbosity()
    return configure(verbose=verbose)
