"""Error bars of idea registration: the warped Gaussian process (THEORY §10).

A fitted kernel warping estimator is kernel ridge regression with the warped kernel ``K_φ(x, x') = K(φ(x), φ(x'))``
(φ the learned flow, K the readout kernel, λ its ridge parameter). Read as a Gaussian process,

    f ~ GP(m, s² K_φ),     y_i = f(x_i) + ε_i,     ε_i ~ N(0, s² λ),

its posterior mean is the ridge readout itself, and a new observation at x has the predictive variance

    σ²_y(x) = s² (K_φ(x, x) - K_φ(x, X) (K_φ(X, X) + λI)^{-1} K_φ(X, x)) + s² λ.

With ``readout="linear"`` K is ``z·z' + 1``, and this GP is Bayesian linear regression of y on ``[φ(x), 1]``
(weights ~ N(0, s² I), noise N(0, s² λ)): the posterior mean is the linear readout ``coef_ φ(x) + intercept_`` and
the error bars are that posterior's (``tests/test_nets_readout.py`` checks them in weight space).

The ridge parameter fixes the noise-to-signal ratio; only the signal scale s² is left, estimated per output in
closed form by one of

- ``"loo"`` (default): maximum leave-one-out log predictive density (Sundararajan & Keerthi 2001; Rasmussen &
  Williams §5.4.2). With ``A = K_φ(X, X) + λI`` and ``α = A^{-1} y``, the LOO predictive law of ``y_i`` is
  ``N(y_i - α_i / [A^{-1}]_ii, s² / [A^{-1}]_ii)``, and the best s² is ``(1/N) Σ_i α_i² / [A^{-1}]_ii``;
- ``"ml"``: maximum marginal likelihood, ``s² = yᵀ A^{-1} y / N`` (the ridge loss ℓ divided by λ N).

The LOO estimate is the default because it scores the out-of-sample residuals the error bars are for, and stays
calibrated when the kernel is misspecified (measured in ``scripts/bench_gp.py``); both are exact and cost one
Cholesky factorisation of A (N ≤ ``GP_MAX_POINTS``).

A regressor whose readout width and λ are both "auto" averages the readouts of its leave-one-out grid
(``_readout.pseudo_bma_weights``: weights ``∝ exp(LOO log predictive density)``); its posterior is then the
mixture of the candidates' GPs (``WarpedGPMixture``: exact mixture moments for ``return_std`` / ``return_cov``,
draws from the mixture for ``sample_y``).

Classifiers regress one-hot labels; their ``predict_proba`` is ``softmax(T f̄(x))`` of the posterior mean scores
f̄ (the readout), with the one temperature T fitted to the readout's exact leave-one-out scores on the training set
(maximum LOO log-likelihood of the labels): calibrated by the readout's LOO. A single temperature keeps the argmax
and, for two classes, the ranking of ``decision_function``; a per-point moderation by the posterior variance
(MacKay's probit approximation) would break both, so it is not applied.

The mixins below give ``KernelWarpingRegressor`` its ``predict(X, return_std, return_cov)`` and ``sample_y`` and
``KernelWarpingClassifier`` its ``predict_proba``; the estimators only call ``_store_gp`` at the end of ``fit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from lddmm_nets.kernels import RadialKernel, SumKernel

__all__ = ["WarpedGPPosterior", "WarpedGPMixture", "warped_gp_posterior", "signal_variance", "fit_temperature", "GP_MAX_POINTS",
           "SCALE_ESTIMATORS",
           "WarpedGPRegressorMixin", "WarpedGPClassifierMixin"]

# The posterior needs the dense Cholesky factor of K + λI ((N, N) float64: 128 MiB at 4,000 points).
GP_MAX_POINTS = 4000
SCALE_ESTIMATORS = ("loo", "ml")
_CHUNK = 2048  # test points per block of the variance computation


def kernel_diagonal(kernel, x: torch.Tensor) -> torch.Tensor:
    """``k(x_i, x_i)`` for (M, D) points: ones for the engine's normalised radial kernels, else computed."""
    if isinstance(kernel, (RadialKernel, SumKernel)):
        return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    return torch.cat([torch.diagonal(kernel.gram(c, c)) for c in x.split(256)])


def signal_variance(alpha: torch.Tensor, Y: torch.Tensor, inverse_diagonal: torch.Tensor | None,
                    method: str = "loo") -> torch.Tensor:
    """Closed-form signal variance s² per output of a GP with covariance ``s² (K + λI)``.

    Parameters
    ----------
    alpha : torch.Tensor
        (N, k) ``A^{-1} Y`` with ``A = K + λI``.
    Y : torch.Tensor
        (N, k) centred targets.
    inverse_diagonal : torch.Tensor or None
        (N,) diagonal of ``A^{-1}`` (needed by ``"loo"``).
    method : {"loo", "ml"}
        Maximum leave-one-out log predictive density, ``(1/N) Σ_i α_i² / [A^{-1}]_ii``, or maximum marginal
        likelihood, ``Yᵀ A^{-1} Y / N``.

    Returns
    -------
    torch.Tensor
        (k,) s², in squared units of Y.
    """
    if method not in SCALE_ESTIMATORS:
        raise ValueError(f"method: expected one of {list(SCALE_ESTIMATORS)}, got {method!r}")
    if method == "ml":
        return (Y * alpha).sum(0) / Y.shape[0]
    if inverse_diagonal is None:
        raise ValueError("inverse_diagonal: the 'loo' estimate needs the diagonal of (K + λI)^{-1}, got None")
    return (alpha**2 / inverse_diagonal[:, None]).mean(0)


@dataclass
class WarpedGPPosterior:
    """Posterior of the GP ``f ~ GP(offset, s² K)`` given noisy values at the (warped) training points.

    Everything is expressed in warped coordinates: evaluate at ``φ(x)``. Variances are per output (the kernel is
    shared, only s² differs).

    Attributes
    ----------
    kernel : engine kernel
        Readout kernel K.
    lam : float
        Ridge parameter λ: the noise variance is ``s² λ``.
    centers : torch.Tensor
        (N, D) warped training points.
    factor : torch.Tensor
        (N, N) lower Cholesky factor of ``K(centers, centers) + λI``.
    alpha : torch.Tensor
        (N, k) dual coefficients.
    offset : torch.Tensor
        (k,) prior mean.
    signal_variance : torch.Tensor
        (k,) s² (units of the targets squared).
    """

    kernel: object
    lam: float
    centers: torch.Tensor
    factor: torch.Tensor
    alpha: torch.Tensor
    offset: torch.Tensor
    signal_variance: torch.Tensor

    @property
    def noise_variance(self) -> torch.Tensor:
        """(k,) ``s² λ``: the variance of an observation about f."""
        return self.signal_variance * self.lam

    def mean(self, xw: torch.Tensor) -> torch.Tensor:
        """Posterior mean (M, k) at warped points (M, D): the ridge readout."""
        return self.kernel.gram(xw, self.centers) @ self.alpha + self.offset

    def _whitened(self, xw: torch.Tensor) -> torch.Tensor:
        """``L^{-1} K(centers, xw)``: (N, M), so that ``kᵀ A^{-1} k`` is a column's squared norm."""
        return torch.linalg.solve_triangular(self.factor, self.kernel.gram(self.centers, xw), upper=False)

    def latent_variance(self, xw: torch.Tensor) -> torch.Tensor:
        """Unit-scale posterior variance of f, ``K(x, x) - K(x, X) A^{-1} K(X, x)``: (M,), clamped at 0."""
        parts = [kernel_diagonal(self.kernel, c) - (self._whitened(c) ** 2).sum(0) for c in xw.split(_CHUNK)]
        return torch.cat(parts).clamp_min(0.0)

    def latent_covariance(self, xw: torch.Tensor) -> torch.Tensor:
        """Unit-scale posterior covariance of f at warped points: (M, M)."""
        V = self._whitened(xw)
        return self.kernel.gram(xw, xw) - V.T @ V

    def predictive_variance(self, xw: torch.Tensor, noise: bool = True) -> torch.Tensor:
        """Variance (M, k) of f(x) (``noise=False``) or of a new observation at x (``noise=True``)."""
        v = self.latent_variance(xw) + (self.lam if noise else 0.0)
        return v[:, None] * self.signal_variance

    def predictive_covariance(self, xw: torch.Tensor) -> torch.Tensor:
        """Covariance (M, M, k) of new observations at warped points (noise on the diagonal)."""
        C = self.latent_covariance(xw)
        C.diagonal().add_(self.lam)
        return C[:, :, None] * self.signal_variance

    def loo(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact leave-one-out predictions at the training points.

        Returns
        -------
        mean : torch.Tensor
            (N, k) LOO posterior means, ``offset + Y_i - α_i / [A^{-1}]_ii`` (Y rebuilt as ``A α``).
        latent_variance : torch.Tensor
            (N,) unit-scale LOO variance of f at x_i, ``1 / [A^{-1}]_ii - λ``.
        """
        d = _inverse_diagonal(self.factor)
        Y = self.kernel.gram(self.centers) @ self.alpha + self.lam * self.alpha
        return Y - self.alpha / d[:, None] + self.offset, (1.0 / d - self.lam).clamp_min(0.0)


@dataclass
class WarpedGPMixture:
    """The posterior averaged over readout hyper-parameters: a mixture of ``WarpedGPPosterior`` with weights.

    Its predictive law is the mixture itself; ``mean``, ``predictive_variance`` and ``predictive_covariance`` are the
    mixture's exact first two moments (``Σ_k w_k (C_k + m_k m_kᵀ) − m mᵀ``); the regressor's ``sample_y`` draws from
    the mixture itself (a component per draw, then its Gaussian).

    Attributes
    ----------
    components : list of WarpedGPPosterior
    weights : torch.Tensor
        (K,) positive, summing to 1.
    """

    components: list
    weights: torch.Tensor

    @property
    def signal_variance(self) -> torch.Tensor:
        """(k,) weighted mean of the components' s²."""
        return sum(float(w) * c.signal_variance for w, c in zip(self.weights, self.components))

    @property
    def noise_variance(self) -> torch.Tensor:
        """(k,) weighted mean of the components' noise variances s² λ."""
        return sum(float(w) * c.noise_variance for w, c in zip(self.weights, self.components))

    def mean(self, xw: torch.Tensor) -> torch.Tensor:
        return sum(float(w) * c.mean(xw) for w, c in zip(self.weights, self.components))

    def predictive_variance(self, xw: torch.Tensor, noise: bool = True) -> torch.Tensor:
        means = [c.mean(xw) for c in self.components]
        m = sum(float(w) * mk for w, mk in zip(self.weights, means))
        second = sum(float(w) * (c.predictive_variance(xw, noise) + mk**2)
                     for w, c, mk in zip(self.weights, self.components, means))
        return (second - m**2).clamp_min(0.0)

    def predictive_covariance(self, xw: torch.Tensor) -> torch.Tensor:
        means = [c.mean(xw) for c in self.components]
        m = sum(float(w) * mk for w, mk in zip(self.weights, means))
        second = sum(float(w) * (c.predictive_covariance(xw) + mk[:, None, :] * mk[None, :, :])
                     for w, c, mk in zip(self.weights, self.components, means))
        return second - m[:, None, :] * m[None, :, :]


def _inverse_diagonal(factor: torch.Tensor) -> torch.Tensor:
    """Diagonal of ``A^{-1}`` from the lower Cholesky factor L of A: the squared column norms of ``L^{-1}``."""
    eye = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    return (torch.linalg.solve_triangular(factor, eye, upper=False) ** 2).sum(0)


def warped_gp_posterior(kernel, centers: torch.Tensor, Y: torch.Tensor, lam: float, *, offset=None,
                        scale: str = "loo") -> WarpedGPPosterior:
    """The GP posterior of kernel ridge regression on (warped) points, with its signal scale estimated.

    Parameters
    ----------
    kernel : engine kernel
        Readout kernel K (``gram`` is used: dense, N ≤ ``GP_MAX_POINTS``).
    centers : torch.Tensor
        (N, D) warped training points φ(X).
    Y : torch.Tensor
        (N, k) targets (``offset`` subtracted inside).
    lam : float
        Ridge parameter λ > 0 (noise-to-signal variance ratio).
    offset : torch.Tensor, optional
        (k,) prior mean; default the mean of Y.
    scale : {"loo", "ml"}
        Estimator of s² (see ``signal_variance``).

    Returns
    -------
    WarpedGPPosterior

    Raises
    ------
    ValueError
        More than ``GP_MAX_POINTS`` points, a non-positive λ, or mismatched shapes.
    """
    if centers.ndim != 2 or Y.ndim != 2 or Y.shape[0] != centers.shape[0]:
        raise ValueError(f"centers, Y: expected (N, D) and (N, k) tensors, got {tuple(centers.shape)} and "
                         f"{tuple(Y.shape)}")
    n = centers.shape[0]
    if n > GP_MAX_POINTS:
        raise ValueError(f"centers: the GP posterior needs a dense factorisation, expected at most {GP_MAX_POINTS} "
                         f"points, got {n}")
    if not lam > 0:
        raise ValueError(f"lam: expected a number > 0, got {lam!r}")
    if scale not in SCALE_ESTIMATORS:
        raise ValueError(f"scale: expected one of {list(SCALE_ESTIMATORS)}, got {scale!r}")
    with torch.no_grad():
        offset = Y.mean(0) if offset is None else torch.as_tensor(offset, dtype=Y.dtype, device=Y.device)
        Yc = Y - offset
        A = kernel.gram(centers)
        A.diagonal().add_(lam)
        factor = torch.linalg.cholesky(A)
        alpha = torch.cholesky_solve(Yc, factor)
        d = _inverse_diagonal(factor) if scale == "loo" else None
        s2 = signal_variance(alpha, Yc, d, scale)
    return WarpedGPPosterior(kernel, float(lam), centers, factor, alpha, offset, s2)


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T maximising ``Σ_i log softmax(T scores_i)[labels_i]`` (convex in T; bounded search).

    Parameters
    ----------
    scores : torch.Tensor
        (N, k) held-out (e.g. leave-one-out) class scores.
    labels : torch.Tensor
        (N,) class indices.

    Returns
    -------
    float
        T in [1e-3, 1e4].
    """
    s = scores.detach().double().cpu()
    idx = labels.detach().long().cpu()

    def nll(log_t: float) -> float:
        logp = torch.log_softmax(math.exp(log_t) * s, dim=1)
        return -float(logp.gather(1, idx[:, None]).mean())

    res = minimize_scalar(nll, bounds=(math.log(1e-3), math.log(1e4)), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


class _WarpedGPBase:
    """Shared by the mixins: the warped points and the posterior of a fitted kernel warping estimator."""

    # Estimator of the signal scale s² (``signal_variance``).
    _gp_scale = "loo"

    def _gp_posterior_of_fit(self, Yc: torch.Tensor) -> WarpedGPPosterior | WarpedGPMixture | None:
        readout = self.readout_
        if Yc.shape[0] > GP_MAX_POINTS:
            return None
        Yc = Yc.to(readout.centers.dtype)
        parts = [warped_gp_posterior(r.kernel, r.centers, Yc + r.offset, r.lam, offset=r.offset, scale=self._gp_scale)
                 for r in getattr(readout, "components", [readout])]
        return parts[0] if len(parts) == 1 else WarpedGPMixture(parts, readout.weights)

    def _warped_tensor(self, X) -> torch.Tensor:
        check_is_fitted(self, "readout_")
        centers = self.readout_.centers
        return torch.as_tensor(self.warp(X), dtype=centers.dtype, device=centers.device)

    def _require_gp(self, what: str):
        if getattr(self, "_gp", None) is None:
            raise ValueError(f"{what} needs the warped GP, computed when fit saw at most {GP_MAX_POINTS} training "
                             f"points; this estimator was fitted on {self.readout_.centers.shape[0]}")
        return self._gp


class WarpedGPRegressorMixin(_WarpedGPBase):
    """``predict(X, return_std, return_cov)`` and ``sample_y`` of a kernel warping regressor (the warped GP).

    Attributes set by ``fit``: ``signal_variance_`` and ``noise_variance_`` ((k,) arrays, squared units of y:
    s² y_scale² and s² λ y_scale², s² estimated by maximum leave-one-out log predictive density).
    """

    def _store_gp(self, Yc: torch.Tensor) -> None:
        """Called at the end of ``fit`` with the centred, scaled (N, k) float64 targets of the readout."""
        self._gp = self._gp_posterior_of_fit(Yc)
        scale2 = np.asarray(self.y_scale_, dtype=np.float64) ** 2
        if self._gp is None:
            self.signal_variance_ = self.noise_variance_ = None
            return
        self.signal_variance_ = self._gp.signal_variance.cpu().numpy() * scale2
        self.noise_variance_ = self._gp.noise_variance.cpu().numpy() * scale2

    def predict(self, X, return_std=False, return_cov=False):
        """Posterior mean of the warped GP (the ridge readout), optionally with its uncertainty.

        Parameters
        ----------
        X : array-like of shape (M, d)
        return_std : bool, default=False
            Also return the standard deviation of a new observation at each point (noise included), in the
            units of y.
        return_cov : bool, default=False
            Also return the covariance of new observations at the points (noise on the diagonal).

        Returns
        -------
        y_mean : ndarray of shape (M,) or (M, k)
        y_std : ndarray of shape (M,) or (M, k)
            With ``return_std``.
        y_cov : ndarray of shape (M, M) or (M, M, k)
            With ``return_cov``.

        Raises
        ------
        ValueError
            Both ``return_std`` and ``return_cov``, or uncertainty asked of an estimator fitted on more than
            ``GP_MAX_POINTS`` points.
        """
        if return_std and return_cov:
            raise ValueError("return_std, return_cov: expected at most one of them True, got both")
        xw = self._warped_tensor(X)
        scale = np.asarray(self.y_scale_, dtype=np.float64)
        with torch.no_grad():
            mean = self.readout_(xw, backend=self.backend_).cpu().numpy() * scale
            if not (return_std or return_cov):
                return mean[:, 0] if self._y_1d else mean
            gp = self._require_gp("return_std / return_cov")
            if return_std:
                extra = np.sqrt(gp.predictive_variance(xw).cpu().numpy()) * scale
            else:
                extra = gp.predictive_covariance(xw).cpu().numpy() * scale**2
        if self._y_1d:
            return mean[:, 0], (extra[:, 0] if return_std else extra[:, :, 0])
        return mean, extra

    def sample_y(self, X, n_samples=1, random_state=0):
        """Draw observations from the warped GP posterior at X (as scikit-learn's ``GaussianProcessRegressor``).

        Parameters
        ----------
        X : array-like of shape (M, d)
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=0

        Returns
        -------
        ndarray of shape (M, n_samples) or (M, k, n_samples)
            With an averaged readout (``readout_weights_``) every draw comes from one component of the mixture,
            chosen with its weight.
        """
        rng = check_random_state(random_state)
        gp = self._require_gp("sample_y")
        if not isinstance(gp, WarpedGPMixture):
            y_mean, y_cov = self.predict(X, return_cov=True)
            return _draw(rng, y_mean.reshape(len(y_mean), -1), y_cov.reshape(y_cov.shape[:2] + (-1,)), n_samples,
                         y_mean.ndim == 1)
        xw = self._warped_tensor(X)
        scale = np.asarray(self.y_scale_, dtype=np.float64)
        counts = rng.multinomial(n_samples, gp.weights.cpu().numpy() / float(gp.weights.sum()))
        draws = []
        with torch.no_grad():
            for part, count in zip(gp.components, counts):
                if count:
                    mean = part.mean(xw).cpu().numpy() * scale
                    cov = part.predictive_covariance(xw).cpu().numpy() * scale**2
                    draws.append(_draw(rng, mean, cov, int(count), False))
        out = np.concatenate(draws, axis=-1)[..., rng.permutation(n_samples)]
        return out[:, 0] if self._y_1d else out


def _draw(rng, mean: np.ndarray, cov: np.ndarray, n: int, squeeze: bool) -> np.ndarray:
    """``n`` Gaussian draws per output: mean (M, k), cov (M, M, k) -> (M, k, n), or (M, n) with ``squeeze``."""
    out = np.stack([rng.multivariate_normal(mean[:, j], cov[..., j], n).T for j in range(mean.shape[1])], axis=1)
    return out[:, 0] if squeeze else out


class WarpedGPClassifierMixin(_WarpedGPBase):
    """``predict_proba`` of a kernel warping classifier: ``softmax(T · scores)``, T fitted on exact LOO scores.

    Attributes set by ``fit``: ``temperature_`` (float; None above ``GP_MAX_POINTS`` training points).
    """

    def _store_gp(self, Yc: torch.Tensor) -> None:
        """Called at the end of ``fit`` with the centred one-hot (N, k) float64 targets of the readout."""
        gp = self._gp_posterior_of_fit(Yc)
        self._gp = None  # the classifier keeps only the temperature
        if gp is None:
            self.temperature_ = None
            return
        loo_scores, _ = gp.loo()
        self.temperature_ = fit_temperature(loo_scores, Yc.argmax(1))

    def predict_proba(self, X):
        """Class probabilities (M, n_classes): ``softmax(temperature_ · scores)`` of the readout's scores.

        Raises
        ------
        ValueError
            When fitted on more than ``GP_MAX_POINTS`` points (no temperature).
        """
        return np.exp(self.predict_log_proba(X))

    def predict_log_proba(self, X):
        """Logarithm of ``predict_proba`` (M, n_classes), computed as a log-softmax."""
        check_is_fitted(self, "readout_")
        if self.temperature_ is None:
            raise ValueError(f"predict_proba needs the leave-one-out temperature, computed when fit saw at most "
                             f"{GP_MAX_POINTS} training points")
        xw = self._warped_tensor(X)
        with torch.no_grad():
            scores = self.readout_(xw, backend=self.backend_)
            return torch.log_softmax(self.temperature_ * scores, dim=1).cpu().numpy()
