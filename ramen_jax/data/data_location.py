"""Where each dataset of a config is read from: real records, or a stand-in where absent.

Shared by the benchmarks (``python -m ramen_jax.data.bench``, ``ramen_jax.perf.compile_check``):
a ``records`` dataset whose ``source.path`` exists is read as it is; where the path is absent a
synthetic stand-in is written in the dataset's published layout by ``data_prep.standins``,
converted by its own ``data_prep`` converter, cached under ``workdir`` and reused. Every choice
is said out loud; nothing is silently replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

from data_prep import standins
from ramen_jax import storage


class MissingDataError(RuntimeError):
    """A dataset has neither data nor a stand-in."""


def locate_data(config, workdir: Path, say) -> dict[str, tuple[str, str]]:
    """Points every dataset of ``config.data`` at what will be read (``source.path`` of
    stand-ins is set in ``config`` itself). Returns ``{name: (kind, where)}`` with kind
    ``"real"``, ``"stand-in"`` or ``"configured"`` (a non-records source, as configured)."""
    located = {}
    for name, dataset in config.data.datasets.items():
        source = dataset.source
        if source.get("type") != "records":
            say(f"{name}: '{source.get('type')}' source, as configured")
            located[name] = ("configured", str(source.get("type")))
        elif storage.as_path(source.path).exists():  # a local path or a URL
            say(f"{name}: real data, converted records at {source.path}")
            located[name] = ("real", os.fspath(source.path))
        else:
            source.path = os.fspath(standin_records(name, source, Path(workdir), say))
            located[name] = ("stand-in", source.path)
    return located


def standin_records(name: str, source, workdir: Path, say) -> Path:
    if name not in standins.STANDINS:
        raise MissingDataError(
            f"{name}: no data at {source.path} and no stand-in for a dataset of that name; "
            f"convert it with data_prep (stand-ins exist for {sorted(standins.STANDINS)})"
        )
    split = source.get("split", "train")
    root = workdir / f"standins-v{standins.STANDIN_VERSION}" / name
    say(
        f"{name}: NO DATA at {source.path}; running on a SYNTHETIC STAND-IN written in the "
        f"published layout ({standins.STANDINS[name].layout}) and converted with "
        f"data_prep.{name}, cached in {root}"
    )
    return standins.build_standin(name, root, split)
