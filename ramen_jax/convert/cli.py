"""Command line of the checkpoint converter (``python -m ramen_jax.convert``).

::

    python -m ramen_jax.convert from-torch SRC.ckpt DST_DIR [--num-heads N] [--decoder-heads N]
                                           [--config JSON] [--overwrite]
    python -m ramen_jax.convert to-torch SRC_DIR DST.ckpt [--format released|lightning]
                                         [--step N] [--overwrite]

``SRC_DIR`` of ``to-torch`` is a model directory or a training workdir (its latest checkpoint,
or ``--step``). Every path may be a URL (``gs://BUCKET/...``).

Each prints one summary line. Bad input ends with exit status 1 and a one-line ``error: ...``
on stderr (no traceback); usage errors exit with 2 (argparse). See docs/convert.md.
"""

from __future__ import annotations

import argparse
import json

from ramen_jax import cli, storage
from ramen_jax.convert import mapping, torch_io
from ramen_jax.model import weights
from ramen_jax.model.config import ModelConfig

_USER_ERRORS = (
    mapping.MappingError,
    weights.ModelCheckpointError,
    torch_io.TorchCheckpointError,
    OSError,  # unreadable / unwritable paths (FileExistsError included)
)


def _parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="python -m ramen_jax.convert",
        description="Convert RAMEN checkpoints between PyTorch (.ckpt) and ramen_jax (directory).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    src = sub.add_parser(
        "from-torch",
        help="PyTorch .ckpt (released or Lightning) -> ramen_jax model directory",
        description="Reads a released (bare encoder names) or Lightning (model.encoder./"
        "model.decoder.) checkpoint, infers the architecture from the tensor shapes and writes "
        "a ramen_jax model directory (model_config.json + Orbax state).",
    )
    src.add_argument("src", metavar="SRC.ckpt", type=storage.as_path)
    src.add_argument("dst", metavar="DST_DIR", type=storage.as_path)
    src.add_argument(
        "--num-heads",
        type=int,
        help="encoder attention heads (not stored in the weights; default embed_dim // 64)",
    )
    src.add_argument(
        "--decoder-heads", type=int, help="decoder attention heads (default 16, the original's)"
    )
    src.add_argument(
        "--config",
        metavar="JSON",
        help="ModelConfig fields as a JSON file or inline JSON object (e.g. block_norm_eps); "
        "fields read off the weights must agree",
    )
    src.add_argument("--overwrite", action="store_true", help="replace an existing DST_DIR")
    dst = sub.add_parser(
        "to-torch",
        help="ramen_jax model directory or training workdir -> PyTorch .ckpt",
        description="Writes {'state_dict': ...} with the original's names, order, shapes and "
        "dtypes. 'released' (encoder only, bare names) is what PANGAEA loads; 'lightning' "
        "(model.encoder./model.decoder.) needs a decoder. SRC_DIR is a model directory "
        "(from-torch output) or a training workdir (python -m ramen_jax.train).",
    )
    dst.add_argument("src", metavar="SRC_DIR", type=storage.as_path)
    dst.add_argument(
        "--step", type=int, help="checkpoint step of a training workdir (default: the latest)"
    )
    dst.add_argument("dst", metavar="DST.ckpt", type=storage.as_path)
    dst.add_argument("--format", choices=torch_io.FORMATS, default="released")
    dst.add_argument("--overwrite", action="store_true", help="replace an existing DST.ckpt")
    return parser


def _extra_config(text: str | None) -> dict:
    if not text:
        return {}
    source = "--config"
    if not text.lstrip().startswith("{"):
        path = storage.as_path(text)
        if not path.is_file():
            raise torch_io.TorchCheckpointError(f"--config file {path} does not exist")
        text, source = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise torch_io.TorchCheckpointError(f"{source}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise torch_io.TorchCheckpointError(f"{source}: expected a JSON object")
    return data


def describe(config: ModelConfig, has_decoder: bool) -> str:
    text = (
        f"kinds {','.join(config.kinds)}; encoder embed_dim {config.embed_dim}, depth "
        f"{config.depth}, heads {config.num_heads}, mlp_ratio {config.mlp_ratio:g}"
    )
    if has_decoder:
        text += (
            f"; decoder dim {config.decoder_dim}, depth {config.decoder_depth}, "
            f"heads {config.decoder_heads}"
        )
    return text + ("" if has_decoder else "; no decoder")


def from_torch(args) -> str:
    occupied = args.dst.exists() and (not args.dst.is_dir() or any(args.dst.iterdir()))
    if occupied and not args.overwrite:
        raise FileExistsError(f"{args.dst} exists and is not an empty directory (use --overwrite)")
    converted = torch_io.load_torch_checkpoint(
        args.src,
        num_heads=args.num_heads,
        decoder_heads=args.decoder_heads,
        extra_config=_extra_config(args.config),
    )
    weights.save_model(
        args.dst,
        converted.config,
        converted.params,
        converted.batch_stats,
        converted.has_decoder,
        overwrite=args.overwrite,
    )
    return (
        f"{converted.format} checkpoint, {converted.num_tensors} tensors -> {args.dst} "
        f"({describe(converted.config, converted.has_decoder)})"
    )


def to_torch(args) -> str:
    if args.dst.exists() and not args.overwrite:
        raise FileExistsError(f"{args.dst} already exists (use --overwrite)")
    config, params, batch_stats, has_decoder = weights.load_model_weights(args.src, args.step)
    count = torch_io.write_torch_checkpoint(
        args.dst, params, batch_stats, args.format, overwrite=args.overwrite
    )
    exported = describe(config, has_decoder and args.format == "lightning")
    return f"{args.format} checkpoint, {count} tensors -> {args.dst} ({exported})"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    command = {"from-torch": from_torch, "to-torch": to_torch}[args.command]
    try:
        print(command(args))
    except _USER_ERRORS as e:
        return cli.report(e)
    return 0
