"""Grid shooting: conservation of ½⟨m, v⟩, first-order convergence in time, scalar = vector momentum,
invertibility, exact autograd gradients (float64), one code path for 1-D, 2-D and 3-D."""

import math

import pytest
import torch

from lddmm_nets.epdiff import coadjoint_transport, grid_energy, image_momentum, shoot_image, shoot_vector_momentum
from lddmm_nets.fields import compose, interpolate, jacobian_determinant
from lddmm_nets.grid import Grid
from lddmm_nets.kernels import GaussianKernel


def _bump(grid, width):
    d = grid.ndim
    x = grid.identity_map(dtype=torch.float64)
    c = torch.tensor([o + e / 2 for o, e in zip(grid.frame_origin, grid.extent)], dtype=torch.float64)
    return x, torch.exp(-((x - c.reshape((d,) + (1,) * d)) ** 2).sum(0) / (2 * width ** 2))


def _setup(shape=(48, 40), spacing=(1.0, 1.25), sigma=4.0, amp=0.03):
    grid = Grid(shape, spacing, origin=(-10.0, 3.0))
    op = GaussianKernel(sigma=sigma).on_grid(grid, boundary="zero")
    x, bump = _bump(grid, 5.0)
    m0 = torch.zeros((len(shape),) + shape, dtype=torch.float64)
    m0[0] = amp * bump
    m0[-1] = -0.5 * amp * bump
    return op, x, bump, m0


def test_zero_momentum_is_identity():
    op, x, bump, m0 = _setup()
    res = shoot_vector_momentum(torch.zeros_like(m0), op, n_steps=4, forward_map=True)
    torch.testing.assert_close(res.inverse_map, x)
    torch.testing.assert_close(res.forward_map, x)
    assert float(res.energy.abs().max()) == 0.0


def test_energy_conserved_and_map_invertible_2d():
    spacing = (1.0, 1.25)
    op, x, bump, m0 = _setup()
    res = shoot_vector_momentum(m0, op, n_steps=20, forward_map=True)
    disp = (res.inverse_map - x).norm(dim=0).max()
    assert disp > 1.0  # a real deformation (voxels)
    e = res.energy
    assert float((e.max() - e.min()) / e[0]) < 0.02
    det = jacobian_determinant(res.inverse_map, op.grid)
    assert float(det.min()) > 0
    back = compose(res.inverse_map, res.forward_map, op.grid) - x
    assert float(back[:, 5:-5, 5:-5].abs().max()) < 0.05 * float(disp)


def test_first_order_convergence_in_time():
    spacing = (1.0, 1.25)
    op, x, bump, m0 = _setup()
    ref = shoot_vector_momentum(m0, op, n_steps=64).inverse_map
    errs = [float((shoot_vector_momentum(m0, op, n_steps=n).inverse_map - ref).abs().max()) for n in (4, 8)]
    rate = math.log2(errs[0] / errs[1])
    assert 0.7 < rate < 1.6, errs


def test_scalar_momentum_equals_vector_momentum():
    spacing = (1.0, 1.25)
    op, x, bump, _ = _setup()
    P = 0.5 * torch.sin(x[0] / 4.0) * bump
    r1 = shoot_image(bump, P, op, n_steps=10, final_momentum=True)
    r2 = shoot_vector_momentum(image_momentum(bump, P, op.grid), op, n_steps=10, final_momentum=True)
    scale = float(r2.momentum.abs().max())
    assert float((r1.momentum - r2.momentum).abs().max()) < 0.1 * scale
    # the final momentum carries the same kinetic energy ½⟨m_1, K m_1⟩ as the initial one
    e1 = grid_energy(r2.momentum, op(r2.momentum), op.grid)
    assert abs(float(e1 / r2.energy[0]) - 1) < 0.03
    moved = float((r1.inverse_map - x).abs().max())
    assert moved > 0.3
    assert float((r1.inverse_map - r2.inverse_map).abs().max()) < 0.05 * moved
    # the image is the moving image pulled back by the inverse map
    torch.testing.assert_close(r1.image, interpolate(bump, r1.inverse_map, op.grid))


def test_image_shooting_gradient_matches_finite_differences():
    shape, spacing = (7, 6), (1.0, 1.5)
    op = GaussianKernel(sigma=2.0).on_grid(Grid(shape, spacing), boundary="zero")
    g = torch.Generator().manual_seed(0)
    img = torch.rand(shape, generator=g, dtype=torch.float64)
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    P = (0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_(True)

    def loss(p):
        res = shoot_image(img, p, op, n_steps=3)
        return ((res.image - target) ** 2).sum() + res.energy[0]

    assert torch.autograd.gradcheck(loss, (P,))


def test_checkpointing_gives_the_same_gradient():
    spacing = (1.0, 1.25)
    op, x, bump, m0 = _setup(shape=(20, 18))
    grads = []
    for ck in (False, True):
        m = m0.clone().requires_grad_(True)
        res = shoot_vector_momentum(m, op, n_steps=5, checkpoint=ck)
        (res.inverse_map ** 2).sum().backward()
        grads.append(m.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("shape,spacing", [((64,), (0.5,)), ((22, 20, 18), (1.0, 1.2, 1.1))])
def test_one_implementation_for_1d_and_3d(shape, spacing):
    d = len(shape)
    op = GaussianKernel(sigma=2.0 * max(spacing)).on_grid(Grid(shape, spacing), boundary="zero")
    x, bump = _bump(op.grid, 2.5 * max(spacing))
    m0 = torch.zeros((d,) + shape, dtype=torch.float64)
    m0[0] = 0.02 * bump
    res = shoot_vector_momentum(m0, op, n_steps=8, forward_map=True)
    assert res.inverse_map.shape == (d,) + shape
    moved = res.inverse_map[0] - x[0]
    assert float(moved.min()) < -0.02  # positive momentum pushes forward: the inverse map looks backward
    assert float(jacobian_determinant(res.inverse_map, op.grid).min()) > 0
    e = res.energy
    assert float((e.max() - e.min()) / e[0]) < 0.05


def test_bad_inputs():
    op = GaussianKernel(sigma=2.0).on_grid(Grid((8, 8), (1.0, 1.0)))
    with pytest.raises(ValueError, match="m0"):
        shoot_vector_momentum(torch.zeros(3, 8, 8), op)
    with pytest.raises(ValueError, match="scalar_momentum"):
        shoot_image(torch.zeros(8, 8), torch.zeros(8, 7), op)
    with pytest.raises(ValueError, match="n_steps"):
        shoot_vector_momentum(torch.zeros(2, 8, 8), op, n_steps=0)
    # the grid comes from the operator: a field of another shape is an error, not a silently wrong velocity
    with pytest.raises(ValueError, match=r"m0: expected shape \(2, 8, 8\)"):
        shoot_vector_momentum(torch.zeros(2, 8, 9), op)
    with pytest.raises(TypeError, match="smoother"):
        shoot_vector_momentum(torch.zeros(2, 8, 8), lambda m: m)


@pytest.mark.parametrize("d", [2, 3])
def test_coadjoint_transport_of_a_linear_momentum_by_a_linear_map_is_exact(d):
    """For psi(x) = A x + c and a linear m0 (both reproduced exactly by the finite differences and the linear
    interpolation inside the grid), |D psi| (D psi)^T m0(psi(x)) = det(A) A^T m0(A x + c) at every interior node."""
    g = torch.Generator().manual_seed(d)
    grid = Grid((12,) * d, spacing=tuple(0.5 + 0.25 * i for i in range(d)))
    x = grid.identity_map(dtype=torch.float64)
    centre = x.reshape(d, -1).mean(1)
    a = torch.eye(d, dtype=torch.float64) + 0.05 * torch.randn(d, d, generator=g, dtype=torch.float64)
    shape1 = (d,) + (1,) * d
    psi = torch.einsum("ij,j...->i...", a, x - centre.reshape(shape1)) + centre.reshape(shape1)
    b = torch.randn(d, d, generator=g, dtype=torch.float64)
    m0_of = lambda y: torch.einsum("ij,j...->i...", b, y) + 1.0  # noqa: E731
    m = coadjoint_transport(m0_of(x), psi, grid)
    expected = torch.linalg.det(a) * torch.einsum("ji,j...->i...", a, m0_of(psi))
    inner = (slice(None),) + (slice(2, -2),) * d
    torch.testing.assert_close(m[inner], expected[inner], rtol=1e-10, atol=1e-10)
