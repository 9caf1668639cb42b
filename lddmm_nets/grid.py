"""``Grid``: the one geometry type of the engine, and the FFT operators that live on a grid.

A ``Grid`` is a regular lattice of ``shape`` nodes placed in world space by an affine map
``world = A[:d, :d] · index + A[:d, d]`` (NIfTI / nibabel convention; millimetres for images). The columns of the
linear part have the lengths ``spacing`` and the directions ``direction`` (``A[:d, :d] = direction · diag(spacing)``).

The engine computes in the grid's *frame*: coordinates along the grid's own axes, in physical units,
``y = frame_origin + index · spacing`` with ``frame_origin = direction⁻¹ · origin``, so that ``world = direction · y``.
For an axis-aligned grid (``direction`` the identity: every grid the engine builds by itself) frame and world
coordinates are the same. Fields on a grid are tensors whose last ``d`` axes are the grid's shape; vector fields and
maps are channels-first, ``(d, *shape)``, with components along the grid's axes in physical units.

``GridOperator`` applies a Fourier multiplier to such fields: a kernel's spectral density gives ``m ↦ K ⋆ m``
(``kernel.on_grid(grid)``) and ``sobolev_operator`` gives ``(I - α Δ_h)^{-s}``. It knows its grid: the shooting
functions of ``lddmm_nets.epdiff`` take the grid from it, so a field and an operator cannot disagree on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .checks import check_choice, check_positive

__all__ = ["Grid", "GridOperator", "sobolev_operator", "fft_size", "apply_linear"]


def _as_tuple(name: str, value, ndim: int) -> tuple[float, ...]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (float(value),) * ndim
    vals = tuple(float(v) for v in value)
    if len(vals) != ndim:
        raise ValueError(f"{name}: expected {ndim} values (one per axis), got {len(vals)}")
    return vals


def apply_linear(matrix: np.ndarray, x, offset=None):
    """``matrix @ x (+ offset)`` on channels-first points.

    Parameters
    ----------
    matrix : ndarray, shape ``(d, d)``
    x : ndarray or Tensor, shape ``(d, ...)``
        Points or a vector field, channels first; a torch tensor keeps its device and dtype, a float numpy array its
        dtype (integers become float64).
    offset : array-like, shape ``(d,)``, optional
        Added to every point.

    Returns
    -------
    ndarray or Tensor, shape ``(d, ...)``
        Of ``x``'s kind. numpy goes through ``einsum``'s own loop, not BLAS, so that it wakes no BLAS threads.
    """
    d = matrix.shape[0]
    if isinstance(x, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
        out = torch.tensordot(m, x, dims=1)
        if offset is not None:
            out = out + torch.as_tensor(offset, dtype=x.dtype, device=x.device).reshape((d,) + (1,) * (x.dim() - 1))
        return out
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)  # float32 fields stay float32
    # einsum's own loop: BLAS (tensordot) would wake numpy's BLAS threads, which then spin on the other cores
    out = np.einsum("ij,j...->i...", matrix.astype(x.dtype), x)
    return out if offset is None else out + np.asarray(offset, dtype=x.dtype).reshape((d,) + (1,) * (x.ndim - 1))


@dataclass(frozen=True, init=False)
class Grid:
    """A regular grid in world space.

    Parameters
    ----------
    shape : sequence of int
        Number of nodes per axis (1 to 3 axes).
    spacing : float or sequence of float
        Physical distance between nodes along each axis (e.g. mm).
    origin : float or sequence of float
        World position of node ``(0, ..., 0)``.
    direction : (d, d) array-like, optional
        World direction of each grid axis (columns; unit length). Default: the identity (axis-aligned grid).

    Attributes
    ----------
    shape, spacing, origin : tuple
    direction : tuple of tuple or None
        ``None`` for an axis-aligned grid.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple | None

    def __init__(self, shape: Sequence[int], spacing=1.0, origin=0.0, *, direction=None):
        shape = tuple(int(n) for n in shape)
        if not 1 <= len(shape) <= 3 or min(shape) < 1:
            raise ValueError(f"shape: expected 1 to 3 positive sizes, got {shape}")
        d = len(shape)
        spacing = _as_tuple("spacing", spacing, d)
        for h in spacing:
            check_positive("spacing", h)
        if direction is not None:
            R = np.asarray(direction, dtype=np.float64)
            if R.shape != (d, d) or not np.all(np.isfinite(R)):
                raise ValueError(f"direction: expected a finite ({d}, {d}) matrix, got shape {R.shape}")
            if not np.allclose(np.linalg.norm(R, axis=0), 1.0, atol=1e-6) or abs(np.linalg.det(R)) < 1e-6:
                raise ValueError(f"direction: expected invertible columns of unit length, got {R.tolist()}")
            direction = None if np.allclose(R, np.eye(d), atol=1e-12) else tuple(tuple(r) for r in R.tolist())
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _as_tuple("origin", origin, d))
        object.__setattr__(self, "direction", direction)

    @classmethod
    def from_affine(cls, affine, shape: Sequence[int]) -> "Grid":
        """The grid of ``shape`` nodes placed by a ``(4, 4)`` (or ``(d+1, d+1)``) voxel-to-world affine.

        The first ``d = len(shape)`` columns of the affine's linear part give the spacing (their lengths) and the
        direction; a 2-D grid reads the top-left block and the first two translation entries of a 4 × 4 affine.
        """
        shape = tuple(int(n) for n in shape)
        d = len(shape)
        A = np.asarray(affine, dtype=np.float64)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < d + 1 or not np.all(np.isfinite(A)):
            raise ValueError(f"affine: expected a finite square matrix of size >= {d + 1}, got shape {A.shape}")
        lin = A[:d, :d]
        spacing = np.linalg.norm(lin, axis=0)
        if np.any(spacing <= 0):
            raise ValueError(f"affine: a voxel axis has zero length (linear part {lin.tolist()})")
        return cls(shape, spacing, A[:d, A.shape[1] - 1], direction=lin / spacing[None, :])

    # ------------------------------------------------------------------ sizes
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def cell_volume(self) -> float:
        """Volume (area, length) of one cell: ``prod(spacing)``."""
        return math.prod(self.spacing)

    @property
    def extent(self) -> tuple[float, ...]:
        """Physical length covered along each axis, ``(n - 1) · h`` (``h`` for a single node)."""
        return tuple((n - 1) * h if n > 1 else h for n, h in zip(self.shape, self.spacing))

    @property
    def volume(self) -> float:
        """``prod(extent)``: the volume of the box spanned by the nodes."""
        return math.prod(self.extent)

    # ------------------------------------------------------------------ affine and frames
    @property
    def rotation(self) -> np.ndarray:
        """``(d, d)`` direction matrix (identity for an axis-aligned grid)."""
        return np.eye(self.ndim) if self.direction is None else np.asarray(self.direction)

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` voxel-to-world affine (a 2-D grid fills the top-left block and the first two offsets)."""
        d = self.ndim
        A = np.eye(4)
        A[:d, :d] = self.rotation * np.asarray(self.spacing)[None, :]
        A[:d, 3] = self.origin
        return A

    @property
    def frame_origin(self) -> tuple[float, ...]:
        """Frame coordinates of node 0: ``direction⁻¹ · origin`` (= ``origin`` for an axis-aligned grid)."""
        if self.direction is None:
            return self.origin
        return tuple(np.linalg.solve(self.rotation, np.asarray(self.origin)).tolist())

    def to_world_vectors(self, v):
        """Rotate vector components from the grid's axes to world axes: ``direction · v``, ``v`` ``(d, ...)``."""
        return v if self.direction is None else apply_linear(self.rotation, v)

    def to_frame_vectors(self, v):
        """Rotate world vector components onto the grid's axes: ``direction⁻¹ · v``, ``v`` ``(d, ...)``."""
        return v if self.direction is None else apply_linear(np.linalg.inv(self.rotation), v)

    def to_world(self, y):
        """Frame coordinates ``(d, ...)`` to world coordinates (numpy or torch)."""
        return self.to_world_vectors(y)

    def to_frame(self, x):
        """World coordinates ``(d, ...)`` to frame coordinates (numpy or torch)."""
        return self.to_frame_vectors(x)

    def voxel_to_world(self, index):
        """Voxel indices ``(d, ...)`` (fractional allowed; numpy or torch) to world coordinates."""
        return apply_linear(self.rotation * np.asarray(self.spacing)[None, :], index, self.origin)

    def world_to_voxel(self, x):
        """World coordinates ``(d, ...)`` (numpy or torch) to fractional voxel indices."""
        inv = np.linalg.inv(self.rotation * np.asarray(self.spacing)[None, :])
        return apply_linear(inv, x, -inv @ np.asarray(self.origin))

    # ------------------------------------------------------------------ coordinates
    def axes(self, dtype=torch.float64, device=None) -> list[torch.Tensor]:
        """Frame coordinates along each axis: list of ``(n_i,)`` tensors."""
        return [o + h * torch.arange(n, dtype=dtype, device=device)
                for n, h, o in zip(self.shape, self.spacing, self.frame_origin)]

    def identity_map(self, dtype=None, device=None) -> torch.Tensor:
        """Frame coordinates of every node: ``(d, *shape)`` tensor (the identity map of the engine's fields)."""
        dtype = dtype or torch.get_default_dtype()
        return torch.stack(torch.meshgrid(*self.axes(dtype, device), indexing="ij"))

    def world(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """World coordinates of every node: ``(d, *shape)`` tensor."""
        return self.to_world(self.identity_map(dtype, device))

    def points(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """World coordinates of every node as a point set: ``(prod(shape), d)`` tensor, C order."""
        return self.world(dtype, device).reshape(self.ndim, -1).T

    def frequencies(self, shape: Sequence[int] | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
        """Angular frequencies (rad per unit length) of the real FFT of a grid of ``shape`` (default: this grid's)
        with this spacing: ``(*rfft_shape, d)`` tensor."""
        shape = tuple(shape or self.shape)
        freqs = []
        for i, (n, h) in enumerate(zip(shape, self.spacing)):
            fn = torch.fft.rfftfreq if i == len(shape) - 1 else torch.fft.fftfreq
            freqs.append(2 * math.pi * fn(n, d=h, dtype=torch.float64, device=device).to(dtype))
        return torch.stack(torch.meshgrid(*freqs, indexing="ij"), dim=-1)

    # ------------------------------------------------------------------ derived grids and fields
    def resized(self, shape: Sequence[int]) -> "Grid":
        """The grid of ``shape`` nodes covering the same box (corner nodes aligned; same origin and direction)."""
        shape = tuple(int(n) for n in shape)
        if len(shape) != self.ndim:
            raise ValueError(f"shape: expected {self.ndim} sizes, got {shape}")
        spacing = tuple(h * (n - 1) / (m - 1) if m > 1 and n > 1 else h
                        for h, n, m in zip(self.spacing, self.shape, shape))
        return Grid(shape, spacing, self.origin, direction=self.direction)

    def shrunk(self, factor: int) -> "Grid":
        """``resized`` to ``ceil(n / factor)`` nodes per axis (at least 2; single-node axes stay)."""
        if isinstance(factor, bool) or int(factor) != factor or factor < 1:
            raise ValueError(f"factor: expected an integer >= 1, got {factor!r}")
        return self.resized(tuple(max(int(math.ceil(n / factor)), 2) if n > 1 else 1 for n in self.shape))

    def border_taper(self, width: float, dtype=torch.float64, device=None) -> torch.Tensor:
        """Weight ``w`` ``(*shape)`` rising from 0 on the grid's border to 1 at ``width`` inside it.

        ``w = Π_i sin²(π/2 · min(dist_i / width, 1))`` with ``dist_i`` the physical distance of a node to the nearer
        end of axis ``i``: smooth, and ``w(x) k(x, y) w(y)`` is still a positive definite kernel.
        """
        width = check_positive("width", width)
        w = torch.ones(self.shape, dtype=torch.float64, device=device)
        for i, (n, h) in enumerate(zip(self.shape, self.spacing)):
            t = torch.arange(n, dtype=torch.float64, device=device) * h
            dist = torch.minimum(t, (n - 1) * h - t)
            wi = torch.sin(0.5 * math.pi * (dist / width).clamp(max=1.0)) ** 2
            w = w * wi.reshape([-1 if a == i else 1 for a in range(self.ndim)])
        return w.to(dtype)

    def check_field(self, name: str, f: torch.Tensor, *, channels: int | None = None) -> None:
        """Raise ``ValueError`` unless ``f`` is a tensor ``(..., *shape)`` (``(..., channels, *shape)``)."""
        need = self.shape if channels is None else (channels,) + self.shape
        if not isinstance(f, torch.Tensor) or tuple(f.shape[f.dim() - len(need):]) != need or f.dim() < len(need):
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"{name}: expected a tensor of shape (..., {', '.join(map(str, need))}) on the grid "
                             f"{self.shape}, got {got}")

    def __repr__(self):
        extra = "" if self.direction is None else ", direction=..."
        sp = ", ".join(f"{h:g}" for h in self.spacing)
        org = ", ".join(f"{o:g}" for o in self.origin)
        return f"Grid(shape={self.shape}, spacing=({sp}), origin=({org}){extra})"


def fft_size(n: int) -> int:
    """Smallest 2,3,5-smooth integer ``>= n`` (a fast FFT length)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


SymbolFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GridOperator:
    """Fourier multiplier on a grid, ``m ↦ IFFT(symbol · FFT(m))`` over the last ``grid.ndim`` axes.

    Parameters
    ----------
    grid : Grid
        The grid of the fields it applies to (fields of another shape are rejected).
    symbol_fn : callable
        ``symbol_fn(omega, lap)`` -> (*rfft_shape) real tensor, with ``omega`` (*rfft_shape, d) the angular
        frequencies and ``lap`` (*rfft_shape) the symbol of the negative discrete Laplacian
        ``Σ_i (2 - 2 cos(ω_i h_i)) / h_i²``.
    boundary : {"periodic", "zero"}
        ``"zero"``: the field is taken as 0 outside the grid; it is zero-padded and the result cropped, so nothing
        wraps around. Without ``reach`` every axis is doubled (exact for any kernel).
    reach : float, optional
        With ``boundary="zero"``: pad each axis by ``reach`` (physical units, at most twice the axis) on each side
        only, rounded up to a fast FFT length. Wrap-around is then below ``k(2 reach)``: much cheaper than doubling
        for a kernel that decays within ``reach``.
    taper : float, optional
        Apply ``m ↦ w K (w m)`` with ``w = grid.border_taper(taper)``: velocities vanish on the border, so flows keep
        the grid's box (the kernel ``w(x) k(x, y) w(y)`` is still positive definite).
    name : str
    """

    BOUNDARIES = ("periodic", "zero")

    def __init__(self, grid: Grid, symbol_fn: SymbolFn, *, boundary: str = "periodic", reach: float | None = None,
                 taper: float | None = None, name: str = "GridOperator"):
        if not isinstance(grid, Grid):
            raise TypeError(f"grid: expected a Grid, got {type(grid).__name__}")
        check_choice("boundary", boundary, self.BOUNDARIES)
        if reach is not None and boundary != "zero":
            raise ValueError(f"reach: only with boundary='zero', got boundary={boundary!r}")
        self.grid = grid
        self.boundary = boundary
        self.name = name
        self._symbol_fn = symbol_fn
        self._cache: dict = {}
        if boundary == "periodic":
            self.fft_shape = grid.shape
        elif reach is None:
            self.fft_shape = tuple(2 * n for n in grid.shape)
        else:
            reach = check_positive("reach", reach)
            pads = [min(int(math.ceil(reach / h)), 2 * n) for n, h in zip(grid.shape, grid.spacing)]
            self.fft_shape = tuple(fft_size(n + 2 * p) for n, p in zip(grid.shape, pads))
        self.reach = reach
        self.taper = None if taper is None else check_positive("taper", taper)

    def symbol(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """The multiplier on the real-FFT frequencies: (*rfft_shape) tensor (cached per dtype and device)."""
        key = ("symbol", dtype, str(device))
        cached = self._cache.get(key)
        if cached is None:
            omega = self.grid.frequencies(self.fft_shape, dtype=torch.float64, device=device)
            h = torch.tensor(self.grid.spacing, dtype=torch.float64, device=device)
            lap = ((2 - 2 * torch.cos(omega * h)) / h**2).sum(-1)
            cached = self._cache[key] = self._symbol_fn(omega, lap).to(dtype)
        return cached

    def weight(self, dtype=torch.float64, device=None) -> torch.Tensor | None:
        """The taper ``w`` (*shape) or None."""
        if self.taper is None:
            return None
        key = ("weight", dtype, str(device))
        if key not in self._cache:
            self._cache[key] = self.grid.border_taper(self.taper, dtype=dtype, device=device)
        return self._cache[key]

    def self_adjoint(self) -> bool:
        """Whether the operator is symmetric (``⟨K a, b⟩ = ⟨a, K b⟩``): its symbol is even in the frequency, as every
        kernel's spectral density is (a real circular convolution kernel ``k(x) = k(-x)``; the zero padding and the
        taper keep the symmetry). Checked once on the symbol."""
        if "self_adjoint" not in self._cache:
            s = self.symbol()
            even = all(torch.allclose(s, torch.roll(torch.flip(s, (a,)), 1, a), rtol=1e-10, atol=0.0)
                       for a in range(self.grid.ndim - 1))  # the last (real-FFT) axis is Hermitian by construction
            self._cache["self_adjoint"] = bool(even)
        return self._cache["self_adjoint"]

    def __call__(self, m: torch.Tensor) -> torch.Tensor:
        """Apply the operator to ``m`` (..., *grid.shape) -> same shape (real).

        A symmetric operator is its own adjoint, so its backward pass is one more application (``_SelfAdjoint``)
        instead of autograd through the transforms: fewer, larger operations, and nothing saved for the backward.
        """
        self.grid.check_field("m", m)
        if m.requires_grad and torch.is_grad_enabled() and self.self_adjoint():
            return _SelfAdjoint.apply(m, self)
        return _fft_apply(self, m)

    def __repr__(self):
        extra = "" if self.reach is None else f", reach={self.reach:g}"
        extra += "" if self.taper is None else f", taper={self.taper:g}"
        return f"<{self.name}, grid={self.grid.shape}, boundary={self.boundary!r}{extra}>"


def _fft_apply(op: GridOperator, m: torch.Tensor) -> torch.Tensor:
    """``w K (w m)`` by FFT. With zero padding the transforms skip the padding where they can: the forward one
    runs along the last axis first (the other axes' transforms then act on fewer lines), the inverse one crops
    each axis as soon as it is transformed (about half the work of ``rfftn`` / ``irfftn`` of the padded box in
    3-D)."""
    d = op.grid.ndim
    w = op.weight(m.dtype, m.device)
    if w is not None:
        m = m * w
    shape, size = op.grid.shape, op.fft_shape
    symbol = op.symbol(m.dtype, m.device)
    if size == shape:
        dims = tuple(range(-d, 0))
        out = torch.fft.irfftn(torch.fft.rfftn(m, dim=dims) * symbol, s=shape, dim=dims)
    else:
        x = torch.fft.rfft(m, n=size[-1], dim=-1)
        for a in range(d - 2, -1, -1):
            x = torch.fft.fft(x, n=size[a], dim=a - d)
        x = x * symbol
        for a in range(d - 1):
            x = torch.fft.ifft(x, dim=a - d).narrow(a - d, 0, shape[a])
        out = torch.fft.irfft(x, n=size[-1], dim=-1).narrow(-1, 0, shape[-1])
    return out if w is None else out * w


class _SelfAdjoint(torch.autograd.Function):
    """``K m`` for a symmetric ``GridOperator``: the vector-Jacobian product of ``K`` is ``K`` itself (and the
    backward pass goes through this function again, so it is differentiable any number of times)."""

    @staticmethod
    def forward(ctx, m, op):
        ctx.op = op
        return _fft_apply(op, m)

    @staticmethod
    def backward(ctx, grad):
        return ctx.op(grad), None


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
