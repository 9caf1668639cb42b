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
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

import lddmm_nets as engine

from ._kernels import KERNELS
from ._momenta import WarpProblem, fit_momenta, warp_trajectory
from ._readout import RidgeReadout, loo_select, ridge_solve
from .gp import WarpedGPClassifierMixin, WarpedGPRegressorMixin
from ._selection import LAM_GRID, LOO_MAX_POINTS, SIGMA_FACTORS, median_distance, select_nu, subsample

__all__ = ["KernelWarpingClassifier", "KernelWarpingRegressor"]

_KERNEL_NAMES = ("gaussian", "laplace", "matern", "cauchy")
_MODES = ("shooting", "layers")
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

    def __init__(self, *, mode="layers", n_layers=5, integrator="rk2", warp_kernel="gaussian", warp_sigma="auto",
                 readout_kernel="gaussian", readout_sigma="auto", nu="auto", lam="auto", nugget=1e-3, augment=0,
                 max_iter=30, tol=1e-5, refit_lam=False, backend="auto", dtype="float32", device="cpu",
                 random_state=None):
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
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}; got {self.mode!r}")
        for name in ("n_layers", "max_iter"):
            v = getattr(self, name)
            if not isinstance(v, Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        if not isinstance(self.augment, Integral) or isinstance(self.augment, bool) or self.augment < 0:
            raise ValueError(f"augment must be a non-negative integer; got {self.augment!r}")
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
        if self.augment:
            X = torch.cat([X, X.new_zeros(X.shape[0], self.augment)], dim=1)
        return X

    # ------------------------------------------------------------------ fitting
    def _select_readout(self, X: np.ndarray, q0: torch.Tensor, Yc: torch.Tensor, rng):
        """Readout and warp kernels and λ: leave-one-out on the unwarped points where they are "auto"."""
        n = X.shape[0]
        scale = median_distance(X, rng)
        self.median_distance_ = scale
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

    def _problem(self) -> WarpProblem:
        return WarpProblem(warp_kernel=self.warp_kernel_, readout_kernel=self.readout_kernel_, lam=self.lam_,
                           mode=self.mode, n_layers=self.n_layers, integrator=self.integrator, backend=self.backend_,
                           max_iter=self.max_iter, tol=self.tol)

    def _fit(self, X: np.ndarray, Y: np.ndarray):
        """Fit the warp and the readout to X (N, d) and real targets Y (N, k)."""
        self._check_params()
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
            self.nu_, self.nu_validation_ = select_nu(problem, q0, Yc, rng, classification=self._classification)
        else:
            self.nu_, self.nu_validation_ = float(self.nu), None
        fit = fit_momenta(problem, q0, Yc, self.nu_, warn=True, name=type(self).__name__)
        self.n_iter_, self.converged_, self.stop_reason_ = fit.n_iter, fit.converged, fit.stop_reason
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
        alpha = ridge_solve(self.readout_kernel_, qL, Yc, self.lam_, backend=self.backend_)
        self.readout_ = RidgeReadout(self.readout_kernel_, self.lam_, qL, alpha, self.offset_)
        self._store_gp(Yc)  # the warped GP's scales (gp.py: error bars, predict_proba)
        self.displacement_ = float((qL - q0).norm(dim=1).mean())

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

    def _warp(self, x: torch.Tensor, return_path: bool = False) -> torch.Tensor:
        return self.trajectory_.flow(self._lift(x), return_path=return_path)

    def _raw_predict(self, X) -> torch.Tensor:
        check_is_fitted(self, "readout_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with torch.no_grad():
            return self.readout_(self._warp(self._to_tensor(X, torch.float64)), backend=self.backend_)


_PARAM_DOC = """
    Parameters
    ----------
    mode : {"layers", "shooting"}, default="layers"
        "layers" optimises one momentum per layer of ``n_layers`` explicit-Euler steps (a ResNet trained by
        backpropagation; its optimum satisfies the discrete Hamiltonian system); "shooting" optimises the initial
        momentum only and warps by the continuous Hamiltonian flow (geodesic). Both reach the same objective
        within 1e-3 on moons; "layers" is the default because it is 3-4 times cheaper per iteration with equal or
        better 5-fold accuracy on the benchmark (scripts/ideas_experiments.py).
    n_layers : int, default=5
        Time steps of the flow over [0, 1] (layers of the network).
    integrator : str, default="rk2"
        Engine integrator of the shooting mode (``lddmm_nets.integrators.available()``).
    warp_kernel, readout_kernel : {"gaussian", "laplace", "matern", "cauchy"} or engine kernel, default="gaussian"
        Warping kernel Γ and readout kernel K; names are built with the widths below.
    warp_sigma : float or "auto", default="auto"
        Width of Γ in input units; "auto" is twice the readout width.
    readout_sigma : float or "auto", default="auto"
        Width of K; "auto" is selected with ``lam`` by exact leave-one-out on the unwarped data (at most 2,000
        points) among 2^-4.5 ... 8 (steps of 2^(1/4)) times the median pairwise distance (``loo_select``):
        regressors take the smallest LOO squared error; two-class classifiers a one-standard-error rule on LOO
        accuracy, then the smallest LOO squared error; classifiers of more than two classes the largest LOO
        accuracy averaged over each candidate's neighbours in the (width, λ) grid.
    nu : float or "auto", default="auto"
        Weight of the kinetic energy relative to the data term ``ℓ / N`` (``math.inf``: no warp, plain kernel ridge
        regression). "auto" chooses among no warp at all
        (ν = ∞: plain kernel ridge regression with the selected width and λ), 0.1 and 0.01 by 3-fold
        cross-validation inside ``fit`` (warps fitted on at most 600 points per inner fold; when N ≤ 1,000 the
        cross-validation is repeated over 3 shuffles of the folds and each point's held-out loss averaged). The loss
        is the squared error, or the 0-1 error for more than two classes; the choice is the simplest candidate whose
        mean loss is within one paired standard error of the smallest, so a warp is taken only when its held-out
        gain exceeds its noise, and the default falls back to the tuned kernel ridge readout otherwise. The choice
        is ``nu_``.
    lam : float or "auto", default="auto"
        Ridge parameter λ of the readout ("auto": leave-one-out among 1e-4 ... √10, steps of 10^(1/4)).
    nugget : float, default=1e-3
        Nugget r added to Γ(q, q) (kernel regularisation, R2's alternative to dropout).
    augment : int, default=0
        Extra zero input dimensions (augmented flows can untangle what a homeomorphism of R^d cannot).
    max_iter : int, default=30
        L-BFGS iterations (``lddmm_nets.optim.minimize``, strong Wolfe line search; at most 1.25 max_iter + 1
        objective evaluations).
    tol : float, default=1e-5
        L-BFGS stops when the largest gradient entry of the normalised objective is below tol (or its relative
        decrease in one iteration below 1e-4 tol).
    refit_lam : bool, default=False
        With ``lam="auto"``, select λ again by leave-one-out on the warped training points before the final solve.
    backend : {"auto", "dense", "keops"}, default="auto"
        Kernel backend for the kernel sums; "auto" is dense up to 2^24 pairs (N ≤ 4096) and the engine's choice
        (KeOps) beyond. The chosen value is ``backend_``.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the optimisation; the leave-one-out selection and the fitted model (final trajectory,
        readout, predictions) are always float64.
    device : str, default="cpu"
    random_state : int, Generator or None
        Seeds the subsamples (median distance, leave-one-out, inner folds of the ν and readout selections): an int
        makes ``fit`` reproducible; None draws fresh splits on every fit (scikit-learn's convention).
"""

_ATTR_DOC = """
    Attributes
    ----------
    trajectory_ : Trajectory or LayerTrajectory
        The warp of the training points; ``trajectory_.flow(x)`` warps new (lifted) points.
    energy_ : ndarray
        H along the trajectory ((n_layers + 1,) for shooting, (n_layers,) for layers).
    momentum_ : ndarray of shape (N, d + augment)
        Initial momentum p_0 of the data points.
    momentum_sparsity_ : float
        Fraction of points whose momentum is below 1e-3 of the largest (the "support vectors" are the rest).
    readout_ : RidgeReadout
        Closed-form ridge readout on the warped training points.
    readout_sigma_, warp_sigma_, lam_ : float
        The widths and ridge parameter used.
    nu_ : float
        The warp strength used (``math.inf``: no warp, the trajectory is the identity).
    nu_validation_ : list of tuple or None
        With ``nu="auto"``: ``(nu, held-out accuracy or nan, held-out mean squared error, mean loss, paired
        standard error of the loss to the best candidate's)`` per candidate, no warp first (empty below 30
        training points, where no warp is kept).
    objective_, kinetic_energy_, data_term_, initial_data_term_ : float
        Final objective ``ν E + ℓ/N``, its parts, and ℓ/N before warping.
    displacement_ : float
        Mean displacement of the training points.
    n_iter_, converged_, stop_reason_ :
        L-BFGS iterations of the final fit, whether it met its stopping rule, and why it stopped (a key of
        ``lddmm_nets.optim.STOP_REASONS``, or "identity" when nothing was optimised: ν = ∞ or the identity warp
        already optimal). A final fit that stops without converging warns with ``lddmm_nets.optim.ConvergenceWarning``.
    loss_curve_ : ndarray
        Objective at the start and after every L-BFGS iteration of the final fit.
    fit_time_ : float
        Seconds.
"""


class KernelWarpingRegressor(WarpedGPRegressorMixin, RegressorMixin, _KernelWarpingBase):
    __doc__ = ("Idea-registration regressor: a learned flow of the inputs followed by kernel ridge regression.\n"
               + _PARAM_DOC + _ATTR_DOC
               + "    signal_variance_, noise_variance_ : ndarray of shape (k,)\n        Scales of the warped GP "
                 "(``predict(return_std=True)``, ``sample_y``; lddmm_nets.nets.gp), in squared units of y.\n")

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
        return self._fit(X, Y / self.y_scale_)

    # predict(X, return_std=False, return_cov=False) and sample_y: WarpedGPRegressorMixin (gp.py)


class KernelWarpingClassifier(WarpedGPClassifierMixin, ClassifierMixin, _KernelWarpingBase):
    __doc__ = ("Idea-registration classifier: a learned flow of the inputs followed by kernel ridge regression of\n"
               "the one-hot labels; the predicted class is the largest score.\n" + _PARAM_DOC + _ATTR_DOC
               + "    classes_ : ndarray\n        Class labels.\n"
               + "    temperature_ : float\n        ``predict_proba`` is ``softmax(temperature_ * scores)``, the "
                 "temperature fitted on exact leave-one-out scores (lddmm_nets.nets.gp).\n")

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
