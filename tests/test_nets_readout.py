"""The readouts of idea registration: the kernel ridge readout's maths (closed-form loss and gradient, conjugate
gradients, Cholesky failures, leave-one-out) and the linear readout after the flow."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons
from sklearn.preprocessing import StandardScaler

from lddmm_nets import GaussianKernel as WideGaussianKernel
from lddmm_nets.backends import matmul_sqdist
from lddmm_nets.nets import (KernelWarpingClassifier, KernelWarpingRegressor, RidgeJitterWarning, loo_select,
                             make_spirals, ridge_loss, ridge_solve)
from lddmm_nets.optim import ConvergenceWarning


# ------------------------------------------------------------------------------------------------ readout maths
def test_ridge_loss_value_and_gradient_match_the_closed_form():
    torch.manual_seed(0)
    k = WideGaussianKernel(sigma=0.7)
    q = torch.randn(15, 2, dtype=torch.float64, requires_grad=True)
    Y = torch.randn(15, 3, dtype=torch.float64)
    lam = 0.1

    def direct(q):
        A = k.gram(q, q) + lam * torch.eye(15, dtype=q.dtype)
        return lam * (Y * torch.linalg.solve(A, Y)).sum()

    val, alpha = ridge_loss(k, q, Y, lam)
    ref = direct(q)
    assert torch.allclose(val, ref, rtol=1e-12)
    (g,) = torch.autograd.grad(val, q)
    (g_ref,) = torch.autograd.grad(ref, q)
    assert torch.allclose(g, g_ref, rtol=1e-9, atol=1e-12)


def test_conjugate_gradients_match_cholesky():
    torch.manual_seed(1)
    k = WideGaussianKernel(sigma=0.5)
    q = torch.randn(50, 3, dtype=torch.float64)
    Y = torch.randn(50, 2, dtype=torch.float64)
    a = ridge_solve(k, q, Y, 0.05, solver="dense")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        b = ridge_solve(k, q, Y, 0.05, solver="cg", backend="dense", tol=1e-12)
    # relative residual 1e-12 with a condition number of at most (λ_max + λ)/λ = 1001 (λ_max ≤ N = 50)
    assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="solver"):
        ridge_solve(k, q, Y, 0.05, solver="qr")


def test_conjugate_gradients_that_stop_early_warn():
    torch.manual_seed(1)
    k = WideGaussianKernel(sigma=0.5)
    q = torch.randn(50, 3, dtype=torch.float64)
    Y = torch.randn(50, 2, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match=r"conjugate gradients stopped after 3 iterations"):
        b = ridge_solve(k, q, Y, 1e-3, solver="cg", backend="dense", tol=1e-12, max_iter=3)
    a = ridge_solve(k, q, Y, 1e-3, solver="dense")
    assert float((a - b).norm() / a.norm()) > 1e-3  # what was returned really is unconverged


def test_a_failed_cholesky_raises_the_diagonal_and_says_so():
    # 50 points within 0.01 of each other: K is numerically rank one, and λ = 1e-8 is far below float32's
    # round-off of K's entries (6e-8), so K + λI is indefinite in float32, not in float64.
    g = torch.Generator().manual_seed(0)
    q = 0.01 * torch.randn(50, 2, generator=g)
    Y = torch.randn(50, 1, generator=g)
    k = WideGaussianKernel(sigma=1.0)
    with pytest.warns(RidgeJitterWarning, match=r"λ = 1e-08, smallest eigenvalue -"):
        alpha = ridge_solve(k, q, Y, 1e-8)
    assert bool(torch.isfinite(alpha).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RidgeJitterWarning)
        ridge_solve(k, q.double(), Y.double(), 1e-8)


def test_leave_one_out_matches_brute_force():
    rng = np.random.default_rng(2)
    q = torch.tensor(rng.normal(size=(25, 2)))
    Y = torch.tensor(rng.normal(size=(25, 1)))
    lam, sigma = 0.05, 0.8
    sel = loo_select(lambda s: WideGaussianKernel(sigma=s), q, Y, [sigma], [lam], classification=False)
    k = WideGaussianKernel(sigma=sigma)
    errs = []
    for i in range(25):
        m = torch.arange(25) != i
        alpha = ridge_solve(k, q[m], Y[m], lam)
        pred = k.gram(q[i:i + 1], q[m]) @ alpha
        errs.append(float(((pred - Y[i]) ** 2).sum()))
    assert sel.score == pytest.approx(-np.mean(errs), rel=1e-8)


def test_matmul_distance_matches_differences():
    torch.manual_seed(3)
    x, y = torch.randn(7, 12, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)
    ref = ((x[:, None] - y[None]) ** 2).sum(-1)
    assert torch.allclose(matmul_sqdist(x, y), ref, atol=1e-12)
    assert float(matmul_sqdist(x, x).diagonal().abs().max()) < 1e-12


# ------------------------------------------------------------------------------------------------ linear readout
def test_linear_readout_without_warp_is_ridge_regression_on_the_inputs():
    # ν = ∞: the readout minimises λ(‖W‖² + ‖b‖²) + ‖[X 1][W; b] - Yc‖² (kernel x·y + 1), in closed form.
    X, y = make_moons(80, noise=0.2, random_state=1)
    clf = KernelWarpingClassifier(readout="linear", nu=np.inf, augment=0, lam=0.3).fit(X, y)
    Y = np.eye(2)[y]
    A = np.c_[X, np.ones(len(X))]
    Wb = np.linalg.solve(A.T @ A + 0.3 * np.eye(3), A.T @ (Y - Y.mean(0)))
    np.testing.assert_allclose(clf.coef_, Wb[:2].T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(clf.intercept_, Wb[2] + Y.mean(0), rtol=1e-9, atol=1e-12)
    s = X @ clf.coef_.T + clf.intercept_
    np.testing.assert_allclose(clf.decision_function(X), s[:, 1] - s[:, 0], rtol=1e-9, atol=1e-12)
    assert clf.n_layers_ == 10 and clf.augment_ == 0 and clf.readout_sigma_ is None
    reg = KernelWarpingRegressor(readout="linear", nu=np.inf, augment=0, lam=0.3).fit(X, 3.0 * X[:, 0] - 1.0)
    assert reg.coef_.shape == (2,) and isinstance(reg.intercept_, float)
    np.testing.assert_allclose(reg.predict(X), X @ reg.coef_ + reg.intercept_, rtol=1e-9, atol=1e-9)
    # two targets of different scales: coef_ and intercept_ are in each target's own units
    Y2 = np.c_[3.0 * X[:, 0] - 1.0, 100.0 * X[:, 1] + 7.0]
    reg2 = KernelWarpingRegressor(readout="linear", nu=np.inf, augment=0, lam=1e-4).fit(X, Y2)
    assert reg2.coef_.shape == (2, 2) and reg2.intercept_.shape == (2,)
    np.testing.assert_allclose(reg2.predict(X), X @ reg2.coef_.T + reg2.intercept_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(reg2.coef_ / [[3.0], [100.0]], [[1.0, 0.0], [0.0, 1.0]], atol=1e-4)
    np.testing.assert_allclose(reg2.intercept_, [-1.0, 7.0], rtol=1e-4)


def test_the_flow_makes_two_spirals_linearly_separable():
    # 160 training points of two spirals: the same linear readout is near chance without the flow, separates
    # held-out points after it (ν fixed at the value nu="auto" picks on spirals, to keep the test short), and the
    # discrete flow stays a diffeomorphism (det of its Jacobian > 0 on a grid around the data).
    X, y = make_spirals(320, noise=0.1, random_state=0)
    X = StandardScaler().fit_transform(X)
    tr, te = np.arange(0, 320, 2), np.arange(1, 320, 2)
    raw = KernelWarpingClassifier(readout="linear", nu=np.inf).fit(X[tr], y[tr])
    clf = KernelWarpingClassifier(readout="linear", nu=1e-3, random_state=0).fit(X[tr], y[tr])
    assert raw.score(X[te], y[te]) < 0.75
    assert clf.score(X[te], y[te]) >= 0.95
    assert clf.augment_ == 1 and clf.warp(X[te]).shape == (160, 3)
    g = np.stack(np.meshgrid(np.linspace(-2.5, 2.5, 30), np.linspace(-2.5, 2.5, 30)), -1).reshape(-1, 2)
    assert clf.jacobian_determinant(g).min() > 0
    # the readout is linear in the warped coordinates
    Z = clf.warp(X[te])
    s = Z @ clf.coef_.T + clf.intercept_
    np.testing.assert_allclose(clf.decision_function(X[te]), s[:, 1] - s[:, 0], atol=1e-9)


def test_an_extra_dimension_lets_a_linear_readout_separate_nested_circles():
    from sklearn.datasets import make_circles

    X, y = make_circles(240, noise=0.05, factor=0.5, random_state=0)
    tr, te = np.arange(0, 240, 2), np.arange(1, 240, 2)
    clf = KernelWarpingClassifier(readout="linear", nu=1e-3, random_state=0).fit(X[tr], y[tr])
    Z = clf.warp(X[te])
    # the symmetry z -> -z is broken by the seeded start: the flow lifts one circle out of the plane
    assert np.abs(Z[:, 2]).max() > 0.1
    assert clf.score(X[te], y[te]) >= 0.95


def test_the_linear_readouts_error_bars_are_bayesian_linear_regression_on_the_warped_points():
    # readout="linear" is kernel ridge regression with the kernel z·z' + 1, so its warped GP is Bayesian linear
    # regression of y on [z, 1] (z = φ(x)): weights ~ N(0, s² I), noise N(0, s² λ). Checked in weight space,
    # with s² the leave-one-out estimate written with the hat matrix H: s² = (1/N) Σ r_i² / (λ (1 - H_ii)).
    rng = np.random.default_rng(0)
    X, _ = make_moons(120, noise=0.2, random_state=3)
    y = 5.0 * X[:, 0] - 2.0 * X[:, 1] + 3.0 + 0.5 * rng.normal(size=120)
    Xt = rng.uniform(-2.0, 3.0, size=(30, 2))
    reg = KernelWarpingRegressor(readout="linear", nu=1e-2, lam=0.1, random_state=0).fit(X, y)
    assert reg.displacement_ > 1e-3  # a real warp
    A = np.c_[reg.readout_.centers.numpy(), np.ones(120)]  # warped training points (the fit's, nugget included)
    At = np.c_[reg.warp(Xt), np.ones(30)]
    lam, yc = reg.lam_, y - y.mean()
    P = np.linalg.inv(A.T @ A + lam * np.eye(A.shape[1]))
    w = P @ A.T @ yc
    r, h = yc - A @ w, np.einsum("ij,jk,ik->i", A, P, A)
    s2 = np.mean(r**2 / (lam * (1.0 - h)))
    np.testing.assert_allclose(reg.signal_variance_, [s2], rtol=1e-9)
    np.testing.assert_allclose(reg.noise_variance_, [s2 * lam], rtol=1e-9)
    mean, std = reg.predict(Xt, return_std=True)
    np.testing.assert_allclose(mean, At @ w + y.mean(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std, np.sqrt(s2 * lam * (np.einsum("ij,jk,ik->i", At, P, At) + 1.0)), rtol=1e-8)
    # the classifier's probabilities: a temperature on the linear scores, argmax kept
    clf = KernelWarpingClassifier(readout="linear", nu=1e-2, random_state=0).fit(X, (y > 3).astype(int))
    proba = clf.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    assert (clf.classes_[proba.argmax(1)] == clf.predict(Xt)).all() and clf.temperature_ > 0
