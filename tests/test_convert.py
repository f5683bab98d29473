"""Checkpoint conversion: PyTorch .ckpt (released / Lightning) <-> ramen_jax model directory.

Round trips through the CLI (subprocesses, run in parallel) must give back the fixture files
exactly: same key set and order, shapes, dtypes, bit-identical values. The converted state
must equal ``weights.npz`` under our mapping, and a model built from it must reproduce the
original's encoder tokens of one fixture case (float32, within 1e-3 absolute; the original's
own float32 noise on ``tokens`` is 1.9e-4). Bad inputs must fail with one error naming every
offending key.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import parity_cases as pc
import pytest
import torch
from flax import nnx

from ramen_jax import sensors
from ramen_jax.convert import cli, mapping, torch_io
from ramen_jax.model import build as build_lib
from ramen_jax.model import weights as model_weights

RELEASED = pc.FIXTURES / "encoder_released.ckpt"
LIGHTNING = pc.FIXTURES / "mae_lightning.ckpt"
HEADS = str(pc.config()["size"]["num_heads"])
TOKENS_ATOL = 1e-3
# Importing the converter (and the model weights I/O that training loads directories with) needs
# no torch.
LAZY_TORCH = (
    "import sys, ramen_jax.convert.cli, ramen_jax.model.weights; "
    "assert 'torch' not in sys.modules, 'torch imported eagerly'"
)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "ramen_jax.convert", *map(str, args)]


def _run_parallel(commands: dict) -> dict:
    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, cmd in commands.items()
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = (proc.returncode, stdout, stderr)
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Both fixtures converted to directories and back with the CLI."""
    tmp = tmp_path_factory.mktemp("convert")
    paths = {
        "released_dir": tmp / "released",
        "lightning_dir": tmp / "lightning",
        "released_ckpt": tmp / "released.ckpt",
        "lightning_ckpt": tmp / "lightning.ckpt",
    }
    first = _run_parallel(
        {
            "released": _cli("from-torch", RELEASED, paths["released_dir"], "--num-heads", HEADS),
            "lightning": _cli(
                "from-torch", LIGHTNING, paths["lightning_dir"], "--num-heads", HEADS
            ),
            "lazy_torch": [sys.executable, "-c", LAZY_TORCH],
        }
    )
    second = _run_parallel(
        {
            "released_back": _cli("to-torch", paths["released_dir"], paths["released_ckpt"]),
            "lightning_back": _cli(
                "to-torch", paths["lightning_dir"], paths["lightning_ckpt"], "--format", "lightning"
            ),
        }
    )
    return paths, {**first, **second}


def _ok(result):
    rc, stdout, stderr = result
    assert rc == 0, stderr
    assert len(stdout.strip().splitlines()) == 1, stdout
    return stdout


def _state_dict(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_identical(ours: dict, ref: dict):
    assert list(ours) == list(ref)  # same names, same order
    for name, value in ref.items():
        got = ours[name]
        assert got.dtype == value.dtype, name
        assert tuple(got.shape) == tuple(value.shape), name
        assert torch.equal(got, value), name  # bit-identical (no NaNs in the fixtures)


@pytest.mark.parametrize(
    "src, dst",
    [(RELEASED, "released_ckpt"), (LIGHTNING, "lightning_ckpt")],
    ids=["released", "lightning"],
)
def test_round_trip_same_format(converted, src, dst):
    paths, results = converted
    for name in ("released", "lightning", "released_back", "lightning_back"):
        _ok(results[name])
    ckpt = torch.load(paths[dst], map_location="cpu", weights_only=True)
    ref = torch.load(src, map_location="cpu", weights_only=True)
    assert list(ckpt) == list(ref) == ["state_dict"]
    _assert_identical(ckpt["state_dict"], ref["state_dict"])


def test_lightning_to_released_equals_released_fixture(converted, tmp_path, capsys):
    paths, _ = converted
    dst = tmp_path / "lightning_as_released.ckpt"
    rc, out, err = _main(capsys, "to-torch", paths["lightning_dir"], dst)
    assert rc == 0, err
    assert out.startswith("released checkpoint, 104 tensors") and "no decoder" in out
    lightning = _state_dict(LIGHTNING)
    prefix = "model.encoder."
    encoder_part = {k[len(prefix) :]: v for k, v in lightning.items() if k.startswith(prefix)}
    ours = _state_dict(dst)
    _assert_identical(ours, _state_dict(RELEASED))
    _assert_identical(ours, encoder_part)


def test_summary_lines(converted):
    _, results = converted
    released, lightning = _ok(results["released"]), _ok(results["lightning"])
    assert released.startswith("released checkpoint, 104 tensors")
    assert "embed_dim 64, depth 2, heads 4" in released and "no decoder" in released
    assert lightning.startswith("lightning checkpoint, 177 tensors")
    assert "decoder dim 32, depth 1, heads 16" in lightning


def test_missing_file_is_one_line_error(tmp_path, capsys):
    rc, out, err = _main(capsys, "from-torch", tmp_path / "no_such.ckpt", tmp_path / "never")
    assert rc == 1 and out == ""
    assert err.strip().splitlines() == [err.strip()]  # one line, no traceback
    assert err.startswith("error:") and "no_such.ckpt does not exist" in err
    assert not (tmp_path / "never").exists()


def test_torch_is_imported_lazily(converted, monkeypatch):
    _, results = converted
    rc, _, stderr = results["lazy_torch"]
    assert rc == 0, stderr
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(torch_io.TorchCheckpointError, match=r'pip install -e "\.\[torch\]"'):
        torch_io.read_state_dict(RELEASED)


def test_converted_state_equals_weights_npz(converted):
    paths, _ = converted
    weights = pc.torch_weights()
    for key, part in (("lightning_dir", ("encoder.", "decoder.")), ("released_dir", ("encoder.",))):
        _, params, stats, has_decoder = model_weights.load_model(paths[key])
        assert has_decoder == (len(part) == 2)
        ours = mapping.to_torch(model_weights.flat_from_trees(params, stats))
        ref = {k: v for k, v in weights.items() if k.startswith(part)}
        assert list(ours) == list(ref)
        for name, value in ref.items():
            assert ours[name].shape == value.shape and ours[name].dtype == value.dtype, name
            np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_inferred_architecture(converted):
    paths, _ = converted
    size = pc.config()["size"]
    released = json.loads((paths["released_dir"] / "model_config.json").read_text())
    lightning = json.loads((paths["lightning_dir"] / "model_config.json").read_text())
    for cfg in (released, lightning):
        assert cfg["embed_dim"] == size["embed_dim"] and cfg["depth"] == size["depth"]
        assert cfg["num_heads"] == 4 and cfg["mlp_ratio"] == 4.0
        assert sorted(cfg["kinds"]) == ["dem", "optical", "sar"]
    assert released["has_decoder"] is False and lightning["has_decoder"] is True
    assert lightning["decoder_dim"] == size["decoder_embed_dim"]
    assert lightning["decoder_depth"] == size["decoder_depth"]
    assert lightning["decoder_heads"] == size["decoder_num_heads"]


def test_model_reproduces_fixture_tokens(converted):
    paths, _ = converted
    config, params, stats, has_decoder = model_weights.load_model(paths["released_dir"])
    assert not has_decoder
    # every encoder variable (BatchNorm statistics included) holds the fixture's value
    ours = mapping.to_torch(model_weights.flat_from_trees(params, stats))
    for name, value in pc.torch_weights().items():
        if name.startswith("encoder."):
            np.testing.assert_array_equal(ours[name], value, err_msg=name)
    case = next(c for c in pc.cases("encoder") if c["file"] == "enc_fx_a_g20_s1.npz")
    specs, batch = pc.batch(case, np.float32)
    graphdef = nnx.split(build_lib.abstract(config).encoder, nnx.Param, nnx.BatchStat)[0]
    params, stats = params["encoder"], stats.get("encoder", {})

    @jax.jit
    def encode(params, stats, batch):
        encoder = build_lib.merge_model(graphdef, params, stats)
        return encoder(batch, tuple(specs), train=False)

    tokens = np.asarray(encode(params, stats, batch))
    ref = pc.load(case["file"])["tokens"]
    assert tokens.shape == ref.shape
    assert np.abs(tokens - ref).max() <= TOKENS_ATOL


# ----------------------------------------------------------------------------- bad inputs


def _write_ckpt(path, state_dict, wrap=True):
    torch.save({"state_dict": state_dict} if wrap else state_dict, path)
    return path


def _main(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_missing_extra_misshaped_keys_named_in_one_error(tmp_path, capsys):
    sd = dict(_state_dict(RELEASED))
    del sd["blocks.1.attn.qkv.weight"]
    sd["blocks.0.attn.extra.weight"] = torch.zeros(3)
    sd["blocks.1.attn.proj.weight"] = torch.zeros(64, 63)
    src = _write_ckpt(tmp_path / "bad.ckpt", sd)
    rc, out, err = _main(capsys, "from-torch", src, tmp_path / "dst", "--num-heads", 4)
    assert rc != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:")
    for name in ("blocks.1.attn.qkv.weight", "blocks.0.attn.extra.weight"):
        assert name in err
    assert "blocks.1.attn.proj.weight: (64, 63) (expected (64, 64))" in err
    assert not (tmp_path / "dst").exists()


def test_lightning_missing_decoder_key(tmp_path):
    sd = dict(_state_dict(LIGHTNING))
    del sd["model.decoder.blocks.0.mlp.fc2.bias"]
    with pytest.raises(mapping.MappingError, match=r"decoder\.blocks\.0\.mlp\.fc2\.bias"):
        torch_io.load_torch_checkpoint(_write_ckpt(tmp_path / "bad.ckpt", sd), num_heads=4)


def test_not_a_ramen_checkpoint(tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a pickle at all")
    other = _write_ckpt(tmp_path / "other.ckpt", {"fc.weight": torch.zeros(2, 2)})
    for src, message in ((garbage, "cannot read"), (other, "not a RAMEN checkpoint")):
        rc, _, err = _main(capsys, "from-torch", src, tmp_path / "dst")
        assert rc == 1 and len(err.strip().splitlines()) == 1
        assert err.startswith("error:") and message in err
    assert not (tmp_path / "dst").exists()


def test_overwrite_protection(converted, tmp_path, capsys):
    paths, _ = converted
    # to-torch: an existing file is kept unless --overwrite
    dst = tmp_path / "out.ckpt"
    dst.write_bytes(b"precious")
    rc, _, err = _main(capsys, "to-torch", paths["released_dir"], dst)
    assert rc == 1 and "already exists" in err and dst.read_bytes() == b"precious"
    assert _main(capsys, "to-torch", paths["released_dir"], dst, "--overwrite")[0] == 0
    _assert_identical(_state_dict(dst), _state_dict(RELEASED))
    # from-torch: an existing non-empty directory likewise
    out_dir = tmp_path / "dir"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("x")
    rc, _, err = _main(capsys, "from-torch", RELEASED, out_dir, "--num-heads", 4)
    assert rc == 1 and "--overwrite" in err and not (out_dir / "model_config.json").exists()
    args = ("from-torch", LIGHTNING, out_dir, "--num-heads", 4, "--overwrite")
    assert _main(capsys, *args)[0] == 0
    assert model_weights.load_model(out_dir)[3] is True  # the lightning one replaced nothing else
    assert (out_dir / "keep.txt").read_text() == "x"


def test_lightning_export_needs_decoder(converted, tmp_path, capsys):
    paths, _ = converted
    rc, _, err = _main(
        capsys, "to-torch", paths["released_dir"], tmp_path / "x.ckpt", "--format", "lightning"
    )
    assert rc == 1 and "needs a decoder" in err and not (tmp_path / "x.ckpt").exists()


# ----------------------------------------------------------------------------- architecture


def test_heads_and_config_flags(tmp_path, capsys):
    args = ("from-torch", LIGHTNING, tmp_path / "a", "--decoder-heads", 8)
    config = '{"block_norm_eps": 1e-5}'
    assert _main(capsys, *args, "--num-heads", 2, "--config", config)[0] == 0
    written = json.loads((tmp_path / "a" / "model_config.json").read_text())
    assert (written["num_heads"], written["decoder_heads"]) == (2, 8)
    assert written["block_norm_eps"] == 1e-5
    # default heads: embed_dim // 64 (= 1 here), decoder 16
    assert _main(capsys, "from-torch", RELEASED, tmp_path / "b")[0] == 0
    written = json.loads((tmp_path / "b" / "model_config.json").read_text())
    assert (written["num_heads"], written["decoder_heads"]) == (1, 16)
    # a config that contradicts the weights, heads that do not divide the width
    rc, _, err = _main(capsys, "from-torch", RELEASED, tmp_path / "c", "--config", '{"depth": 12}')
    assert rc == 1 and "depth=12" in err and "2" in err
    rc, _, err = _main(capsys, "from-torch", RELEASED, tmp_path / "d", "--num-heads", 5)
    assert rc == 1 and "--num-heads 5" in err


def test_inference_of_kinds_and_depth():
    sd = {"encoder." + k: v.numpy() for k, v in _state_dict(RELEASED).items()}
    arch, has_decoder = torch_io.infer_architecture(sd)
    assert arch == {
        "kinds": (sensors.OPTICAL, sensors.SAR, sensors.DEM),
        "embed_dim": 64,
        "depth": 2,
        "mlp_ratio": 4.0,
    }
    assert not has_decoder
    # optical only, one block: the smaller model converts without complaint
    dropped = ("encoder.radar_projector.", "encoder.dem_projector.", "encoder.blocks.1.")
    small = {k: v for k, v in sd.items() if not k.startswith(dropped)}
    arch, _ = torch_io.infer_architecture(small)
    assert arch["kinds"] == (sensors.OPTICAL,) and arch["depth"] == 1
    config = torch_io.resolve_config(arch, num_heads=4)
    params, stats = torch_io.to_model_state(small, config, False, "small")
    assert set(params["encoder"]) >= {"blocks", "spectral_projector"}
    assert "radar_projector" not in params["encoder"] and list(params["encoder"]["blocks"]) == [0]


def test_formats_detected(tmp_path):
    sd = _state_dict(LIGHTNING)
    plain = {k[len("model.") :]: v for k, v in sd.items()}
    # plain RAMENMAE names, among other top-level Lightning keys
    full = {"epoch": 3, "state_dict": plain, "optimizer_states": []}
    fmt, named = torch_io.read_state_dict(_write_ckpt(tmp_path / "p.ckpt", full, wrap=False))
    assert fmt == "mae" and list(named) == list(plain)
    # a bare state dict without the wrapper
    fmt, named = torch_io.read_state_dict(_write_ckpt(tmp_path / "u.ckpt", sd, wrap=False))
    assert fmt == "lightning" and list(named) == list(plain)
    np.testing.assert_array_equal(named["decoder.norm.bias"], sd["model.decoder.norm.bias"])


# ----------------------------------------------------------------------------- model directory


def test_model_directory_round_trip_and_errors(converted, tmp_path):
    paths, _ = converted
    config, params, stats, has_decoder = model_weights.load_model(paths["lightning_dir"])
    assert list(params["encoder"]["blocks"]) == [0, 1]  # int keys survive Orbax
    assert stats["encoder"]["ltae"]["inconv"]["norm"]["count"] == 1000
    model_weights.save_model(tmp_path / "copy", config, params, stats, has_decoder)
    again = model_weights.load_model(tmp_path / "copy")
    assert again[0] == config and again[3] is True
    for path, value in build_lib.flatten_dict(params).items():
        np.testing.assert_array_equal(build_lib.flatten_dict(again[1])[path], value)
    with pytest.raises(FileExistsError):
        model_weights.save_model(tmp_path / "copy", config, params, stats, has_decoder)
    with pytest.raises(model_weights.ModelCheckpointError, match="does not exist"):
        model_weights.load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(model_weights.ModelCheckpointError, match="model_config.json"):
        model_weights.load_model(tmp_path / "empty")
    # a corrupt checkpoint: the Orbax data files overwritten
    for f in (tmp_path / "copy" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(model_weights.ModelCheckpointError, match="cannot read"):
        model_weights.load_model(tmp_path / "copy")
    # a config that does not match the saved state
    bad = json.loads((paths["released_dir"] / "model_config.json").read_text())
    with pytest.raises(model_weights.ModelCheckpointError, match="does not match"):
        model_weights.save_model(
            tmp_path / "wrong",
            model_weights.config_from_dict({**bad, "depth": 3})[0],
            params,
            stats,
        )
