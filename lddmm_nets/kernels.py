"""Kernels: one mathematical object, used on point sets (dense | KeOps) and on regular grids (FFT).

A radial kernel is given by its unit-width profile ``g`` of the squared distance, ``k(x, y) = g(|x - y|²/σ²)``,
and by the derivative ``g'`` (used by the closed-form Hamiltonian gradient), both written once on the backend's
pairwise objects (see ``lddmm_nets.backends``). Where the Fourier transform has a closed form,
``spectral_density`` gives it and ``on_grid`` turns it into an FFT convolution operator on a ``Grid``.

Conventions (DESIGN): every radial kernel takes its width as the keyword ``sigma`` (a length, in the data's units)
and is normalised so that ``k(x, x) = 1``. A ``nugget`` ``r >= 0`` is added to the diagonal of the symmetric Gram
matrix ``K(q, q)`` only (THEORY §5), never to cross matrices ``K(x, q)``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from . import backends as B
from .checks import check_points, check_positive, check_same_rows

__all__ = [
    "Kernel",
    "RadialKernel",
    "GaussianKernel",
    "LaplaceKernel",
    "MaternKernel",
    "CauchyKernel",
    "SumKernel",
    "FeatureMapKernel",
    "ACTIVATIONS",
]


class Kernel:
    """Base class: a positive definite scalar kernel ``k(x, y)``, used as ``Γ = k I_d`` on vector fields.

    Subclasses implement ``pairwise`` (the kernel matrix as a dense tensor or a LazyTensor) and may override
    ``dq_quadratic`` with a closed form; the autograd version here is the reference.
    """

    def __init__(self, *, nugget: float = 0.0):
        self.nugget = float(check_positive("nugget", nugget, allow_zero=True))

    # --- to implement ---------------------------------------------------------------------------------------------
    def pairwise(self, x: torch.Tensor, y: torch.Tensor, backend: str):
        """The kernel matrix ``k(x_i, y_j)`` on the backend's pairwise objects: an ``(M, N)`` tensor (``"dense"``)
        or a KeOps ``LazyTensor`` (``"keops"``); data terms and reductions are written on it once for both."""
        raise NotImplementedError

    # --- public API -----------------------------------------------------------------------------------------------
    def matvec(self, x: torch.Tensor, y: torch.Tensor | None, p: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Kernel sum ``out_i = sum_j k(x_i, y_j) p_j``.

        Parameters
        ----------
        x : (M, d) tensor
            Target points.
        y : (N, d) tensor or None
            Source points; ``None`` means ``y = x`` and adds ``nugget * p`` (the symmetric Gram matrix ``K(x, x) + r I``).
        p : (N, D) tensor
            Weights (momenta) at the source points.
        backend : {"auto", "dense", "keops"}
            See ``lddmm_nets.backends.select_backend`` for the auto policy and memory costs.

        Returns
        -------
        (M, D) tensor
        """
        x = check_points("x", x)
        if y is not None:
            y = check_points("y", y, dim=x.shape[1])
        p = check_points("p", p)
        check_same_rows("p", p, "y" if y is not None else "x", x if y is None else y)
        for name, t in (("y", y), ("p", p)):
            if t is not None and (t.dtype != x.dtype or t.device != x.device):
                raise ValueError(f"{name}: expected dtype {x.dtype} on {x.device} (as x), got {t.dtype} on {t.device}")
        return self.apply(x, y, p, backend)

    def apply(self, x, y, p, backend="auto"):
        """``matvec`` without the input checks, for the engine's inner loops (the inputs are trusted): the kernel
        sum, plus the nugget when ``y`` is None."""
        out = self.convolve(x, x if y is None else y, p, backend)
        if y is None and self.nugget:
            out = out + self.nugget * p
        return out

    def convolve(self, x, y, p, backend):
        """``Σ_j k(x_i, y_j) p_j`` without nugget; subclasses with a cheaper form override this."""
        b = B.select_backend(backend, x.shape[0], y.shape[0], x.device, x.dtype, x.shape[1])
        return B.reduce(self.pairwise(x, y, b), p)

    def gram(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Dense kernel matrix ``K(x, y)``: (M, N) tensor, with ``nugget * I`` added when ``y`` is None."""
        x = check_points("x", x)
        sym = y is None
        y = x if sym else check_points("y", y, dim=x.shape[1])
        K = self.pairwise(x, y, "dense")
        if sym and self.nugget:
            K = K + self.nugget * torch.eye(x.shape[0], dtype=K.dtype, device=K.device)
        return K

    def dq_quadratic(self, q: torch.Tensor, p: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Gradient in ``q`` of ``½ Σ_ij k(q_i, q_j) p_i·p_j``: (N, d) tensor (autograd reference)."""
        need_graph = torch.is_grad_enabled() and (q.requires_grad or p.requires_grad)
        with torch.enable_grad():
            qq = q if q.requires_grad else q.detach().requires_grad_(True)
            h = 0.5 * (p * self.apply(qq, qq, p, backend)).sum()
            (g,) = torch.autograd.grad(h, qq, create_graph=need_graph)
        return g

    def spectral_density(self, omega: torch.Tensor) -> torch.Tensor:
        """Fourier transform ``k̂(ω) = ∫ k(x) e^{-i ω·x} dx`` at angular frequencies ``omega`` (..., d) -> (...).

        Raises
        ------
        NotImplementedError
            When the kernel has no closed-form (or no finite) Fourier transform in this dimension.
        """
        raise NotImplementedError(f"{type(self).__name__} has no closed-form Fourier transform")

    def on_grid(self, grid, boundary: str = "periodic", *, reach: float | None = None, taper: float | None = None,
                unit_mass: bool = False):
        """FFT operator ``m ↦ K ⋆ m`` on a regular grid, ``v(x) = ∫ k(x - y) m(y) dy``.

        Parameters
        ----------
        grid : Grid
            Regular grid with physical spacing; the operator only accepts fields on it.
        boundary : {"periodic", "zero"}
            ``"zero"``: no wrap-around (every axis doubled, or padded by ``reach``).
        reach : float, optional
            With ``boundary="zero"``: pad by this length per side only (``GridOperator``); a few kernel widths.
        taper : float, optional
            ``m ↦ w K (w m)`` with a weight vanishing on the grid's border (``GridOperator``).
        unit_mass : bool
            Divide by ``k̂(0) = ∫ k``, so that ``K ⋆ 1 = 1`` (then ``‖v‖_V² ≈ ∫|v|²`` for smooth ``v``).

        Returns
        -------
        GridOperator
        """
        from .grid import GridOperator

        mass = float(self.spectral_density(torch.zeros(grid.ndim, dtype=torch.float64))) if unit_mass else 1.0
        return GridOperator(grid, lambda omega, lap: self.spectral_density(omega) / mass, boundary=boundary,
                            reach=reach, taper=taper, name=f"{self!r} on grid" + (" (unit mass)" if unit_mass else ""))


class RadialKernel(Kernel):
    """``k(x, y) = g(|x - y|² / σ²)`` with a width ``sigma``; subclasses give the unit-width profile ``g`` and ``g'``.

    The width scales the points (``x / σ``), never the formula: KeOps then compiles one formula per kernel family,
    dtype and dimension, and reuses it for every ``sigma`` (a constant inside the formula would trigger a new
    compilation, about 10 s, for each width).
    """

    def __init__(self, sigma: float = 1.0, *, nugget: float = 0.0):
        super().__init__(nugget=nugget)
        self.sigma = float(check_positive("sigma", sigma))

    def profile(self, d2):
        """Unit-width profile ``g(d2)`` on a dense tensor or LazyTensor of squared distances (in units of σ²)."""
        raise NotImplementedError

    def dprofile(self, d2):
        """``g'(d2)``; times ``(x - y)`` it is 0 at coincident points (the symmetric subgradient)."""
        raise NotImplementedError

    def pairwise(self, x, y, backend):
        s = 1.0 / self.sigma
        return self.profile(B.sqdist(x * s, y * s, backend))

    def dq_quadratic(self, q, p, backend="auto"):
        """Closed form ``(2/σ²) Σ_j g'(|q_i - q_j|²/σ²) (p_i·p_j) (q_i - q_j)``, checked against autograd."""
        b = B.select_backend(backend, q.shape[0], q.shape[0], q.device, q.dtype, q.shape[1])
        qs = q * (1.0 / self.sigma)
        G = self.dprofile(B.sqdist(qs, qs, b)) * B.inner(p, p, b)
        s = B.reduce(G, torch.cat([torch.ones_like(qs[:, :1]), qs], dim=1))
        return (2.0 / self.sigma) * (qs * s[:, :1] - s[:, 1:])

    def __repr__(self):
        extra = f", nugget={self.nugget:g}" if self.nugget else ""
        return f"{type(self).__name__}(sigma={self.sigma:g}{extra})"


class GaussianKernel(RadialKernel):
    """Gaussian kernel ``exp(-|x - y|² / 2σ²)``."""

    def profile(self, d2):
        return B.exp(-0.5 * d2)

    def dprofile(self, d2):
        return -0.5 * B.exp(-0.5 * d2)

    def spectral_density(self, omega):
        d = omega.shape[-1]
        s2 = self.sigma**2
        return (2 * math.pi * s2) ** (d / 2) * torch.exp(-0.5 * s2 * (omega**2).sum(-1))


class MaternKernel(RadialKernel):
    """Matérn kernel with smoothness ``nu`` in {1/2, 3/2, 5/2} and length ``sigma``.

    ``nu = 1/2``: ``exp(-r/σ)``; ``nu = 3/2``: ``(1 + √3 r/σ) exp(-√3 r/σ)``;
    ``nu = 5/2``: ``(1 + √5 r/σ + 5r²/3σ²) exp(-√5 r/σ)``. It is the Green's function of ``(I - α Δ)^{ν + d/2}``
    with ``α = σ² / 2ν`` (up to a constant). At ``nu = 1/2`` the gradient at coincident points is defined as 0.
    """

    NUS = (0.5, 1.5, 2.5)

    def __init__(self, nu: float = 1.5, sigma: float = 1.0, *, nugget: float = 0.0):
        super().__init__(sigma, nugget=nugget)
        if nu not in self.NUS:
            raise ValueError(f"nu: expected one of {self.NUS}, got {nu!r}")
        self.nu = float(nu)
        self._a = math.sqrt(2 * self.nu)

    def profile(self, d2):
        a = self._a
        r = B.safe_sqrt(d2)
        e = B.exp(-a * r)
        if self.nu == 0.5:
            return e
        if self.nu == 1.5:
            return (1 + a * r) * e
        return (1 + a * r + (a * a / 3) * d2) * e

    def dprofile(self, d2):
        a = self._a
        r = B.safe_sqrt(d2)
        e = B.exp(-a * r)
        if self.nu == 0.5:
            return (-0.5 * a) * B.safe_rsqrt(d2) * e
        if self.nu == 1.5:
            return (-0.5 * a * a) * e
        return (-(a * a) / 6) * (1 + a * r) * e

    def spectral_density(self, omega):
        d = omega.shape[-1]
        nu, ell = self.nu, self.sigma
        c = (2**d * math.pi ** (d / 2) * math.gamma(nu + d / 2) * (2 * nu) ** nu
             / (math.gamma(nu) * ell ** (2 * nu)))
        return c * (2 * nu / ell**2 + (omega**2).sum(-1)) ** (-(nu + d / 2))

    def __repr__(self):
        extra = f", nugget={self.nugget:g}" if self.nugget else ""
        return f"MaternKernel(nu={self.nu:g}, sigma={self.sigma:g}{extra})"


class LaplaceKernel(MaternKernel):
    """Laplace (exponential) kernel ``exp(-|x - y| / σ)``: the Matérn kernel with ``nu = 1/2``.

    In 1-D it is the Green's function of ``(1 - σ² ∂²)`` up to ``1/(2σ)``: EPDiff becomes Camassa–Holm.
    """

    def __init__(self, sigma: float = 1.0, *, nugget: float = 0.0):
        super().__init__(0.5, sigma, nugget=nugget)

    def __repr__(self):
        extra = f", nugget={self.nugget:g}" if self.nugget else ""
        return f"LaplaceKernel(sigma={self.sigma:g}{extra})"


class CauchyKernel(RadialKernel):
    """Cauchy / inverse multiquadric kernel ``1 / (1 + |x - y|²/σ²)``.

    Its Fourier transform is finite only in 1-D (``π σ e^{-σ|ω|}``): in 2-D and 3-D the kernel is not integrable,
    so ``on_grid`` raises there.
    """

    def profile(self, d2):
        return 1.0 / (1 + d2)

    def dprofile(self, d2):
        f = 1.0 / (1 + d2)
        return -f * f

    def spectral_density(self, omega):
        d = omega.shape[-1]
        if d != 1:
            raise NotImplementedError(
                f"CauchyKernel: the Fourier transform is finite only in 1-D (the kernel is not integrable in {d}-D)")
        return math.pi * self.sigma * torch.exp(-self.sigma * omega.abs().sum(-1))


class SumKernel(Kernel):
    """Positive combination ``Σ_k w_k k_k`` of radial kernels (multi-scale), normalised by ``Σ w_k``.

    Kernel sums are evaluated component by component (one reduction per scale), so each component keeps its
    width-free KeOps formula.

    Parameters
    ----------
    kernels : sequence of RadialKernel
    weights : sequence of float, optional
        Positive weights (default equal); divided by their sum so that ``k(x, x) = 1``.
    nugget : float
    """

    def __init__(self, kernels: Sequence[RadialKernel], weights: Sequence[float] | None = None, *,
                 nugget: float = 0.0):
        super().__init__(nugget=nugget)
        kernels = list(kernels)
        if not kernels or not all(isinstance(k, RadialKernel) for k in kernels):
            raise ValueError(f"kernels: expected a non-empty sequence of radial kernels, got {kernels!r}")
        if weights is None:
            weights = [1.0] * len(kernels)
        weights = [float(w) for w in weights]
        if len(weights) != len(kernels):
            raise ValueError(f"weights: expected {len(kernels)} values (one per kernel), got {len(weights)}")
        for w in weights:
            check_positive("weights", w)
        total = sum(weights)
        self.kernels = kernels
        self.weights = [w / total for w in weights]
        self.sigma = max(k.sigma for k in kernels)

    def pairwise(self, x, y, backend):
        return sum(w * k.pairwise(x, y, backend) for w, k in zip(self.weights, self.kernels))

    def convolve(self, x, y, p, backend):
        return sum(w * k.convolve(x, y, p, backend) for w, k in zip(self.weights, self.kernels))

    def dq_quadratic(self, q, p, backend="auto"):
        """Sum of the components' closed forms."""
        return sum(w * k.dq_quadratic(q, p, backend) for w, k in zip(self.weights, self.kernels))

    def spectral_density(self, omega):
        return sum(w * k.spectral_density(omega) for w, k in zip(self.weights, self.kernels))

    def __repr__(self):
        parts = ", ".join(f"{w:.3g}*{k!r}" for w, k in zip(self.weights, self.kernels))
        extra = f", nugget={self.nugget:g}" if self.nugget else ""
        return f"SumKernel({parts}{extra})"


def _sigmoid_prime(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (torch.tanh, lambda x: 1 - torch.tanh(x) ** 2),
    "relu": (torch.relu, lambda x: (x > 0).to(x.dtype)),
    "sigmoid": (torch.sigmoid, _sigmoid_prime),
    "softplus": (torch.nn.functional.softplus, torch.sigmoid),
    "identity": (lambda x: x, torch.ones_like),
}


class FeatureMapKernel(Kernel):
    """Finite-rank kernel ``k(x, y) = φ(x)·φ(y) + c`` with an elementwise activation φ (the ResNet kernel, THEORY §5).

    The velocity field of momenta ``p`` at points ``q`` is ``v(x) = W φ(x) + c b`` with ``W = Σ_i p_i φ(q_i)ᵀ`` and
    ``b = Σ_i p_i``. Kernel sums are evaluated exactly in low rank, ``O((M + N) d D)``, whatever the backend.

    Parameters
    ----------
    activation : {"tanh", "relu", "sigmoid", "softplus", "identity"}
    c : float
        Non-negative constant (the bias part of the kernel).
    nugget : float
    """

    def __init__(self, activation: str = "tanh", c: float = 1.0, *, nugget: float = 0.0):
        super().__init__(nugget=nugget)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.c = float(check_positive("c", c, allow_zero=True))
        self._phi, self._dphi = ACTIVATIONS[activation]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``φ(x)``: (N, d) -> (N, d)."""
        return self._phi(x)

    def pairwise(self, x, y, backend):
        return self._phi(x) @ self._phi(y).T + self.c

    def convolve(self, x, y, p, backend):
        return self._phi(x) @ (self._phi(y).T @ p) + self.c * p.sum(0, keepdim=True)

    def dq_quadratic(self, q, p, backend="auto"):
        """Closed form ``φ'(q_i) ⊙ (Wᵀ p_i)`` with ``W = Σ_j p_j φ(q_j)ᵀ``."""
        W = p.T @ self._phi(q)  # (D, d)
        return self._dphi(q) * (p @ W)

    def __repr__(self):
        extra = f", nugget={self.nugget:g}" if self.nugget else ""
        return f"FeatureMapKernel(activation={self.activation!r}, c={self.c:g}{extra})"
