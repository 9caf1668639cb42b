"""Shooting: exact solutions, symmetry, gradients, flows and their inverses, bad input."""

import pytest
import torch

from conftest import radial_kernels, requires_keops
from lddmm_nets import (CauchyKernel, FeatureMapKernel, GaussianKernel, LaplaceKernel, MaternKernel, integrators,
                        shoot)

F64 = torch.float64
SCHEMES = sorted(integrators.available())


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("kernel", radial_kernels(), ids=repr)
def test_single_landmark_moves_in_a_straight_line_at_constant_speed(kernel, name):
    q0 = torch.tensor([[0.3, -0.2]], dtype=F64)
    p0 = torch.tensor([[1.5, 0.7]], dtype=F64)
    traj = shoot(kernel, q0, p0, n_steps=7, integrator=name, backend="dense")
    expected = q0 + traj.times[:, None, None] * p0
    torch.testing.assert_close(traj.q, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(traj.p, p0.expand_as(traj.p), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", SCHEMES)
def test_symmetric_pair_stays_symmetric(name):
    q0 = torch.tensor([[-0.4, 0.1], [0.4, -0.1]], dtype=F64)
    p0 = torch.tensor([[0.3, 1.0], [-0.3, -1.0]], dtype=F64)
    traj = shoot(GaussianKernel(sigma=0.6), q0, p0, n_steps=20, integrator=name, backend="dense")
    torch.testing.assert_close(traj.q[:, 0], -traj.q[:, 1], rtol=0, atol=1e-13)
    torch.testing.assert_close(traj.p[:, 0], -traj.p[:, 1], rtol=0, atol=1e-13)
    assert float((traj.q[-1] - q0).norm()) > 0.5  # it really moved


def _problem(rng, n=6, d=2):
    q0 = torch.randn(n, d, generator=rng, dtype=F64)
    p0 = 0.5 * torch.randn(n, d, generator=rng, dtype=F64)
    target = q0 + 0.3 * torch.randn(n, d, generator=rng, dtype=F64)
    x = torch.randn(4, d, generator=rng, dtype=F64)
    return q0, p0, target, x


@pytest.mark.parametrize("name,kernel", [
    ("rk4", GaussianKernel(sigma=0.8)),
    ("implicit_midpoint", MaternKernel(nu=2.5, sigma=0.8)),
    ("euler", FeatureMapKernel("tanh", nugget=0.1)),
    ("leapfrog", CauchyKernel(sigma=0.7)),
])
def test_gradcheck_of_the_shooting_loss_in_p0_and_q0(name, kernel, rng):
    q0, p0, target, x = _problem(rng)

    def loss(q0, p0):
        traj = shoot(kernel, q0, p0, n_steps=5, integrator=name, backend="dense")
        return ((traj.q[-1] - target) ** 2).sum() + traj.energy()[0] + (traj.flow(x) ** 2).sum()

    assert torch.autograd.gradcheck(loss, (q0.requires_grad_(True), p0.requires_grad_(True)), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", SCHEMES)
def test_inverse_flow_inverts_the_discrete_flow(name, rng):
    q0, p0, _, _ = _problem(rng, n=8)
    traj = shoot(GaussianKernel(sigma=0.7), q0, 2 * p0, n_steps=10, integrator=name, backend="dense")
    x = 1.5 * torch.randn(50, 2, generator=rng, dtype=F64)
    y = traj.flow(x)
    assert float((y - x).abs().max()) > 0.1
    torch.testing.assert_close(traj.inverse_flow(y), x, rtol=0, atol=1e-10)
    torch.testing.assert_close(traj.flow(traj.inverse_flow(x)), x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", SCHEMES)
def test_points_on_landmarks_follow_the_landmarks(name, rng):
    q0, p0, _, _ = _problem(rng)
    traj = shoot(MaternKernel(nu=1.5, sigma=0.7), q0, p0, n_steps=6, integrator=name, backend="dense")
    torch.testing.assert_close(traj.flow(q0, return_path=True), traj.q, rtol=0, atol=1e-11)


def test_flow_jacobian_matches_finite_differences_and_is_invertible(rng):
    q0, p0, _, _ = _problem(rng, n=5, d=3)
    traj = shoot(GaussianKernel(sigma=0.9), q0, 3 * p0, n_steps=8, backend="dense")
    x = torch.randn(7, 3, generator=rng, dtype=F64)
    J = traj.flow_jacobian(x)
    eps = 1e-6
    fd = torch.stack([(traj.flow(x + eps * e) - traj.flow(x - eps * e)) / (2 * eps) for e in torch.eye(3, dtype=F64)],
                     dim=2)
    torch.testing.assert_close(J, fd, rtol=1e-7, atol=1e-8)
    assert (torch.linalg.det(J) > 0).all()


def test_rk4_energy_is_conserved_along_a_large_deformation(rng):
    q0, p0, _, _ = _problem(rng, n=30)
    H = shoot(GaussianKernel(sigma=0.5), q0, 3 * p0, n_steps=400, backend="dense").energy()
    assert float((H - H[0]).abs().max() / H[0]) < 1e-8


def test_closed_form_and_autograd_shootings_agree(rng):
    q0, p0, _, _ = _problem(rng)
    a = shoot(LaplaceKernel(sigma=0.5), q0, p0, n_steps=10, gradient="closed", backend="dense")
    b = shoot(LaplaceKernel(sigma=0.5), q0, p0, n_steps=10, gradient="autograd", backend="dense")
    torch.testing.assert_close(a.q, b.q, rtol=1e-12, atol=1e-13)


@requires_keops
def test_dense_and_keops_shootings_agree_with_gradients(rng):
    q0, p0, target, _ = _problem(rng, n=40, d=3)
    grads = []
    for backend in ("dense", "keops"):
        p = p0.clone().requires_grad_(True)
        traj = shoot(GaussianKernel(sigma=0.8), q0, p, n_steps=5, backend=backend)
        (g,) = torch.autograd.grad(((traj.q[-1] - target) ** 2).sum(), p)
        grads.append((traj.q[-1].detach(), g))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-12)


def test_device_and_dtype_follow_the_inputs(rng, device):
    q0, p0, _, x = (t.to(device) for t in _problem(rng))
    traj = shoot(GaussianKernel(sigma=1.0), q0.float(), p0.float(), n_steps=3)
    assert traj.q.dtype == torch.float32 and traj.q.device == device
    y = traj.flow(x.float())
    assert y.dtype == torch.float32 and y.device == device


def test_time_rescaling_of_momenta(rng):
    """H is quadratic in p: shooting p over [0, T] is shooting T p over [0, 1]."""
    q0, p0, _, _ = _problem(rng)
    a = shoot(GaussianKernel(sigma=0.8), q0, p0, n_steps=16, t1=2.5, backend="dense")
    b = shoot(GaussianKernel(sigma=0.8), q0, 2.5 * p0, n_steps=16, backend="dense")
    torch.testing.assert_close(a.q, b.q)


@pytest.mark.parametrize("kwargs,message", [
    (dict(p0=torch.zeros(4, 3, dtype=F64)), r"p0: expected shape \(5, 2\) \(as q0\), got \(4, 3\)"),
    (dict(q0=torch.full((5, 2), float("nan"), dtype=F64)), "q0: expected finite values, got 10 NaN or inf"),
    (dict(p0=torch.tensor([[float("inf"), 0.0]] * 5, dtype=F64)), "p0: expected finite values, got 5 NaN or inf"),
    (dict(q0=torch.zeros(5, dtype=F64)), r"q0: expected shape \(N, d\), got shape \(5,\)"),
    (dict(integrator="rk45"), r"integrator: expected one of \["),
    (dict(backend="gpu"), r"backend: expected one of \['auto', 'dense', 'keops'\], got 'gpu'"),
    (dict(n_steps=0), "n_steps: expected an integer >= 1, got 0"),
    (dict(n_steps=2.5), "n_steps: expected an integer >= 1, got 2.5"),
    (dict(p0=torch.zeros(5, 2, dtype=torch.float32)), "p0: expected dtype torch.float64"),
])
def test_bad_input_raises_value_error_naming_the_argument(kwargs, message):
    args = dict(q0=torch.zeros(5, 2, dtype=F64), p0=torch.zeros(5, 2, dtype=F64))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        shoot(GaussianKernel(sigma=1.0), args.pop("q0"), args.pop("p0"), **args)
