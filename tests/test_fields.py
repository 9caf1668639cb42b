"""Grid calculus: exact on polynomials, convergent on smooth fields, differentiable, one code for 1-D/2-D/3-D."""

import math

import pytest
import torch

from lddmm_nets.fields import (compose, divergence, gradient, identity_map, interpolate, jacobian_determinant,
                               resize, warp)

CASES = [((40,), (0.5,)), ((24, 30), (1.0, 0.7)), ((12, 14, 10), (1.0, 1.5, 2.0))]


def _affine_map(shape, spacing, seed=0):
    d = len(shape)
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    x = identity_map(shape, spacing, dtype=torch.float64)
    return A, b, torch.einsum("ij,j...->i...", A, x) + b.reshape((d,) + (1,) * d)


@pytest.mark.parametrize("shape,spacing", CASES)
def test_gradient_and_divergence_exact_on_linear_fields(shape, spacing):
    d = len(shape)
    x = identity_map(shape, spacing, dtype=torch.float64)
    c = torch.arange(1, d + 1, dtype=torch.float64).reshape((d,) + (1,) * d)
    f = (c * x).sum(0) + 3.0
    g = gradient(f, spacing)
    assert g.shape == (d,) + shape
    torch.testing.assert_close(g, c.expand_as(g), atol=1e-10, rtol=0)
    torch.testing.assert_close(divergence(c * x, spacing), (c.sum() * torch.ones(shape, dtype=torch.float64)),
                               atol=1e-10, rtol=0)


def test_gradient_second_order_in_the_interior_with_physical_spacing():
    errs = []
    for n in (32, 64):
        h = 2 * math.pi / n
        x = identity_map((n, n), (h, 2 * h), dtype=torch.float64)
        f = torch.sin(x[0]) * torch.cos(x[1])
        g = gradient(f, (h, 2 * h), boundary="periodic")
        exact = torch.stack([torch.cos(x[0]) * torch.cos(x[1]), -torch.sin(x[0]) * torch.sin(x[1])])
        errs.append(float((g - exact)[:, 2:-2, 2:-2].abs().max()))
    order = math.log2(errs[0] / errs[1])
    assert 1.8 < order < 2.2, errs


@pytest.mark.parametrize("shape,spacing", CASES)
def test_jacobian_determinant_of_affine_map(shape, spacing):
    A, _, phi = _affine_map(shape, spacing)
    det = jacobian_determinant(phi, spacing)
    torch.testing.assert_close(det, torch.full(shape, float(torch.det(A)), dtype=torch.float64), atol=1e-10, rtol=0)
    x = identity_map(shape, spacing, dtype=torch.float64)
    torch.testing.assert_close(jacobian_determinant(phi - x, spacing, displacement=True), det)


@pytest.mark.parametrize("shape,spacing", CASES)
def test_interpolation_exact_for_linear_functions(shape, spacing):
    d = len(shape)
    A, b, phi = _affine_map(shape, spacing)
    g = torch.Generator().manual_seed(1)
    extent = torch.tensor([(n - 1) * h for n, h in zip(shape, spacing)], dtype=torch.float64)
    pts = torch.rand((d, 7, 5), generator=g, dtype=torch.float64) * extent.reshape(d, 1, 1)
    out = interpolate(phi, pts, spacing)
    exact = torch.einsum("ij,j...->i...", A, pts) + b.reshape(d, 1, 1)
    assert out.shape == (d, 7, 5)
    torch.testing.assert_close(out, exact, atol=1e-10, rtol=0)


def test_interpolation_nearest_and_padding():
    f = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    pts = torch.tensor([[0.9, 2.1, -5.0], [1.2, 2.9, 0.0]], dtype=torch.float64)
    near = interpolate(f, pts, (1.0, 1.0), interp="nearest", padding="zeros")
    assert near.tolist() == [f[1, 1].item(), f[2, 3].item(), 0.0]
    border = interpolate(f, pts, (1.0, 1.0), padding="border")
    assert border[2].item() == f[0, 0].item()


def test_compose_translations_and_inverse():
    shape, spacing = (20, 22), (1.0, 0.5)
    x = identity_map(shape, spacing, dtype=torch.float64)
    t1 = torch.tensor([0.3, -0.7], dtype=torch.float64).reshape(2, 1, 1)
    t2 = torch.tensor([-1.1, 0.2], dtype=torch.float64).reshape(2, 1, 1)
    out = compose(x + t1, x + t2, spacing)
    torch.testing.assert_close(out, x + t1 + t2, atol=1e-10, rtol=0)
    # warp of a linear image by a translation is a shift of its values (inside the grid)
    f = 2 * x[0] - x[1]
    w = warp(f, x + t1, spacing)
    torch.testing.assert_close(w[3:-3, 3:-3], (2 * (x[0] + t1[0]) - (x[1] + t1[1]))[3:-3, 3:-3], atol=1e-10, rtol=0)


def test_interpolation_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 6, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pts = (torch.rand(3, 8, generator=g, dtype=torch.float64) * torch.tensor([5.0, 4.0, 3.0],
           dtype=torch.float64).reshape(3, 1) * 0.9 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: interpolate(a, b, (1.0, 1.0, 1.0)), (f, pts))
    phi = (identity_map((5, 4), (1.0, 1.0), dtype=torch.float64) + 0.1 * torch.randn(2, 5, 4, generator=g,
           dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: jacobian_determinant(p, (1.0, 1.0)), (phi,))


def test_resize_keeps_linear_functions_and_follows_dtype():
    x = identity_map((9, 7), (1.0, 1.0), dtype=torch.float32)
    f = x[0] + 2 * x[1]
    r = resize(f, (17, 13))
    assert r.dtype == torch.float32 and r.shape == (17, 13)
    y = identity_map((17, 13), (0.5, 0.5), dtype=torch.float32)
    torch.testing.assert_close(r, y[0] + 2 * y[1], atol=1e-5, rtol=0)


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="spacing"):
        gradient(torch.zeros(4, 4), (1.0, -1.0))
    with pytest.raises(ValueError, match="boundary"):
        gradient(torch.zeros(4, 4), (1.0, 1.0), boundary="mirror")
    with pytest.raises(ValueError, match="x: expected shape"):
        interpolate(torch.zeros(4, 4), torch.zeros(3, 5), (1.0, 1.0))
    with pytest.raises(ValueError, match="interp"):
        interpolate(torch.zeros(4, 4), torch.zeros(2, 5), (1.0, 1.0), interp="cubic")
    with pytest.raises(ValueError, match="phi"):
        jacobian_determinant(torch.zeros(3, 4, 4), (1.0, 1.0))


@pytest.mark.parametrize("target", [(13, 4, 9), (3, 17, 2)])
def test_resize_fast_path_equals_interpolation(target):
    g = torch.Generator().manual_seed(3)
    f = torch.rand(2, 7, 9, 5, generator=g, dtype=torch.float64)
    src = (7, 9, 5)
    x = identity_map(target, [(n - 1) / (m - 1) for n, m in zip(src, target)], dtype=torch.float64)
    torch.testing.assert_close(resize(f, target), interpolate(f, x, (1.0, 1.0, 1.0)), atol=1e-12, rtol=0)


def test_interpolation_is_safe_for_non_finite_and_far_points():
    f = torch.arange(12, dtype=torch.float64).reshape(3, 4) + 1.0
    pts = torch.tensor([[float("nan"), 1e30, -float("inf"), 2.5], [0.0, 1.0, 1.0, 100.0]], dtype=torch.float64)
    out = interpolate(f, pts, (1.0, 1.0), padding="zeros")
    assert torch.isfinite(out).all() and out[:3].tolist() == [0.0, 0.0, 0.0]
    border = interpolate(f, pts, (1.0, 1.0), padding="border")
    assert border[1].item() == f[2, 1].item() and border[3].item() == f[2, 3].item()
