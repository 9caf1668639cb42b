"""Fields on a ``Grid``: finite differences, interpolation, composition of maps, Jacobians.

This room holds the grid calculus that image shooting (``lddmm_nets.epdiff``) and image registration build on.
Every function takes the ``Grid`` its fields live on (``lddmm_nets.grid``); one implementation serves 1-D, 2-D and
3-D, the last ``grid.ndim`` axes of a tensor being its spatial axes.

Conventions
-----------
- Coordinates are the grid's *frame* coordinates (physical units along the grid's axes; world coordinates for an
  axis-aligned grid): node ``i`` sits at ``grid.identity_map()[:, i]``.
- A scalar field is a tensor ``(..., *grid.shape)``; a vector field (or a map) is channels-first
  ``(..., d, *grid.shape)`` with components along the grid's axes, in physical units.
- A *map* ``phi`` stores the coordinates ``phi(x)``; its *displacement* is ``phi - identity``.
- Device and dtype follow the inputs; everything is differentiable by autograd.
- Non-finite sample coordinates give NaN values (never the padding value): a diverging map cannot pass for a
  valid one.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .grid import Grid

__all__ = [
    "GRID_SAMPLE_MODES",
    "restrict",
    "gradient",
    "divergence",
    "jacobian_matrix",
    "determinant",
    "jacobian_determinant",
    "interpolate",
    "warp",
    "compose",
    "resize",
    "resample_map",
]

#: ``interpolate``'s ``interp`` names and the ``grid_sample`` mode of each
GRID_SAMPLE_MODES = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}
_PADDING = ("border", "zeros")
_BOUNDARY = ("replicate", "periodic")


def _grid(grid) -> Grid:
    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a lddmm_nets.Grid, got {type(grid).__name__}")
    return grid


@functools.lru_cache(maxsize=8)
def _identity(grid: Grid, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``grid.identity_map`` cached for the hot loops of this module (read only: never returned to callers)."""
    return grid.identity_map(dtype=dtype, device=device)


def _check_spatial(f: torch.Tensor, grid: Grid, name: str, channels: int | None = None) -> None:
    d = grid.ndim
    need = d + (1 if channels is not None else 0)
    if not isinstance(f, torch.Tensor) or f.dim() < need:
        got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(f"{name}: expected a tensor with at least {need} axes for the {d}-D grid, got {got}")
    if tuple(f.shape[f.dim() - d:]) != grid.shape:
        raise ValueError(f"{name}: expected spatial shape {grid.shape} (the grid's), got {tuple(f.shape)}")
    if channels is not None and f.shape[-d - 1] != channels:
        raise ValueError(f"{name}: expected {channels} components on axis -{d + 1}, got shape {tuple(f.shape)}")


def gradient(f: torch.Tensor, grid: Grid, *, boundary: str = "replicate") -> torch.Tensor:
    """Finite-difference gradient of a scalar field with the grid's physical spacing.

    Central differences in the interior (second order). At the edges ``boundary="replicate"`` uses one-sided
    differences (first order, as ``numpy.gradient``); ``"periodic"`` wraps around.

    Parameters
    ----------
    f : torch.Tensor
        ``(..., *grid.shape)`` scalar field(s).
    grid : Grid
    boundary : {"replicate", "periodic"}

    Returns
    -------
    torch.Tensor
        ``(..., d, *grid.shape)``: ``∂f/∂y_i`` in units of f per unit length.
    """
    grid = _grid(grid)
    d, spacing = grid.ndim, grid.spacing
    _check_spatial(f, grid, "f")
    if boundary not in _BOUNDARY:
        raise ValueError(f"boundary: expected one of {_BOUNDARY}, got {boundary!r}")
    dims = [f.dim() - d + i for i in range(d)]
    if boundary == "periodic":
        parts = [(torch.roll(f, -1, dims=k) - torch.roll(f, 1, dims=k)) / (2.0 * h) for k, h in zip(dims, spacing)]
    else:
        weights = _difference_weights(grid, f.dtype, f.device)
        parts = [torch.zeros_like(f) if n < 2 else (_shifted(f, k, n, 1) - _shifted(f, k, n, -1)) * w
                 for k, n, w in zip(dims, grid.shape, weights)]
    return torch.stack(parts, dim=f.dim() - d)


def _shifted(f: torch.Tensor, axis: int, n: int, step: int) -> torch.Tensor:
    """``f`` shifted by one node along ``axis`` (``step`` ±1), the edge node repeated: ``f[i + step]`` clamped."""
    if step > 0:
        return torch.cat([f.narrow(axis, 1, n - 1), f.narrow(axis, n - 1, 1)], axis)
    return torch.cat([f.narrow(axis, 0, 1), f.narrow(axis, 0, n - 1)], axis)


@functools.lru_cache(maxsize=16)
def _difference_weights(grid: Grid, dtype: torch.dtype, device: torch.device) -> tuple:
    """Per axis the factor of ``f[i+1] - f[i-1]`` (edges repeated) in ``gradient``: ``1 / 2h`` inside, ``1 / h`` at
    the two edge nodes (one-sided differences), shaped to broadcast along that axis.

    Written as shifted copies times these weights rather than ``torch.gradient`` because the backward pass of
    ``torch.gradient`` (slices, divisions, a concatenation per axis) cost 1.5-3 times as much on the shooting's
    grids; the values are the same.
    """
    d = grid.ndim
    out = []
    for k, (n, h) in enumerate(zip(grid.shape, grid.spacing)):
        w = torch.full((n,), 0.5 / h, dtype=torch.float64)
        if n >= 2:
            w[0] = w[-1] = 1.0 / h
        out.append(w.reshape((n,) + (1,) * (d - 1 - k)).to(dtype=dtype, device=device))
    return tuple(out)


def divergence(v: torch.Tensor, grid: Grid, *, boundary: str = "replicate") -> torch.Tensor:
    """Finite-difference divergence ``Σ_i ∂v_i/∂y_i`` of a vector field (same stencils as ``gradient``).

    Parameters
    ----------
    v : torch.Tensor
        ``(..., d, *grid.shape)`` vector field.
    grid : Grid

    Returns
    -------
    torch.Tensor
        ``(..., *grid.shape)``.
    """
    grid = _grid(grid)
    d = grid.ndim
    _check_spatial(v, grid, "v", channels=d)
    out = None
    for i in range(d):
        vi = v.select(v.dim() - d - 1, i)
        dvi = gradient(vi, grid, boundary=boundary).select(vi.dim() - d, i)
        out = dvi if out is None else out + dvi
    return out


def jacobian_matrix(phi: torch.Tensor, grid: Grid, *, boundary: str = "replicate") -> torch.Tensor:
    """Jacobian matrix ``Dphi`` of a map or vector field on the grid.

    Parameters
    ----------
    phi : torch.Tensor
        ``(..., d, *grid.shape)``.

    Returns
    -------
    torch.Tensor
        ``(..., d, d, *grid.shape)`` with entry ``[i, j] = ∂phi_i/∂y_j``.
    """
    grid = _grid(grid)
    _check_spatial(phi, grid, "phi", channels=grid.ndim)
    return gradient(phi, grid, boundary=boundary)


def determinant(a: torch.Tensor, d: int) -> torch.Tensor:
    """Determinant of ``(..., d, d, *spatial)`` matrix fields (``d`` spatial axes) by cofactor expansion (d <= 3).

    Returns
    -------
    torch.Tensor
        ``(..., *spatial)``.
    """
    if d not in (1, 2, 3) or a.dim() < d + 2 or a.shape[-d - 1] != d or a.shape[-d - 2] != d:
        raise ValueError(f"a: expected shape (..., {d}, {d}, *spatial) with {d} spatial axes, got {tuple(a.shape)}")
    k = a.dim() - d - 2  # index of the row axis
    # unbind, not select: the backward pass of one unbind is one stack, that of each select a zero-filled copy of
    # the whole matrix field (9 of them in 3-D made the determinant's backward 3x slower)
    e = [row.unbind(k) for row in a.unbind(k)]
    if d == 1:
        return e[0][0]
    if d == 2:
        return e[0][0] * e[1][1] - e[0][1] * e[1][0]
    return (e[0][0] * (e[1][1] * e[2][2] - e[1][2] * e[2][1])
            - e[0][1] * (e[1][0] * e[2][2] - e[1][2] * e[2][0])
            + e[0][2] * (e[1][0] * e[2][1] - e[1][1] * e[2][0]))


def jacobian_determinant(phi: torch.Tensor, grid: Grid, *, displacement: bool = False,
                         boundary: str = "replicate") -> torch.Tensor:
    """Jacobian determinant ``det Dphi`` of a map (or of ``id + u`` for a displacement ``u``).

    Parameters
    ----------
    phi : torch.Tensor
        ``(..., d, *grid.shape)`` map in frame coordinates, or a displacement if ``displacement=True``.
    grid : Grid
    displacement : bool
        Interpret ``phi`` as a displacement ``u`` and return ``det(I + Du)``.

    Returns
    -------
    torch.Tensor
        ``(..., *grid.shape)``, dimensionless; positive everywhere for a diffeomorphism.
    """
    d = _grid(grid).ndim
    jac = jacobian_matrix(phi, grid, boundary=boundary)
    if displacement:
        jac = jac + torch.eye(d, dtype=jac.dtype, device=jac.device).reshape((d, d) + (1,) * d)
    return determinant(jac, d)


@functools.lru_cache(maxsize=16)
def _normalisation(grid: Grid, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, offset)``, each ``(max(d, 2),)`` in grid_sample's axis order (the last axis first), such that
    ``x * scale - offset`` maps frame coordinates to ``[-1, 1]`` (corner nodes at ±1); zero for a singleton axis (and
    for the axis 1-D grids get in front of theirs)."""
    scale, offset = [], []
    for n, h, o in zip(grid.shape, grid.spacing, grid.frame_origin):
        scale.append(2.0 / ((n - 1) * h) if n > 1 else 0.0)
        offset.append(1.0 + 2.0 * o / ((n - 1) * h) if n > 1 else 0.0)
    if grid.ndim == 1:
        scale, offset = [0.0] + scale, [0.0] + offset
    return (torch.tensor(scale[::-1], dtype=dtype, device=device),
            torch.tensor(offset[::-1], dtype=dtype, device=device))


def _to_grid_sample(f: torch.Tensor, x: torch.Tensor, grid: Grid):
    """Reshape field and points for ``F.grid_sample`` (which needs 2-D or 3-D inputs)."""
    d = grid.ndim
    lead = f.shape[:f.dim() - d]
    out_shape = x.shape[1:]
    inp = f.reshape((1, -1) + grid.shape)
    pts = x.reshape(d, -1)
    if d == 1:
        inp = inp.unsqueeze(-2)  # (1, C, 1, n)
        pts = torch.cat([torch.zeros_like(pts), pts])  # a first, singleton axis (sampled at 0)
    # normalised coordinates in [-1, 1] for align_corners=True, (N, 2 or 3) with the last axis first as
    # grid_sample wants (x = last axis, y, z); a singleton axis maps to 0
    scale, offset = _normalisation(grid, pts.dtype, pts.device)
    g = torch.flip(pts, (0,)).T * scale - offset
    # Huge coordinates can overflow grid_sample's index arithmetic, and NaN ones give arbitrary values (or crash its
    # backward). Beyond ±3 a point is at least one cell outside the grid, where "zeros" and "border" padding do not
    # depend on the distance: clamping changes nothing there. Non-finite coordinates are sampled at 0 here and their
    # values set to NaN by ``interpolate``. On the CPU one reduction (no device synchronisation to fear) tells
    # whether any coordinate needs it: the usual case then skips both operations and their backward passes (about
    # a tenth of a 2-D registration's time); elsewhere they are applied unconditionally. (``abs().amax()``, not
    # ``aminmax``: on these transposed (N, d) views aminmax took 10x as long, 3 % of a 2-D registration.)
    top = float(g.detach().abs().amax()) if g.device.type == "cpu" and g.numel() else math.nan  # NaN propagates
    if not top <= 3.0:  # also true for NaN
        g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0).clamp_(-3.0, 3.0)
    g = g.reshape((1, -1) + (1,) * (max(d, 2) - 1) + (max(d, 2),))
    return inp, g, lead, out_shape, math.isfinite(top)


def interpolate(f: torch.Tensor, x: torch.Tensor, grid: Grid, *, interp: str = "linear",
                padding: str = "border") -> torch.Tensor:
    """Sample a field defined on the grid at arbitrary points.

    Parameters
    ----------
    f : torch.Tensor
        ``(..., *grid.shape)`` field(s) on the grid; leading axes are channels.
    x : torch.Tensor
        ``(d, *out_shape)`` frame coordinates of the points to sample.
    grid : Grid
        The grid of ``f``.
    interp : {"linear", "nearest", "cubic"}
        Multilinear, nearest-neighbour, or (2-D only) Keys' cubic convolution (``grid_sample``'s bicubic,
        ``a = -0.75``: C¹, interpolating, exact for constants but not for linear fields).
    padding : {"border", "zeros"}
        Value outside the grid: nearest edge value, or zero.

    Returns
    -------
    torch.Tensor
        ``(..., *out_shape)``; NaN at points with a non-finite coordinate.
    """
    grid = _grid(grid)
    d = grid.ndim
    _check_spatial(f, grid, "f")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != d:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected shape ({d}, ...) coordinates, got {got}")
    if interp not in GRID_SAMPLE_MODES:
        raise ValueError(f"interp: expected one of {tuple(GRID_SAMPLE_MODES)}, got {interp!r}")
    if interp == "cubic" and d != 2:
        raise ValueError(f"interp: 'cubic' is implemented for 2-D grids only, got a {d}-D grid")
    if padding not in _PADDING:
        raise ValueError(f"padding: expected one of {_PADDING}, got {padding!r}")
    x = x.to(f.dtype)
    inp, g, lead, out_shape, finite = _to_grid_sample(f, x, grid)
    out = F.grid_sample(inp, g, mode=GRID_SAMPLE_MODES[interp], padding_mode=padding, align_corners=True)
    out = out.reshape(tuple(lead) + tuple(out_shape))
    if not finite:  # a NaN or infinite coordinate (possibly: off the CPU the mask is applied unconditionally)
        out = out.masked_fill(~torch.isfinite(x.sum(0)), float("nan"))
    return out


def warp(f: torch.Tensor, phi: torch.Tensor, grid: Grid, *, interp: str = "linear",
         padding: str = "border") -> torch.Tensor:
    """Pull back a field by a map: ``(f ∘ phi)(x) = f(phi(x))``.

    Parameters
    ----------
    f : torch.Tensor
        ``(..., *grid.shape)`` field(s) on ``grid``.
    phi : torch.Tensor
        ``(d, *out_shape)`` map in frame coordinates (often on the same grid).

    Returns
    -------
    torch.Tensor
        ``(..., *out_shape)``.
    """
    return interpolate(f, phi, grid, interp=interp, padding=padding)


def compose(psi: torch.Tensor, phi: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Composition of maps ``psi ∘ phi``, ``psi`` given on ``grid``.

    ``psi`` is interpolated through its displacement ``psi - id`` with border padding, so that outside the grid
    the displacement is extended by its edge value (not the map itself, which would be wrong).

    Parameters
    ----------
    psi : torch.Tensor
        ``(d, *grid.shape)`` map in frame coordinates.
    phi : torch.Tensor
        ``(d, *out_shape)`` map (frame coordinates).

    Returns
    -------
    torch.Tensor
        ``(d, *out_shape)``: ``psi(phi(x))``.
    """
    grid = _grid(grid)
    _check_spatial(psi, grid, "psi", channels=grid.ndim)
    if psi.dim() != grid.ndim + 1:
        raise ValueError(f"psi: expected shape ({grid.ndim}, {', '.join(map(str, grid.shape))}), "
                         f"got {tuple(psi.shape)}")
    return phi + interpolate(psi - _identity(grid, psi.dtype, psi.device), phi, grid, padding="border")


def resize(f: torch.Tensor, shape: Sequence[int], *, interp: str = "linear") -> torch.Tensor:
    """Resample a field to another grid covering the same box (corner nodes aligned, ``Grid.resized``).

    Parameters
    ----------
    f : torch.Tensor
        ``(..., n_1, ..., n_d)`` with ``d = len(shape)``.
    shape : sequence of int
        Target grid shape ``(m_1, ..., m_d)``.

    Returns
    -------
    torch.Tensor
        ``(..., m_1, ..., m_d)``.
    """
    shape = tuple(int(n) for n in shape)
    d = len(shape)
    if not isinstance(f, torch.Tensor) or f.dim() < d:
        raise ValueError(f"f: expected a tensor with at least {d} axes, got "
                         f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
    src = tuple(f.shape[f.dim() - d:])
    if src == shape:
        return f
    if interp not in GRID_SAMPLE_MODES:
        raise ValueError(f"interp: expected one of {tuple(GRID_SAMPLE_MODES)}, got {interp!r}")
    if interp == "linear" and 1 <= d <= 3 and all(n > 1 for n in src) and all(m > 1 for m in shape):
        # the corner-aligned multilinear resampling of ``interpolate``, through the faster separable kernel
        mode = ("linear", "bilinear", "trilinear")[d - 1]
        lead = f.shape[:f.dim() - d]
        out = F.interpolate(f.reshape((1, -1) + src), size=shape, mode=mode, align_corners=True)
        return out.reshape(tuple(lead) + shape)
    unit = Grid(src)
    x = Grid(src).resized(shape).identity_map(dtype=f.dtype, device=f.device)
    return interpolate(f, x, unit, interp=interp)


def restrict(f: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The least-squares inverse of ``resize``'s upsampling: the field ``g`` on the coarser grid ``shape`` whose
    multilinear upsampling is closest to ``f`` (``restrict(resize(g, fine), g_shape) == g`` to round-off).

    Per axis ``g = (UᵀU)⁻¹ Uᵀ f`` with ``U`` (fine × coarse) the corner-aligned linear interpolation matrix: the L²
    projection onto the coarse grid's piecewise-linear fields. Momenta stored on an image grid come back to the
    deformation grid they were optimised on this way, so that shooting a registration's momentum reproduces it.

    Parameters
    ----------
    f : torch.Tensor
        ``(..., n_1, ..., n_d)`` with ``d = len(shape)``.
    shape : sequence of int
        ``(m_1, ..., m_d)`` with ``2 <= m_i <= n_i`` (or ``m_i = n_i``).

    Returns
    -------
    torch.Tensor
        ``(..., m_1, ..., m_d)``, the dtype and device of ``f``.
    """
    shape = tuple(int(n) for n in shape)
    d = len(shape)
    src = tuple(f.shape[f.dim() - d:]) if isinstance(f, torch.Tensor) and f.dim() >= d else None
    if src is None or any(m > n or (m < 2 and m != n) for m, n in zip(shape, src)):
        raise ValueError(f"shape: expected a coarser grid than f's {src} (each size 2 .. n, or n), got {shape}")
    out = f
    for k, (n, m) in enumerate(zip(src, shape)):
        if n == m:
            continue
        eye = torch.eye(m, dtype=torch.float64, device=f.device).reshape(1, m, m)
        up = F.interpolate(eye, size=n, mode="linear", align_corners=True)[0].T  # (n, m): column j = node j's hat
        r = torch.linalg.solve(up.T @ up, up.T).to(f.dtype)  # (m, n)
        axis = f.dim() - d + k
        out = torch.movedim(torch.tensordot(r, out, dims=([1], [axis])), 0, axis)
    return out


def resample_map(psi: torch.Tensor, grid: Grid, new_grid: Grid) -> torch.Tensor:
    """A map on ``grid`` resampled through its displacement onto ``new_grid`` (both cover the same box).

    Parameters
    ----------
    psi : torch.Tensor
        ``(d, *grid.shape)`` map in frame coordinates.
    grid, new_grid : Grid
        ``new_grid`` is typically ``grid.resized(shape)`` (same origin, direction and box).

    Returns
    -------
    torch.Tensor
        ``(d, *new_grid.shape)``.
    """
    _check_spatial(psi, _grid(grid), "psi", channels=grid.ndim)
    if _grid(new_grid).shape == grid.shape and new_grid.spacing == grid.spacing:
        return psi
    ident = _identity(grid, psi.dtype, psi.device)
    return _identity(new_grid, psi.dtype, psi.device) + resize(psi - ident, new_grid.shape)
