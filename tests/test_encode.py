"""ramen_jax.encode: GeoTIFF in, embeddings out, at the output GSD the user picks.

A Sentinel-2 GeoTIFF (UTM 32N, known transform) is encoded through the CLI at two output GSDs:
the output GeoTIFFs' sizes and geotransforms must follow from the GSD, and the embeddings must
equal the model encoder's own output on the same normalised pixels (built directly with
``build_layout`` + ``encoder``), within 1e-5 absolute (float32, jit vs eager). The multi-block
output must be PANGAEA's layout (modalities concatenated along channels, ``[B, k*D, s, s]``),
checked against a re-implementation of PANGAEA's rearrangement. Bad input fails with one
``error:`` line. Weights load from a model directory and from a training workdir.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import xla_flags
from flax import nnx

from ramen_jax import sensors
from ramen_jax.batch import Batch, build_layout
from ramen_jax.encode import __main__ as cli
from ramen_jax.encode import geotiff, inputs, runner
from ramen_jax.model import build as build_lib
from ramen_jax.model import weights as model_weights
from ramen_jax.model.config import ModelConfig

ATOL = 1e-5
TINY = ModelConfig(
    kinds=("optical", "sar"),
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_dim=32,
    decoder_depth=1,
    decoder_heads=2,
)
UTM = "EPSG:32632"
ORIGIN = (600_000.0, 5_100_000.0)
S2_BANDS = ("B02", "B03", "B04", "B08")


def random_state(config=TINY, seed=0, has_decoder=False):
    """``(params, batch_stats)`` of random NumPy values: a random model without the per-shape
    XLA compilations of Flax's initialisers (seconds on a small CPU)."""
    rng = np.random.default_rng(seed)
    params, stats = model_weights.expected_trees(config, has_decoder)

    def draw(path, leaf):
        name = str(path[-1].key)
        if name == "temperature":
            return np.full(leaf.shape, 0.7, leaf.dtype)
        value = rng.normal(0.0, 0.2, leaf.shape)
        return (value + (name in ("scale", "group_norm_scale"))).astype(leaf.dtype)

    def statistic(path, leaf):
        return np.full(leaf.shape, 1 if str(path[-1].key) == "var" else 0, leaf.dtype)

    return (
        jax.tree_util.tree_map_with_path(draw, params),
        jax.tree_util.tree_map_with_path(statistic, stats),
    )


def save_encoder(directory, config=TINY, seed=0):
    params, stats = random_state(config, seed)
    model_weights.save_model(directory, config, params, stats, has_decoder=False)
    return params, stats


def jitted_encoder(config, params, stats, method="__call__"):
    """``fn(batch, specs) -> tokens`` of the model's own encoder (jitted, eager semantics)."""
    graphdef = nnx.split(build_lib.abstract(config).encoder, nnx.Param, nnx.BatchStat)[0]

    def run(params, stats, batch, specs, *args):
        encoder = build_lib.merge_model(graphdef, params, stats)
        return getattr(encoder, method)(batch, specs, *args)

    compiled = jax.jit(run, static_argnums=(3, 4) if method == "block_outputs" else (3,))
    return lambda batch, specs, *args: compiled(
        params["encoder"],
        stats["encoder"],
        jax.tree.map(jnp.asarray, batch),
        tuple(specs),
        *(tuple(a) for a in args),
    )


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model") / "tiny"
    return directory, save_encoder(directory)


@pytest.fixture(scope="session")
def optical_model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model") / "optical"
    save_encoder(directory, dataclasses.replace(TINY, kinds=("optical",)))
    return directory


def write_tif(path, data, gsd, origin=ORIGIN, crs=UTM, dtype="uint16"):
    """Writes ``data`` ``[bands, H, W]`` north-up at ``gsd`` m with its corner at ``origin``."""
    transform = Affine(gsd, 0, origin[0], 0, -gsd, origin[1])
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=dtype,
        crs=crs,
        transform=transform,
    )
    with rasterio.open(path, "w", **profile) as raster:
        raster.write(data.astype(dtype))
    return path


def s2_scene(side=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(100, 6000, (len(S2_BANDS), side, side)).astype(np.uint16)


def direct_maps(encode, pixels_hwc, spec, gsd):
    """``[D, s, s]`` and the class token from the model's own encoder on the same pixels,
    normalised as the scene path documents (per-scene, per-band mean and std)."""
    mean, std = pixels_hwc.mean(axis=(0, 1)), pixels_hwc.std(axis=(0, 1))
    x = ((pixels_hwc - mean) / std).astype(np.float32)[None, None]
    batch = Batch(
        pixels={spec.name: x},
        dates={spec.name: np.ones((1, 1), np.int32)},
        time_valid={spec.name: np.ones((1, 1), bool)},
        layout=build_layout([spec], [spec.name], gsd),
    )
    tokens = np.asarray(encode(batch, [spec]))
    side = int(round(np.sqrt(tokens.shape[1] - 1)))
    return tokens[0, 1:].reshape(side, side, -1).transpose(2, 0, 1), tokens[0, 0]


def test_geotiff_at_two_gsds_matches_the_encoder(model_dir, tmp_path, capsys):
    directory, (params, stats) = model_dir
    encode = jitted_encoder(TINY, params, stats)
    scene = s2_scene()
    tif = write_tif(tmp_path / "s2.tif", scene, 10.0)
    out = tmp_path / "out"
    argv = ["--checkpoint", directory, "--out", out, "--gsd", "20", "40", "--quiet"]
    argv += [
        "--input",
        f"s2={tif}",
        "--sensor",
        "s2=sentinel2",
        "--bands",
        "s2=" + ",".join(S2_BANDS),
    ]
    assert cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert capsys.readouterr() == ("", "")  # --quiet: nothing on success
    wavelengths = sensors.sensor_preset("sentinel2").channels(S2_BANDS)
    spec = sensors.modality("s2", "optical", wavelengths, 10.0, 64)
    for gsd in (20, 40):
        side = 640 // gsd
        with rasterio.open(out / f"g{gsd}m_block1.tif") as raster:
            assert raster.shape == (side, side) and raster.count == TINY.embed_dim
            assert raster.transform == Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1])
            assert raster.crs.to_string() == UTM
            assert raster.descriptions[0] == "s2:0"
            written = raster.read()
        expected, cls = direct_maps(encode, scene.transpose(1, 2, 0).astype(np.float64), spec, gsd)
        np.testing.assert_allclose(written, expected, atol=ATOL)
        np.testing.assert_allclose(np.load(out / f"g{gsd}m_block1.npy"), expected, atol=ATOL)
        np.testing.assert_allclose(np.load(out / f"g{gsd}m_cls.npy")[0, 0], cls, atol=ATOL)


def test_multi_block_output_is_pangaea_layout(model_dir):
    _, (params, stats) = model_dir
    encoder = runner.FrozenEncoder(model_weights.load_encoder_weights(model_dir[0]))
    specs = (
        sensors.modality("s2", "optical", [490, 560, 665, 842], 10, 24),
        sensors.modality("s1", "sar", ["asc_vv", "asc_vh"], 20, 12),
    )
    rng = np.random.default_rng(1)
    pixels = {
        s.name: rng.normal(size=(3, 1, s.side, s.side, 2 + 2 * (s.kind == "optical")))
        for s in specs
    }
    encoded = encoder.encode(pixels, specs, 40.0, blocks=[0, 1])
    side, width = 6, TINY.embed_dim
    batch = Batch(
        pixels={k: v.astype(np.float32) for k, v in pixels.items()},
        dates={s.name: np.ones((3, 1), np.int32) for s in specs},
        time_valid={s.name: np.ones((3, 1), bool) for s in specs},
        layout=build_layout(specs, [s.name for s in specs], 40.0),
    )
    blocks = jitted_encoder(TINY, params, stats, "block_outputs")
    outputs = [np.asarray(o) for o in blocks(batch, specs, [0, 1])]
    for block, tokens in enumerate(outputs):
        # PANGAEA: per-modality token chunks concatenated on the feature axis, then
        # permute(0, 2, 1).view(B, -1, s, s).
        chunks = np.split(tokens[:, 1:], len(specs), axis=1)
        pangaea = np.concatenate(chunks, axis=-1).transpose(0, 2, 1).reshape(3, -1, side, side)
        assert encoded.maps[block].shape == (3, len(specs) * width, side, side)
        np.testing.assert_allclose(encoded.maps[block], pangaea, atol=ATOL)
        np.testing.assert_allclose(encoded.cls[:, block], tokens[:, 0], atol=ATOL)
    assert not np.allclose(outputs[0], outputs[1], atol=1e-2)  # blocks really differ


def test_modalities_on_other_grids_are_aligned(tmp_path):
    """Same CRS, other GSD and a shifted, larger extent: an exact crop. Other CRS: a warp."""
    s2 = geotiff.read_modality(
        "s2", write_tif(tmp_path / "a.tif", s2_scene(), 10.0), sensor="sentinel2", bands=S2_BANDS
    )
    rng = np.random.default_rng(2)
    wide = rng.integers(0, 1000, (2, 40, 40))
    shifted = (ORIGIN[0] - 80.0, ORIGIN[1] + 100.0)  # 4 columns left, 5 rows up at 20 m
    s1_path = write_tif(tmp_path / "b.tif", wide, 20.0, shifted, dtype="float32")
    s1 = geotiff.read_modality("s1", s1_path, sensor="sentinel1_asc", bands=["VV", "VH"])
    aligned = geotiff.align_to_reference([s2, s1])[1]
    assert aligned.shape == (32, 32) and aligned.gsd == 20.0
    np.testing.assert_array_equal(aligned.pixels[0], wide[:, 5:37, 4:36].transpose(1, 2, 0))
    assert aligned.transform == Affine(20.0, 0, ORIGIN[0], 0, -20.0, ORIGIN[1])

    lonlat_free = write_tif(tmp_path / "c.tif", wide, 20.0, (650_000.0, 5_150_000.0), "EPSG:32633")
    other_crs = geotiff.read_modality("s1", lonlat_free, channels=["asc_vv", "asc_vh"])
    warped = geotiff.align_to_reference([s2, other_crs])[1]
    assert warped.shape == (32, 32) and warped.crs == s2.crs


def test_training_workdir_checkpoint(tmp_path):
    """A run's checkpoint holds the decoder and the AdamW moments too: only the encoder is read."""
    from ramen_jax.training import checkpointing
    from ramen_jax.training import step as step_lib
    from ramen_jax.training.optimizer import TorchAdamWState

    params, stats = random_state(seed=3, has_decoder=True)
    moments = jax.tree.map(np.ones_like, params)
    counts = jax.tree.map(lambda _: np.ones((), np.int32), params)
    optimiser = TorchAdamWState(np.ones((), np.int32), counts, moments, moments)
    state = step_lib.TrainState(np.ones((), np.int32), params, stats, optimiser)
    saver = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=3, async_save=False)
    meta = {"next_step": 5, "model_config": dataclasses.asdict(TINY)}
    saver.save(5, state, meta, wait=True)
    saver.save(7, state._replace(params=jax.tree.map(lambda x: x + 1, params)), meta, wait=True)
    saver.close()
    latest = model_weights.load_encoder_weights(tmp_path)
    assert latest.config == TINY and "step 7" in latest.source
    assert set(latest.params) == {"encoder"} and 0 in latest.params["encoder"]["blocks"]
    np.testing.assert_array_equal(
        latest.params["encoder"]["cls_token"], np.asarray(params["encoder"]["cls_token"]) + 1
    )
    first = model_weights.load_encoder_weights(tmp_path, step=5)
    flat = build_lib.flatten_dict(first.params)
    for path, value in build_lib.flatten_dict({"encoder": params["encoder"]}).items():
        np.testing.assert_array_equal(flat[path], np.asarray(value))
    with pytest.raises(model_weights.ModelCheckpointError, match="no checkpoint of step 6"):
        model_weights.load_encoder_weights(tmp_path, step=6)

    # ... and the converter exports a step of the run, decoder included, to PyTorch
    torch = pytest.importorskip("torch")
    from ramen_jax.convert import cli as convert_cli
    from ramen_jax.convert import mapping

    out = tmp_path / "export.ckpt"
    assert convert_cli.main(["to-torch", str(tmp_path), str(out), "--format", "lightning"]) == 0
    exported = torch.load(out, weights_only=True)["state_dict"]
    latest_params = jax.tree.map(lambda x: np.asarray(x) + 1, params)
    wanted = mapping.to_torch(build_lib.flatten_dict(latest_params))
    assert any(name.startswith("model.decoder.") for name in exported)
    for name, value in wanted.items():
        np.testing.assert_array_equal(exported["model." + name].numpy(), value, err_msg=name)
    released = tmp_path / "released.ckpt"
    assert convert_cli.main(["to-torch", str(tmp_path), str(released), "--step", "5"]) == 0
    first_export = torch.load(released, weights_only=True)["state_dict"]
    assert not any(name.startswith("decoder") for name in first_export)
    np.testing.assert_array_equal(
        first_export["cls_token"].numpy(), np.asarray(params["encoder"]["cls_token"])
    )
    assert convert_cli.main(["to-torch", str(tmp_path), str(released), "--step", "6"]) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sensor", "s2=sentinel9"], "unknown sensor 'sentinel9'"),
        (["--sensor", "s2=sentinel2", "--bands", "s2=B02,B03,B44,B08"], "unknown band"),
        (["--sensor", "s2=sentinel2", "--bands", "s2=B02,B03,B04"], "has 4 band(s) but 3"),
        (["--sensor", "s2=sentinel2"], "has 4 band(s) but 13"),
        (["--channels", "s2=490,560,665,842", "--input", "s1=missing.tif"], "does not exist"),
        (["--channels", "s2=asc_vv,asc_vh,des_vv,des_vh"], "no sar projector"),
        (["--channels", "s2=490,560,665,842", "--gsd", "700"], "coarser than the scene"),
    ],
    ids=["sensor", "band", "count", "preset-count", "missing", "sar", "gsd"],
)
def test_bad_input_gives_one_error_line(optical_model_dir, tmp_path, capsys, extra, message):
    tif = write_tif(tmp_path / "s2.tif", s2_scene(side=32), 10.0)
    argv = ["--checkpoint", str(optical_model_dir), "--out", str(tmp_path / "o"), "--quiet"]
    argv += ["--input", f"s2={tif}"] + ([] if "--gsd" in extra else ["--gsd", "40"]) + extra
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert captured.out == ""


def test_statistics_file_and_scene_fallback(tmp_path):
    rng = np.random.default_rng(6)
    a = inputs.from_array("a", rng.normal(5, 2, (8, 8, 2)), gsd=10, channels=[490, 560])
    b = inputs.from_array("b", rng.normal(-3, 4, (8, 8, 1)), gsd=10, channels=["asc_vv"])
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"a": {"mean": [1.0, 2.0], "std": [2.0, 4.0]}}))
    given, fallback = inputs.normalise_inputs([a, b], inputs.read_stats_file(path))
    np.testing.assert_allclose(given.pixels, (a.pixels - [1.0, 2.0]) / [2.0, 4.0], atol=1e-6)
    expected = (b.pixels - b.pixels.mean()) / b.pixels.std()  # b is not in the file: scene stats
    np.testing.assert_allclose(fallback.pixels, expected, rtol=1e-5, atol=1e-6)
    path.write_text(json.dumps({"a": {"mean": [1.0], "std": [2.0]}}))
    with pytest.raises(inputs.EncodeError, match="1 / 1 values for 2 channels"):
        inputs.normalise_inputs([a], inputs.read_stats_file(path))


def test_array_inputs_must_cover_the_same_ground():
    s2 = inputs.from_array("s2", np.zeros((60, 60, 4)), gsd=10, channels=[490, 560, 665, 842])
    s20 = inputs.from_array("s20", np.zeros((20, 20, 2)), gsd=20, channels=[705, 740])
    with pytest.raises(inputs.EncodeError, match="crop them to the same ground"):
        geotiff.align_to_reference([s2, s20])
    with pytest.raises(inputs.EncodeError, match="3 channel"):
        inputs.from_array("s2", np.zeros((8, 8, 3)), sensor="sentinel2", bands=S2_BANDS)
    with pytest.raises(sensors.ModalityError, match="mix kinds"):
        inputs.from_array("x", np.zeros((8, 8, 2)), gsd=10, channels=[490, "asc_vv"])


SHARDED = """
import sys, numpy as np, jax
from ramen_jax import sensors
from ramen_jax.encode import load_encoder
encoder = load_encoder(sys.argv[1])
assert encoder.num_devices == jax.device_count() == 2, jax.devices()
spec = sensors.modality("s2", "optical", [490, 560, 665, 842], 10, 16)
pixels = np.random.default_rng(4).normal(size=(3, 1, 16, 16, 4))
encoded = encoder.encode({"s2": pixels}, [spec], 20.0)
np.save(sys.argv[2], encoded.maps[0])
"""


def test_batches_are_split_over_devices(model_dir, tmp_path):
    """Two simulated CPU devices (batch of 3 padded to 4) give the one-device result."""
    out = tmp_path / "sharded.npy"
    env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
    command = [sys.executable, "-c", SHARDED, str(model_dir[0]), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    encoder = runner.FrozenEncoder(model_weights.load_encoder_weights(model_dir[0]))
    spec = sensors.modality("s2", "optical", [490, 560, 665, 842], 10, 16)
    pixels = np.random.default_rng(4).normal(size=(3, 1, 16, 16, 4))
    single = encoder.encode({"s2": pixels}, [spec], 20.0).maps[0]
    np.testing.assert_allclose(np.load(out), single, atol=ATOL)
