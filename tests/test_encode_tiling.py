"""Tiled encoding of large scenes: exact tile windows and seamless blending.

- With a translation-equivariant stand-in for the encoder (average pooling of each modality to
  the output grid), a scene encoded in many overlapping tiles must equal the one-pass result
  everywhere (1e-5): this checks the tile plan, every modality's windows (10/20/60 m, so the
  lattice unit matters), the ragged right/bottom edges and the weight normalisation.
- With a stand-in that returns one constant per tile, pixels covered by one tile keep that
  tile's value exactly and the blended field changes by at most pi / (2 * overlap) (the raised
  cosine's steepest slope) of the tiles' difference between neighbouring pixels (a hard seam
  would jump by all of it).
- With the real (tiny, random) model, every tile's exclusive interior equals the model's
  encoding of that tile's footprint alone (1e-5), and on a smooth scene with a coarse lattice
  unit the differences across tile edges are no larger than inside tiles (``edge_to_interior``).
"""

import numpy as np
import pytest
from test_encode import TINY, save_encoder

from ramen_jax.encode import inputs, runner, scene, tiling
from ramen_jax.model import weights as model_weights


class PoolingEncoder:
    """Average-pools each modality's tile to the output grid; channels padded to ``embed_dim``."""

    embed_dim = 6

    def check_blocks(self, blocks):
        return (0,)

    def check_specs(self, specs):
        pass

    def encode(self, pixels, specs, gsd, *, dates=None, blocks=None, pad_to=0, reference=None):
        maps = []
        for spec in specs:
            x = pixels[spec.name][:, 0]  # [B, H, H, C]
            factor = round(gsd / spec.gsd)
            b, h, w, c = x.shape
            pooled = x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
            padded = np.zeros((b, self.embed_dim, h // factor, w // factor), np.float32)
            padded[:, :c] = pooled.transpose(0, 3, 1, 2)
            maps.append(padded)
        cls = np.zeros((len(maps[0]), 1, self.embed_dim), np.float32)
        return runner.EncodedBatch(cls, [np.concatenate(maps, axis=1)], (0,))


class TileConstantEncoder(PoolingEncoder):
    """Returns ``1 + tile index`` everywhere in a tile's map (tiles counted across calls)."""

    def __init__(self):
        self.count = 0

    def encode(self, pixels, specs, gsd, **_):
        batch = next(iter(pixels.values())).shape[0]
        side = round(next(iter(pixels.values())).shape[2] * specs[0].gsd / gsd)
        values = self.count + 1 + np.arange(batch, dtype=np.float32)
        self.count += batch
        maps = np.broadcast_to(values[:, None, None, None], (batch, 1, side, side))
        return runner.EncodedBatch(np.zeros((batch, 1, 1)), [np.array(maps)], (0,))


def multi_gsd_scene(rows_m=1260, cols_m=1980, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"b10": (10, 4), "b20": (20, 3), "b60": (60, 2)}
    return [
        inputs.from_array(
            name,
            rng.normal(size=(rows_m // gsd, cols_m // gsd, c)),
            gsd=gsd,
            channels=list(range(500, 500 + 10 * c, 10)),
        )
        for name, (gsd, c) in shapes.items()
    ]


def test_plan_tiles_geometry():
    plan = tiling.plan_tiles((64, 64), 10.0, [10.0], 10.0, tile=32, overlap=8)
    starts = sorted({r for r, _ in plan.origins})
    assert (plan.rows, plan.tile, starts) == (64, 32, [0, 24, 32]) and len(plan.origins) == 9
    one_pass = tiling.plan_tiles((64, 64), 10.0, [10.0], 40.0, tile=32)
    assert one_pass.origins == ((0, 0),) and (one_pass.rows, one_pass.pixel_size) == (16, 40.0)
    # 60 m bands at g = 40 m: tiles start every 3 output pixels (120 m = 2 pixels of 60 m).
    lattice = tiling.plan_tiles((126, 198), 10.0, [10.0, 20.0, 60.0], 40.0, tile=10, overlap=2)
    # 1260 m x 1980 m at 40 m: ceil(31.5) x ceil(49.5) pixels, the last row and column reaching
    # 20 m past the scene (edge to edge); tiles on the 3-pixel lattice may reach past the grid.
    # Tiles of three units overlap by two (a coarse unit: see the real-model seam test).
    assert lattice.tile == 9 and lattice.overlap == 6 and (lattice.rows, lattice.cols) == (32, 50)
    for origin in lattice.origins:
        for gsd in (10.0, 20.0, 60.0):
            scale = 40.0 / gsd
            assert all(float(v * scale).is_integer() for v in (*origin, lattice.tile))
    with pytest.raises(inputs.EncodeError, match="coarser than the scene"):
        tiling.plan_tiles((64, 64), 10.0, [10.0], 700.0, tile=32)
    weights = tiling.taper(8, 3)
    assert weights[4, 4] == 1 and np.isclose(weights[0, 4], np.sin(np.pi / 12) ** 2)
    assert weights.min() > 0 and np.allclose(weights, weights.T)
    ramp = weights[4]  # raised cosine: opposite ramps of one overlap sum to 1 (no bulge)
    assert np.allclose(ramp[:3] + ramp[:3][::-1], 1.0)


def test_tiled_equals_one_pass_for_a_local_encoder():
    modalities = multi_gsd_scene()
    tiled = scene.encode_scene(
        PoolingEncoder(),
        modalities,
        60.0,
        tile=8,
        overlap=3,
        stats=None,
        batch_size=5,
        progress=False,
    )
    assert len(tiled.tile_origins) > 9 and tiled.maps[0].shape == (18, 21, 33)
    whole = PoolingEncoder().encode(
        {m.name: m.pixels[None] for m in modalities},
        [inputs.spec_for(m, m.shape[0]) for m in modalities],
        60.0,
    )  # the whole (not square) scene, pooled in one go
    np.testing.assert_allclose(tiled.maps[0], whole.maps[0][0], atol=1e-5)


def test_blending_is_continuous_and_exact_where_tiles_do_not_overlap():
    modalities = multi_gsd_scene(1200, 1200)
    overlap = 8
    result = scene.encode_scene(
        TileConstantEncoder(),
        modalities[:1],
        10.0,
        tile=40,
        overlap=overlap,
        stats=None,
        progress=False,
    )
    blended = result.maps[0][0]
    plan = tiling.plan_tiles((120, 120), 10.0, [10.0], 10.0, 40, overlap)
    coverage = np.zeros((120, 120), int)
    owner = np.zeros((120, 120))
    for index, (r, c) in enumerate(plan.origins):
        coverage[r : r + 40, c : c + 40] += 1
        owner[r : r + 40, c : c + 40] = index + 1
    single = coverage == 1
    np.testing.assert_allclose(blended[single], owner[single], rtol=1e-6)  # float32 w * x / w
    neighbours = [np.abs(np.diff(owner, axis=a)).max() for a in (0, 1)]
    jumps = [np.abs(np.diff(blended, axis=a)).max() for a in (0, 1)]
    for jump, step in zip(jumps, neighbours, strict=True):
        assert 0 < jump <= np.pi / (2 * overlap) * step, (jump, step)


def test_real_model_tiles_match_their_own_encoding(tmp_path):
    directory = tmp_path / "model"
    save_encoder(directory)
    encoder = runner.FrozenEncoder(model_weights.load_encoder_weights(directory))
    rng = np.random.default_rng(5)
    pixels = rng.normal(size=(112, 112, 4))
    s2 = inputs.from_array("s2", pixels, gsd=10, channels=[490, 560, 665, 842])
    stats = {"s2": (pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1)))}
    result = scene.encode_scene(
        encoder, [s2], 20.0, tile=24, overlap=8, stats=stats, progress=False
    )
    plan = tiling.plan_tiles((112, 112), 10.0, [10.0], 20.0, 24, 8)
    assert len(plan.origins) == 9 and result.maps[0].shape == (TINY.embed_dim, 56, 56)
    normalised = inputs.normalise_inputs([s2], stats)[0].pixels
    crops = np.stack(
        [normalised[:, 2 * r : 2 * r + 48, 2 * c : 2 * c + 48] for r, c in plan.origins]
    )
    spec = inputs.spec_for(s2, 48)
    alone = np.concatenate(  # batches of 8 padded to 8, as encode_scene ran: one compilation
        [
            encoder.encode({"s2": crops[i : i + 8]}, [spec], 20.0, pad_to=8).maps[0]
            for i in range(0, len(crops), 8)
        ]
    )
    coverage = np.zeros((56, 56), int)
    for r, c in plan.origins:
        coverage[r : r + 24, c : c + 24] += 1
    for index, (r, c) in enumerate(plan.origins):
        interior = coverage[r : r + 24, c : c + 24] == 1
        assert interior.sum() >= 64
        got = result.maps[0][:, r : r + 24, c : c + 24][:, interior]
        np.testing.assert_allclose(got, alone[index][:, interior], atol=1e-5)


def test_scene_is_covered_edge_to_edge_with_nodata_marked(tmp_path):
    """28.5 m pixels (Landsat-like) at g = 120 m: 100 x 110 px = 23.75 x 26.125 output pixels.
    The output must have ceil() = 24 x 27 pixels from the scene's corner (the last row and
    column reaching past the edge by less than a pixel; flooring and cutting to the 19-pixel
    lattice unit used to keep 19 x 19, losing 40% of the scene). Output pixels whose footprint
    holds no valid input pixel are NaN, the GeoTIFF's declared nodata: here the input's first
    30 rows are nodata, so output rows 0-6 (footprints ending at 29.5 input rows) are nodata
    and row 7 is not."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(3)
    pixels = rng.normal(size=(100, 110, 4))
    pixels[:30] = np.nan
    corner = Affine(28.5, 0, 500_000.0, 0, -28.5, 4_000_000.0)
    landsat = inputs.from_array(
        "l7",
        pixels,
        gsd=28.5,
        channels=[485, 560, 660, 835],
        crs=rasterio.crs.CRS.from_epsg(32631),
        transform=corner,
    )
    save_encoder(tmp_path / "model")
    encoder = runner.FrozenEncoder(model_weights.load_encoder_weights(tmp_path / "model"))
    result = scene.encode_scene(encoder, [landsat], 120.0, tile=32, progress=False)
    maps = np.asarray(result.maps[0])
    assert maps.shape == (TINY.embed_dim, 24, 27) and result.pixel_size == 120.0
    assert 23 * 120 < 100 * 28.5 <= 24 * 120 and 26 * 120 < 110 * 28.5 <= 27 * 120
    assert result.transform == Affine(120.0, 0, 500_000.0, 0, -120.0, 4_000_000.0)
    nodata = np.isnan(maps).all(axis=0)
    assert nodata[:7].all() and np.isfinite(maps[:, 7:]).all()
    assert result.nodata_pixels == 7 * 27
    scene.write_outputs(result, tmp_path / "out" / "g120m", ("tif",))
    with rasterio.open(tmp_path / "out" / "g120m_block1.tif") as raster:
        assert np.isnan(raster.nodata) and raster.shape == (24, 27)
        assert raster.transform == result.transform
        np.testing.assert_array_equal(raster.read_masks(1) == 0, nodata)


class SmoothWithTileOffsets(PoolingEncoder):
    """The reference modality pooled to the output grid plus one random offset per tile: a
    smooth map whose tiles disagree, as a real encoder's do (each tile sees its own context)."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def encode(self, pixels, specs, gsd, **_):
        x = pixels[specs[0].name][:, 0, ..., 0]  # [B, H, H], the first channel
        factor = round(gsd / specs[0].gsd)
        b, h, _ = x.shape
        pooled = x.reshape(b, h // factor, factor, h // factor, factor).mean(axis=(2, 4))
        offsets = self.rng.normal(0, 1.0, (b, 1, 1))
        maps = (pooled + offsets)[:, None].astype(np.float32)
        return runner.EncodedBatch(np.zeros((b, 1, 1)), [maps], (0,))


def edge_to_interior(maps: np.ndarray, stride: int) -> tuple[float, float]:
    """Seam strength of a map ``[C, H, W]`` (or ``[H, W]``) tiled every ``stride`` pixels: per
    axis (rows, cols), the mean |difference| of neighbouring pixels across the lines
    ``stride, 2 * stride, ...`` over the mean across every other line (1: no seam)."""
    maps = maps.reshape(-1, *maps.shape[-2:])
    ratios = []
    for axis in (1, 2):
        diff = np.abs(np.diff(maps, axis=axis)).mean(axis=(0, 3 - axis))
        edges = (np.arange(1, diff.size + 1) % stride) == 0
        ratios.append(float(diff[edges].mean() / diff[~edges].mean()))
    return ratios[0], ratios[1]


def test_seams_no_stronger_than_the_interior_when_the_unit_is_large():
    """10 m and 60 m inputs at g = 40 m: tiles are multiples of 3 px. ``--tile 5`` used to give
    3-px tiles without overlap (each tile's offset a hard seam); now the tiles grow to 9 px with
    a 6-px overlap, and on a smooth scene the differences across tile edges are no larger than
    inside tiles (the raised-cosine weights of the three tiles over a pixel sum to a constant,
    so the tiles' offsets leave no pattern). Forcing ``overlap=0`` shows what the test would
    catch."""
    y, x = np.mgrid[0:240, 0:240] / 240.0
    smooth = np.sin(2 * np.pi * x) + np.cos(np.pi * y)
    modalities = [
        inputs.from_array("b10", smooth[..., None], gsd=10, channels=[665]),
        inputs.from_array("b60", smooth[::6, ::6, None], gsd=60, channels=[1610]),
    ]
    blended = scene.encode_scene(
        SmoothWithTileOffsets(), modalities, 40.0, tile=5, stats=None, progress=False
    )
    assert (blended.tile_size, blended.overlap) == (9, 6)
    assert "multiples of 3 px" in blended.tiling
    assert max(edge_to_interior(blended.maps[0][0], 3)) <= 1.05  # 1.00 measured
    seamed = scene.encode_scene(
        SmoothWithTileOffsets(), modalities, 40.0, tile=5, overlap=0, stats=None, progress=False
    )
    assert (seamed.tile_size, seamed.overlap) == (3, 0)
    assert max(edge_to_interior(seamed.maps[0][0], 3)) > 3.0


def test_real_model_seams_no_stronger_than_the_interior(tmp_path):
    """The real (tiny, random) model on a smooth ramp, 200 x 200 px of 28.5 m (Landsat-like)
    encoded at 60 m with ``--tile 32``: tiles are multiples of 19 px. The plan is 57-px tiles
    overlapping by 38 (every pixel away from the border in three tiles per axis) with
    raised-cosine weights, and the mean |difference| across the 19-px tile lines is at most
    1.1 x that elsewhere in both directions (0.96 / 0.96 measured; the model encoding the whole
    scene in one pass gives 1.10 / 0.94). The plans this replaced fail the bound: 38-px tiles
    overlapping by 19 with linear ramps gave 1.42 / 1.17, and 19-px tiles without overlap
    (``overlap=0``, checked here) 1.77 / 2.28."""
    save_encoder(tmp_path / "model")
    encoder = runner.FrozenEncoder(model_weights.load_encoder_weights(tmp_path / "model"))
    y, x = np.mgrid[0:200, 0:200] / 200.0
    ramp = np.stack([x + y, x - y, 0.5 * x, y], axis=-1)
    landsat = inputs.from_array("l", ramp, gsd=28.5, channels=[485, 560, 660, 835])
    blended = scene.encode_scene(encoder, [landsat], 60.0, tile=32, progress=False)
    assert (blended.tile_size, blended.overlap, len(blended.tile_origins)) == (57, 38, 9)
    assert "9 tile(s) of 57 px, overlap 38 px" in blended.tiling
    rows, cols = edge_to_interior(np.asarray(blended.maps[0]), 19)
    assert rows <= 1.1 and cols <= 1.1, (rows, cols)
    seamed = scene.encode_scene(encoder, [landsat], 60.0, tile=32, overlap=0, progress=False)
    assert (seamed.tile_size, seamed.overlap) == (19, 0)
    assert min(edge_to_interior(np.asarray(seamed.maps[0]), 19)) > 1.5


def test_a_unit_far_above_the_tile_is_refused_with_its_reason():
    with pytest.raises(inputs.EncodeError, match="pass --tile 57, --overlap 0"):
        tiling.plan_tiles((400, 400), 28.5, [28.5], 60.0, tile=8)
    plan = tiling.plan_tiles((400, 400), 28.5, [28.5], 60.0, tile=8, overlap=0)
    assert (plan.tile, plan.overlap) == (19, 0)
    plan = tiling.plan_tiles((400, 400), 28.5, [28.5], 60.0, tile=57)
    assert (plan.tile, plan.overlap) == (57, 38)  # asked for: the same seamless plan
