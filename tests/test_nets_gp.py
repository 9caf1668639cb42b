"""The warped GP of idea registration (THEORY §10): sklearn's GP without warp, the kriging bound through the warp,
coverage on GP samples, the two scale estimators, sample_y, and the LOO temperature of predict_proba."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.datasets import make_blobs
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from lddmm_nets import GaussianKernel
from lddmm_nets.nets import KernelWarpingClassifier, KernelWarpingRegressor, warped_gp_posterior
from lddmm_nets.nets import gp as gp_module

NO_WARP = 1e12  # ν so large that the optimal momenta are below round-off: fit keeps the identity warp


def _sklearn_gpr(est, X, y, sigma, lam, output=0):
    """scikit-learn's GP with the estimator's fixed kernel: s² RBF(σ) + s² λ White, targets normalised as ours."""
    s2 = est.signal_variance_[output] / est.y_scale_[output] ** 2
    kernel = ConstantKernel(s2, "fixed") * RBF(sigma, "fixed") + WhiteKernel(s2 * lam, "fixed")
    return GaussianProcessRegressor(kernel, alpha=0.0, normalize_y=True, optimizer=None).fit(X, y)


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_no_warp_equals_sklearn_gaussian_process(n_outputs):
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (40, 2))
    Y = np.stack([np.sin(X[:, 0]), 3 * np.cos(X[:, 1]) + 5], 1) + 0.1 * rng.normal(size=(40, 2))
    y = Y[:, 0] if n_outputs == 1 else Y
    est = KernelWarpingRegressor(nu=NO_WARP, readout_sigma=0.8, lam=0.05, random_state=0).fit(X, y)
    assert est.displacement_ == 0.0
    Xt = rng.uniform(-2.5, 2.5, (30, 2))
    mean, std = est.predict(Xt, return_std=True)
    _, cov = est.predict(Xt, return_cov=True)
    assert mean.shape == std.shape == (30,) + (() if n_outputs == 1 else (2,))
    assert cov.shape == (30, 30) + (() if n_outputs == 1 else (2,))
    for j in range(n_outputs):
        yj = y if n_outputs == 1 else y[:, j]
        m2, s2 = _sklearn_gpr(est, X, yj, 0.8, 0.05, j).predict(Xt, return_std=True)
        _, c2 = _sklearn_gpr(est, X, yj, 0.8, 0.05, j).predict(Xt, return_cov=True)
        pick = (lambda a: a) if n_outputs == 1 else (lambda a: a[..., j])
        # float64 Cholesky solves of a 40 x 40 system with condition ~1e3: agreement to ~1e-13
        np.testing.assert_allclose(pick(mean), m2, rtol=0, atol=1e-8)
        np.testing.assert_allclose(pick(std), s2, rtol=0, atol=1e-8)
        np.testing.assert_allclose(pick(cov), c2, rtol=0, atol=1e-8)
    np.testing.assert_allclose(est.noise_variance_, est.signal_variance_ * 0.05, rtol=1e-12)


def test_kriging_bound_holds_through_the_warp():
    """|f†(x) - f̄(x)| <= σ(x) ‖g‖_K for f† = g ∘ φ, g in the RKHS of K, noise-free values at the training points.

    For noise-free data the bound holds for every λ >= 0 with σ the latent posterior standard deviation:
    ‖k_x - Σ_i w_i k_{x_i}‖² = σ²(x) - λ |w|² with w = (K + λI)^{-1} k_X(x); λ → 0 makes it tight.
    """
    rng = np.random.default_rng(1)
    X = rng.uniform(-1.5, 1.5, (60, 2))
    y = np.tanh(3 * X[:, 0] * X[:, 1])
    est = KernelWarpingRegressor(nu=1e-3, readout_sigma=0.5, lam=1e-3, n_layers=4, max_iter=30,
                                 random_state=0).fit(X, y)
    assert est.displacement_ > 0.05  # a real warp
    kernel = est.readout_.kernel
    centers = torch.as_tensor(est.warp(X))
    z = torch.as_tensor(rng.uniform(-1.5, 1.5, (8, 2)))  # g = Σ_j c_j k(., z_j), ‖g‖² = cᵀ K(z, z) c
    c = torch.as_tensor(rng.normal(size=(8, 1)))
    g_norm = float(torch.sqrt(c.T @ kernel.gram(z) @ c))
    g = lambda w: kernel.gram(w, z) @ c  # noqa: E731
    Xt = rng.uniform(-2, 2, (500, 2))
    wt = torch.as_tensor(est.warp(Xt))
    zero = torch.zeros(1, dtype=torch.float64)
    for lam in (1e-10, 1e-3):
        post = warped_gp_posterior(kernel, centers, g(centers), lam, offset=zero)
        err = (g(wt) - post.mean(wt))[:, 0].abs()
        bound = post.latent_variance(wt).sqrt() * g_norm
        assert bool((err <= bound + 1e-12).all())
    # Tightness: the representer of the error at a test point x*, g = k(., φ(x*)) - Σ_i w_i k(., φ(x_i)), attains
    # the bound at x* as λ → 0 (its values at the training points are λ w ≈ 0).
    lam = 1e-10
    star = wt[:1]
    A = kernel.gram(centers) + lam * torch.eye(60, dtype=torch.float64)
    w = torch.linalg.solve(A, kernel.gram(centers, star))
    pts, coef = torch.cat([star, centers]), torch.cat([torch.ones(1, 1, dtype=torch.float64), -w])
    g_norm = float(torch.sqrt(coef.T @ kernel.gram(pts) @ coef))
    post = warped_gp_posterior(kernel, centers, kernel.gram(centers, pts) @ coef, lam, offset=zero)
    err = float((kernel.gram(star, pts) @ coef - post.mean(star)).abs())
    ratio = err / (float(post.latent_variance(star).sqrt()) * g_norm)
    assert 0.999 < ratio <= 1 + 1e-9


def _gp_sample(rng, n, sigma, noise_sd):
    X = rng.uniform(-2, 2, (n, 2))
    K = GaussianKernel(sigma=sigma).gram(torch.as_tensor(X)).numpy()
    f = np.linalg.cholesky(K + 1e-8 * np.eye(n)) @ rng.normal(size=n)
    return X, f + noise_sd * rng.normal(size=n)


def test_coverage_of_the_95_interval_on_gp_samples():
    """Five GP draws (σ = 0.7, noise 0.1), 150 training and 250 test points each, default estimator: the 95 %
    interval of a new observation covers 92-98 % of the 1,250 test points (binomial sd of the rate: 0.6 %)."""
    inside = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(5):
            X, y = _gp_sample(np.random.default_rng(seed), 400, 0.7, 0.1)
            est = KernelWarpingRegressor(random_state=seed).fit(X[:150], y[:150])
            mean, std = est.predict(X[150:], return_std=True)
            inside.append(np.abs(y[150:] - mean) <= norm.ppf(0.975) * std)
    coverage = float(np.concatenate(inside).mean())
    assert 0.92 <= coverage <= 0.98, coverage


def _loo_log_density(post, s2):
    means, var = post.loo()
    Y = post.kernel.gram(post.centers) @ post.alpha + post.lam * post.alpha + post.offset
    sd = torch.sqrt(s2 * (var + post.lam))
    return float(torch.distributions.Normal(means[:, 0], sd).log_prob(Y[:, 0]).sum())


def test_scale_estimators_maximise_their_criteria_and_loo_is_exact():
    rng = np.random.default_rng(2)
    X = torch.as_tensor(rng.uniform(-2, 2, (25, 1)))
    Y = torch.sin(2 * X) + 0.2 * torch.as_tensor(rng.normal(size=(25, 1)))
    kernel, lam = GaussianKernel(sigma=0.6), 0.05
    post = warped_gp_posterior(kernel, X, Y, lam, scale="loo")
    # exact leave-one-out: refit without point i
    means, var = post.loo()
    for i in (0, 7, 24):
        keep = torch.arange(25) != i
        p_i = warped_gp_posterior(kernel, X[keep], Y[keep], lam, offset=post.offset)
        np.testing.assert_allclose(float(means[i, 0]), float(p_i.mean(X[i:i + 1])[0, 0]), atol=1e-10)
        np.testing.assert_allclose(float(var[i]), float(p_i.latent_variance(X[i:i + 1])[0]), atol=1e-10)
    # "loo": the maximiser of the LOO log predictive density in s²
    s2 = float(post.signal_variance[0])
    best = _loo_log_density(post, s2)
    assert best > max(_loo_log_density(post, s2 * 1.01), _loo_log_density(post, s2 / 1.01))
    # "ml": the maximiser of the marginal likelihood N(0, s² (K + λI))
    ml = float(warped_gp_posterior(kernel, X, Y, lam, scale="ml").signal_variance[0])
    A = kernel.gram(X) + lam * torch.eye(25, dtype=X.dtype)
    Yc = (Y - Y.mean(0))[:, 0]
    loglik = lambda s: float(torch.distributions.MultivariateNormal(torch.zeros(25, dtype=X.dtype),  # noqa: E731
                                                                    s * A).log_prob(Yc))
    assert loglik(ml) > max(loglik(ml * 1.01), loglik(ml / 1.01))


def test_sample_y_draws_from_the_predictive_law():
    rng = np.random.default_rng(3)
    X = rng.uniform(-2, 2, (30, 1))
    Y = np.c_[np.sin(2 * X[:, 0]), X[:, 0] ** 2] + 0.1 * rng.normal(size=(30, 2))
    est = KernelWarpingRegressor(nu=NO_WARP, readout_sigma=0.7, lam=0.01, random_state=0).fit(X, Y)
    Xt = np.linspace(-2.5, 2.5, 7)[:, None]
    draws = est.sample_y(Xt, n_samples=4000, random_state=0)
    assert draws.shape == (7, 2, 4000)
    mean, std = est.predict(Xt, return_std=True)
    # 4,000 draws: the sample sd has relative sd 1/sqrt(8000) ≈ 1.1 %, the sample mean sd/63
    np.testing.assert_allclose(draws.std(-1), std, rtol=0.06)
    assert np.all(np.abs(draws.mean(-1) - mean) <= 5 * std / math.sqrt(4000))
    est1 = KernelWarpingRegressor(nu=NO_WARP, readout_sigma=0.7, lam=0.01, random_state=0).fit(X, Y[:, 0])
    assert est1.sample_y(Xt, 3).shape == (7, 3)
    np.testing.assert_array_equal(est1.sample_y(Xt, 3, random_state=1), est1.sample_y(Xt, 3, random_state=1))


def test_predict_proba_is_a_loo_calibrated_softmax():
    X, y = make_blobs(2200, centers=3, cluster_std=2.5, random_state=0)
    clf = KernelWarpingClassifier(nu=0.1, random_state=0).fit(X[:200], y[:200])
    P = clf.predict_proba(X[200:])
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(clf.classes_[P.argmax(1)], clf.predict(X[200:]))
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X[200:])), P, rtol=1e-12)
    # the temperature maximises the LOO log-likelihood
    readout = clf.readout_
    Yc = torch.as_tensor(np.eye(3)[y[:200]]) - readout.offset
    post = warped_gp_posterior(readout.kernel, readout.centers, Yc + readout.offset, readout.lam,
                               offset=readout.offset)
    scores, _ = post.loo()
    nll = lambda t: float(-torch.log_softmax(t * scores, 1)[torch.arange(200), torch.as_tensor(y[:200])].mean())  # noqa: E731
    T = clf.temperature_
    assert nll(T) <= min(nll(T * 1.05), nll(T / 1.05)) + 1e-12
    # calibration on 2,000 held-out points (accuracy about 0.63, sd of the rate 0.011): mean confidence within 0.03
    acc = float((P.argmax(1) == y[200:]).mean())
    assert abs(P.max(1).mean() - acc) < 0.03


def test_bad_requests_raise(monkeypatch):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(20, 2))
    est = KernelWarpingRegressor(nu=NO_WARP, random_state=0).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="return_std, return_cov"):
        est.predict(X, return_std=True, return_cov=True)
    with pytest.raises(ValueError, match="scale"):
        warped_gp_posterior(GaussianKernel(), torch.as_tensor(X), torch.as_tensor(X[:, :1]), 0.1, scale="mle")
    with pytest.raises(ValueError, match="lam"):
        warped_gp_posterior(GaussianKernel(), torch.as_tensor(X), torch.as_tensor(X[:, :1]), 0.0)
    monkeypatch.setattr(gp_module, "GP_MAX_POINTS", 10)
    big = KernelWarpingRegressor(nu=NO_WARP, random_state=0).fit(X, X[:, 0])
    assert big.signal_variance_ is None
    big.predict(X)  # the mean needs no factorisation
    with pytest.raises(ValueError, match="at most 10 training points"):
        big.predict(X, return_std=True)
    clf = KernelWarpingClassifier(nu=NO_WARP, random_state=0).fit(X, X[:, 0] > 0)
    with pytest.raises(ValueError, match="at most 10 training points"):
        clf.predict_proba(X)


def test_loo_log_density_is_the_brute_force_leave_one_out_density():
    """``LOOSelection.log_density`` of a candidate: refit without each point, Gaussian density of the held-out value
    with the LOO scale s² (the closed form at its maximiser), summed."""
    from lddmm_nets.nets._readout import loo_select

    rng = np.random.default_rng(5)
    X = torch.as_tensor(rng.uniform(-2, 2, (20, 1)))
    Y = torch.sin(2 * X) + 0.2 * torch.as_tensor(rng.normal(size=(20, 1)))
    Y = Y - Y.mean(0)
    sel = loo_select(lambda s: GaussianKernel(sigma=s), X, Y, [0.4, 0.9], [0.01, 0.3], classification=False)
    for (sigma, lam, _), lpd in zip(sel.table, sel.log_density):
        post = warped_gp_posterior(GaussianKernel(sigma=sigma), X, Y, lam, offset=torch.zeros(1, dtype=X.dtype))
        assert lpd == pytest.approx(_loo_log_density(post, float(post.signal_variance[0])), rel=1e-9)


def test_averaged_readout_is_the_pseudo_bma_mixture_of_fixed_kernel_gps():
    """Default regressor without warp: the readouts of the LOO grid averaged with weights exp(LPD) (renormalised over
    the kept ones); its mean and std are the mixture's, each component equal to scikit-learn's GP with that kernel."""
    from lddmm_nets.nets._readout import AVERAGE_MAX_COMPONENTS, AVERAGE_MIN_WEIGHT

    rng = np.random.default_rng(6)
    X = rng.uniform(-2, 2, (60, 2))
    y = np.sin(X[:, 0]) * np.cos(X[:, 1]) + 0.1 * rng.normal(size=60)
    est = KernelWarpingRegressor(nu=math.inf, random_state=0).fit(X, y)
    weights = est.readout_weights_
    assert 1 < len(weights) <= AVERAGE_MAX_COMPONENTS
    w = np.array([v for _, _, v in weights])
    assert abs(w.sum() - 1) < 1e-12 and np.all(np.diff(w) <= 0) and w[-1] >= AVERAGE_MIN_WEIGHT * w[0]
    # the weights are exp(LPD) normalised: their log-ratios are the LPD differences of the grid
    from lddmm_nets.nets._readout import loo_select

    q = torch.as_tensor(X, dtype=torch.float32).double()
    Yc = torch.as_tensor((y - y.mean()) / y.std())[:, None]
    sel = loo_select(lambda s: GaussianKernel(sigma=s), q, Yc, [s for s, _, _ in weights], [lam for _, lam, _ in weights],
                     classification=False)
    lpd = {(s, lam): v for (s, lam, _), v in zip(sel.table, sel.log_density)}
    (s0, l0, w0), (s1, l1, w1) = weights[0], weights[-1]
    assert math.log(w0 / w1) == pytest.approx(lpd[s0, l0] - lpd[s1, l1], rel=1e-6, abs=1e-6)
    Xt = rng.uniform(-2.5, 2.5, (25, 2))
    mean, std = est.predict(Xt, return_std=True)
    means, second = 0.0, 0.0
    for sigma, lam, wk in weights:
        post = warped_gp_posterior(GaussianKernel(sigma=sigma), torch.as_tensor(X), torch.as_tensor(y[:, None]), lam)
        s2 = float(post.signal_variance[0])
        kernel = ConstantKernel(s2, "fixed") * RBF(sigma, "fixed") + WhiteKernel(s2 * lam, "fixed")
        m, s = GaussianProcessRegressor(kernel, alpha=0.0, normalize_y=False, optimizer=None).fit(
            X, y - y.mean()).predict(Xt, return_std=True)
        means = means + wk * (m + y.mean())
        second = second + wk * (s**2 + (m + y.mean()) ** 2)
    np.testing.assert_allclose(mean, means, atol=1e-8)
    np.testing.assert_allclose(std, np.sqrt(second - means**2), atol=1e-8)
    # sample_y draws from the mixture: sample moments match
    draws = est.sample_y(Xt[:5], n_samples=4000, random_state=0)
    np.testing.assert_allclose(draws.std(-1), std[:5], rtol=0.06)
    assert np.all(np.abs(draws.mean(-1) - mean[:5]) <= 5 * std[:5] / math.sqrt(4000))
