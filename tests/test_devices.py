"""Device-following: the engine's main paths run where their inputs live (CPU here; CUDA too on a GPU machine, via
the ``device`` fixture of conftest.py), keep their results there, and say clearly when inputs disagree."""

import numpy as np
import pytest
import torch

from lddmm_nets import GaussianKernel, Grid, shoot
from lddmm_nets.epdiff import shoot_vector_momentum
from lddmm_nets.fields import interpolate, jacobian_determinant
from lddmm_nets.optim import minimize


def test_shooting_flow_and_inverse_follow_the_device(device):
    g = torch.Generator().manual_seed(0)
    q0 = torch.rand(30, 2, generator=g, dtype=torch.float64).to(device)
    p0 = (0.1 * torch.randn(30, 2, generator=g, dtype=torch.float64)).to(device)
    traj = shoot(GaussianKernel(sigma=0.3), q0, p0, n_steps=10, integrator="rk4", backend="dense")
    x = torch.rand(50, 2, generator=g, dtype=torch.float64).to(device)
    y = traj.flow(x)
    assert y.device == device and traj.q.device == device
    # the discrete inverse is exact up to its fixed-point tolerance
    assert float((traj.inverse_flow(y) - x).abs().max()) < 1e-9
    assert traj.flow_jacobian(x).device == device


def test_kernel_sums_follow_the_device(device):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 3, generator=g, dtype=torch.float64).to(device)
    p = torch.randn(40, 2, generator=g, dtype=torch.float64).to(device)
    k = GaussianKernel(sigma=0.5)
    out = k.matvec(x, None, p, backend="dense")
    ref = k.gram(x.cpu()) @ p.cpu()
    assert out.device == device
    torch.testing.assert_close(out.cpu(), ref, atol=1e-12, rtol=0)


def test_grid_shooting_and_fields_follow_the_device(device):
    grid = Grid((24, 20), (1.0, 1.5), origin=(-5.0, 2.0))
    op = GaussianKernel(sigma=3.0).on_grid(grid, boundary="zero", reach=8.0, unit_mass=True)
    x = grid.identity_map(dtype=torch.float64, device=device)
    bump = torch.exp(-((x - x.mean(dim=(1, 2), keepdim=True)) ** 2).sum(0) / 20.0)
    m0 = torch.stack([0.5 * bump, -0.3 * bump])
    res = shoot_vector_momentum(m0, op, n_steps=5, forward_map=True)
    assert res.inverse_map.device == device and res.energy.device == device
    assert float(jacobian_determinant(res.inverse_map, grid).min()) > 0
    f = 2 * x[0] - x[1]
    torch.testing.assert_close(interpolate(f, x + 0.25, grid)[2:-2, 2:-2], (f + 0.25)[2:-2, 2:-2], atol=1e-10, rtol=0)


def test_the_optimiser_follows_the_device(device):
    target = torch.arange(5, dtype=torch.float64, device=device)
    res = minimize(lambda z: ((z - target) ** 2).sum(), torch.zeros(5, dtype=torch.float64, device=device),
                   max_iter=50, gtol=1e-10, ftol=0.0)
    assert res.x.device == device and res.converged
    torch.testing.assert_close(res.x, target, atol=1e-8, rtol=0)


def test_image_registration_runs_on_the_device(device):
    from registration import register_images

    rng = np.random.default_rng(0)
    shape = (32, 30)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"))
    img = sum(np.exp(-((idx - rng.uniform(8, 22, (2, 1, 1))) ** 2).sum(0) / 18.0) for _ in range(5))
    moving = np.roll(img, 1, axis=0).astype(np.float32)
    res = register_images(img.astype(np.float32), moving, metric="ssd", shrink_factors=(2, 1), iterations=(10, 5),
                          device=str(device), threads=1)
    assert res.similarity_after < 0.5 * res.similarity_before and res.ndv_percent == 0.0


def test_a_trajectory_says_when_points_are_on_another_device():
    q0 = torch.rand(3, 2, dtype=torch.float64)
    traj = shoot(GaussianKernel(sigma=0.5), q0, torch.zeros_like(q0), n_steps=2)
    other = torch.zeros(4, 2, dtype=torch.float64, device="meta")  # a device with no data: stands for "not cpu"
    for call in (traj.flow, traj.inverse_flow, traj.velocity, traj.flow_jacobian):
        with pytest.raises(ValueError, match="trajectory's device"):
            call(other)
