"""Command line of ``ramen_jax.encode``: imagery files -> embedding GeoTIFFs / .npy at chosen GSDs.

::

    python -m ramen_jax.encode --checkpoint CKPT --out DIR --gsd 20 40 \\
        --input s2=s2.tif --sensor s2=sentinel2 --bands s2=B02,B03,B04,B08 \\
        [--input s1=s1.tif --sensor s1=sentinel1_asc] [--blocks 3,5,7,11] [--tile 32]

Per output GSD ``G`` it writes ``DIR/gGm_block<b>.tif`` / ``.npy``, ``DIR/gGm_cls.npy`` and
``DIR/gGm_meta.json`` and prints one summary line (grid, effective tile and overlap, nodata
pixels; nothing at all with ``--quiet``). The files are written in a hidden staging directory
and renamed into ``DIR`` once complete, so a killed run leaves nothing under the final names.
``CKPT``, the inputs, ``--stats`` and ``DIR`` may be URLs (``gs://...``): inputs are downloaded
first, and the outputs are written in a temporary directory (memory maps and GeoTIFF writers
need local files) and uploaded as each GSD is done.
Bad input (unknown sensor or band, band count not matching the declared channels, missing file,
a GSD that is not finite and > 0, a wavelength outside 300-15000 nm, a modality without one
valid pixel, a ``--stats`` file that is not the expected JSON, a modality the model cannot
encode, an output GSD coarser than the scene...) ends with exit status 1 (2 for a flag
argparse refuses) and one ``error: ...`` line (``ramen_jax.cli``), before anything is written.
See docs/encode.md.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax.numpy as jnp
import numpy as np
import rasterio.errors

from ramen_jax import cli, logs, sensors, storage
from ramen_jax.encode import geotiff, inputs, scene
from ramen_jax.encode.runner import FrozenEncoder
from ramen_jax.model.weights import ModelCheckpointError, load_encoder_weights

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_USER_ERRORS = (
    inputs.EncodeError,
    sensors.ModalityError,
    ModelCheckpointError,
    rasterio.errors.RasterioError,
    OSError,
)
_PER_INPUT = ("sensor", "bands", "channels", "input_gsd", "dates")


def _parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(
        prog="python -m ramen_jax.encode",
        description="Per-pixel RAMEN embeddings of a scene at the output GSDs you choose.",
    )
    p.add_argument("--checkpoint", required=True, help="model directory or training workdir")
    p.add_argument("--step", type=int, help="training workdir step (default: latest)")
    p.add_argument("--out", required=True, help="output directory (or gs://... URL)")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a modality: GeoTIFF (.tif) or NumPy array (.npy, [H,W,C] or [T,H,W,C]); repeat "
        "per modality; the first one is the reference whose footprint is the scene",
    )
    p.add_argument(
        "--sensor",
        action="append",
        default=[],
        metavar="NAME=PRESET",
        help=f"sensor preset of a modality: {', '.join(sorted(sensors.SENSOR_PRESETS))}",
    )
    p.add_argument(
        "--bands",
        action="append",
        default=[],
        metavar="NAME=B1,B2,...",
        help="band names of the preset, in file order (default: all, preset order)",
    )
    p.add_argument(
        "--channels",
        action="append",
        default=[],
        metavar="NAME=C1,C2,...",
        help="explicit channels instead of a preset: wavelengths in nm, or SAR keys "
        "(asc_vv, des_vh...), or DEM keys (dsm, dtm, slope)",
    )
    p.add_argument(
        "--input-gsd",
        action="append",
        default=[],
        metavar="NAME=METRES",
        help="GSD of a .npy input (GeoTIFFs carry theirs)",
    )
    p.add_argument(
        "--dates",
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="dates of a time series (day of year or YYYY-MM-DD); the file then has "
        "dates x channels bands, date-major",
    )
    p.add_argument("--gsd", type=float, nargs="+", required=True, help="output GSD(s), metres")
    p.add_argument("--blocks", help="0-based blocks to output, e.g. 3,5,7,11 (default: last)")
    p.add_argument("--tile", type=cli.positive_int, default=32, help="tile side, output pixels")
    p.add_argument(
        "--overlap",
        type=cli.non_negative_int,
        help="tile overlap in output pixels (default tile/4; with a coarse lattice unit u, tiles "
        "of 3u overlapping by 2u: docs/encode.md)",
    )
    p.add_argument(
        "--stats",
        default=inputs.SCENE_STATS,
        help="normalisation: 'scene' (per-scene statistics, default), 'none' (input "
        "already normalised) or a JSON file {name: {mean: [...], std: [...]}}",
    )
    p.add_argument("--batch-size", type=cli.positive_int, default=8, help="tiles per device batch")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--formats", default="tif,npy", help="tif and/or npy")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--verbose", action="store_true", help="show the libraries' INFO logs")
    return p


def _keyed(values: list[str], option: str, names: list[str]) -> dict:
    out = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not text:
            raise inputs.EncodeError(f"--{option} {value!r}: expected NAME=VALUE")
        if name not in names:
            raise inputs.EncodeError(f"--{option} {value!r}: no --input named {name!r}")
        out[name] = text
    return out


def _read_inputs(args) -> list[inputs.ModalityInput]:
    pairs = _keyed(args.input, "input", [v.partition("=")[0] for v in args.input])
    names = list(pairs)
    if len(names) != len(args.input):
        raise inputs.EncodeError("each --input NAME must be unique")
    options = {k: _keyed(getattr(args, k), k.replace("_", "-"), names) for k in _PER_INPUT}
    modalities = []
    for name, path in pairs.items():

        def listed(key, name=name):
            return options[key][name].split(",") if name in options[key] else None

        described = dict(
            sensor=options["sensor"].get(name),
            bands=listed("bands"),
            channels=listed("channels"),
            dates=listed("dates"),
        )
        gsd = options["input_gsd"].get(name)
        gsd = None if gsd is None else sensors.check_gsd(gsd, f"--input-gsd {name}")
        path = storage.as_path(path)
        if path.suffix.lower() == ".npy":
            if not path.is_file():
                raise inputs.EncodeError(f"modality {name!r}: input file {path} does not exist")
            with storage.local_copy(path) as local:
                array = np.load(local)
            modalities.append(inputs.from_array(name, array, gsd=gsd, **described))
        else:
            modalities.append(geotiff.read_modality(name, path, gsd=gsd, **described))
    return modalities


def _stats(text: str):
    return {"scene": inputs.SCENE_STATS, "none": None}.get(text) or inputs.read_stats_file(text)


def _blocks(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise inputs.EncodeError(
            f"--blocks {text!r}: give 0-based block numbers, e.g. 3,5,7,11"
        ) from None


def run(args) -> list[str]:
    """Encodes the scene at every ``--gsd``; returns one summary line per GSD.

    Every check that needs no model runs first; a GSD's files are written in a staging
    directory and appear under their final names only once all of them are complete."""
    gsds = [sensors.check_gsd(g, "--gsd") for g in args.gsd]
    blocks = _blocks(args.blocks)
    formats = tuple(f.strip() for f in args.formats.split(","))
    if not formats or not set(formats) <= {"tif", "npy"}:
        raise inputs.EncodeError(f"--formats {args.formats!r}: use tif and/or npy")
    stats = _stats(args.stats)
    modalities = _read_inputs(args)
    encoder = FrozenEncoder(
        load_encoder_weights(args.checkpoint, args.step), dtype=DTYPES[args.dtype]
    )
    lines = []
    with storage.staged_output_dir(args.out) as staged:
        for gsd in gsds:
            prefix = pathlib.Path(staged.directory) / f"g{gsd:g}m"
            start = time.perf_counter()
            result = scene.encode_scene(
                encoder,
                modalities,
                gsd,
                blocks=blocks,
                tile=args.tile,
                overlap=args.overlap,
                stats=stats,
                batch_size=args.batch_size,
                output=prefix,
                progress=not args.quiet,
            )
            scene.write_outputs(result, prefix, formats)
            staged.publish()
            lines.append(
                scene.summary_line(
                    result,
                    len(modalities),
                    storage.join(args.out, prefix.name),
                    time.perf_counter() - start,
                )
            )
    return lines


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(verbose=args.verbose, quiet=args.quiet and not args.verbose)
    try:
        lines = run(args)
    except _USER_ERRORS as e:
        return cli.report(e)
    if not args.quiet:
        for line in lines:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
