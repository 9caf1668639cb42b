"""Geodesic shooting on grids: EPDiff with vector momentum and image shooting with scalar momentum.

Both shoot the same equation (THEORY §2, §4). The momentum at time ``t`` is the coadjoint transport of the
initial momentum by the inverse map ``psi_t = phi_t^{-1}``,

    m_t = |D psi_t| (D psi_t)^T (m_0 ∘ psi_t),        v_t = K ⋆ m_t,

and ``psi_t`` is carried semi-Lagrangianly, ``psi_{t+h} = psi_t ∘ (id - h v_t)`` (composition by interpolation).
For images the momentum is ``m = -P ∇I`` with a scalar field ``P``; transporting ``I_t = I_0 ∘ psi_t`` and
``P_t = |D psi_t| P_0 ∘ psi_t`` gives ``m_t = -P_t ∇I_t`` which is the same transport written with the image
gradient of the current image (Vialard et al. 2012), the standard discretisation.

One implementation serves 1-D, 2-D and 3-D, with any grid operator ``K`` (``kernel.on_grid(grid)`` of the
engine: periodic or zero-padded FFT convolution, or a Sobolev operator). The whole scheme is differentiable by
autograd ("discretise, then optimise"); ``checkpoint=True`` recomputes each step in the backward pass to trade
time for memory. Nothing here prints or reads files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .fields import as_spacing, compose, gradient, identity_map, interpolate, jacobian_matrix, _det

__all__ = [
    "GridShooting",
    "shoot_vector_momentum",
    "shoot_image",
    "image_momentum",
    "grid_energy",
]

Operator = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class GridShooting:
    """Result of a grid shooting over unit time.

    Attributes
    ----------
    inverse_map : torch.Tensor
        ``(d, *shape)`` ``psi_1 = phi_1^{-1}`` in physical coordinates: the image at time 1 is ``I_0 ∘ psi_1``.
    forward_map : torch.Tensor or None
        ``(d, *shape)`` ``phi_1`` (Lagrangian), when requested.
    momentum : torch.Tensor or None
        ``(d, *shape)`` vector momentum ``m_1`` (density per unit volume), when requested (``final_momentum``).
    velocity0 : torch.Tensor
        ``(d, *shape)`` initial velocity ``v_0 = K ⋆ m_0`` (physical units per unit time).
    energy : torch.Tensor
        ``(n_steps,)`` ``½⟨m_k, v_k⟩`` at each step (constant along a geodesic up to discretisation error).
    image : torch.Tensor or None
        ``(..., *shape)`` ``I_0 ∘ psi_1`` for image shooting.
    n_steps : int
    spacing : tuple of float
    """

    inverse_map: torch.Tensor
    forward_map: torch.Tensor | None
    momentum: torch.Tensor | None
    velocity0: torch.Tensor
    energy: torch.Tensor
    image: torch.Tensor | None
    n_steps: int
    spacing: tuple

    @property
    def inverse_displacement(self) -> torch.Tensor:
        """``psi_1 - id``, ``(d, *shape)``."""
        return self.inverse_map - identity_map(self.inverse_map.shape[1:], self.spacing,
                                               dtype=self.inverse_map.dtype, device=self.inverse_map.device)


def grid_energy(m: torch.Tensor, v: torch.Tensor, spacing) -> torch.Tensor:
    """``½⟨m, v⟩ = ½ ∫ m·v dx`` on the grid (a Riemann sum with the cell volume ``prod(spacing)``)."""
    vol = 1.0
    for h in as_spacing(spacing):
        vol *= h
    return 0.5 * vol * (m * v).sum()


def image_momentum(image: torch.Tensor, scalar_momentum: torch.Tensor, spacing) -> torch.Tensor:
    """Vector momentum ``m = -P ∇I`` of an image and a scalar momentum.

    Parameters
    ----------
    image : torch.Tensor
        ``(*shape)`` image ``I`` (or ``(C, *shape)``: channels are summed).
    scalar_momentum : torch.Tensor
        ``P``, same shape as ``image``.

    Returns
    -------
    torch.Tensor
        ``(d, *shape)``.
    """
    spacing = as_spacing(spacing)
    d = len(spacing)
    g = gradient(image, spacing)  # (..., d, *shape)
    m = -scalar_momentum.unsqueeze(-d - 1) * g
    if m.dim() > d + 1:
        m = m.reshape((-1, d) + tuple(m.shape[-d:])).sum(0)
    return m


def _check(x: torch.Tensor, name: str, spacing, channels: bool):
    d = len(spacing)
    need = d + 1 if channels else d
    if x.dim() < need:
        raise ValueError(f"{name}: expected at least {need} axes for {d}-D spacing, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")


def _shoot(transport, smoother: Operator, spacing, shape, dtype, device, *, n_steps: int,
           forward_map: bool, checkpoint: bool, final_momentum: bool, image_fn=None) -> GridShooting:
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive integer, got {n_steps!r}")
    h = 1.0 / n_steps
    ident = identity_map(shape, spacing, dtype=dtype, device=device)
    psi = ident
    phi = ident if forward_map else None
    energies = []
    v0 = None
    m = None

    def step(psi_k, first: bool):
        m_k = transport(psi_k, first)
        v_k = smoother(m_k)
        psi_next = compose(psi_k, ident - h * v_k, spacing)
        return psi_next, m_k, v_k

    for k in range(n_steps):
        first = k == 0
        if checkpoint and torch.is_grad_enabled():
            psi_new, m, v = _checkpoint(step, psi, first, use_reentrant=False)
        else:
            psi_new, m, v = step(psi, first)
        if first:
            v0 = v
        energies.append(grid_energy(m, v, spacing))
        if phi is not None:
            phi = phi + h * (v if first else interpolate(v, phi, spacing))
        psi = psi_new
    m_final = transport(psi, False) if final_momentum else None
    image = image_fn(psi) if image_fn is not None else None
    return GridShooting(inverse_map=psi, forward_map=phi, momentum=m_final, velocity0=v0,
                        energy=torch.stack(energies), image=image, n_steps=n_steps, spacing=tuple(spacing))


def shoot_vector_momentum(m0: torch.Tensor, smoother: Operator, spacing, *, n_steps: int = 10,
                          forward_map: bool = False, checkpoint: bool = False,
                          final_momentum: bool = False) -> GridShooting:
    """Shoot EPDiff on a grid from an initial vector momentum ``m_0``.

    Parameters
    ----------
    m0 : torch.Tensor
        ``(d, *shape)`` initial momentum (density per unit volume, components in axis order).
    smoother : callable
        Grid operator ``m ↦ K ⋆ m`` acting on ``(..., *shape)``, e.g. ``kernel.on_grid(Grid(shape, spacing))``.
    spacing : sequence of float
        Grid spacing (physical units).
    n_steps : int
        Number of equal time steps over ``[0, 1]``.
    forward_map : bool
        Also integrate the Lagrangian forward map ``phi_1``.
    checkpoint : bool
        Recompute each step in the backward pass (memory ``O(1)`` in ``n_steps`` instead of ``O(n_steps)``).
    final_momentum : bool
        Also return ``m_1`` (one more transport).

    Returns
    -------
    GridShooting
    """
    spacing = as_spacing(spacing)
    d = len(spacing)
    _check(m0, "m0", spacing, channels=True)
    if m0.dim() != d + 1 or m0.shape[0] != d:
        raise ValueError(f"m0: expected shape ({d}, *shape), got {tuple(m0.shape)}")
    shape = tuple(m0.shape[1:])

    def transport(psi, first):
        if first:
            return m0
        jac = jacobian_matrix(psi, spacing)  # (d, d, *shape) [i, j] = dpsi_i/dx_j
        det = _det(jac, d)
        w = interpolate(m0, psi, spacing, padding="zeros")  # m0 ∘ psi, (d, *shape)
        return det * (jac * w.unsqueeze(1)).sum(0)  # (D psi)^T w

    return _shoot(transport, smoother, spacing, shape, m0.dtype, m0.device, n_steps=n_steps,
                  forward_map=forward_map, checkpoint=checkpoint, final_momentum=final_momentum)


def shoot_image(image: torch.Tensor, scalar_momentum: torch.Tensor, smoother: Operator, spacing, *,
                n_steps: int = 10, forward_map: bool = False, checkpoint: bool = False,
                final_momentum: bool = False) -> GridShooting:
    """Geodesic shooting of an image with a scalar momentum (THEORY §4).

    ``v_t = K ⋆ (-P_t ∇I_t)``, ``I_t = I_0 ∘ psi_t``, ``P_t = |D psi_t| P_0 ∘ psi_t``,
    ``psi_{t+h} = psi_t ∘ (id - h v_t)``.

    Parameters
    ----------
    image : torch.Tensor
        ``(*shape)`` or ``(C, *shape)`` initial image ``I_0`` (channels share one deformation).
    scalar_momentum : torch.Tensor
        ``P_0``, same shape as ``image``.
    smoother : callable
        Grid operator ``m ↦ K ⋆ m`` on ``(..., *shape)``.
    spacing : sequence of float
        Grid spacing; ``d = len(spacing)``.
    n_steps, forward_map, checkpoint, final_momentum
        As in :func:`shoot_vector_momentum`.

    Returns
    -------
    GridShooting
        With ``image = I_0 ∘ psi_1`` and (if requested) ``momentum = -P_1 ∇I_1``.
    """
    spacing = as_spacing(spacing)
    d = len(spacing)
    _check(image, "image", spacing, channels=False)
    if scalar_momentum.shape != image.shape:
        raise ValueError(f"scalar_momentum: expected shape {tuple(image.shape)} (the image's), "
                         f"got {tuple(scalar_momentum.shape)}")
    if image.dim() not in (d, d + 1):
        raise ValueError(f"image: expected shape (*shape) or (C, *shape) with {d} spatial axes, "
                         f"got {tuple(image.shape)}")
    shape = tuple(image.shape[-d:])
    both = torch.stack([image, scalar_momentum], 0)

    def transport(psi, first):
        if first:
            return image_momentum(image, scalar_momentum, spacing)
        det = _det(jacobian_matrix(psi, spacing), d)
        ip = interpolate(both, psi, spacing)
        return image_momentum(ip[0], det * ip[1], spacing)

    return _shoot(transport, smoother, spacing, shape, image.dtype, image.device, n_steps=n_steps,
                  forward_map=forward_map, checkpoint=checkpoint, final_momentum=final_momentum,
                  image_fn=lambda psi: interpolate(image, psi, spacing))
