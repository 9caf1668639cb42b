"""Mean-field limit of ResNet weights: W(0) = E[P_0 φ(x)ᵀ], Monte Carlo rate in N, Euler rate in L, the study."""

import warnings

import numpy as np
import pytest
import torch

from lddmm_nets.meanfield import (GaussianDensity, mean_field_weights, network_weights, resnet_weight_convergence,
                                  sample)
from lddmm_nets.nets import ResNetFlow, WeightPath, as_weight_path, fit_flow_network, shoot_weights, weight_distance
from lddmm_nets.optim import ConvergenceWarning


def sample_particles(n, dim, *, seed=0):
    s = sample(GaussianDensity((0.0,) * dim, 1.0), n, method="iid", seed=seed)
    return s.points, s.weights


def quadrature_particles(k, dim, *, mean=0.0, std=1.0):
    s = sample(GaussianDensity((mean,) * dim, std), k ** dim, method="gauss_hermite")
    return s.points, s.weights


def P0(x):
    return torch.stack([0.8 + torch.sin(x[:, 1]), x[:, 0] - 0.5 * torch.cos(x[:, 0] + x[:, 1])], 1)


def slope(x, y):
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# ------------------------------------------------------------------------------------------------ t = 0
def test_mean_field_weights_at_zero_are_the_expectation_for_a_linear_density():
    # P_0(x) = M x + c, φ = identity, μ = N(m 1, s² I): E[P_0 xᵀ] = M (s² I + m² 11ᵀ) + c m 1ᵀ, E[P_0] = M m 1 + c.
    M = torch.tensor([[0.3, -0.7], [1.1, 0.2]], dtype=torch.float64)
    c = torch.tensor([0.5, -0.25], dtype=torch.float64)
    m, s = 0.4, 1.3
    y, w = quadrature_particles(6, 2, mean=m, std=s)
    mf = mean_field_weights(lambda x: x @ M.T + c, y, w, n_steps=2, activation="identity")
    one = torch.ones(2, dtype=torch.float64)
    W0 = M @ (s ** 2 * torch.eye(2, dtype=torch.float64) + m ** 2 * torch.outer(one, one)) + m * torch.outer(c, one)
    torch.testing.assert_close(mf.W[0], W0, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(mf.b[0], m * M @ one + c, rtol=1e-13, atol=1e-13)
    assert float(mf.times[0]) == 0.0


def test_mean_field_weights_at_zero_tanh():
    # Separable check with φ = tanh, P_0(x) = (x_1, 1): W(0) = [[E[x tanh x], 0], [0, 0]], b(0) = (0, 1).
    # On the tensor rule W(0) is exactly the 1-D rule's sum; that sum converges to the integral (200 nodes).
    y, w = quadrature_particles(40, 2)
    mf = mean_field_weights(lambda x: torch.stack([x[:, 0], torch.ones_like(x[:, 0])], 1), y, w, n_steps=1)
    for n, atol in ((40, 1e-14), (200, 1e-6)):
        x1, w1 = np.polynomial.hermite_e.hermegauss(n)
        e = float((w1 * x1 * np.tanh(x1)).sum() / w1.sum())
        expected = torch.tensor([[e, 0.0], [0.0, 0.0]], dtype=torch.float64)
        torch.testing.assert_close(mf.W[0], expected, atol=atol, rtol=0)
    torch.testing.assert_close(mf.b[0], torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-14, rtol=0)


def test_mean_field_weights_at_zero_with_samples_is_the_sample_mean():
    X, _ = sample_particles(300, 2, seed=3)
    mf = mean_field_weights(P0, X, n_steps=4)
    torch.testing.assert_close(mf.W[0], P0(X).T @ torch.tanh(X) / 300, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(mf.b[0], P0(X).mean(0), rtol=1e-14, atol=1e-15)


# ------------------------------------------------------------------------------------------------ distances
def test_weight_distance_is_the_l2_norm_in_time_and_interpolates_nested_depths():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(4, 2, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    W2, b2 = torch.randn(4, 2, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    expected = float(torch.sqrt((((W - W2) ** 2).sum((1, 2)) + ((b - b2) ** 2).sum(1)).mean()))
    assert weight_distance((W, b), (W2, b2)) == pytest.approx(expected, rel=1e-14)
    assert weight_distance((W2, b2), (W, b)) == pytest.approx(expected, rel=1e-14)
    # Depth 8 with each layer repeated twice is the same flow as depth 4: distance 0 on the coarse nodes.
    assert weight_distance((W, b), (W.repeat_interleave(2, 0), b.repeat_interleave(2, 0))) == 0.0
    # A ResNetFlow is read through its layer weights.
    model = ResNetFlow(2, 1, n_layers=4)
    assert weight_distance(model, (W, b)) == pytest.approx(weight_distance(tuple(t.detach() for t in
                                                                                model.layer_weights()), (W, b)))
    assert weight_distance((W, b), (2 * W, 2 * b), relative=True) == pytest.approx(0.5, rel=1e-14)


def test_weight_path_interpolation_is_linear_and_clamped():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    W = torch.stack([k * torch.eye(2, dtype=torch.float64) for k in (0.0, 1.0, 4.0)])
    path = WeightPath(times=t, W=W, b=W[:, 0], kind="samples")
    Wi, bi = path.at(torch.tensor([0.25, 0.75, 2.0], dtype=torch.float64))
    torch.testing.assert_close(Wi[:, 0, 0], torch.tensor([0.5, 2.5, 4.0], dtype=torch.float64))
    torch.testing.assert_close(bi[:, 0], torch.tensor([0.5, 2.5, 4.0], dtype=torch.float64))
    # trapezoid rule on [0, 1]
    torch.testing.assert_close(path.quadrature_weights(), torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))


# ------------------------------------------------------------------------------------------------ rates
def test_network_weights_is_shoot_weights_of_the_scaled_density():
    y, w = quadrature_particles(5, 2)
    path = network_weights(P0, y, w, n_layers=6)
    ref = shoot_weights(w[:, None] * P0(y), y, n_layers=6)
    torch.testing.assert_close(path.W, ref.W, rtol=0, atol=0)
    assert path.kind == "layers" and path.times[1] == pytest.approx(1 / 6)


def test_depth_error_decays_like_one_over_L():
    y, w = quadrature_particles(12, 2)
    mf = mean_field_weights(P0, y, w, n_steps=128)
    Ls = [4, 8, 16, 32, 64]
    nets = [network_weights(P0, y, w, n_layers=L) for L in Ls]
    cauchy = [weight_distance(a, b) for a, b in zip(nets[:-1], nets[1:])]
    to_mf = [weight_distance(n, mf) for n in nets]
    assert slope(Ls[:-1], cauchy) == pytest.approx(-1.0, abs=0.1)
    assert slope(Ls, to_mf) == pytest.approx(-1.0, abs=0.1)


def test_sample_error_decays_like_one_over_sqrt_N():
    Ns = [64, 128, 256, 512, 1024]
    errs = np.zeros((8, len(Ns) - 1))
    for r in range(8):
        X, _ = sample_particles(Ns[-1], 2, seed=r)
        nets = [network_weights(P0, X[:N], n_layers=8) for N in Ns]
        errs[r] = [weight_distance(a, b) for a, b in zip(nets[:-1], nets[1:])]
    assert slope(Ns[:-1], np.sqrt((errs ** 2).mean(0))) == pytest.approx(-0.5, abs=0.2)


def test_trained_network_is_a_least_action_point():
    # The minimiser of Σ w_i |Φ(x_i) − y_i|² + Σ_k (νΔt/2)‖v_k‖² is regenerated from its initial momentum
    # p_0 = -(1/ν) ∂D/∂q_1 (backpropagation) by the discrete Hamiltonian system.
    X, _ = sample_particles(40, 2, seed=1)
    Y = X + 0.4 * torch.sin(X.flip(1))
    nu = 0.1
    fit = fit_flow_network(X, Y, n_layers=6, nu=nu, tol=1e-9)
    model = fit.model
    # the optimiser's report: converged, and the gradient it stopped at is the one of the returned weights
    assert fit.result.converged and fit.result.stop_reason in ("gradient", "objective")
    assert fit.result.grad_norm < 1e-8
    with torch.enable_grad():
        q1 = X + model.dt * model.velocity(X, 0)
        q1 = q1.detach().requires_grad_(True)
        x = q1
        for k in range(1, 6):
            x = x + model.dt * model.velocity(x, k)
        (g,) = torch.autograd.grad(((x - Y) ** 2).sum() / 40, q1)
    shot = shoot_weights(-g / nu, X, n_layers=6)
    assert weight_distance(shot, model, relative=True) < 1e-5


# ------------------------------------------------------------------------------------------------ the study
def test_resnet_weight_convergence_quick():
    from lddmm_nets.meanfield import ROW_COLUMNS

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # every trained network converges
        res = resnet_weight_convergence(quick=True, seed=0)
    rows, slopes = res.rows, res.slopes
    assert all(list(r) == list(ROW_COLUMNS) for r in rows)  # the one row schema
    assert {r["axis"] for r in rows if r["study"] == "resnet_depth"} == {"n_steps"}
    assert {r["axis"] for r in rows if r["study"] == "resnet_samples"} == {"n"}
    assert len(slopes) == 6
    # Tolerances: the quick study has 12 (8 trained) replicates over 4-6 sizes; the slope's sampling spread is
    # about 0.1 for the shot networks and larger for the trained ones (fewer replicates and sizes).
    assert slopes["resnet_samples/shot/weight_change"] == pytest.approx(-0.5, abs=0.2)
    assert slopes["resnet_samples/shot/weight_error"] == pytest.approx(-0.5, abs=0.2)
    assert slopes["resnet_depth/shot/weight_change"] == pytest.approx(-1.0, abs=0.1)  # deterministic (quadrature)
    assert slopes["resnet_depth/trained/weight_change"] == pytest.approx(-1.0, abs=0.1)
    assert slopes["resnet_samples/trained/weight_change"] == pytest.approx(-0.5, abs=0.3)
    assert slopes["resnet_samples/trained/weight_error"] == pytest.approx(-0.5, abs=0.3)
    assert all(np.isfinite(r["error"]) and r["error"] > 0 for r in rows)


@pytest.mark.slow
def test_resnet_weight_convergence_full():
    slopes = resnet_weight_convergence(quick=False, seed=1).slopes
    for study, target, tol in (("resnet_samples/shot/weight_change", -0.5, 0.15),
                               ("resnet_samples/shot/weight_error", -0.5, 0.15),
                               ("resnet_depth/shot/weight_change", -1.0, 0.1),
                               ("resnet_samples/trained/weight_change", -0.5, 0.2),
                               ("resnet_samples/trained/weight_error", -0.5, 0.2),
                               ("resnet_depth/trained/weight_change", -1.0, 0.1)):
        assert slopes[study] == pytest.approx(target, abs=tol), study


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, name", [
    (lambda: sample(GaussianDensity((0.0, 0.0)), 0), "n"),
    (lambda: GaussianDensity((0.0, 0.0), std=-1.0), "std"),
    (lambda: sample(GaussianDensity((0.0, 0.0)), 4, method="quadrature"), "method"),
    (lambda: network_weights(P0, torch.zeros(5, 2, dtype=torch.float64), n_layers=0), "n_layers"),
    (lambda: network_weights(P0, torch.zeros(5, 2, dtype=torch.float64), n_layers=3, activation="gelu"),
     "activation"),
    (lambda: network_weights(torch.zeros(4, 2, dtype=torch.float64), torch.zeros(5, 2, dtype=torch.float64),
                             n_layers=3), "P0"),
    (lambda: mean_field_weights(P0, torch.zeros(5, 2, dtype=torch.float64), torch.ones(4, dtype=torch.float64)),
     "weights"),
    (lambda: mean_field_weights(P0, torch.zeros(5, dtype=torch.float64)), "particles"),
    (lambda: weight_distance((torch.zeros(3, 2, 2), torch.zeros(3, 2)), (torch.zeros(3, 3, 3), torch.zeros(3, 3))),
     "model_b"),
    (lambda: as_weight_path("not a network"), "model"),
    (lambda: fit_flow_network(torch.zeros(5, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64),
                              n_layers=2, nu=0.1), "Y"),
    (lambda: fit_flow_network(torch.zeros(5, 2, dtype=torch.float64), torch.zeros(5, 2, dtype=torch.float64),
                              n_layers=2, nu=0.0), "nu"),
    (lambda: resnet_weight_convergence(quick="yes"), "quick"),
    (lambda: resnet_weight_convergence(seed=-1), "seed"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected .*, got "):
        call()
