"""Integrators: registry, measured convergence orders, energy behaviour."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from lddmm_nets import GaussianKernel, HamiltonianSystem, integrators, shoot
from lddmm_nets.integrators import ImplicitSolveError

F64 = torch.float64
Q0 = torch.tensor([[0.0, 0.0], [1.0, 0.2], [0.3, 1.0]], dtype=F64)
P0 = torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.2, -1.0]], dtype=F64)
KERNEL = GaussianKernel(sigma=1.0)


def test_registry_declares_every_scheme_with_its_order():
    assert integrators.available() == {"euler": 1, "rk2": 2, "rk4": 4, "symplectic_euler": 1,
                                       "implicit_midpoint": 2, "verlet": 2, "leapfrog": 1}


def test_unknown_names_and_options_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"integrator: expected one of \['euler', 'implicit_midpoint'"):
        integrators.get("rk45")
    with pytest.raises(ValueError, match=r"'rk4' takes no options, got unknown \['tol'\]"):
        integrators.get("rk4", tol=1e-3)
    with pytest.raises(ValueError, match=r"'verlet' takes \['tol', 'max_iter'\], got unknown \['n_iter'\]"):
        integrators.get("verlet", n_iter=3)
    with pytest.raises(ValueError, match="tol: expected a finite number > 0"):
        integrators.get("implicit_midpoint", tol=-1.0)


def _scipy_reference(t1=1.0):
    """The same Hamiltonian system solved by scipy's DOP853 at tolerance 1e-13."""
    system = HamiltonianSystem(KERNEL, backend="dense")
    n, d = Q0.shape

    def f(t, z):
        z = torch.from_numpy(z).reshape(2, n, d)
        dq, dp, _ = system.rhs((z[0], z[1], None))
        return torch.stack([dq, dp]).reshape(-1).numpy()

    sol = solve_ivp(f, (0, t1), torch.stack([Q0, P0]).reshape(-1).numpy(), method="DOP853", rtol=1e-13, atol=1e-13)
    return torch.from_numpy(sol.y[:, -1]).reshape(2, n, d)


@pytest.mark.parametrize("name,order", sorted(integrators.available().items()))
def test_measured_convergence_order_matches_declared_order(name, order):
    ref = _scipy_reference()
    steps = [8, 16, 32, 64] if order < 4 else [4, 8, 16, 32]
    errors = []
    for n in steps:
        traj = shoot(KERNEL, Q0, P0, n_steps=n, integrator=name, backend="dense")
        errors.append(float(torch.stack([traj.q[-1], traj.p[-1]]).sub(ref).norm()))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, f"{name}: measured order {slope:.2f}, declared {order}; errors {errors}"


def test_rk4_conserves_h_to_1e8_at_small_step():
    H = shoot(KERNEL, Q0, P0, n_steps=200, integrator="rk4", backend="dense").energy()
    assert float((H - H[0]).abs().max() / H[0]) < 1e-8


def _pair_energy_errors(name, n_periods=40):
    """Two landmarks orbiting each other for a long time (t1 = 60) at step 0.1."""
    q0 = torch.tensor([[-0.5, 0.0], [0.5, 0.0]], dtype=F64)
    p0 = torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=F64)
    traj = shoot(GaussianKernel(sigma=1.0), q0, p0, n_steps=600, t1=60.0, integrator=name, backend="dense")
    H = traj.energy()
    return (H - H[0]).abs() / H[0]


@pytest.mark.parametrize("name", ["symplectic_euler", "implicit_midpoint", "verlet"])
def test_symplectic_schemes_keep_the_energy_error_bounded_over_long_times(name):
    err = _pair_energy_errors(name)
    first, last = float(err[:300].max()), float(err[300:].max())
    assert last < 2 * first + 1e-12, f"{name}: energy error grows from {first:.2e} to {last:.2e}"
    assert last < 0.05
    drift = float(_pair_energy_errors("euler")[-1])
    assert drift > 10 * last, "explicit Euler should drift far more than a symplectic scheme"


def test_implicit_scheme_raises_when_the_step_is_too_large():
    with pytest.raises(ImplicitSolveError, match="did not converge"):
        shoot(GaussianKernel(sigma=1.0), Q0, 20 * P0, n_steps=1, integrator="implicit_midpoint",
              integrator_options={"max_iter": 2})
