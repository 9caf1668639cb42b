"""``EquivariantKernelWarpingClassifier``: equivariant warping blocks on images, pooled patch features, kernel ridge.

``fit`` (training images only):

1. images scaled by one number (the standard deviation of the training pixels), reshaped to (N, C, H, W);
2. Nyström features of a Gaussian kernel on (2r+1)² patches: centres by k-means on training patches, closed under
   the point group; width ``patch_sigma`` ("auto": a third of the median distance between training patches);
3. readout features ``u(h·z)`` (pooled patch features of every point-group image of z) and the readout width and λ
   by exact leave-one-out on the unwarped training images (``loo_select``, smoothed LOO accuracy);
4. the warp: L blocks ``z ↦ z + Δt v_k(z)`` with v_k in the RKHS of the equivariant kernel Γ, driven by momenta on
   (at most ``max_warp_images``) training images, minimising ``ν Δt Σ_k ½‖v_k‖² + ℓ(u(z_L)) / N`` (ℓ the ridge loss)
   with the engine's L-BFGS; ``nu="auto"`` keeps the warp only when it lowers the 0-1 loss of a held-out third of
   the training set by more than one paired standard error (else ν = ∞: no warp);
5. the ridge readout on the warped features of all training images.
"""

from __future__ import annotations

import math
import time
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from lddmm_nets.kernels import ACTIVATIONS
from lddmm_nets.optim import minimize

from .._readout import RidgeReadout, loo_select, ridge_loss, ridge_solve
from ._groups import GROUPS, extract_patches, point_group
from .blocks import ImageFlow, forward_blocks
from .kernels import ActivationFeatures, EquivariantPatchKernel, NystromFeatures
from .readout import OrbitKernel, PooledFeatures, pool_matrix

__all__ = ["EquivariantKernelWarpingClassifier"]

_SIGMA_FACTORS = tuple(2.0 ** (e / 2) for e in range(-4, 5))  # readout widths: 1/4 ... 4 x median distance
_LOO_MAX_IMAGES = 1000  # leave-one-out selection on a stratified subsample (one eigh per width)
_LAM_GRID = tuple(10.0 ** (e / 4) for e in range(-16, 3))  # 1e-4 ... 10^0.5
_PATCH_SIGMA_FACTOR = 1 / 3  # "auto" patch width / median patch distance (digits: 0.991-0.994 for 1/4 ... 1/2)
_NU_CANDIDATE = 0.1  # nu="auto": this warp against none


def _median_distance(A: torch.Tensor, rng, n_max: int = 1000) -> float:
    if A.shape[0] > n_max:
        A = A[torch.as_tensor(rng.choice(A.shape[0], n_max, replace=False))]
    d = torch.cdist(A, A)
    d = d[torch.triu(torch.ones_like(d, dtype=torch.bool), 1)]
    d = d[d > 0]
    return float(d.median()) if d.numel() else 1.0


class EquivariantKernelWarpingClassifier(ClassifierMixin, BaseEstimator):
    """Idea registration on images: equivariant warping blocks, pooled patch features, kernel ridge readout.

    Takes flattened images (N, C H W) in channel-major order (``digits.data`` for ``image_shape=(8, 8)``).
    Each block is ``z ↦ z + Δt v(z)`` with v in the RKHS of the equivariant multichannel kernel
    ``Γ(x, x')_{(c,t),(c',t')} = δ_{cc'} Σ_h k(P_t x, h·P_{t'} x')`` (``lddmm_nets.nets.equivariant.kernels``),
    driven by momenta on training images; the blocks commute exactly with the translations of the periodic grid
    (and its 90° rotations / reflections for ``"p4"`` / ``"p4m"``); the readout is a Gaussian kernel ridge regression
    on pooled patch features summed over the point group, so the classifier is invariant to the point group and,
    through the pooling, nearly so to small shifts.

    Parameters
    ----------
    image_shape : tuple of int
        (H, W).
    channels : int, default=1
        C.
    group : {"translations", "p4", "p4m"}, default="translations"
    n_layers : int, default=2
        Warping blocks L (Δt = 1/L).
    warp_kernel : {"gaussian", "tanh", "relu", "sigmoid", "softplus", "identity"}, default="gaussian"
        Patch kernel of the blocks: "gaussian" uses the Nyström features of the readout; an activation name gives
        ``k(a, b) = σ(a)·σ(b) + 1``, whose blocks are residual convolutional layers (the CNN special case).
    patch_radius : int, default=1
        Patches are (2r+1) x (2r+1).
    n_features : int, default=32
        Nyström centres of the Gaussian patch kernel (closed under the point group).
    patch_sigma : float or "auto", default="auto"
        Gaussian patch width in units of the scaled pixels; "auto": a third of the median patch distance.
    pool_sigma : float, default=1.0
        Width (pixels) of the periodic Gaussian blur before pooling.
    pool_stride : int, default=2
        Block size of the average pooling (a divisor of H and W).
    readout_sigma, lam : float or "auto", default="auto"
        Readout width (feature units) and ridge parameter; "auto": exact leave-one-out on the unwarped training
        images (a stratified subsample of at most 1,000), widths 1/4 ... 4 times the median feature distance
        (steps of √2), λ 1e-4 ... √10 (steps of 10^(1/4)).
    nu : float or "auto", default="auto"
        Weight of the kinetic energy against ``ℓ / N`` (``math.inf``: no warp); "auto" compares ν = 0.1 with no warp on a held-out third
        of the training set (one-standard-error rule on the paired 0-1 losses).
    max_iter : int, default=20
        L-BFGS iterations of the warp.
    max_warp_images : int, default=500
        Momenta live on at most this many training images (a stratified subsample).
    random_state : int or None
        Seeds the subsamples, k-means and the held-out split.

    Attributes
    ----------
    scale_ : float
        Pixel scale (standard deviation of the training pixels).
    features_ : NystromFeatures
    kernel_ : EquivariantPatchKernel
        Γ of the blocks.
    flow_ : ImageFlow
        The fitted blocks (sources and momenta); ``flow_.filters()`` gives each block's filter.
    readout_ : RidgeReadout
        Ridge readout on the stacked orbit features of the warped training images.
    patch_sigma_, readout_sigma_, lam_, nu_ : float
        Values used (``nu_ = inf``: no warp).
    nu_validation_ : tuple or None
        ``(held-out accuracy without warp, with warp, paired standard error)`` when ``nu="auto"``.
    n_iter_, converged_, objective_, fit_time_ :
        Optimiser diagnostics and wall time.
    classes_ : ndarray
    """

    def __init__(self, image_shape=(8, 8), channels=1, group="translations", *, n_layers=2, warp_kernel="gaussian",
                 patch_radius=1, n_features=32, patch_sigma="auto", pool_sigma=1.0, pool_stride=2,
                 readout_sigma="auto", lam="auto", nu="auto", max_iter=20, max_warp_images=500, random_state=None):
        self.image_shape = image_shape
        self.channels = channels
        self.group = group
        self.n_layers = n_layers
        self.warp_kernel = warp_kernel
        self.patch_radius = patch_radius
        self.n_features = n_features
        self.patch_sigma = patch_sigma
        self.pool_sigma = pool_sigma
        self.pool_stride = pool_stride
        self.readout_sigma = readout_sigma
        self.lam = lam
        self.nu = nu
        self.max_iter = max_iter
        self.max_warp_images = max_warp_images
        self.random_state = random_state

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        shape = self.image_shape
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2
                and all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 1 for s in shape)):
            raise ValueError(f"image_shape: expected a pair of positive integers (H, W), got {shape!r}")
        for name, low in (("channels", 1), ("n_layers", 1), ("patch_radius", 0), ("n_features", 1),
                          ("max_iter", 1), ("max_warp_images", 2), ("pool_stride", 1)):
            v = getattr(self, name)
            if not isinstance(v, Integral) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
        if self.group not in GROUPS:
            raise ValueError(f"group: expected one of {list(GROUPS)}, got {self.group!r}")
        if self.group != "translations" and shape[0] != shape[1]:
            raise ValueError(f"image_shape: group {self.group!r} rotates the grid and needs square images, got "
                             f"{tuple(shape)}")
        kernels = ("gaussian",) + tuple(ACTIVATIONS)
        if self.warp_kernel not in kernels:
            raise ValueError(f"warp_kernel: expected one of {list(kernels)}, got {self.warp_kernel!r}")
        for name in ("patch_sigma", "readout_sigma", "lam", "nu"):
            v = getattr(self, name)
            finite = name != "nu"  # nu = inf: no warp
            if not (v == "auto" if isinstance(v, str) else isinstance(v, Real) and not isinstance(v, bool)
                    and v > 0 and not math.isnan(v) and (math.isfinite(v) or not finite)):
                raise ValueError(f"{name}: expected 'auto' or a {'finite ' if finite else ''}number > 0, got {v!r}")
        if not isinstance(self.pool_sigma, Real) or isinstance(self.pool_sigma, bool) or not self.pool_sigma >= 0:
            raise ValueError(f"pool_sigma: expected a number >= 0, got {self.pool_sigma!r}")
        if shape[0] % self.pool_stride or shape[1] % self.pool_stride:
            raise ValueError(f"pool_stride: expected a divisor of image_shape {tuple(shape)}, got {self.pool_stride}")

    def _images(self, X: np.ndarray) -> torch.Tensor:
        H, W = self.image_shape
        return torch.as_tensor(X / self.scale_, dtype=torch.float64).reshape(X.shape[0], self.channels, H, W)

    def _orbit(self, Z: torch.Tensor) -> torch.Tensor:
        return self._pooled.orbit(Z, self.group)

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y):
        """Fit to flattened images X (N, C H W) and labels y (N,); returns self."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        C, (H, W) = self.channels, self.image_shape
        if X.shape[1] != C * H * W:
            raise ValueError(f"X: expected {C * H * W} columns (channels x image_shape = {C} x {H} x {W}), got "
                             f"{X.shape[1]}")
        enc = LabelEncoder().fit(y)
        self.classes_ = enc.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"y: expected at least 2 classes, got only {self.classes_[0]!r}")
        t0 = time.perf_counter()
        rng = np.random.default_rng(self.random_state)
        std = float(X.std())
        self.scale_ = std if std > 0 else 1.0
        Z = self._images(X)
        Y = torch.as_tensor(np.eye(len(self.classes_))[enc.transform(y)])
        self._build_features(Z, rng)
        self._select_readout(self._orbit(Z), Y, rng)
        D = C * (2 * self.patch_radius + 1) ** 2
        features = self.features_ if self.warp_kernel == "gaussian" else ActivationFeatures(D, self.warp_kernel, 1.0)
        self.kernel_ = EquivariantPatchKernel(features, self.patch_radius, self.group)
        if self.nu == "auto":
            self.nu_, self.nu_validation_ = self._select_nu(Z, Y, rng)
        else:
            self.nu_, self.nu_validation_ = float(self.nu), None
        idx = self._subsample(Y, self.max_warp_images, rng)
        res = self._optimise(Z[idx], Y[idx], self.nu_, warn=True)
        self.n_iter_, self.converged_, self.objective_ = res["n_iter"], res["converged"], res["objective"]
        self.flow_ = ImageFlow(self.kernel_, res["states"][:-1], res["p"])
        with torch.no_grad():
            self.readout_ = self._ridge(self._orbit(self.flow_.flow(Z)), Y)
        self._fit_temperature(Y)
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _build_features(self, Z: torch.Tensor, rng) -> None:
        P = extract_patches(Z, self.patch_radius).reshape(-1, Z.shape[1] * (2 * self.patch_radius + 1) ** 2)
        self.patch_sigma_ = (_PATCH_SIGMA_FACTOR * _median_distance(P, rng) if self.patch_sigma == "auto"
                             else float(self.patch_sigma))
        self.features_ = NystromFeatures.from_patches(P, self.n_features, self.patch_sigma_, group=self.group,
                                                      channels=Z.shape[1], random_state=int(rng.integers(2**31 - 1)))
        pool = pool_matrix(*self.image_shape, self.pool_sigma, self.pool_stride)
        self._pooled = PooledFeatures(self.features_, self.patch_radius, pool)

    def _select_readout(self, U: torch.Tensor, Y: torch.Tensor, rng) -> None:
        n_group = len(point_group(self.group))
        d = U.shape[1] // n_group
        if self.readout_sigma == "auto" or self.lam == "auto":
            med = _median_distance(U[:, :d], rng)
            sigmas = [med * f for f in _SIGMA_FACTORS] if self.readout_sigma == "auto" else [float(self.readout_sigma)]
            lams = _LAM_GRID if self.lam == "auto" else [float(self.lam)]
            idx = self._subsample(Y, _LOO_MAX_IMAGES, rng)
            Uq, Yq = U[idx], Y[idx] - Y[idx].mean(0)
            sq = [torch.cdist(Uq[:, :d], Uq[:, j * d:(j + 1) * d]) ** 2 for j in range(n_group)]
            sel = loo_select(lambda s: _CachedOrbitGram(sq, s), Uq, Yq, sigmas, lams, classification=True)
            self.readout_sigma_, self.lam_ = sel.sigma, sel.lam
        else:
            self.readout_sigma_, self.lam_ = float(self.readout_sigma), float(self.lam)
        self._readout_kernel = OrbitKernel(self.readout_sigma_, n_group)

    def _subsample(self, Y: torch.Tensor, n_max: int, rng) -> torch.Tensor:
        """Indices of a stratified subsample of at most n_max training images (all when there are fewer)."""
        n = Y.shape[0]
        if n <= n_max:
            return torch.arange(n)
        labels = Y.argmax(1).numpy()
        split = StratifiedShuffleSplit(1, train_size=n_max, random_state=int(rng.integers(2**31 - 1)))
        try:
            idx, _ = next(split.split(np.zeros(n), labels))
        except ValueError:  # a class too small to stratify
            idx = rng.choice(n, n_max, replace=False)
        return torch.as_tensor(np.sort(idx))

    def _ridge(self, U: torch.Tensor, Y: torch.Tensor) -> RidgeReadout:
        offset = Y.mean(0)
        alpha = ridge_solve(self._readout_kernel, U, Y - offset, self.lam_, solver="dense")
        return RidgeReadout(self._readout_kernel, self.lam_, U, alpha, offset)

    def _optimise(self, Z: torch.Tensor, Y: torch.Tensor, nu: float, *, warn: bool) -> dict:
        """Minimise ``ν Δt Σ_k ½‖v_k‖² + ℓ(u(z_L)) / n`` over the momenta (L, n, C, H, W); ν = ∞: no warp."""
        L, n = self.n_layers, Z.shape[0]
        Yc = Y - Y.mean(0)
        zero = torch.zeros((L,) + tuple(Z.shape), dtype=Z.dtype)
        out = {"p": zero, "states": Z.expand(L + 1, *Z.shape).clone(), "n_iter": 0, "converged": True}

        def data_term(ZL):
            loss, _ = ridge_loss(self._readout_kernel, self._orbit(ZL), Yc, self.lam_, solver="dense")
            return loss / n

        if math.isinf(nu):
            with torch.no_grad():
                return {**out, "objective": float(data_term(Z))}
        # Scale of the momenta: the linearised optimum p_k ≈ -∇(ℓ/n)(z_0) / ν of every block. Optimising
        # P = p / c (c its largest entry) on the objective divided by ν times the energy of that step makes the
        # variables and gradients O(1) whatever n, ν and λ.
        Zr = Z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(data_term(Zr), Zr)
        c = float(g.abs().max()) / nu
        with torch.no_grad():
            j0 = nu * 0.5 * float((g * self.kernel_.velocity(Z, Z, g)).sum()) / nu**2
        if not (c > 0 and math.isfinite(j0) and j0 > 0):
            with torch.no_grad():
                return {**out, "objective": float(data_term(Z))}

        def fun(P):
            states, energies, _ = forward_blocks(self.kernel_, Z, c * P)
            return (nu * energies.sum() / L + data_term(states[-1])) / j0

        res = minimize(fun, zero, method="lbfgs", max_iter=self.max_iter, gtol=1e-5, ftol=1e-6, patience=2,
                       history_size=10, line_search="wolfe", warn=warn, name="EquivariantKernelWarpingClassifier")
        p = c * res.x
        with torch.no_grad():
            states, _, _ = forward_blocks(self.kernel_, Z, p)
        return {"p": p, "states": states, "n_iter": res.n_iter, "converged": res.converged,
                "objective": float(res.fun) * j0}

    def _select_nu(self, Z: torch.Tensor, Y: torch.Tensor, rng):
        """ν = 0.1 or ∞ by a held-out third of the training set (one-standard-error rule, paired 0-1 losses)."""
        n = Y.shape[0]
        labels = Y.argmax(1).numpy()
        if n < 30 or np.bincount(labels).min() < 2:
            return math.inf, None
        split = StratifiedShuffleSplit(1, test_size=1 / 3, random_state=int(rng.integers(2**31 - 1)))
        tr, va = (torch.as_tensor(i) for i in next(split.split(np.zeros(n), labels)))
        wrong = {}
        for nu in (math.inf, _NU_CANDIDATE):
            sub = tr[self._subsample(Y[tr], self.max_warp_images, rng)]
            res = self._optimise(Z[sub], Y[sub], nu, warn=False)
            flow = ImageFlow(self.kernel_, res["states"][:-1], res["p"])
            with torch.no_grad():
                readout = self._ridge(self._orbit(flow.flow(Z[tr])), Y[tr])
                pred = readout(self._orbit(flow.flow(Z[va])), backend="dense").argmax(1)
            wrong[nu] = (pred != Y[va].argmax(1)).double().numpy()
        diff = wrong[_NU_CANDIDATE] - wrong[math.inf]
        se = float(diff.std(ddof=1)) / math.sqrt(len(diff))
        keep = float(diff.mean()) < -se  # the warp is kept only when its gain exceeds one paired standard error
        table = (1 - float(wrong[math.inf].mean()), 1 - float(wrong[_NU_CANDIDATE].mean()), se)
        return (_NU_CANDIDATE if keep else math.inf), table

    def _fit_temperature(self, Y: torch.Tensor) -> None:
        from ..gp import GP_MAX_POINTS, fit_temperature, warped_gp_posterior

        r = self.readout_
        if Y.shape[0] > GP_MAX_POINTS:
            self.temperature_ = None
            return
        post = warped_gp_posterior(r.kernel, r.centers, Y, r.lam, offset=r.offset)
        scores, _ = post.loo()
        self.temperature_ = fit_temperature(scores, Y.argmax(1))

    # ------------------------------------------------------------------ prediction
    def warp(self, X) -> np.ndarray:
        """The warped images ``Φ(x)`` (M, C H W), in the scaled pixel units of the blocks."""
        check_is_fitted(self, "readout_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with torch.no_grad():
            return self.flow_.flow(self._images(X)).flatten(1).numpy()

    def _scores(self, X) -> torch.Tensor:
        check_is_fitted(self, "readout_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with torch.no_grad():
            return self.readout_(self._orbit(self.flow_.flow(self._images(X))), backend="dense")

    def decision_function(self, X):
        """Readout scores: (M,) for two classes (positive means ``classes_[1]``), else (M, n_classes)."""
        s = self._scores(X).numpy()
        return s[:, 1] - s[:, 0] if s.shape[1] == 2 else s

    def predict(self, X):
        """Class labels (M,)."""
        return self.classes_[self._scores(X).numpy().argmax(1)]

    def predict_proba(self, X):
        """``softmax(temperature_ · scores)``, the temperature fitted on exact leave-one-out scores (gp.py)."""
        if self.temperature_ is None:
            raise ValueError("predict_proba needs the leave-one-out temperature, computed for at most 4,000 "
                             "training images")
        return torch.softmax(self.temperature_ * self._scores(X), dim=1).numpy()


class _CachedOrbitGram:
    """``Σ_h exp(-D_h / 2σ²)`` from precomputed squared distances: the leave-one-out search over widths reuses
    them (``loo_select`` calls ``gram(q, q)`` on the one subsample whose distances these are)."""

    def __init__(self, sqdists, sigma: float):
        self.sqdists, self.sigma = sqdists, float(sigma)

    def gram(self, x, y=None):
        return sum(torch.exp(-0.5 * D / self.sigma**2) for D in self.sqdists)
