"""Affine pre-alignment with the registration's metric, and affine maps on grids.

An affine map here acts on frame coordinates of the fixed grid (``lddmm_nets.grid``; world millimetres for an
axis-aligned grid) as a ``(d+1, d+1)`` homogeneous matrix ``A``: ``y ↦ A[:d, :d] y + A[:d, d]``. ``to_world`` gives
the same map in world coordinates.
"""

from __future__ import annotations

import numpy as np
import torch

from lddmm_nets.fields import interpolate, resize
from lddmm_nets.grid import Grid
from lddmm_nets.optim import minimize

from .preprocessing import gaussian_smooth

__all__ = ["affine_prealign", "apply_affine", "to_world", "from_world", "AFFINE_SHRINK"]

#: the affine stage runs on the grid shrunk by this factor (at least 8 nodes per axis), smoothed by 2 voxels
AFFINE_SHRINK = 4


def apply_affine(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``A`` applied to coordinates ``x`` ``(d, ...)``: ``A[:d, :d] x + A[:d, d]``."""
    d = x.shape[0]
    return torch.einsum("ij,j...->i...", A[:d, :d].to(x.dtype), x) + A[:d, d].to(x.dtype).reshape(
        (d,) + (1,) * (x.dim() - 1))


def to_world(A: np.ndarray, grid: Grid) -> np.ndarray:
    """The frame-coordinate affine ``A`` as a world-coordinate affine ``(d+1, d+1)``: ``R A R⁻¹`` (R the direction)."""
    d = grid.ndim
    R = np.eye(d + 1)
    R[:d, :d] = grid.rotation
    return R @ np.asarray(A, dtype=np.float64) @ np.linalg.inv(R)


def from_world(A: np.ndarray, grid: Grid) -> np.ndarray:
    """A world-coordinate affine ``(d+1, d+1)`` as a frame-coordinate one: ``R⁻¹ A R`` (the inverse of ``to_world``)."""
    d = grid.ndim
    R = np.eye(d + 1)
    R[:d, :d] = grid.rotation
    return np.linalg.inv(R) @ np.asarray(A, dtype=np.float64) @ R


def affine_prealign(moving: torch.Tensor, fixed: torch.Tensor, grid: Grid, metric, mask, iterations: int,
                    callback=None) -> torch.Tensor:
    """The affine map ``A`` (frame coordinates, about the grid's centre) minimising ``metric(M ∘ A, F)``.

    Estimated on a copy shrunk by ``AFFINE_SHRINK`` and smoothed by 2 voxels, from the centre-of-mass translation,
    by the engine's optimiser (Armijo line search, stopping at a relative decrease below 1e-5 over 5 iterations or
    after ``iterations``).

    Parameters
    ----------
    moving, fixed : torch.Tensor
        ``(*grid.shape)`` normalised images (float64 recommended); the stage runs on their device.
    grid : Grid
    metric : registration.metrics.Metric
    mask : torch.Tensor or None
    iterations : int
    callback : callable, optional
        Called with ``{"level": -1, "iteration", "objective", "similarity"}`` after every iteration.

    Returns
    -------
    torch.Tensor
        ``(d+1, d+1)`` float64.
    """
    d = grid.ndim
    lv = grid.resized(tuple(max(n // AFFINE_SHRINK, 8) if n >= 16 else n for n in grid.shape))
    to = dict(dtype=fixed.dtype, device=fixed.device)
    f = resize(torch.as_tensor(gaussian_smooth(fixed.detach().cpu().numpy(), 2.0), **to), lv.shape)
    m = resize(torch.as_tensor(gaussian_smooth(moving.detach().cpu().numpy(), 2.0), **to), lv.shape)
    msk = None if mask is None else resize(mask.to(**to), lv.shape)
    ident = lv.identity_map(**to)
    centre = torch.tensor([o + e / 2 for o, e in zip(lv.frame_origin, lv.extent)], **to)

    def com(img):
        w = img.clamp_min(0)
        return (ident * w).reshape(d, -1).sum(1) / w.sum().clamp_min(1e-12)

    params = torch.zeros(d * d + d, **to)
    params[d * d:] = com(m) - com(f)

    def mapping(p):
        B = p[: d * d].reshape(d, d) + torch.eye(d, **to)
        y = ident - centre.reshape((d,) + (1,) * d)
        return centre.reshape((d,) + (1,) * d) + torch.einsum("ij,j...->i...", B, y) + p[d * d:].reshape(
            (d,) + (1,) * d)

    loss = metric.bind(f, msk)

    def objective(p):
        s = loss(interpolate(m, mapping(p), lv, padding="zeros"))
        return s, s

    report = None if callback is None else (lambda it, fx, sim: callback(
        {"level": -1, "iteration": it, "objective": fx, "similarity": float(sim)}))
    res = minimize(objective, params, max_iter=iterations, gtol=0.0, ftol=1e-5, patience=5, line_search="armijo",
                   callback=report, warn=False, name="affine pre-alignment")
    p = res.x
    B = p[: d * d].reshape(d, d) + torch.eye(d, **to)
    A = torch.eye(d + 1, **to)
    A[:d, :d] = B
    A[:d, d] = centre + p[d * d:] - B @ centre
    return A
