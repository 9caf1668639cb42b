"""Scikit-learn estimators of idea registration: warp the inputs by a flow, then kernel ridge regression (THEORY §5).

``KernelWarpingRegressor`` and ``KernelWarpingClassifier`` minimise, over the momenta of the data points,

    ν · (kinetic energy of the warp) + ℓ(q_L) / N,      ℓ(q) = λ tr(Yᵀ (K(q, q) + λI)^{-1} Y),

where the warp is either the continuous Hamiltonian flow shot from the initial momentum (``mode="shooting"``,
energy ``H(q_0, p_0)``) or L explicit-Euler layers with one momentum per layer (``mode="layers"``, energy
``Δt Σ_k H(q_k, p_k)``: the discrete ResNet trained by backpropagation). The readout is the closed-form ridge
regressor on the warped training points; new points are warped along the stored trajectory, then read out.
The optimisation is ``_momenta.fit_momenta``; the hyper-parameters chosen inside ``fit`` (readout width and λ by
leave-one-out, ν by inner cross-validation) are ``_selection``'s.
"""

from __future__ import annotations

import math
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

import lddmm_nets as engine
from lddmm_nets import FeatureMapKernel
from lddmm_nets.optim import STOP_REASONS, ConvergenceWarning

from ._docs import ATTR_DOC, CLASSIFIER_ATTR_DOC, PARAM_DOC, REGRESSOR_ATTR_DOC
from ._kernels import KERNELS
from ._momenta import WarpProblem, fit_momenta, warp_trajectory
from ._readout import DENSE_MAX_POINTS, ReadoutMixture, RidgeReadout, loo_select, pseudo_bma_weights, ridge_solve
from ._selection import LAM_GRID, LOO_MAX_POINTS, NU_GRID, SIGMA_FACTORS, median_distance, select_nu, subsample
from .gp import WarpedGPClassifierMixin, WarpedGPRegressorMixin

__all__ = ["KernelWarpingClassifier", "KernelWarpingRegressor"]

_KERNEL_NAMES = ("gaussian", "laplace", "matern", "cauchy")
_MODES = ("shooting", "layers")
_READOUTS = ("kernel", "linear")
# Stop reasons of the final fit that warn. Spending max_iter is the estimator's deliberate budget (early stopping is
# part of the defaults: the default fits rarely meet tol in 30 iterations), reported in converged_ and stop_reason_.
_FAILURES = ("line_search", "non_finite", "infeasible_start")
# readout="linear": the ridge regression on the warped features with an intercept, i.e. kernel ridge regression with
# the kernel x·y + 1 (closed form and leave-one-out as for the kernel readout).
_LINEAR_KERNEL = FeatureMapKernel("identity", c=1.0)
# readout="linear": ν candidates of the inner cross-validation, warp width in median distances, extra dimensions
LINEAR_NU_GRID = (0.01, 0.001)
LINEAR_WARP_FACTOR = 0.5
LINEAR_AUGMENT = 1
LINEAR_MAX_ITER = 30
LINEAR_N_LAYERS = 10
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# backend="auto" of the estimators: dense kernel matrices up to this many pairs (64 MiB per float32 matrix, a
# few dozen alive under autograd), KeOps beyond. Fitting differentiates through every layer, where dense BLAS is
# much faster than KeOps on the CPU at these sizes (and KeOps compiles a formula per input dimension).
_DENSE_MAX_PAIRS = 2**24


def _make_kernel(spec, sigma: float, nugget: float, name: str):
    """Build an engine kernel from a name (with width ``sigma``) or accept a kernel object as given."""
    if isinstance(spec, str):
        if spec not in _KERNEL_NAMES:
            raise ValueError(f"{name} must be one of {_KERNEL_NAMES} or an engine kernel object; got {spec!r}")
        kwargs = {"sigma": float(sigma)}
        if spec == "matern":
            kwargs["nu"] = 1.5
        if nugget:
            kwargs["nugget"] = float(nugget)
        return KERNELS[spec](**kwargs)
    if not (hasattr(spec, "matvec") and hasattr(spec, "gram")):
        raise ValueError(f"{name} must be one of {_KERNEL_NAMES} or an engine kernel object (with matvec and gram); "
                         f"got {type(spec).__name__}")
    return spec


def _check_auto_or_positive(name, v, allow_inf=False):
    if isinstance(v, str):
        if v != "auto":
            raise ValueError(f"{name} must be 'auto' or a positive number; got {v!r}")
    elif not isinstance(v, Real) or isinstance(v, bool) or not v > 0 or not (math.isfinite(v) or allow_inf):
        raise ValueError(f"{name} must be 'auto' or a positive number{' or inf' if allow_inf else ''}; got {v!r}")


class _KernelWarpingBase(BaseEstimator):
    """Shared fit/predict machinery; see the public subclasses for the parameters."""

    _classification = False

    def __init__(self, *, readout="kernel", mode="layers", n_layers="auto", integrator="rk2", warp_kernel="gaussian",
                 warp_sigma="auto", readout_kernel="gaussian", readout_sigma="auto", nu="auto", lam="auto", nugget=1e-3,
                 augment="auto", max_iter="auto", tol=1e-5, refit_lam=False, backend="auto", dtype="float32",
                 device="cpu", random_state=None):
        self.readout = readout
        self.mode = mode
        self.n_layers = n_layers
        self.integrator = integrator
        self.warp_kernel = warp_kernel
        self.warp_sigma = warp_sigma
        self.readout_kernel = readout_kernel
        self.readout_sigma = readout_sigma
        self.nu = nu
        self.lam = lam
        self.nugget = nugget
        self.augment = augment
        self.max_iter = max_iter
        self.tol = tol
        self.refit_lam = refit_lam
        self.backend = backend
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        if self.readout not in _READOUTS:
            raise ValueError(f"readout must be one of {_READOUTS}; got {self.readout!r}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}; got {self.mode!r}")
        for name in ("n_layers", "max_iter"):
            v = getattr(self, name)
            if v == "auto":
                continue
            if not isinstance(v, Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be 'auto' or a positive integer; got {v!r}")
        if self.augment != "auto" and (not isinstance(self.augment, Integral) or isinstance(self.augment, bool)
                                       or self.augment < 0):
            raise ValueError(f"augment must be 'auto' or a non-negative integer; got {self.augment!r}")
        if not isinstance(self.tol, Real) or isinstance(self.tol, bool) or not self.tol > 0 \
                or not math.isfinite(self.tol):
            raise ValueError(f"tol must be a positive finite number; got {self.tol!r}")
        if not isinstance(self.nugget, Real) or isinstance(self.nugget, bool) or not self.nugget >= 0:
            raise ValueError(f"nugget must be a non-negative number; got {self.nugget!r}")
        for name in ("nu", "warp_sigma", "readout_sigma", "lam"):
            _check_auto_or_positive(name, getattr(self, name), allow_inf=name == "nu")
        if not isinstance(self.refit_lam, (bool, np.bool_)):
            raise ValueError(f"refit_lam must be True or False; got {self.refit_lam!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}; got {self.dtype!r}")
        if self.backend not in ("auto", "dense", "keops"):
            raise ValueError(f"backend must be one of ('auto', 'dense', 'keops'); got {self.backend!r}")
        valid = tuple(engine.integrators.available())  # checked in both modes: a typo should not pass silently
        if self.integrator not in valid:
            raise ValueError(f"integrator must be one of {valid}; got {self.integrator!r}")

    def _to_tensor(self, X, dtype=None):
        return torch.tensor(np.asarray(X), dtype=dtype or _DTYPES[self.dtype], device=self.device)

    def _lift(self, X: torch.Tensor) -> torch.Tensor:
        if self.augment_:
            X = torch.cat([X, X.new_zeros(X.shape[0], self.augment_)], dim=1)
        return X

    def _resolve_auto(self):
        """The readout-dependent defaults: ``augment_``, ``max_iter_``, ``n_layers_``."""
        linear = self.readout == "linear"
        self.n_layers_ = (LINEAR_N_LAYERS if linear else 5) if self.n_layers == "auto" else int(self.n_layers)
        self.augment_ = (LINEAR_AUGMENT if linear else 0) if self.augment == "auto" else int(self.augment)
        self.max_iter_ = (LINEAR_MAX_ITER if linear else 30) if self.max_iter == "auto" else int(self.max_iter)

    # ------------------------------------------------------------------ fitting
    def _select_readout(self, X: np.ndarray, q0: torch.Tensor, Yc: torch.Tensor, rng):
        """Readout and warp kernels and λ: leave-one-out on the unwarped points where they are "auto"."""
        n = X.shape[0]
        scale = median_distance(X, rng)
        self.median_distance_ = scale
        self._loo_grid = None
        if self.readout == "linear":
            return self._select_linear_readout(q0, Yc, rng, scale)
        make_readout = lambda s: _make_kernel(self.readout_kernel, s, 0.0, "readout_kernel")  # noqa: E731
        auto_sigma = self.readout_sigma == "auto" and isinstance(self.readout_kernel, str)
        if auto_sigma or self.lam == "auto":
            if auto_sigma:
                sigmas = [scale * f for f in SIGMA_FACTORS]
            else:  # a given width, or a kernel object (which keeps its own width)
                sigmas = [1.0 if self.readout_sigma == "auto" else float(self.readout_sigma)]
            lams = LAM_GRID if self.lam == "auto" else [float(self.lam)]
            idx = torch.as_tensor(subsample(n, LOO_MAX_POINTS, rng), device=q0.device)
            sel = loo_select(make_readout, q0[idx].double(), Yc[idx].double(), sigmas, lams,
                             classification=self._classification)
            self.readout_sigma_ = sel.sigma if self.readout_sigma != "auto" or auto_sigma else None
            self.lam_ = sel.lam
            self.loo_initial_ = sel.score
            if auto_sigma and self.lam == "auto" and not self._classification:
                self._loo_grid = (sigmas, lams, sel)  # averaged by _averaged_readout
        else:
            self.readout_sigma_ = None if self.readout_sigma == "auto" else float(self.readout_sigma)
            self.lam_ = float(self.lam)
        readout_kernel = make_readout(self.readout_sigma_ if self.readout_sigma_ is not None else 1.0)
        if self.warp_sigma == "auto":
            self.warp_sigma_ = 2.0 * (self.readout_sigma_ if self.readout_sigma_ is not None else scale / 4)
        else:
            self.warp_sigma_ = float(self.warp_sigma)
        warp_kernel = _make_kernel(self.warp_kernel, self.warp_sigma_, self.nugget, "warp_kernel")
        if not isinstance(self.warp_kernel, str):
            self.warp_sigma_ = getattr(warp_kernel, "sigma", None)
        self.warp_kernel_, self.readout_kernel_ = warp_kernel, readout_kernel

    def _select_linear_readout(self, q0: torch.Tensor, Yc: torch.Tensor, rng, scale: float):
        """The linear readout (kernel x·y + 1): λ by leave-one-out on the unwarped points where "auto"."""
        self.readout_sigma_ = None
        if self.lam == "auto":
            idx = torch.as_tensor(subsample(q0.shape[0], LOO_MAX_POINTS, rng), device=q0.device)
            sel = loo_select(lambda s: _LINEAR_KERNEL, q0[idx].double(), Yc[idx].double(), [0.0], LAM_GRID,
                             classification=self._classification)
            self.lam_, self.loo_initial_ = sel.lam, sel.score
        else:
            self.lam_ = float(self.lam)
        self.warp_sigma_ = LINEAR_WARP_FACTOR * scale if self.warp_sigma == "auto" else float(self.warp_sigma)
        self.warp_kernel_ = _make_kernel(self.warp_kernel, self.warp_sigma_, self.nugget, "warp_kernel")
        if not isinstance(self.warp_kernel, str):
            self.warp_sigma_ = getattr(self.warp_kernel_, "sigma", None)
        self.readout_kernel_ = _LINEAR_KERNEL

    def _problem(self) -> WarpProblem:
        return WarpProblem(warp_kernel=self.warp_kernel_, readout_kernel=self.readout_kernel_, lam=self.lam_,
                           mode=self.mode, n_layers=self.n_layers_, integrator=self.integrator, backend=self.backend_,
                           max_iter=self.max_iter_, tol=self.tol, n_augment=self.augment_)

    def _fit(self, X: np.ndarray, Y: np.ndarray):
        """Fit the warp and the readout to X (N, d) and real targets Y (N, k)."""
        self._check_params()
        self._resolve_auto()
        t0 = time.perf_counter()
        rng = np.random.default_rng(self.random_state)
        n = X.shape[0]
        self.backend_ = self.backend
        if self.backend == "auto":
            self.backend_ = "dense" if n * n <= _DENSE_MAX_PAIRS else "auto"
        q0 = self._lift(self._to_tensor(X))
        self.offset_ = self._to_tensor(Y, torch.float64).mean(0)
        Yc = self._to_tensor(Y) - self.offset_.to(q0.dtype)
        self._select_readout(X, q0, Yc, rng)
        problem = self._problem()
        if self.nu == "auto":
            grid = LINEAR_NU_GRID if self.readout == "linear" else NU_GRID
            self.nu_, self.nu_validation_ = select_nu(problem, q0, Yc, rng, classification=self._classification,
                                                      nu_grid=grid)
        else:
            self.nu_, self.nu_validation_ = float(self.nu), None
        fit = fit_momenta(problem, q0, Yc, self.nu_, seed=0)
        self.n_iter_, self.converged_, self.stop_reason_ = fit.n_iter, fit.converged, fit.stop_reason
        if fit.stop_reason in _FAILURES:
            warnings.warn(f"{type(self).__name__}: the warp's optimisation stopped after {fit.n_iter} iterations "
                          f"without converging ({STOP_REASONS[fit.stop_reason][1]})", ConvergenceWarning, stacklevel=3)
        self.loss_curve_ = fit.history
        self.objective_, self.kinetic_energy_, self.data_term_ = fit.objective, fit.energy, fit.data
        self.initial_data_term_ = fit.initial_data
        # The fitted model (trajectory and readout) is rebuilt in float64 from the optimised momenta, so that
        # predictions do not depend on float32 round-off (e.g. on how test points are batched).
        self._set_readout(X, Y, problem, fit.p, rng)
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _set_readout(self, X, Y, problem: WarpProblem, p: torch.Tensor, rng):
        """The float64 trajectory of momenta p and the ridge readout on the warped training points."""
        n = X.shape[0]
        q0 = self._lift(self._to_tensor(X, torch.float64))
        Yc = self._to_tensor(Y, torch.float64) - self.offset_
        warp = warp_trajectory(problem, q0, p)
        qL = warp.q_final
        self.trajectory_ = warp.trajectory
        self.energy_ = warp.energy.cpu().numpy()
        self.momentum_ = warp.p0.cpu().numpy()
        row = warp.p0.norm(dim=1)
        self.momentum_sparsity_ = float((row <= 1e-3 * row.max().clamp_min(torch.finfo(row.dtype).tiny)).double().mean())
        if self.lam == "auto" and self.refit_lam:
            # Re-select λ by leave-one-out on the warped points (the width stays: the warp was fitted for it).
            idx = torch.as_tensor(subsample(n, LOO_MAX_POINTS, rng), device=qL.device)
            sel = loo_select(lambda s: self.readout_kernel_, qL[idx], Yc[idx], [0.0], LAM_GRID,
                             classification=self._classification)
            self.lam_, self.loo_final_ = sel.lam, sel.score
        self.readout_weights_ = None
        if self._loo_grid is not None and n <= DENSE_MAX_POINTS:
            self._averaged_readout(qL, Yc, rng)
        if self.readout_weights_ is None:
            alpha = ridge_solve(self.readout_kernel_, qL, Yc, self.lam_, backend=self.backend_)
            self.readout_ = RidgeReadout(self.readout_kernel_, self.lam_, qL, alpha, self.offset_)
        if self.readout == "linear":  # f(z) = Σ_i (z·q_i + 1) α_i + offset = coef_ z + intercept_
            self.coef_ = (qL.T @ alpha).T.cpu().numpy()
            self.intercept_ = (alpha.sum(0) + self.offset_).cpu().numpy()
        # the warped GP's scales (gp.py: error bars, predict_proba); with the linear readout its kernel z·z' + 1
        # makes it Bayesian linear regression on the warped coordinates
        self._store_gp(Yc)
        self.displacement_ = float((qL - q0).norm(dim=1).mean())

    def _averaged_readout(self, qL: torch.Tensor, Yc: torch.Tensor, rng) -> None:
        """Regression with the readout width and λ both "auto": the readouts of the LOO grid averaged with
        pseudo-BMA weights (``_readout.pseudo_bma_weights``), scored on the warped points when a warp was fitted."""
        sigmas, lams, sel = self._loo_grid
        if math.isfinite(self.nu_):
            idx = torch.as_tensor(subsample(qL.shape[0], LOO_MAX_POINTS, rng), device=qL.device)
            sel = loo_select(lambda s: _make_kernel(self.readout_kernel, s, 0.0, "readout_kernel"), qL[idx],
                             Yc[idx], sigmas, lams, classification=False)
        weights = pseudo_bma_weights(sel)
        if len(weights) == 1:  # one readout after all: readout_sigma_ and lam_ (readout_weights_ stays None)
            return
        self.readout_weights_ = weights
        parts = []
        for sigma, lam, _ in weights:
            kernel = _make_kernel(self.readout_kernel, sigma, 0.0, "readout_kernel")
            parts.append(RidgeReadout(kernel, lam, qL, ridge_solve(kernel, qL, Yc, lam, backend=self.backend_),
                                      self.offset_))
        w = torch.tensor([v for _, _, v in weights], dtype=qL.dtype, device=qL.device)
        self.readout_ = ReadoutMixture(parts, w)

    # ------------------------------------------------------------------ prediction
    def warp(self, X, *, return_path: bool = False):
        """Warp points with the fitted flow.

        Parameters
        ----------
        X : array-like of shape (M, d)
        return_path : bool, default=False
            Return the points after every time step (layer) instead of the end points only.

        Returns
        -------
        ndarray of shape (M, d + augment), or (n_layers + 1, M, d + augment) with ``return_path``
            ``Φ(X)``, the inputs (lifted by ``augment`` zeros) carried along the stored trajectory.
        """
        check_is_fitted(self, "readout_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with torch.no_grad():
            return self._warp(self._to_tensor(X, torch.float64), return_path=return_path).cpu().numpy()

    def jacobian_determinant(self, X):
        """``det DΦ`` of the fitted flow at points X (in the lifted space when ``augment_ > 0``).

        Parameters
        ----------
        X : array-like of shape (M, d)
            E.g. a grid over the data; positive everywhere means the flow is orientation-preserving there (a
            diffeomorphism on that grid, THEORY §4).

        Returns
        -------
        ndarray of shape (M,)
        """
        check_is_fitted(self, "readout_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        x = self._lift(self._to_tensor(X, torch.float64))
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            y = self.trajectory_.flow(xx)
            J = torch.stack([torch.autograd.grad(y[:, i].sum(), xx, retain_graph=i < y.shape[1] - 1)[0]
                             for i in range(y.shape[1])], 1)
        return torch.linalg.det(J).detach().cpu().numpy()

    def _warp(self, x: torch.Tensor, return_path: bool = False) -> torch.Tensor:
        return self.trajectory_.flow(self._lift(x), return_path=return_path)

    def _raw_predict(self, X) -> torch.Tensor:
        check_is_fitted(self, "readout_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with torch.no_grad():
            return self.readout_(self._warp(self._to_tensor(X, torch.float64)), backend=self.backend_)


class KernelWarpingRegressor(WarpedGPRegressorMixin, RegressorMixin, _KernelWarpingBase):
    __doc__ = ("Idea-registration regressor: a learned flow of the inputs followed by kernel ridge regression.\n"
               + PARAM_DOC + ATTR_DOC + REGRESSOR_ATTR_DOC)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        """Fit to X (N, d) and y (N,) or (N, k); returns self."""
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        Y = y.reshape(len(y), -1)
        self.y_scale_ = np.where(Y.std(0) > 0, Y.std(0), 1.0)
        self._fit(X, Y / self.y_scale_)
        if self.readout == "linear":  # in the targets' units
            self.coef_, self.intercept_ = self.coef_ * self.y_scale_[:, None], self.intercept_ * self.y_scale_
            if self._y_1d:
                self.coef_, self.intercept_ = self.coef_[0], float(self.intercept_[0])
        return self

    # predict(X, return_std=False, return_cov=False) and sample_y: WarpedGPRegressorMixin (gp.py)


class KernelWarpingClassifier(WarpedGPClassifierMixin, ClassifierMixin, _KernelWarpingBase):
    __doc__ = ("Idea-registration classifier: a learned flow of the inputs followed by kernel ridge regression of\n"
               "the one-hot labels; the predicted class is the largest score.\n" + PARAM_DOC + ATTR_DOC
               + CLASSIFIER_ATTR_DOC)

    _classification = True

    def fit(self, X, y):
        """Fit to X (N, d) and class labels y (N,); returns self."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        enc = LabelEncoder().fit(y)
        self.classes_ = enc.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"Classifier can't train when only one class is present: got only class "
                             f"{self.classes_[0]!r} in y")
        Y = np.eye(len(self.classes_))[enc.transform(y)]
        return self._fit(X, Y)

    def decision_function(self, X):
        """Readout scores: (M,) for two classes (positive means ``classes_[1]``), else (M, n_classes)."""
        s = self._raw_predict(X).cpu().numpy()
        return s[:, 1] - s[:, 0] if s.shape[1] == 2 else s

    def predict(self, X):
        """Class labels (M,)."""
        s = self._raw_predict(X).cpu().numpy()
        return self.classes_[s.argmax(1)]
