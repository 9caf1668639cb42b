"""Fields on regular grids: finite differences, interpolation, composition of maps, Jacobians.

This room holds the grid calculus that image shooting (``lddmm_nets.epdiff``) and image registration
build on. One implementation serves 1-D, 2-D and 3-D: the number of spatial dimensions ``d`` is the length of
``spacing`` and the last ``d`` axes of a tensor are its spatial axes.

Conventions
-----------
- A grid of shape ``(n_1, ..., n_d)`` with spacing ``(h_1, ..., h_d)`` (physical units, e.g. mm) has its nodes
  at the physical coordinates ``x = (i_1 h_1, ..., i_d h_d)`` (origin 0, axis order).
- A scalar field is a tensor ``(..., n_1, ..., n_d)``; a vector field (or a map) is channels-first
  ``(..., d, n_1, ..., n_d)`` with components in axis order, in physical units.
- A *map* ``phi`` stores the physical coordinates ``phi(x)``; its *displacement* is ``phi - identity``.
- Device and dtype follow the inputs; everything is differentiable by autograd.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "as_spacing",
    "identity_map",
    "gradient",
    "divergence",
    "jacobian_matrix",
    "jacobian_determinant",
    "interpolate",
    "warp",
    "compose",
    "resize",
]

_INTERP = {"linear": "bilinear", "nearest": "nearest"}
_PADDING = ("border", "zeros")
_BOUNDARY = ("replicate", "periodic")


def as_spacing(spacing, d: int | None = None) -> tuple[float, ...]:
    """Return ``spacing`` as a tuple of ``d`` positive floats (a scalar is broadcast).

    Raises
    ------
    ValueError
        If a spacing is not positive or the length does not match ``d``.
    """
    if isinstance(spacing, (int, float)):
        if d is None:
            raise ValueError("spacing: a scalar spacing needs the number of dimensions d")
        spacing = (float(spacing),) * d
    spacing = tuple(float(s) for s in spacing)
    if d is not None and len(spacing) != d:
        raise ValueError(f"spacing: expected {d} values, got {len(spacing)} ({spacing})")
    if not spacing or any(not (s > 0) for s in spacing):
        raise ValueError(f"spacing: expected positive values, got {spacing}")
    return spacing


def _check_spatial(f: torch.Tensor, d: int, name: str, channels: int | None = None) -> None:
    if not 1 <= d <= 3:
        raise ValueError(f"{name}: expected 1, 2 or 3 spatial dimensions, got {d}")
    need = d + (1 if channels is not None else 0)
    if f.dim() < need:
        raise ValueError(f"{name}: expected at least {need} axes, got shape {tuple(f.shape)}")
    if channels is not None and f.shape[-d - 1] != channels:
        raise ValueError(f"{name}: expected {channels} components on axis -{d + 1}, got shape {tuple(f.shape)}")


def identity_map(shape: Sequence[int], spacing, *, dtype=None, device=None) -> torch.Tensor:
    """Physical coordinates of the grid nodes.

    Parameters
    ----------
    shape : sequence of int
        Grid shape ``(n_1, ..., n_d)``.
    spacing : float or sequence of float
        Node spacing per axis (physical units).

    Returns
    -------
    torch.Tensor
        ``(d, n_1, ..., n_d)``: component ``i`` is ``index_i * spacing_i``.
    """
    shape = tuple(int(n) for n in shape)
    spacing = as_spacing(spacing, len(shape))
    axes = [torch.arange(n, dtype=dtype or torch.get_default_dtype(), device=device) * h
            for n, h in zip(shape, spacing)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def gradient(f: torch.Tensor, spacing, *, boundary: str = "replicate") -> torch.Tensor:
    """Finite-difference gradient of a scalar field with physical spacing.

    Central differences in the interior (second order). At the edges ``boundary="replicate"`` uses one-sided
    differences (first order, as ``numpy.gradient``); ``"periodic"`` wraps around.

    Parameters
    ----------
    f : torch.Tensor
        ``(..., n_1, ..., n_d)`` scalar field(s); the last ``d = len(spacing)`` axes are spatial.
    spacing : sequence of float
        Grid spacing per axis (physical units).
    boundary : {"replicate", "periodic"}

    Returns
    -------
    torch.Tensor
        ``(..., d, n_1, ..., n_d)``: ``∂f/∂x_i`` in units of f per unit length.
    """
    spacing = as_spacing(spacing)
    d = len(spacing)
    _check_spatial(f, d, "f")
    if boundary not in _BOUNDARY:
        raise ValueError(f"boundary: expected one of {_BOUNDARY}, got {boundary!r}")
    dims = [f.dim() - d + i for i in range(d)]
    if boundary == "periodic":
        parts = [(torch.roll(f, -1, dims=k) - torch.roll(f, 1, dims=k)) / (2.0 * h) for k, h in zip(dims, spacing)]
    else:
        parts = []
        for k, h in zip(dims, spacing):
            if f.shape[k] < 2:
                parts.append(torch.zeros_like(f))
            else:
                parts.append(torch.gradient(f, spacing=h, dim=k, edge_order=1)[0])
    return torch.stack(parts, dim=f.dim() - d)


def divergence(v: torch.Tensor, spacing, *, boundary: str = "replicate") -> torch.Tensor:
    """Finite-difference divergence ``Σ_i ∂v_i/∂x_i`` of a vector field (same stencils as ``gradient``).

    Parameters
    ----------
    v : torch.Tensor
        ``(..., d, n_1, ..., n_d)`` vector field, components in axis order.
    spacing : sequence of float
        Grid spacing per axis.

    Returns
    -------
    torch.Tensor
        ``(..., n_1, ..., n_d)``.
    """
    spacing = as_spacing(spacing)
    d = len(spacing)
    _check_spatial(v, d, "v", channels=d)
    out = None
    for i in range(d):
        vi = v.select(v.dim() - d - 1, i)
        dvi = gradient(vi, spacing, boundary=boundary).select(vi.dim() - d, i)
        out = dvi if out is None else out + dvi
    return out


def jacobian_matrix(phi: torch.Tensor, spacing, *, boundary: str = "replicate") -> torch.Tensor:
    """Jacobian matrix ``Dphi`` of a map or vector field on the grid.

    Parameters
    ----------
    phi : torch.Tensor
        ``(..., d, n_1, ..., n_d)``.

    Returns
    -------
    torch.Tensor
        ``(..., d, d, n_1, ..., n_d)`` with entry ``[i, j] = ∂phi_i/∂x_j``.
    """
    spacing = as_spacing(spacing)
    _check_spatial(phi, len(spacing), "phi", channels=len(spacing))
    return gradient(phi, spacing, boundary=boundary)


def _det(a: torch.Tensor, d: int) -> torch.Tensor:
    """Determinant of ``(..., d, d, *spatial)`` matrices by cofactor expansion (fast for d <= 3)."""
    k = a.dim() - len(a.shape[a.dim() - d:]) - 2  # index of the row axis

    def e(i, j):
        return a.select(k, i).select(k, j)

    if d == 1:
        return e(0, 0)
    if d == 2:
        return e(0, 0) * e(1, 1) - e(0, 1) * e(1, 0)
    return (e(0, 0) * (e(1, 1) * e(2, 2) - e(1, 2) * e(2, 1))
            - e(0, 1) * (e(1, 0) * e(2, 2) - e(1, 2) * e(2, 0))
            + e(0, 2) * (e(1, 0) * e(2, 1) - e(1, 1) * e(2, 0)))


def jacobian_determinant(phi: torch.Tensor, spacing, *, displacement: bool = False,
                         boundary: str = "replicate") -> torch.Tensor:
    """Jacobian determinant ``det Dphi`` of a map (or of ``id + u`` for a displacement ``u``).

    Parameters
    ----------
    phi : torch.Tensor
        ``(..., d, n_1, ..., n_d)`` map in physical coordinates, or a displacement if ``displacement=True``.
    spacing : sequence of float
        Grid spacing per axis.
    displacement : bool
        Interpret ``phi`` as a displacement ``u`` and return ``det(I + Du)``.

    Returns
    -------
    torch.Tensor
        ``(..., n_1, ..., n_d)``, dimensionless; positive everywhere for a diffeomorphism.
    """
    spacing = as_spacing(spacing)
    d = len(spacing)
    jac = jacobian_matrix(phi, spacing, boundary=boundary)
    if displacement:
        eye = torch.eye(d, dtype=jac.dtype, device=jac.device).reshape((d, d) + (1,) * d)
        jac = jac + eye
    return _det(jac, d)


def _to_grid_sample(f: torch.Tensor, x: torch.Tensor, spacing: tuple[float, ...]):
    """Reshape field and points for ``F.grid_sample`` (which needs 2-D or 3-D inputs)."""
    d = len(spacing)
    shape = f.shape[f.dim() - d:]
    lead = f.shape[:f.dim() - d]
    out_shape = x.shape[1:]
    inp = f.reshape((1, -1) + tuple(shape))
    pts = x.reshape(d, -1)
    # normalised coordinates in [-1, 1] for align_corners=True; a singleton axis maps to 0
    norm = [pts[i] * (2.0 / ((n - 1) * h)) - 1.0 if n > 1 else torch.zeros_like(pts[i])
            for i, (n, h) in enumerate(zip(shape, spacing))]
    if d == 1:
        inp = inp.unsqueeze(-2)  # (1, C, 1, n)
        norm = [torch.zeros_like(norm[0])] + norm
    g = torch.stack(norm[::-1], dim=-1)  # grid_sample wants (x=last axis, y, z)
    # Non-finite or huge coordinates (a diverging optimiser step) can crash grid_sample's index arithmetic.
    # Points beyond ±3 are at least one cell outside the grid, where "zeros" and "border" padding do not
    # depend on how far outside they are, so clamping them changes nothing; NaN goes outside too.
    g = torch.nan_to_num(g, nan=-3.0, posinf=3.0, neginf=-3.0).clamp(-3.0, 3.0)
    g = g.reshape((1, -1) + (1,) * (max(d, 2) - 1) + (max(d, 2),))
    return inp, g, lead, out_shape


def interpolate(f: torch.Tensor, x: torch.Tensor, spacing, *, interp: str = "linear",
                padding: str = "border") -> torch.Tensor:
    """Sample a field defined on the grid at arbitrary physical points.

    Parameters
    ----------
    f : torch.Tensor
        ``(..., n_1, ..., n_d)`` field(s) on the grid; leading axes are channels.
    x : torch.Tensor
        ``(d, *out_shape)`` physical coordinates (components in axis order) of the points to sample.
    spacing : sequence of float
        Grid spacing of ``f``.
    interp : {"linear", "nearest"}
        Multilinear or nearest-neighbour interpolation.
    padding : {"border", "zeros"}
        Value outside the grid: nearest edge value, or zero.

    Returns
    -------
    torch.Tensor
        ``(..., *out_shape)``.
    """
    spacing = as_spacing(spacing)
    d = len(spacing)
    _check_spatial(f, d, "f")
    if x.dim() < 1 or x.shape[0] != d:
        raise ValueError(f"x: expected shape ({d}, ...) physical coordinates, got {tuple(x.shape)}")
    if interp not in _INTERP:
        raise ValueError(f"interp: expected one of {tuple(_INTERP)}, got {interp!r}")
    if padding not in _PADDING:
        raise ValueError(f"padding: expected one of {_PADDING}, got {padding!r}")
    x = x.to(f.dtype)
    inp, g, lead, out_shape = _to_grid_sample(f, x, spacing)
    out = F.grid_sample(inp, g, mode=_INTERP[interp], padding_mode=padding, align_corners=True)
    return out.reshape(tuple(lead) + tuple(out_shape))


def warp(f: torch.Tensor, phi: torch.Tensor, spacing, *, interp: str = "linear",
         padding: str = "border") -> torch.Tensor:
    """Pull back a field by a map: ``(f ∘ phi)(x) = f(phi(x))``.

    Parameters
    ----------
    f : torch.Tensor
        ``(..., n_1, ..., n_d)`` field(s) on the grid.
    phi : torch.Tensor
        ``(d, *out_shape)`` map in physical coordinates (often the same grid).

    Returns
    -------
    torch.Tensor
        ``(..., *out_shape)``.
    """
    return interpolate(f, phi, spacing, interp=interp, padding=padding)


def compose(psi: torch.Tensor, phi: torch.Tensor, spacing) -> torch.Tensor:
    """Composition of maps ``psi ∘ phi`` on a grid.

    ``psi`` is interpolated through its displacement ``psi - id`` with border padding, so that outside the
    grid the displacement is extended by its edge value (not the map itself, which would be wrong).

    Parameters
    ----------
    psi : torch.Tensor
        ``(d, n_1, ..., n_d)`` map in physical coordinates on the grid.
    phi : torch.Tensor
        ``(d, *out_shape)`` map (physical coordinates).

    Returns
    -------
    torch.Tensor
        ``(d, *out_shape)``: ``psi(phi(x))``.
    """
    spacing = as_spacing(spacing)
    d = len(spacing)
    _check_spatial(psi, d, "psi", channels=d)
    ident = identity_map(psi.shape[1:], spacing, dtype=psi.dtype, device=psi.device)
    return phi + interpolate(psi - ident, phi, spacing, padding="border")


def resize(f: torch.Tensor, shape: Sequence[int], *, interp: str = "linear") -> torch.Tensor:
    """Resample a field to another grid covering the same physical box (corner nodes aligned).

    Parameters
    ----------
    f : torch.Tensor
        ``(..., n_1, ..., n_d)`` with ``d = len(shape)``.
    shape : sequence of int
        Target grid shape ``(m_1, ..., m_d)``.

    Returns
    -------
    torch.Tensor
        ``(..., m_1, ..., m_d)``. The spacing of the result is ``h_i (n_i - 1) / (m_i - 1)``.
    """
    shape = tuple(int(n) for n in shape)
    d = len(shape)
    _check_spatial(f, d, "f")
    src = f.shape[f.dim() - d:]
    if tuple(src) == shape:
        return f
    if interp not in _INTERP:
        raise ValueError(f"interp: expected one of {tuple(_INTERP)}, got {interp!r}")
    if interp == "linear" and all(n > 1 for n in src) and all(m > 1 for m in shape):
        # same corner-aligned multilinear resampling as ``interpolate``, but through the faster separable kernel
        mode = ("linear", "bilinear", "trilinear")[d - 1]
        lead = f.shape[:f.dim() - d]
        out = F.interpolate(f.reshape((1, -1) + tuple(src)), size=shape, mode=mode, align_corners=True)
        return out.reshape(tuple(lead) + shape)
    spacing = tuple(1.0 for _ in range(d))
    scale = [((n - 1) / (m - 1)) if m > 1 else 0.0 for n, m in zip(src, shape)]
    x = identity_map(shape, [1.0] * d, dtype=f.dtype, device=f.device)
    x = x * torch.tensor(scale, dtype=f.dtype, device=f.device).reshape((d,) + (1,) * d)
    return interpolate(f, x, spacing, interp=interp)
