"""Regular grids with physical spacing and FFT operators on them.

A ``Grid`` is axis-aligned: node ``i = (i_0, ..., i_{d-1})`` sits at ``origin + i * spacing`` (physical units,
e.g. mm). Fields on a grid are tensors whose last ``d`` axes are the grid's shape; vector fields are channels-first,
``(d, *shape)``, with components in axis order. One implementation serves 1-D, 2-D and 3-D.

``GridOperator`` applies a Fourier multiplier (symbol) to such fields: a kernel's spectral density gives
``m ↦ K ⋆ m`` (``v(x) = ∫ k(x - y) m(y) dy``) and ``sobolev_operator`` gives ``(I - α Δ_h)^{-s}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ._checks import check_choice, check_positive

__all__ = ["Grid", "GridOperator", "sobolev_operator"]


def _as_tuple(name: str, value, ndim: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * ndim
    vals = tuple(float(v) for v in value)
    if len(vals) != ndim:
        raise ValueError(f"{name}: expected {ndim} values (one per axis), got {len(vals)}")
    return vals


@dataclass(frozen=True, init=False)
class Grid:
    """Axis-aligned regular grid.

    Parameters
    ----------
    shape : sequence of int
        Number of nodes per axis (1 to 3 axes).
    spacing : float or sequence of float
        Physical distance between nodes along each axis (e.g. mm).
    origin : float or sequence of float
        Physical position of node ``(0, ..., 0)``.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]

    def __init__(self, shape: Sequence[int], spacing=1.0, origin=0.0):
        shape = tuple(int(n) for n in shape)
        if not 1 <= len(shape) <= 3 or min(shape) < 1:
            raise ValueError(f"shape: expected 1 to 3 positive sizes, got {shape}")
        spacing = _as_tuple("spacing", spacing, len(shape))
        for h in spacing:
            check_positive("spacing", h)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _as_tuple("origin", origin, len(shape)))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def cell_volume(self) -> float:
        return math.prod(self.spacing)

    def axes(self, dtype=torch.float64, device=None) -> list[torch.Tensor]:
        """Physical coordinates along each axis: list of (n_i,) tensors."""
        return [o + h * torch.arange(n, dtype=dtype, device=device)
                for n, h, o in zip(self.shape, self.spacing, self.origin)]

    def coords(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """Physical coordinates of every node: (d, *shape) tensor."""
        return torch.stack(torch.meshgrid(*self.axes(dtype, device), indexing="ij"))

    def points(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """Physical coordinates of every node as a point set: (prod(shape), d) tensor, C order."""
        return self.coords(dtype, device).reshape(self.ndim, -1).T

    def frequencies(self, shape: Sequence[int] | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
        """Angular frequencies (rad per unit length) of the real FFT of a grid of ``shape`` (default: this grid's)
        with this spacing: (*rfft_shape, d) tensor."""
        shape = tuple(shape or self.shape)
        freqs = []
        for i, (n, h) in enumerate(zip(shape, self.spacing)):
            fn = torch.fft.rfftfreq if i == len(shape) - 1 else torch.fft.fftfreq
            freqs.append(2 * math.pi * fn(n, d=h, dtype=torch.float64, device=device).to(dtype))
        return torch.stack(torch.meshgrid(*freqs, indexing="ij"), dim=-1)


SymbolFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GridOperator:
    """Fourier multiplier on a grid: ``m ↦ IFFT(symbol · FFT(m))`` over the last ``grid.ndim`` axes.

    Parameters
    ----------
    grid : Grid
    symbol_fn : callable
        ``symbol_fn(omega, lap)`` -> (*rfft_shape) real tensor, with ``omega`` (*rfft_shape, d) the angular
        frequencies and ``lap`` (*rfft_shape) the symbol of the negative discrete Laplacian
        ``Σ_i (2 - 2 cos(ω_i h_i)) / h_i²``.
    boundary : {"periodic", "zero"}
        ``"zero"`` applies the operator on the field zero-padded to twice its size along every axis and crops the
        result: no wrap-around (the field is taken as 0 outside the grid).
    name : str
    """

    BOUNDARIES = ("periodic", "zero")

    def __init__(self, grid: Grid, symbol_fn: SymbolFn, *, boundary: str = "periodic", name: str = "GridOperator"):
        check_choice("boundary", boundary, self.BOUNDARIES)
        self.grid = grid
        self.boundary = boundary
        self.name = name
        self._symbol_fn = symbol_fn
        self._cache: dict = {}
        self.fft_shape = tuple(2 * n if boundary == "zero" else n for n in grid.shape)

    def symbol(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """The multiplier on the real-FFT frequencies: (*rfft_shape) tensor (cached per dtype and device)."""
        key = (dtype, str(device))
        cached = self._cache.get(key)
        if cached is None:
            omega = self.grid.frequencies(self.fft_shape, dtype=torch.float64, device=device)
            h = torch.tensor(self.grid.spacing, dtype=torch.float64, device=device)
            lap = ((2 - 2 * torch.cos(omega * h)) / h**2).sum(-1)
            cached = self._cache[key] = self._symbol_fn(omega, lap).to(dtype)
        return cached

    def __call__(self, m: torch.Tensor) -> torch.Tensor:
        """Apply the operator to ``m`` (..., *grid.shape) -> same shape (real)."""
        d = self.grid.ndim
        if not isinstance(m, torch.Tensor) or tuple(m.shape[m.ndim - d:]) != self.grid.shape:
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"m: expected a tensor of shape (..., {', '.join(map(str, self.grid.shape))}), got {shape}")
        dims = tuple(range(-d, 0))
        mhat = torch.fft.rfftn(m, s=self.fft_shape, dim=dims)
        out = torch.fft.irfftn(mhat * self.symbol(m.dtype, m.device), s=self.fft_shape, dim=dims)
        if self.boundary == "zero":
            out = out[(...,) + tuple(slice(0, n) for n in self.grid.shape)]
        return out

    def __repr__(self):
        return f"<{self.name}, grid={self.grid.shape}, boundary={self.boundary!r}>"


def sobolev_operator(grid: Grid, alpha: float = 1.0, s: float = 2.0, *, boundary: str = "periodic") -> GridOperator:
    """The discrete Sobolev smoothing ``K = (I - α Δ_h)^{-s}`` on ``grid``.

    ``Δ_h`` is the standard (2d+1)-point Laplacian with the grid's physical spacing, so the symbol is
    ``(1 + α Σ_i (2 - 2 cos(ω_i h_i)) / h_i²)^{-s}``. Unlike a kernel's ``on_grid`` (a convolution with a density,
    which carries the volume element), this is an operator on nodal values: ``K(1) = 1``.

    Parameters
    ----------
    grid : Grid
    alpha : float
        Squared length scale (units²), ``> 0``.
    s : float
        Order, ``> 0``.
    boundary : {"periodic", "zero"}
    """
    alpha = check_positive("alpha", alpha)
    s = check_positive("s", s)
    return GridOperator(grid, lambda omega, lap: (1 + alpha * lap) ** (-s), boundary=boundary,
                        name=f"(I - {alpha:g} Δ)^-{s:g}")
