"""Particles for the mean-field studies: samples of a density μ and the momenta ``p_i = w_i P_0(y_i)``.

A particle system ``Σ_i p_i δ_{y_i}`` approximates the momentum measure ``m_0 = P_0 μ`` (THEORY §6) when the
weights ``w_i`` make ``Σ_i w_i f(y_i)`` a quadrature of ``∫ f dμ``:

- ``"iid"``: independent samples of μ, ``w_i = 1/N`` (Monte Carlo, error ``O(N^{-1/2})``);
- ``"qmc"``: a scrambled Sobol sequence mapped through μ's inverse CDF, ``w_i = 1/N`` (quasi-Monte Carlo,
  error about ``O(N^{-1} (log N)^d)``);
- ``"quadrature"``: the nodes of a regular lattice covering μ's mass (midpoint rule), ``w_i = ρ(y_i) × cell volume``
  (``ρ`` the density of μ), so that ``Σ_i p_i δ_{y_i}`` approximates ``P_0 ρ dx``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..checks import check_choice, check_int, check_positive

__all__ = ["GaussianDensity", "SAMPLING_METHODS", "sample_particles"]

SAMPLING_METHODS = ("iid", "qmc", "quadrature")


class GaussianDensity:
    """Isotropic Gaussian probability measure ``μ = N(mean, std² I_d)``.

    Parameters
    ----------
    mean : sequence of float
        ``(d,)`` centre (length units); ``d = len(mean)`` in 1 to 3.
    std : float
        Standard deviation (length units), ``> 0``.
    """

    def __init__(self, mean, std: float):
        self.mean = tuple(float(m) for m in mean)
        if not 1 <= len(self.mean) <= 3:
            raise ValueError(f"mean: expected 1 to 3 coordinates, got {len(self.mean)}")
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

    def sample(self, n: int, *, method: str = "iid", seed: int = 0, dtype=torch.float64,
               device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Points and quadrature weights for ``∫ f dμ ≈ Σ_i w_i f(y_i)``.

        Parameters
        ----------
        n : int
            Number of points; ``"quadrature"`` rounds it to the nearest ``k^d`` (lattice of ``k`` nodes per axis).
        method : {"iid", "qmc", "quadrature"}
        seed : int
            Seed of the random draw (``"iid"``) or of the Sobol scrambling (``"qmc"``); unused for quadrature.

        Returns
        -------
        y : (N, d) tensor
        w : (N,) tensor
            Weights summing to about 1.
        """
        n = check_int("n", n)
        check_choice("method", method, SAMPLING_METHODS)
        d = self.d
        mean = self._mean(dtype, device)
        if method == "iid":
            gen = torch.Generator().manual_seed(int(seed))
            z = torch.randn(n, d, generator=gen, dtype=torch.float64)
            w = torch.full((n,), 1.0 / n, dtype=torch.float64)
        elif method == "qmc":
            engine = torch.quasirandom.SobolEngine(d, scramble=True, seed=int(seed))
            u = engine.draw(n, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
            z = torch.special.ndtri(u)
            w = torch.full((n,), 1.0 / n, dtype=torch.float64)
        else:
            k = max(1, round(n ** (1.0 / d)))
            half = 6.0  # the lattice covers mean ± 6 std: the mass left out is below 1e-8
            ax = -half + (torch.arange(k, dtype=torch.float64) + 0.5) * (2 * half / k)
            z = torch.stack(torch.meshgrid(*([ax] * d), indexing="ij"), dim=-1).reshape(-1, d)
            w = torch.exp(-0.5 * (z**2).sum(-1)) / (2 * math.pi) ** (d / 2) * (2 * half / k) ** d
        y = mean + self.std * z.to(dtype=dtype, device=device)
        return y, w.to(dtype=dtype, device=device)

    def __repr__(self):
        return f"GaussianDensity(mean={self.mean}, std={self.std:g})"


def sample_particles(density: GaussianDensity, momentum: Callable[[torch.Tensor], torch.Tensor], n: int, *,
                     method: str = "iid", seed: int = 0, dtype=torch.float64,
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Particles ``q_i = y_i`` and momenta ``p_i = w_i P_0(y_i)`` (``= P_0(y_i)/N`` for samples of μ).

    Parameters
    ----------
    density : GaussianDensity
        The measure μ the particles represent.
    momentum : callable
        ``P_0``: ``(M, d)`` points -> ``(M, d)`` momentum per unit mass of μ.
    n : int
        Number of particles (see ``GaussianDensity.sample`` for ``"quadrature"``).
    method : {"iid", "qmc", "quadrature"}
    seed : int

    Returns
    -------
    q0, p0 : (N, d) tensors
    """
    y, w = density.sample(n, method=method, seed=seed, dtype=dtype, device=device)
    P = momentum(y)
    if not isinstance(P, torch.Tensor) or P.shape != y.shape:
        got = tuple(P.shape) if isinstance(P, torch.Tensor) else type(P).__name__
        raise ValueError(f"momentum: expected a callable returning shape {tuple(y.shape)}, got {got}")
    return y, w[:, None] * P
