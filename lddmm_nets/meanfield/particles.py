"""The one sampler of the mean-field studies: points and weights of a density μ, and the momenta ``p_i = w_i P_0(y_i)``.

A particle system ``Σ_i p_i δ_{y_i}`` approximates the momentum measure ``m_0 = P_0 μ`` (THEORY §6) when the
weights ``w_i`` make ``Σ_i w_i f(y_i)`` a quadrature of ``∫ f dμ``. ``sample(density, n, method=...)`` offers:

- ``"iid"``: independent samples of μ, ``w_i = 1/N`` (Monte Carlo, error ``O(N^{-1/2})``);
- ``"qmc"``: a scrambled Sobol sequence mapped through μ's inverse CDF, ``w_i = 1/N`` (quasi-Monte Carlo,
  error about ``O(N^{-1} (log N)^d)``);
- ``"midpoint"``: the midpoints of a regular lattice covering ``mean ± 6 std`` (the mass left out is below 1e-8),
  ``w_i = ρ(y_i) × cell volume`` (``ρ`` the density of μ): the midpoint rule of ``∫ f ρ dx``;
- ``"gauss_hermite"``: the tensor Gauss–Hermite rule of μ (exact for polynomials of degree ``< 2k`` in each
  variable with ``k`` nodes per axis, spectrally accurate for smooth integrands: a noise-free stand-in for μ).

The lattice rules round ``n`` to the nearest ``k^d``. Random draws are made on the CPU in float64 and then moved to
``device``/``dtype``, so that a seed gives the same points on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
import torch

from ..checks import check_choice, check_int, check_points, check_positive

__all__ = ["GaussianDensity", "Sample", "SAMPLING_METHODS", "sample", "initial_momenta"]

SAMPLING_METHODS = ("iid", "qmc", "midpoint", "gauss_hermite")
_MIDPOINT_HALF_WIDTH = 6.0  # lattice over mean ± 6 std


class GaussianDensity:
    """Isotropic Gaussian probability measure ``μ = N(mean, std² I_d)``.

    Parameters
    ----------
    mean : sequence of float
        ``(d,)`` centre (length units), ``d >= 1``.
    std : float
        Standard deviation (length units), ``> 0``.
    """

    def __init__(self, mean, std: float = 1.0):
        self.mean = tuple(float(m) for m in mean)
        if len(self.mean) < 1:
            raise ValueError(f"mean: expected at least one coordinate, got {len(self.mean)}")
        self.std = check_positive("std", std)

    @property
    def d(self) -> int:
        return len(self.mean)

    def _mean(self, dtype, device):
        return torch.tensor(self.mean, dtype=dtype, device=device)

    def pdf(self, x: torch.Tensor) -> torch.Tensor:
        """Density ``ρ(x)`` (per unit volume) at points ``x`` (..., d) -> (...)."""
        z = (x - self._mean(x.dtype, x.device)) / self.std
        return torch.exp(-0.5 * (z**2).sum(-1)) / (2 * math.pi * self.std**2) ** (self.d / 2)

    def __repr__(self):
        return f"GaussianDensity(mean={self.mean}, std={self.std:g})"


@dataclass
class Sample:
    """Points and weights with ``∫ f dμ ≈ Σ_i w_i f(y_i)``.

    Attributes
    ----------
    points : torch.Tensor
        (N, d) points ``y_i`` (length units).
    weights : torch.Tensor
        (N,) non-negative weights, summing to 1 (to about 1e-8 for ``"midpoint"``).
    method : str
        The sampling method that made them.
    """

    points: torch.Tensor
    weights: torch.Tensor
    method: str

    def __len__(self) -> int:
        return self.points.shape[0]

    def momenta(self, P0) -> torch.Tensor:
        """``p_i = w_i P_0(y_i)``: (N, d) (see ``initial_momenta``)."""
        return initial_momenta(P0, self.points, self.weights)


def _standard_normal(n: int, d: int, method: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) points and (N,) weights of the rule for N(0, I_d), float64 on the CPU."""
    if method == "iid":
        z = torch.randn(n, d, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
        return z, torch.full((n,), 1.0 / n, dtype=torch.float64)
    if method == "qmc":
        u = torch.quasirandom.SobolEngine(d, scramble=True, seed=int(seed)).draw(n, dtype=torch.float64)
        return torch.special.ndtri(u.clamp(1e-12, 1 - 1e-12)), torch.full((n,), 1.0 / n, dtype=torch.float64)
    k = max(1, round(n ** (1.0 / d)))
    if method == "midpoint":
        half = _MIDPOINT_HALF_WIDTH
        ax = -half + (np.arange(k) + 0.5) * (2 * half / k)
        w1 = np.exp(-0.5 * ax**2) / math.sqrt(2 * math.pi) * (2 * half / k)
    else:  # gauss_hermite, probabilists' weight exp(-x²/2)
        ax, w1 = np.polynomial.hermite_e.hermegauss(k)
        w1 = w1 / w1.sum()
    z = np.stack([g.ravel() for g in np.meshgrid(*([ax] * d), indexing="ij")], axis=1)
    w = np.ones(z.shape[0])
    for g in np.meshgrid(*([w1] * d), indexing="ij"):
        w = w * g.ravel()
    return torch.from_numpy(z), torch.from_numpy(w)


def sample(density: GaussianDensity, n: int, *, method: str = "iid", seed: int = 0, dtype=torch.float64,
           device=None) -> Sample:
    """Points and quadrature weights of ``density`` (see the module docstring for the methods).

    Parameters
    ----------
    density : GaussianDensity
        The measure μ.
    n : int
        Number of points; ``"midpoint"`` and ``"gauss_hermite"`` round it to the nearest ``k^d``.
    method : {"iid", "qmc", "midpoint", "gauss_hermite"}
    seed : int
        Seed of the random draw (``"iid"``) or of the Sobol scrambling (``"qmc"``); unused by the lattices.
    dtype : torch.dtype
    device : str or torch.device, optional

    Returns
    -------
    Sample
    """
    if not isinstance(density, GaussianDensity):
        raise TypeError(f"density: expected a GaussianDensity, got {type(density).__name__}")
    n = check_int("n", n)
    check_choice("method", method, SAMPLING_METHODS)
    seed = check_int("seed", seed, minimum=0)
    z, w = _standard_normal(n, density.d, method, seed)
    y = torch.tensor(density.mean, dtype=torch.float64) + density.std * z
    return Sample(points=y.to(dtype=dtype, device=device), weights=w.to(dtype=dtype, device=device), method=method)


def initial_momenta(P0, points: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``p_i = w_i P_0(y_i)`` (with ``w_i = 1/N`` by default), checked.

    Parameters
    ----------
    P0 : callable or torch.Tensor
        Momentum per unit mass of μ: ``P0(y)`` maps (N, d) points to (N, d) momenta, or the (N, d) values.
    points : torch.Tensor
        (N, d) points ``y_i``.
    weights : torch.Tensor, optional
        (N,) non-negative weights.

    Returns
    -------
    torch.Tensor
        (N, d) momenta, on the points' device and dtype.
    """
    points = check_points("particles", points)
    N, D = points.shape
    if weights is None:
        weights = torch.full((N,), 1.0 / N, dtype=points.dtype, device=points.device)
    if not isinstance(weights, torch.Tensor) or weights.shape != (N,):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights: expected a ({N},) tensor (one weight per particle), got {shape}")
    if not bool((weights >= 0).all()) or not bool(torch.isfinite(weights).all()):
        raise ValueError("weights: expected finite non-negative weights, got negative or non-finite entries")
    values = P0(points) if callable(P0) else P0
    if not isinstance(values, torch.Tensor) or values.shape != (N, D):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"P0: expected a ({N}, {D}) tensor of momenta at the particles "
                         f"(or a callable returning one), got {shape}")
    values = check_points("P0", values.to(dtype=points.dtype, device=points.device))
    return weights.to(dtype=points.dtype, device=points.device)[:, None] * values

