"""What each dataset of a config reads, said out loud before a measurement runs.

Shared by the measurement tools (``python -m ramen_jax.perf.data_bench``,
``ramen_jax.perf.compile_check``). A ``records`` dataset is read from its ``source.path`` as it
is: converted data, or a synthetic stand-in (records carrying ``records.STANDIN_FILE``) written
beforehand by ``python -m data_prep.standins``, which prints the ``--config`` overrides that
point the config at them (and writes them as an absl ``--flagfile``). The tools never write data
themselves: a records dataset whose path is absent stops them with one line naming both ways to
get it.
"""

from __future__ import annotations

import json
import os

from ramen_jax import storage
from ramen_jax.data import records

STANDIN_COMMAND = "python -m data_prep.standins --config CONFIG --workdir DIR"


class MissingDataError(RuntimeError):
    """A records dataset of the config has no data at its path."""


def locate_data(config, say) -> dict[str, tuple[str, str]]:
    """Says what every dataset of ``config.data`` reads. Returns ``{name: (kind, where)}`` with
    kind ``"real"``, ``"stand-in"`` or ``"configured"`` (a non-records source, as configured);
    raises ``MissingDataError`` for a records dataset whose ``source.path`` does not exist."""
    located = {}
    for name, dataset in config.data.datasets.items():
        source = dataset.source
        if source.get("type") != "records":
            say(f"{name}: '{source.get('type')}' source, as configured")
            located[name] = ("configured", str(source.get("type")))
            continue
        where = os.fspath(source.path)
        path = storage.as_path(where)  # a local path or a URL
        if not path.exists():
            raise MissingDataError(
                f"{name}: no records at {where}; convert the dataset (python -m "
                f"data_prep.{name}, docs/data_prep.md) or write stand-ins ({STANDIN_COMMAND}) "
                "and pass the overrides it prints (or --flagfile=DIR/standins.flags)"
            )
        marker = path / records.STANDIN_FILE
        if marker.exists():
            layout = json.loads(marker.read_text())["layout"]
            say(
                f"{name}: SYNTHETIC STAND-IN records at {where} (written in the published "
                f"layout of the {layout} by data_prep.standins), not real data"
            )
            located[name] = ("stand-in", where)
        else:
            say(f"{name}: real data, converted records at {where}")
            located[name] = ("real", where)
    return located
