"""Scikit-learn estimators of idea registration: warp the inputs by a flow, then kernel ridge regression (THEORY §5).

``KernelWarpingRegressor`` and ``KernelWarpingClassifier`` minimise, over the momenta of the data points,

    ν · (kinetic energy of the warp) + ℓ(q_L) / N,      ℓ(q) = λ tr(Yᵀ (K(q, q) + λI)^{-1} Y),

where the warp is either the continuous Hamiltonian flow shot from the initial momentum (``mode="shooting"``,
energy ``H(q_0, p_0)``) or L explicit-Euler layers with one momentum per layer (``mode="layers"``, energy
``Δt Σ_k H(q_k, p_k)``: the discrete ResNet trained by backpropagation). The readout is the closed-form ridge
regressor on the warped training points; new points are warped along the stored trajectory, then read out.

Hyper-parameters are chosen inside ``fit`` from the training data only: the readout width and λ by exact
leave-one-out on the unwarped points (``loo_select``), then (``nu="auto"``) the warp strength among a few values and
"no warp" by 3-fold cross-validation, so that the default falls back to plain kernel ridge regression when warping
does not help. On training sets of at most 1,000 points the inner cross-validation is repeated over 3 shuffles of
the folds and its held-out scores averaged, so that the choice depends less on one random split.
"""

from __future__ import annotations

import math
import time
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

import lddmm_nets as _engine
from lddmm_nets import shoot

from ._kernels import KERNELS
from ._readout import RidgeReadout, loo_select, ridge_loss, ridge_solve
from .gp import WarpedGPClassifierMixin, WarpedGPRegressorMixin
from ._warping import LayerTrajectory, forward_layers

_KERNEL_NAMES = ("gaussian", "laplace", "matern", "cauchy")
_MODES = ("shooting", "layers")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Candidate readout widths (times the median pairwise distance) and ridge parameters for the "auto" choice.
_SIGMA_FACTORS = tuple(2.0 ** (e / 4) for e in range(-18, 13))  # 2^-4.5 ... 8 in steps of 2^(1/4)
# Leave-one-out selection runs on a random subsample of at most this many points (one eigh per width; all of
# digits' 1,437 training points per fold: the selection on an 800-point subsample costs 0.1-0.2 point there).
_LOO_MAX_POINTS = 2000
# backend="auto" of the estimators: dense kernel matrices up to this many pairs (64 MiB per float32 matrix, a
# few dozen alive under autograd), KeOps beyond. Fitting differentiates through every layer, where dense BLAS is
# much faster than KeOps on the CPU at these sizes (and KeOps compiles a formula per input dimension).
_DENSE_MAX_PAIRS = 2**24
_LAM_GRID = tuple(10.0 ** (e / 4) for e in range(-16, 3))  # 1e-4 ... 10^0.5 in steps of 10^(1/4)
# nu="auto": candidate warp strengths, compared with the unwarped readout (ν = ∞) by internal cross-validation.
_NU_GRID = (0.01, 0.1)
_NU_FOLDS = 3
# The inner cross-validation of ν is repeated with this many different shuffles of the folds when
# the training set has at most _NU_REPEAT_MAX_POINTS points; the held-out scores are averaged over the repeats
# before the one-standard-error rule is applied, so that the choice depends less on one random split. Larger
# sets keep one split: their held-out estimates vary less, and the inner fits are what the fit time is spent on.
_NU_REPEATS = 3
_NU_REPEAT_MAX_POINTS = 1000
# Inner fits of the ν selection use at most this many training points per fold (the cost of the selection).
_NU_MAX_POINTS = 600
# Below this many points the selection is not attempted: the unwarped readout is kept.
_NU_MIN_POINTS = 30


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


def _inner_repeats(n: int) -> int:
    """How many shuffles of the inner folds the selections inside ``fit`` average over (N training points)."""
    return _NU_REPEATS if n <= _NU_REPEAT_MAX_POINTS else 1


def one_standard_error_choice(losses) -> tuple[int, list[float], list[float]]:
    """The one-standard-error rule with paired errors: the simplest candidate not significantly worse than the best.

    Parameters
    ----------
    losses : sequence of ndarray
        Per-point held-out losses, one (N,) array per candidate, ordered from the simplest candidate to the most
        flexible; every array scores the same N points.

    Returns
    -------
    chosen : int
        Index of the first candidate whose mean loss exceeds the smallest mean loss by at most the standard error
        of the paired differences, ``sd(loss - best loss) / sqrt(N)``.
    means, standard_errors : list of float
        Each candidate's mean loss and that standard error (0 for the best).
    """
    losses = [np.asarray(x, dtype=np.float64) for x in losses]
    n = losses[0].shape[0]
    means = [float(x.mean()) for x in losses]
    best = losses[int(np.argmin(means))]
    ses = [float((x - best).std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0 for x in losses]
    chosen = next(j for j, (m, e) in enumerate(zip(means, ses)) if m <= min(means) + e + 1e-12)
    return chosen, means, ses


def _median_distance(X: np.ndarray, rng: np.random.Generator, n_max: int = 500) -> float:
    if X.shape[0] > n_max:
        X = X[rng.choice(X.shape[0], n_max, replace=False)]
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    d = np.sqrt(d2[np.triu_indices(X.shape[0], 1)])
    d = d[d > 0]
    return float(np.median(d)) if d.size else 1.0


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
            v = getattr(self, name)
            if isinstance(v, str):
                if v != "auto":
                    raise ValueError(f"{name} must be 'auto' or a positive number; got {v!r}")
            elif not isinstance(v, Real) or isinstance(v, bool) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be 'auto' or a positive number; got {v!r}")
        if not isinstance(self.refit_lam, (bool, np.bool_)):
            raise ValueError(f"refit_lam must be True or False; got {self.refit_lam!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}; got {self.dtype!r}")
        if self.backend not in ("auto", "dense", "keops"):
            raise ValueError(f"backend must be one of ('auto', 'dense', 'keops'); got {self.backend!r}")
        valid = tuple(_engine.integrators.available())  # checked in both modes: a typo should not pass silently
        if self.integrator not in valid:
            raise ValueError(f"integrator must be one of {valid}; got {self.integrator!r}")

    def _to_tensor(self, X, dtype=None):
        return torch.tensor(np.asarray(X), dtype=dtype or _DTYPES[self.dtype], device=self.device)

    def _lift(self, X: torch.Tensor) -> torch.Tensor:
        if self.augment:
            X = torch.cat([X, X.new_zeros(X.shape[0], self.augment)], dim=1)
        return X

    # ------------------------------------------------------------------ fitting
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

        scale = _median_distance(X, rng)
        self.median_distance_ = scale
        make_readout = lambda s: _make_kernel(self.readout_kernel, s, 0.0, "readout_kernel")  # noqa: E731
        auto_sigma = self.readout_sigma == "auto" and isinstance(self.readout_kernel, str)
        if auto_sigma or self.lam == "auto":
            if auto_sigma:
                sigmas = [scale * f for f in _SIGMA_FACTORS]
            else:  # a given width, or a kernel object (which keeps its own width)
                sigmas = [1.0 if self.readout_sigma == "auto" else float(self.readout_sigma)]
            lams = _LAM_GRID if self.lam == "auto" else [float(self.lam)]
            idx = (rng.choice(n, _LOO_MAX_POINTS, replace=False) if n > _LOO_MAX_POINTS else np.arange(n))
            idx = torch.as_tensor(np.sort(idx), device=q0.device)
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

        if self.nu == "auto":
            self.nu_, self.nu_validation_ = self._select_nu(q0, Yc, warp_kernel, readout_kernel, rng)
        else:
            self.nu_, self.nu_validation_ = float(self.nu), None
        res = self._optimise(q0, Yc, self.nu_, warp_kernel, readout_kernel)
        self.n_iter_ = res["n_iter"]
        self.loss_curve_ = res["history"]
        self.converged_ = res["converged"]
        self.objective_ = res["objective"]
        self.kinetic_energy_ = res["energy"]
        self.data_term_ = res["data"]
        self.initial_data_term_ = res["initial_data"]
        # The fitted model (trajectory and readout) is rebuilt in float64 from the optimised momenta, so that
        # predictions do not depend on float32 round-off (e.g. on how test points are batched).
        q0 = self._lift(self._to_tensor(X, torch.float64))
        Yc = self._to_tensor(Y, torch.float64) - self.offset_
        traj, energy_path, qL, p0 = self._trajectory(warp_kernel, q0, res["p"])
        self.trajectory_ = traj
        self.energy_ = energy_path.cpu().numpy()
        self.momentum_ = p0.cpu().numpy()
        row = p0.norm(dim=1)
        self.momentum_sparsity_ = float((row <= 1e-3 * row.max().clamp_min(torch.finfo(row.dtype).tiny)).double().mean())
        if self.lam == "auto" and self.refit_lam:
            # Re-select λ by leave-one-out on the warped points (the width stays: the warp was fitted for it).
            idx = (rng.choice(n, _LOO_MAX_POINTS, replace=False) if n > _LOO_MAX_POINTS else np.arange(n))
            idx = torch.as_tensor(np.sort(idx), device=qL.device)
            sel = loo_select(lambda s: readout_kernel, qL[idx], Yc[idx], [0.0], _LAM_GRID,
                             classification=self._classification)
            self.lam_, self.loo_final_ = sel.lam, sel.score
        alpha = ridge_solve(readout_kernel, qL, Yc, self.lam_, backend=self.backend_)
        self.readout_ = RidgeReadout(readout_kernel, self.lam_, qL, alpha, self.offset_)
        self._store_gp(Yc)  # the warped GP's scales (gp.py: error bars, predict_proba)
        self.displacement_ = float((qL - q0).norm(dim=1).mean())
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _optimise(self, q0: torch.Tensor, Yc: torch.Tensor, nu: float, warp_kernel, readout_kernel) -> dict:
        """Minimise ``ν E + ℓ(q_L)/N`` over the momenta; ``ν = ∞`` is the identity warp (p = 0).

        Returns a dict with the float64 momenta ``p`` ((N, D) for shooting, (L, N, D) for layers) and the
        optimiser's diagnostics.
        """
        n, L, lam = q0.shape[0], self.n_layers, self.lam_
        shape = (n, q0.shape[1]) if self.mode == "shooting" else (L, n, q0.shape[1])
        zero = {"p": torch.zeros(shape, dtype=torch.float64, device=q0.device), "n_iter": 0,
                "history": np.zeros(0), "converged": True, "energy": 0.0}
        if math.isinf(nu):
            with torch.no_grad():
                d0, _ = ridge_loss(readout_kernel, q0, Yc, lam, backend=self.backend_)
            d0 = float(d0) / n
            return {**zero, "objective": d0, "data": d0, "initial_data": d0}
        # Scale of the momenta: the linearised optimum p ≈ -∇_q(ℓ/N)(q_0) / ν (one Euler layer). Optimising
        # P = p / c with c its largest entry, on the objective divided by the kinetic energy of that step,
        # makes L-BFGS's variables and gradients O(1) whatever N, ν and λ (THEORY §7: data term scaled by 1/N).
        qq = q0.detach().requires_grad_(True)
        d0, _ = ridge_loss(readout_kernel, qq, Yc, lam, backend=self.backend_)
        (gq,) = torch.autograd.grad(d0 / n, qq)
        initial_data = float(d0.detach()) / n
        c = float(gq.abs().max()) / nu
        with torch.no_grad():
            j0 = nu * float(_engine.hamiltonian(warp_kernel, q0.double(), gq.double() / nu, self.backend_))
        # When the possible decrease is below round-off (the identity warp is already optimal to working
        # precision, e.g. data the readout interpolates), there is nothing to optimise.
        trivial = not (c > 0 and math.isfinite(j0) and j0 > 1e-10 * max(initial_data, 1e-30))
        P = torch.zeros(shape, dtype=q0.dtype, device=q0.device, requires_grad=True)

        def objective(P):
            p = c * P
            if self.mode == "shooting":
                traj = shoot(warp_kernel, q0, p, n_steps=L, integrator=self.integrator, backend=self.backend_)
                energy = _engine.hamiltonian(warp_kernel, q0, p, self.backend_)
                qL = traj.q[-1]
            else:
                qs, energies = forward_layers(warp_kernel, q0, p, backend=self.backend_)
                energy = energies.sum() / L
                qL = qs[-1]
            data, _ = ridge_loss(readout_kernel, qL, Yc, lam, backend=self.backend_)
            return nu * energy + data / n, energy, data / n

        if trivial:
            return {**zero, "objective": initial_data, "data": initial_data, "initial_data": initial_data}
        history = []
        opt = torch.optim.LBFGS([P], lr=1.0, max_iter=self.max_iter, max_eval=int(self.max_iter * 1.25) + 1,
                                tolerance_grad=self.tol, tolerance_change=1e-4 * self.tol, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss, _, _ = objective(P)
            loss = loss / j0
            loss.backward()
            history.append(float(loss.detach()) * j0)
            return loss

        opt.step(closure)
        n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
        converged = n_iter < self.max_iter
        if not bool(torch.isfinite(P).all()):
            # A line search that left the finite range: keep the identity warp rather than NaN momenta.
            with torch.no_grad():
                P.zero_()
            converged = False
        with torch.no_grad():
            loss, energy, data = objective(P.detach())
        return {"p": (c * P.detach()).double(), "n_iter": n_iter, "history": np.asarray(history),
                "converged": converged, "objective": float(loss), "energy": float(energy), "data": float(data),
                "initial_data": initial_data}

    def _trajectory(self, warp_kernel, q0: torch.Tensor, p: torch.Tensor):
        """Trajectory, energy path, warped points and initial momentum of momenta p (no graph)."""
        with torch.no_grad():
            if self.mode == "shooting":
                traj = shoot(warp_kernel, q0, p, n_steps=self.n_layers, integrator=self.integrator,
                             backend=self.backend_)
                return traj, traj.energy(), traj.q[-1], p
            qs, energies = forward_layers(warp_kernel, q0, p, backend=self.backend_)
            return LayerTrajectory(warp_kernel, qs, p, backend=self.backend_), energies, qs[-1], p[0]

    def _inner_folds(self, Yc: torch.Tensor, rng):
        """The inner folds: ``_NU_FOLDS`` folds, shuffled anew ``_inner_repeats(N)`` times.

        Stratified for classifiers when every class allows it. Every point is held out once per repeat, so held-out
        sums divided by ``N * repeats`` are averages over the repeats.
        """
        n = Yc.shape[0]
        labels = Yc.argmax(1).cpu().numpy()
        folds = []
        for _ in range(_inner_repeats(n)):
            seed = int(rng.integers(2**31 - 1))
            if self._classification and np.bincount(labels).min() >= _NU_FOLDS:
                cv = StratifiedKFold(_NU_FOLDS, shuffle=True, random_state=seed)
                folds += list(cv.split(np.zeros(n), labels))
            else:
                folds += list(KFold(_NU_FOLDS, shuffle=True, random_state=seed).split(np.zeros(n)))
        return folds

    def _select_nu(self, q0: torch.Tensor, Yc: torch.Tensor, warp_kernel, readout_kernel, rng):
        """Choose ν among ``_NU_GRID`` and ∞ (no warp) by internal cross-validation on the training set.

        Every candidate warp is fitted on the inner training folds (at most ``_NU_MAX_POINTS`` points each) with
        the readout width and ridge selected before; the held-out points are warped along it and read out. Each
        training point gets a held-out loss per candidate (averaged over the shuffles of ``_inner_repeats``): the
        squared error of its scores, or for classifiers of more than two classes its 0-1 error (the criterion of
        ``loo_select``). The choice is the one-standard-error rule with paired errors: the simplest candidate (no
        warp first, then the weakest warp, largest ν) whose mean loss exceeds the smallest mean loss by at most the
        standard error of the per-point differences ``sd(loss - best loss) / sqrt(N)``. A warp is therefore taken
        only when its gain on the held-out points is larger than its noise.

        Returns
        -------
        nu : float
            The chosen ν (``math.inf``: no warp).
        table : list of tuple
            ``(nu, accuracy or nan, mean squared error, mean loss, paired standard error to the best)`` for every
            candidate.
        """
        n = q0.shape[0]
        candidates = (math.inf,) + tuple(sorted(_NU_GRID, reverse=True))  # simplest first
        if n < _NU_MIN_POINTS:
            return math.inf, []
        zero_one = self._classification and Yc.shape[1] > 2
        folds = self._inner_folds(Yc, rng)
        repeats = sum(len(va) for _, va in folds) / n
        sq = {nu: np.zeros(n) for nu in candidates}
        wrong = {nu: np.zeros(n) for nu in candidates}
        for tr, va in folds:
            if len(tr) > _NU_MAX_POINTS:
                tr = np.sort(rng.choice(tr, _NU_MAX_POINTS, replace=False))
            tr_t = torch.as_tensor(tr, device=q0.device)
            va_t = torch.as_tensor(va, device=q0.device)
            qt, Yt = q0[tr_t], Yc[tr_t]
            mean = Yt.double().mean(0)
            Ytc = Yt - mean.to(Yt.dtype)
            Yv = Yc[va_t].double()
            for nu in candidates:
                res = self._optimise(qt, Ytc, nu, warp_kernel, readout_kernel)
                traj, _, qL, _ = self._trajectory(warp_kernel, qt.double(), res["p"])
                with torch.no_grad():
                    alpha = ridge_solve(readout_kernel, qL, Ytc.double(), self.lam_, backend=self.backend_)
                    pred = readout_kernel.matvec(traj.flow(q0[va_t].double()), qL, alpha,
                                                 backend=self.backend_) + mean
                sq[nu][va] += ((pred - Yv) ** 2).sum(1).cpu().numpy() / repeats
                wrong[nu][va] += (pred.argmax(1) != Yv.argmax(1)).double().cpu().numpy() / repeats
        loss = wrong if zero_one else sq
        chosen, means, ses = one_standard_error_choice([loss[nu] for nu in candidates])
        table = [(nu, 1 - float(wrong[nu].mean()) if self._classification else math.nan, float(sq[nu].mean()),
                  m, e) for nu, m, e in zip(candidates, means, ses)]
        return candidates[chosen], table

    # ------------------------------------------------------------------ prediction
    def warp(self, X):
        """Warp points with the fitted flow.

        Parameters
        ----------
        X : array-like of shape (M, d)

        Returns
        -------
        ndarray of shape (M, d + augment)
            ``Φ(X)``, the inputs carried along the stored trajectory.
        """
        check_is_fitted(self, "readout_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with torch.no_grad():
            return self._warp(self._to_tensor(X, torch.float64)).cpu().numpy()

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        return self.trajectory_.flow(self._lift(x))

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
        Weight of the kinetic energy relative to the data term ``ℓ / N``. "auto" chooses among no warp at all
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
        L-BFGS iterations.
    tol : float, default=1e-5
        L-BFGS stops when the largest gradient entry of the normalised objective is below tol.
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
    n_iter_, converged_, loss_curve_, fit_time_ :
        Optimiser diagnostics.
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
