"""Host-side resampling matrices against PyTorch's ``F.interpolate`` (the original's semantics)."""

import numpy as np
import pytest

from ramen_jax import geometry

torch = pytest.importorskip("torch")
F = torch.nn.functional

# (input side, scale factor): the paper's and the fixtures' ratios, up and down.
SCALES = [
    (4, 13 / 4),
    (16, 0.5),
    (27, 1.5 / 3.1),
    (4, 10 / 3.1),
    (13, 3.1 / 1.5),
    (32, 1.25 / 5),
    (8, 5 / 1.25),
    (10, 10.24 / 3),
    (512, 0.2 / 3),
    (263, 1.5 / 7),
    (64, 10 / 30),
    (5, 3.0),
    (39, 10 / 13),
]


@pytest.mark.parametrize("side,scale", SCALES)
def test_bilinear_by_scale_factor_matches_torch(side, scale):
    x = np.random.default_rng(side).standard_normal((1, 1, side, side))
    ref = F.interpolate(
        torch.from_numpy(x), scale_factor=scale, mode="bilinear", align_corners=False
    ).numpy()[0, 0]
    out_side = geometry.scaled_side(side, scale)
    assert ref.shape == (out_side, out_side)
    m = geometry.bilinear_matrix(side, out_side, scale)
    np.testing.assert_allclose(m @ x[0, 0] @ m.T, ref, rtol=0, atol=1e-13)
    assert np.allclose(m.sum(axis=1), 1.0)  # what lets resizing commute with affine maps


@pytest.mark.parametrize("side,out", [(12, 13), (26, 27), (4, 16), (13, 5), (8, 8), (100, 37)])
def test_bilinear_by_size_and_nearest_match_torch(side, out):
    x = np.random.default_rng(out).standard_normal((1, 1, side, side))
    ref = F.interpolate(torch.from_numpy(x), size=(out, out), mode="bilinear").numpy()[0, 0]
    m = geometry.bilinear_matrix(side, out)
    np.testing.assert_allclose(m @ x[0, 0] @ m.T, ref, rtol=0, atol=1e-13)
    x32 = x.astype(np.float32)
    nearest = F.interpolate(torch.from_numpy(x32), size=(out, out), mode="nearest").numpy()
    index = geometry.nearest_index(side, out)
    np.testing.assert_array_equal(x32[0, 0][index][:, index], nearest[0, 0])


def test_composed_resize_is_the_two_step_original():
    """encoder_resize = resize by gsd/g, then (if the side differs) resize to the grid side."""
    side, gsd, g = 4, 10.0, 3.1
    grid = geometry.grid_side(27, 1.5, g)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, side, side)))
    step = F.interpolate(x, scale_factor=gsd / g, mode="bilinear", align_corners=False)
    assert step.shape[-1] != grid  # the second resize runs in this case (fixtures: fx_c s2)
    ref = F.interpolate(step, size=(grid, grid), mode="bilinear").numpy()[0, 0]
    m = geometry.encoder_resize(side, gsd, g, grid)
    np.testing.assert_allclose(m @ x.numpy()[0, 0] @ m.T, ref, atol=1e-13)
    assert geometry.grid_side(30, 1.2, 6.0) == 5  # truncation like the original (5.999...)
