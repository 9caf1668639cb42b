"""Landmark registration: recovery of a known geodesic, monotone objective, result fields, bad input."""

import pytest
import torch

from lddmm_nets import GaussianKernel, shoot
from registration import register_landmarks

F64 = torch.float64


def _known_geodesic(rng, n=12, scale=0.3):
    q0 = torch.randn(n, 2, generator=rng, dtype=F64)
    p0 = scale * torch.randn(n, 2, generator=rng, dtype=F64)
    kernel = GaussianKernel(sigma=0.8)
    return kernel, q0, p0, shoot(kernel, q0, p0, n_steps=10, backend="dense").q[-1]


def test_recovers_the_momentum_of_a_known_geodesic(rng):
    kernel, q0, p0, target = _known_geodesic(rng)
    res = register_landmarks(q0, target, kernel=kernel, sigma=1e-2, n_steps=10, backend="dense", max_iter=400)
    assert res.residual < 1e-4
    # the geodesic through given endpoints is unique here: the momentum is recovered up to the data weight
    assert float((res.p0 - p0).norm() / p0.norm()) < 1e-2
    torch.testing.assert_close(res.transform(q0), res.trajectory.q[-1])
    assert res.regularity == pytest.approx(float(res.trajectory.energy()[0]), rel=1e-10)


def test_whitening_preconditioner_reaches_a_lower_objective(rng):
    kernel, q0, _, target = _known_geodesic(rng)
    final = {pc: register_landmarks(q0, target, kernel=kernel, sigma=1e-2, backend="dense", max_iter=60,
                                    precondition=pc).energy_history[-1] for pc in (True, False)}
    assert final[True] < 0.5 * final[False]


def test_objective_history_decreases_and_callback_sees_it(rng):
    kernel, q0, _, target = _known_geodesic(rng)
    seen = []
    res = register_landmarks(q0, target, kernel=kernel, sigma=0.1, backend="dense", max_iter=15,
                             callback=lambda it, value: seen.append(value))
    history = torch.tensor(res.energy_history)
    assert (history[1:] <= history[:-1] + 1e-12).all()
    assert seen == res.energy_history[1:]
    assert res.n_iter == len(seen) and res.seconds > 0
    assert history[-1] < 0.2 * history[0]
    assert res.energy_history[-1] == pytest.approx(res.regularity + res.data_term, rel=1e-8)


def test_max_iter_is_reported_as_not_converged(rng):
    kernel, q0, _, target = _known_geodesic(rng)
    res = register_landmarks(q0, target, kernel=kernel, sigma=1e-3, backend="dense", max_iter=2)
    assert res.stop_reason == "max_iter" and not res.converged and res.n_iter == 2


@pytest.mark.parametrize("kwargs,message", [
    (dict(target=torch.zeros(3, 2, dtype=F64)), r"target: expected shape \(4, 2\) \(as source\), got \(3, 2\)"),
    (dict(target=torch.full((4, 2), float("nan"), dtype=F64)), "target: expected finite values"),
    (dict(sigma=0.0), "sigma: expected a finite number > 0, got 0.0"),
    (dict(integrator="heun"), "integrator: expected one of"),
    (dict(max_iter=0), "max_iter: expected an integer >= 1, got 0"),
])
def test_bad_input(kwargs, message):
    args = dict(source=torch.rand(4, 2, dtype=F64), target=torch.rand(4, 2, dtype=F64))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        register_landmarks(args.pop("source"), args.pop("target"), **args)
