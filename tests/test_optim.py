"""The engine's one optimiser: convergence on known minima, the feasibility hook, the stopping rule, warnings."""

import math
import warnings

import pytest
import torch

from lddmm_nets.optim import ConvergenceWarning, minimize


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


@pytest.mark.parametrize("kw", [dict(line_search="wolfe"), dict(line_search="armijo"), dict(method="scipy")])
def test_rosenbrock_minimum_is_found(kw):
    # the minimum of the 10-D Rosenbrock function is x = 1 (f = 0); 1e-6 is far below the starting error of 1
    res = minimize(rosenbrock, torch.zeros(10, dtype=torch.float64), max_iter=500, gtol=1e-9, ftol=0.0, warn=False,
                   **kw)
    assert (res.x - 1).abs().max() < 1e-6
    assert res.fun < 1e-12
    assert res.n_eval >= res.n_iter > 10
    assert res.x.dtype == torch.float64 and res.x.shape == (10,)


def test_quadratic_converges_by_gradient_rule_and_reports_it():
    A = torch.diag(torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64))
    b = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    res = minimize(lambda x: 0.5 * x @ A @ x - b @ x, torch.zeros(3, dtype=torch.float64), max_iter=100, gtol=1e-8,
                   ftol=0.0)
    assert res.converged and res.stop_reason == "gradient"
    assert torch.allclose(res.x, torch.linalg.solve(A, b), atol=1e-7)
    # L-BFGS on a 3-D quadratic with exact (Wolfe) line searches needs few iterations
    assert res.n_iter <= 12


@pytest.mark.parametrize("line_search", ["armijo", "wolfe"])
def test_infeasible_points_are_never_accepted(line_search):
    # minimum of |x - (1, 1)|² subject to the barrier x_0 <= 0.5: every accepted iterate must be feasible
    seen = []

    def fun(x):
        if float(x[0]) > 0.5:
            return None
        return ((x - 1) ** 2).sum()

    res = minimize(fun, torch.zeros(2, dtype=torch.float64), line_search=line_search, max_iter=50, warn=False,
                   callback=lambda it, f, aux: seen.append(f))
    assert float(res.x[0]) <= 0.5
    assert all(math.isfinite(f) for f in seen)
    assert res.fun < 1.0  # it did move towards the optimum (f(0) = 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wolfe_search_stops_at_a_wall_of_infeasible_points(dtype):
    """``-x_0`` decreases up to the wall ``x_0 <= 0.3``, so no step satisfies the curvature condition: the search
    takes a sufficient-decrease step within an eighth of the wall (1, 0.5 infeasible, 0.25 feasible, 0.375 and
    0.3125 infeasible, 0.28125 feasible), not 25 bisections of the wall."""
    res = minimize(lambda x: None if float(x[0]) > 0.3 else -x[0], torch.zeros(1, dtype=dtype), max_iter=1,
                   warn=False)
    assert res.n_iter == 1 and res.n_eval == 7
    assert 0.3 / (1 + 0.125) <= float(res.x[0]) <= 0.3


def test_infeasible_start_and_non_finite_start_are_named():
    res = minimize(lambda x: None, torch.zeros(2), warn=False)
    assert res.stop_reason == "infeasible_start" and not res.converged
    res = minimize(lambda x: (x / 0).sum(), torch.zeros(2), warn=False)
    assert res.stop_reason == "non_finite" and not res.converged


def test_budget_spent_warns_unless_told_not_to():
    with pytest.warns(ConvergenceWarning, match="iteration budget spent"):
        res = minimize(rosenbrock, torch.zeros(4, dtype=torch.float64), max_iter=3, name="rosen")
    assert res.stop_reason == "max_iter" and not res.converged and res.n_iter == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minimize(rosenbrock, torch.zeros(4, dtype=torch.float64), max_iter=3, warn=False)


def test_aux_values_and_history_follow_the_iterations():
    res = minimize(lambda x: (((x - 2) ** 2).sum(), x.sum()), torch.zeros(3, dtype=torch.float64), max_iter=20,
                   line_search="armijo", gtol=1e-12, ftol=1e-14, warn=False)
    assert len(res.history) == len(res.aux_history) == res.n_iter
    assert all(b <= a for a, b in zip(res.history, res.history[1:]))  # monotone decrease
    assert abs(res.aux - 6.0) < 1e-6


def test_polyak_average_is_the_mean_of_the_accepted_iterates():
    # the path is deterministic: a run stopped after k iterations ends at the k-th iterate of a longer one
    x0 = torch.zeros(4, dtype=torch.float64)
    kw = dict(ftol=0.0, gtol=0.0, line_search="armijo", warn=False)
    ends = [minimize(rosenbrock, x0, max_iter=k, **kw).x for k in range(3, 9)]
    res = minimize(rosenbrock, x0, max_iter=8, average_from=3, **kw)
    assert res.n_iter == 8 and torch.equal(res.x, ends[-1])
    assert torch.allclose(res.x_mean, torch.stack(ends).mean(0), rtol=0.0, atol=1e-12)
    assert not torch.allclose(res.x_mean, res.x)  # the iterates moved: the mean is not the last one
    # a run that stops before the averaging starts keeps its last iterate; without averaging there is no mean
    short = minimize(rosenbrock, x0, max_iter=2, average_from=3, **kw)
    assert torch.equal(short.x_mean, short.x)
    assert torch.equal(minimize(rosenbrock, x0, max_iter=0, average_from=1).x_mean, x0)
    assert minimize(rosenbrock, x0, max_iter=2, **kw).x_mean is None


def test_bad_options_name_the_argument():
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="average_from"):
            minimize(rosenbrock, torch.zeros(2), average_from=bad)
    with pytest.raises(ValueError, match="average_from"):
        minimize(rosenbrock, torch.zeros(2), method="scipy", average_from=2)
    with pytest.raises(ValueError, match="method"):
        minimize(rosenbrock, torch.zeros(2), method="bfgs")
    with pytest.raises(ValueError, match="line_search"):
        minimize(rosenbrock, torch.zeros(2), line_search="exact")
    with pytest.raises(ValueError, match="x0"):
        minimize(rosenbrock, torch.zeros(2, dtype=torch.int64))
