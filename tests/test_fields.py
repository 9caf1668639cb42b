"""Grid calculus on a ``Grid``: exact on polynomials, convergent on smooth fields, differentiable, one code for
1-D/2-D/3-D, with origins and directions."""

import math

import numpy as np
import pytest
import torch

from lddmm_nets.fields import (compose, divergence, gradient, interpolate, jacobian_determinant, resample_map, resize,
                               restrict, warp)
from lddmm_nets.grid import Grid, apply_linear

# origins away from 0 so that the frame coordinates' offset is exercised
GRIDS = [Grid((40,), 0.5, origin=-3.0), Grid((24, 30), (1.0, 0.7), origin=(5.0, -2.0)),
         Grid((12, 14, 10), (1.0, 1.5, 2.0), origin=(-90.0, 10.0, 3.0))]


def _affine_map(grid, seed=0):
    d = grid.ndim
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    x = grid.identity_map(dtype=torch.float64)
    return A, b, torch.einsum("ij,j...->i...", A, x) + b.reshape((d,) + (1,) * d)


@pytest.mark.parametrize("grid", GRIDS)
def test_gradient_and_divergence_exact_on_linear_fields(grid):
    d = grid.ndim
    x = grid.identity_map(dtype=torch.float64)
    c = torch.arange(1, d + 1, dtype=torch.float64).reshape((d,) + (1,) * d)
    f = (c * x).sum(0) + 3.0
    g = gradient(f, grid)
    assert g.shape == (d,) + grid.shape
    torch.testing.assert_close(g, c.expand_as(g), atol=1e-10, rtol=0)
    torch.testing.assert_close(divergence(c * x, grid), (c.sum() * torch.ones(grid.shape, dtype=torch.float64)),
                               atol=1e-10, rtol=0)


@pytest.mark.parametrize("grid", GRIDS)
def test_gradient_is_numpys_and_differentiable(grid):
    """The replicate boundary is numpy.gradient's (central inside, one-sided at the edges, physical spacing), on a
    random field with leading axes; gradient and det of the Jacobian pass gradcheck in float64 (their backward
    passes are autograd's through shifted copies and unbinds)."""
    d = grid.ndim
    g = torch.Generator().manual_seed(3)
    f = torch.randn((2,) + grid.shape, generator=g, dtype=torch.float64)
    ref = np.gradient(f.numpy(), *grid.spacing, axis=tuple(range(1, d + 1)), edge_order=1)
    ref = np.stack(ref if d > 1 else [ref], axis=1)
    np.testing.assert_allclose(gradient(f, grid).numpy(), ref, rtol=1e-12, atol=1e-12)
    small = Grid(tuple(min(n, 5) for n in grid.shape), grid.spacing, origin=grid.origin)
    phi = (small.identity_map(dtype=torch.float64) + 0.1 * torch.randn((d,) + small.shape, generator=g,
                                                                      dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: jacobian_determinant(p, small), (phi,))


def test_gradient_second_order_in_the_interior_with_physical_spacing():
    errs = []
    for n in (32, 64):
        h = 2 * math.pi / n
        grid = Grid((n, n), (h, 2 * h))
        x = grid.identity_map(dtype=torch.float64)
        f = torch.sin(x[0]) * torch.cos(x[1])
        g = gradient(f, grid, boundary="periodic")
        exact = torch.stack([torch.cos(x[0]) * torch.cos(x[1]), -torch.sin(x[0]) * torch.sin(x[1])])
        errs.append(float((g - exact)[:, 2:-2, 2:-2].abs().max()))
    order = math.log2(errs[0] / errs[1])
    assert 1.8 < order < 2.2, errs  # central differences: second order


@pytest.mark.parametrize("grid", GRIDS)
def test_jacobian_determinant_of_affine_map(grid):
    A, _, phi = _affine_map(grid)
    det = jacobian_determinant(phi, grid)
    torch.testing.assert_close(det, torch.full(grid.shape, float(torch.det(A)), dtype=torch.float64), atol=1e-10,
                               rtol=0)
    x = grid.identity_map(dtype=torch.float64)
    torch.testing.assert_close(jacobian_determinant(phi - x, grid, displacement=True), det)


@pytest.mark.parametrize("grid", GRIDS)
def test_interpolation_exact_for_linear_functions(grid):
    d = grid.ndim
    A, b, phi = _affine_map(grid)
    g = torch.Generator().manual_seed(1)
    lo = torch.tensor(grid.frame_origin, dtype=torch.float64).reshape(d, 1, 1)
    pts = lo + torch.rand((d, 7, 5), generator=g, dtype=torch.float64) * torch.tensor(
        grid.extent, dtype=torch.float64).reshape(d, 1, 1)
    out = interpolate(phi, pts, grid)
    exact = torch.einsum("ij,j...->i...", A, pts) + b.reshape(d, 1, 1)
    assert out.shape == (d, 7, 5)
    torch.testing.assert_close(out, exact, atol=1e-10, rtol=0)


def test_interpolation_nearest_and_padding():
    f = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    grid = Grid((3, 4))
    pts = torch.tensor([[0.9, 2.1, -5.0], [1.2, 2.9, 0.0]], dtype=torch.float64)
    near = interpolate(f, pts, grid, interp="nearest", padding="zeros")
    assert near.tolist() == [f[1, 1].item(), f[2, 3].item(), 0.0]
    border = interpolate(f, pts, grid, padding="border")
    assert border[2].item() == f[0, 0].item()


def test_compose_translations_and_inverse():
    grid = Grid((20, 22), (1.0, 0.5), origin=(3.0, -4.0))
    x = grid.identity_map(dtype=torch.float64)
    t1 = torch.tensor([0.3, -0.7], dtype=torch.float64).reshape(2, 1, 1)
    t2 = torch.tensor([-1.1, 0.2], dtype=torch.float64).reshape(2, 1, 1)
    out = compose(x + t1, x + t2, grid)
    torch.testing.assert_close(out, x + t1 + t2, atol=1e-10, rtol=0)
    # warp of a linear image by a translation is a shift of its values (inside the grid)
    f = 2 * x[0] - x[1]
    w = warp(f, x + t1, grid)
    torch.testing.assert_close(w[3:-3, 3:-3], (2 * (x[0] + t1[0]) - (x[1] + t1[1]))[3:-3, 3:-3], atol=1e-10, rtol=0)


def test_interpolation_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 6, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pts = (torch.rand(3, 8, generator=g, dtype=torch.float64) * torch.tensor([5.0, 4.0, 3.0],
           dtype=torch.float64).reshape(3, 1) * 0.9 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: interpolate(a, b, Grid((6, 5, 4))), (f, pts))
    grid = Grid((5, 4))
    phi = (grid.identity_map(dtype=torch.float64) + 0.1 * torch.randn(2, 5, 4, generator=g,
           dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: jacobian_determinant(p, grid), (phi,))


def test_resize_and_resample_map_keep_linear_maps_and_follow_dtype():
    grid = Grid((9, 7), origin=(-4.0, 2.0))
    x = grid.identity_map(dtype=torch.float32)
    f = x[0] + 2 * x[1]
    fine = grid.resized((17, 13))
    r = resize(f, fine.shape)
    assert r.dtype == torch.float32 and r.shape == (17, 13) and fine.spacing == (0.5, 0.5)
    y = fine.identity_map(dtype=torch.float32)
    torch.testing.assert_close(r, y[0] + 2 * y[1], atol=1e-5, rtol=0)
    A = torch.tensor([[1.1, 0.2], [-0.1, 0.9]])
    phi = torch.einsum("ij,j...->i...", A, x)
    torch.testing.assert_close(resample_map(phi, grid, fine), torch.einsum("ij,j...->i...", A, y), atol=1e-5, rtol=0)


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="spacing"):
        Grid((4, 4), (1.0, -1.0))
    with pytest.raises(ValueError, match="boundary"):
        gradient(torch.zeros(4, 4), Grid((4, 4)), boundary="mirror")
    with pytest.raises(ValueError, match="x: expected shape"):
        interpolate(torch.zeros(4, 4), torch.zeros(3, 5), Grid((4, 4)))
    with pytest.raises(ValueError, match="interp"):
        interpolate(torch.zeros(4, 4), torch.zeros(2, 5), Grid((4, 4)), interp="quintic")
    with pytest.raises(ValueError, match="cubic.*2-D grids only"):
        interpolate(torch.zeros(4, 4, 4), torch.zeros(3, 5), Grid((4, 4, 4)), interp="cubic")
    with pytest.raises(ValueError, match="shape: expected a coarser grid"):
        restrict(torch.zeros(2, 5, 6), (6, 6))
    with pytest.raises(ValueError, match="phi"):
        jacobian_determinant(torch.zeros(3, 4, 4), Grid((4, 4)))
    with pytest.raises(ValueError, match=r"f: expected spatial shape \(4, 5\)"):
        gradient(torch.zeros(4, 4), Grid((4, 5)))
    with pytest.raises(TypeError, match="grid"):
        gradient(torch.zeros(4, 4), (1.0, 1.0))


def test_restrict_inverts_the_upsampling_and_is_the_least_squares_projection():
    g = torch.Generator().manual_seed(4)
    coarse = torch.randn(2, 9, 6, 5, generator=g, dtype=torch.float64)
    fine_shape = (17, 11, 5)  # one axis unchanged
    torch.testing.assert_close(restrict(resize(coarse, fine_shape), coarse.shape[1:]), coarse, atol=1e-12, rtol=0)
    # for any fine field, the residual of the projection is orthogonal to every upsampled coarse field
    f = torch.randn(2, *fine_shape, generator=g, dtype=torch.float64)
    r = f - resize(restrict(f, (9, 6, 5)), fine_shape)
    for _ in range(3):
        u = resize(torch.randn(2, 9, 6, 5, generator=g, dtype=torch.float64), fine_shape)
        assert abs(float((r * u).sum())) < 1e-10 * float(r.norm() * u.norm())
    assert restrict(f.float(), (9, 6, 5)).dtype == torch.float32


def test_cubic_interpolation_is_exact_on_nodes_and_constants_and_continuously_differentiable():
    # torch's bicubic is Keys' cubic convolution with a = -0.75: interpolating and C¹, exact for constants (not for
    # linear fields: that needs a = -0.5)
    grid = Grid((12, 10))
    g = torch.Generator().manual_seed(5)
    f = torch.randn(12, 10, generator=g, dtype=torch.float64)
    nodes = grid.identity_map(dtype=torch.float64)
    torch.testing.assert_close(interpolate(f, nodes, grid, interp="cubic"), f, atol=1e-12, rtol=0)
    pts = 2.0 + 5.0 * torch.rand(2, 50, generator=g, dtype=torch.float64)  # inside, away from the border
    torch.testing.assert_close(interpolate(torch.full((12, 10), 2.5, dtype=torch.float64), pts, grid, interp="cubic"),
                               torch.full((50,), 2.5, dtype=torch.float64), atol=1e-12, rtol=0)

    def slope(interp, t):  # d/dt f(t, 4.3) by autograd, t on either side of the node t = 5
        x = torch.tensor([[t], [4.3]], dtype=torch.float64, requires_grad=True)
        (dx,) = torch.autograd.grad(interpolate(f, x, grid, interp=interp).sum(), x)
        return float(dx[0, 0])

    jump = {k: abs(slope(k, 5.0 + 1e-7) - slope(k, 5.0 - 1e-7)) for k in ("linear", "cubic")}
    assert jump["cubic"] < 1e-5 < 0.05 < jump["linear"], jump  # C¹ against a kink at every node


@pytest.mark.parametrize("target", [(13, 4, 9), (3, 17, 2)])
def test_resize_fast_path_equals_interpolation(target):
    g = torch.Generator().manual_seed(3)
    f = torch.rand(2, 7, 9, 5, generator=g, dtype=torch.float64)
    src = Grid((7, 9, 5))
    x = src.resized(target).identity_map(dtype=torch.float64)
    torch.testing.assert_close(resize(f, target), interpolate(f, x, src), atol=1e-12, rtol=0)


def test_non_finite_points_give_nan_and_far_points_the_padding():
    # a diverging map must not pass for a valid one: NaN in, NaN out (never the padding value)
    f = torch.arange(12, dtype=torch.float64).reshape(3, 4) + 1.0
    grid = Grid((3, 4))
    pts = torch.tensor([[float("nan"), 1e30, -float("inf"), 2.5], [0.0, 1.0, 1.0, 100.0]], dtype=torch.float64)
    out = interpolate(f, pts, grid, padding="zeros")
    assert torch.isnan(out[0]) and torch.isnan(out[2]) and out[1].item() == 0.0 and out[3].item() == 0.0
    border = interpolate(f, pts, grid, padding="border")
    assert border[1].item() == f[2, 1].item() and border[3].item() == f[2, 3].item()


def test_grid_from_affine_round_trips_world_and_voxel_coordinates():
    c, s = math.cos(0.4), math.sin(0.4)
    A = np.eye(4)
    A[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([1.5, 2.0, 2.5])
    A[:3, 3] = (-90.0, 12.0, 30.0)
    grid = Grid.from_affine(A, (6, 5, 4))
    assert grid.spacing == pytest.approx((1.5, 2.0, 2.5)) and grid.cell_volume == pytest.approx(7.5)
    np.testing.assert_allclose(grid.affine, A, atol=1e-12)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in grid.shape], indexing="ij"))
    world = grid.world().numpy()
    np.testing.assert_allclose(world, np.tensordot(A[:3, :3], idx, axes=1) + A[:3, 3].reshape(3, 1, 1, 1),
                               atol=1e-10)
    np.testing.assert_allclose(grid.world_to_voxel(world), idx, atol=1e-10)
    np.testing.assert_allclose(grid.voxel_to_world(idx), world, atol=1e-10)
    # the one affine product: numpy keeps float32, torch agrees with numpy
    w32 = apply_linear(A[:3, :3], idx.astype(np.float32), A[:3, 3])
    assert w32.dtype == np.float32 and np.abs(w32 - world).max() < 1e-4
    np.testing.assert_allclose(apply_linear(A[:3, :3], torch.from_numpy(idx), A[:3, 3]).numpy(), world, atol=1e-10)
    # frame coordinates are the world ones rotated onto the grid's axes: distances along an axis are spacings
    y = grid.identity_map(dtype=torch.float64)
    np.testing.assert_allclose((y[:, 1] - y[:, 0]).numpy()[0], 1.5, atol=1e-12)
    np.testing.assert_allclose(grid.to_world(y).numpy(), world, atol=1e-10)
    # a 2-D grid reads the top-left block of a 4 x 4 affine
    g2 = Grid.from_affine(np.diag([2.0, 3.0, 1.0, 1.0]), (5, 4))
    assert g2.spacing == (2.0, 3.0) and g2.direction is None


def test_border_taper_is_zero_on_the_border_and_one_inside():
    grid = Grid((30, 24), (1.0, 1.5))
    w = grid.border_taper(6.0)
    assert float(w[0].abs().max()) == float(w[:, -1].abs().max()) == 0.0
    assert torch.all(w[6:-6, 4:-4] == 1.0) and float(w.min()) >= 0.0
