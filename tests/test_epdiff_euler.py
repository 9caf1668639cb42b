"""Eulerian grid EPDiff (``solve_epdiff``): energy conserved to the scheme's order, solution order in time,
periodic = padded for compact data, one code path in 1-D/2-D/3-D, single peakon of Camassa–Holm, input checks."""

import math

import pytest
import torch

from lddmm_nets import GaussianKernel, Grid, LaplaceKernel, sobolev_operator
from lddmm_nets.epdiff import EPDiffInstabilityError, EPDiffSolution, solve_epdiff
from lddmm_nets.meanfield import fit_loglog_slope



def _blob(d, cells, extent=4.0, std=0.35):
    h = extent / cells
    grid = Grid((cells,) * d, spacing=h, origin=-extent / 2 + h / 2)
    x = grid.world()
    rho = torch.exp(-(x**2).sum(0) / (2 * std**2)) / (2 * math.pi * std**2) ** (d / 2)
    P = torch.stack([torch.cos(2 * x[(i + 1) % d] + 0.7 * i) for i in range(d)])
    return grid, P * rho


@pytest.mark.parametrize("d,cells", [(1, 64), (2, 32), (3, 16)])
def test_energy_drift_decreases_at_the_schemes_order(d, cells):
    grid, m0 = _blob(d, cells)
    op = GaussianKernel(sigma=0.3).on_grid(grid)
    steps = (8, 16, 32, 64)
    for name, order in (("euler", 1), ("rk2", 2), ("rk4", 4)):
        drift = [solve_epdiff(m0, op, n_steps=n, integrator=name, save_every=n).energy_drift() for n in steps]
        slope = fit_loglog_slope([1 / n for n in steps], drift)
        # the semi-discrete system conserves ½⟨m, v⟩ exactly: the drift is the time scheme's, at least O(h^order)
        assert slope >= order - 0.3, (name, drift, slope)
        if name == "euler":
            assert abs(slope - 1) < 0.3


def test_solution_converges_at_the_schemes_order_2d():
    grid, m0 = _blob(2, 32)
    op = GaussianKernel(sigma=0.3).on_grid(grid, boundary="zero")
    ref = solve_epdiff(m0, op, n_steps=64, integrator="rk4", save_every=64).velocity[-1]
    for name, order, steps in (("euler", 1, (8, 16, 32)), ("rk2", 2, (4, 8, 16))):
        errs = [float((solve_epdiff(m0, op, n_steps=n, integrator=name, save_every=n).velocity[-1] - ref).norm()
                      / ref.norm()) for n in steps]
        assert abs(fit_loglog_slope([1 / n for n in steps], errs) - order) < 0.3, (name, errs)


def test_periodic_and_padded_agree_for_compact_momentum_and_stay_inside():
    grid, m0 = _blob(2, 48)
    kernel = GaussianKernel(sigma=0.2)
    a = solve_epdiff(m0, kernel.on_grid(grid, "periodic"), n_steps=10)
    b = solve_epdiff(m0, kernel.on_grid(grid, "zero"), n_steps=10)
    assert isinstance(b, EPDiffSolution) and b.momentum.shape == (11, 2, 48, 48) and b.velocity.shape == (11, 2, 48, 48)
    torch.testing.assert_close(a.velocity[-1], b.velocity[-1], atol=1e-5 * float(a.velocity.abs().max()), rtol=0)
    assert float(b.outside.max()) < 1e-4 and float(a.outside.abs().max()) == 0
    assert float(b.times[-1]) == pytest.approx(1.0) and b.at(0.5) == 5


def test_sobolev_operator_and_float32_follow_the_input():
    grid, m0 = _blob(2, 16)
    sol = solve_epdiff(m0.float(), sobolev_operator(grid, alpha=0.05, s=2.0), n_steps=8, save_every=4)
    assert sol.momentum.dtype == torch.float32 and sol.energy.dtype == torch.float32
    assert sol.times.tolist() == [0.0, 0.5, 1.0]
    fine = solve_epdiff(m0, sobolev_operator(grid, alpha=0.05, s=2.0), n_steps=32, save_every=32)
    assert fine.energy_drift() < 0.1 * sol.energy_drift() < 1e-3


def test_single_peakon_travels_at_its_height_on_the_grid():
    # Camassa–Holm: a momentum of mass c concentrated at a point is the peakon c e^{-|x - ct|}. A narrow Gaussian
    # of width w is a smoothed peakon; its crest speed and height both tend to c as w -> 0.
    L, c = 20.0, 1.0
    speed_err = []
    for n, w in ((512, 0.1), (1024, 0.05)):
        grid = Grid((n,), spacing=L / n, origin=-L / 2)
        x = grid.world()[0]
        m0 = (c * torch.exp(-x**2 / (2 * w * w)) / math.sqrt(2 * math.pi * w * w))[None]
        sol = solve_epdiff(m0, LaplaceKernel(sigma=1.0).on_grid(grid), n_steps=200, t1=2.0, save_every=200)
        crest = []
        for u in sol.velocity[:, 0]:
            i = int(u.argmax())
            a, b, cc = (float(u[j]) for j in (i - 1, i, i + 1))
            crest.append(float(x[i]) + 0.5 * (a - cc) / (a - 2 * b + cc) * (L / n))
        speed = (crest[-1] - crest[0]) / 2.0
        height = float(sol.velocity[-1, 0].max())
        assert abs(speed - height) < 0.05 * c
        speed_err.append(abs(speed - c))
    assert speed_err[1] < 0.02 and speed_err[1] < 0.7 * speed_err[0]


def test_bad_inputs_raise_named_errors():
    grid, m0 = _blob(2, 8)
    op = GaussianKernel(sigma=0.3).on_grid(grid)
    with pytest.raises(ValueError, match="integrator: expected an explicit"):
        solve_epdiff(m0, op, integrator="verlet")
    with pytest.raises(ValueError, match="integrator: expected one of"):
        solve_epdiff(m0, op, integrator="nope")
    with pytest.raises(ValueError, match=r"m0: expected shape \(2, 8, 8\)"):
        solve_epdiff(m0[:1], op)
    with pytest.raises(ValueError, match="smoother: expected a GridOperator"):
        solve_epdiff(m0, lambda m: m)
    with pytest.raises(ValueError, match="n_steps: expected an integer"):
        solve_epdiff(m0, op, n_steps=0)


def test_too_few_steps_raise_a_named_instability_and_the_courant_number_is_reported():
    grid, m0 = _blob(1, 1024)
    op = LaplaceKernel(sigma=0.25).on_grid(grid, boundary="zero")
    with pytest.raises(EPDiffInstabilityError, match="take more n_steps"):
        solve_epdiff(20 * m0, op, n_steps=10, save_every=10)
    sol = solve_epdiff(m0, op, n_steps=400, save_every=400)
    assert 0 < sol.max_cfl < 1 and sol.energy_drift() < 1e-6
