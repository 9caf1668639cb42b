"""Warping blocks on multichannel images: ``z ↦ z + Δt v_k(z)``, v_k in the RKHS of an equivariant kernel (THEORY §5).

Block k is driven by momenta ``p_k`` (N, C, H, W) on the training images at that layer, ``z_{k,i}``:
``v_k(z) = Σ_i Γ(z, z_{k,i}) p_{k,i}``, ``Δt = 1/L``, with kinetic energy ``½ ‖v_k‖²_Γ = ½ Σ_i ⟨p_{k,i}, v_k(z_{k,i})⟩``.
Because Γ(g·z, z') = g Γ(z, z') for every g of the group (``kernels.py``), each block, and so the whole flow, commutes
with the group acting on the input image while the training images stay where they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kernels import EquivariantPatchKernel

__all__ = ["ImageFlow", "forward_blocks"]


def forward_blocks(kernel: EquivariantPatchKernel, z0: torch.Tensor, p: torch.Tensor,
                   others: torch.Tensor | None = None):
    """Run the training images (and optionally other images) through L blocks (differentiable).

    Parameters
    ----------
    kernel : EquivariantPatchKernel
    z0 : torch.Tensor
        (N, C, H, W) training images (the sources of the momenta).
    p : torch.Tensor
        (L, N, C, H, W) momenta.
    others : torch.Tensor, optional
        (M, C, H, W) images carried along by the same blocks.

    Returns
    -------
    states : torch.Tensor
        (L+1, N, C, H, W) training images after each block.
    energies : torch.Tensor
        (L,) ``½ ‖v_k‖²``; the regulariser is ``ν Δt Σ_k``.
    others : torch.Tensor or None
        (M, C, H, W) the other images after the last block.
    """
    L = p.shape[0]
    dt = 1.0 / L
    states, energies, z = [z0], [], z0
    for k in range(L):
        W = kernel.filters(z, p[k])
        v = kernel.apply(z, W)
        energies.append(0.5 * (p[k] * v).sum())
        if others is not None:
            others = others + dt * kernel.apply(others, W)
        z = z + dt * v
        states.append(z)
    return torch.stack(states), torch.stack(energies), others


@dataclass
class ImageFlow:
    """A fitted flow of images: L blocks with the training states and momenta that define them.

    Attributes
    ----------
    kernel : EquivariantPatchKernel
        Γ.
    sources : torch.Tensor
        (L, N, C, H, W) training images entering each block.
    momenta : torch.Tensor
        (L, N, C, H, W) their momenta.
    """

    kernel: EquivariantPatchKernel
    sources: torch.Tensor
    momenta: torch.Tensor

    @property
    def n_layers(self) -> int:
        return self.momenta.shape[0]

    def filters(self) -> list[torch.Tensor]:
        """The (m, C) filter of every block (with an activation feature map: the convolution weights and bias)."""
        return [self.kernel.filters(self.sources[k], self.momenta[k]) for k in range(self.n_layers)]

    def energy(self) -> torch.Tensor:
        """(L,) ``½ ‖v_k‖²``."""
        return torch.stack([0.5 * (self.momenta[k] * self.kernel.velocity(self.sources[k], self.sources[k],
                                                                         self.momenta[k])).sum()
                            for k in range(self.n_layers)])

    def flow(self, z: torch.Tensor, return_path: bool = False, batch: int = 4096) -> torch.Tensor:
        """Carry images z (M, C, H, W) through the blocks: (M, C, H, W), or (L+1, M, C, H, W) with ``return_path``."""
        dt = 1.0 / self.n_layers
        Ws = self.filters()
        out = []
        for chunk in z.split(batch):
            path = [chunk]
            for W in Ws:
                chunk = chunk + dt * self.kernel.apply(chunk, W)
                path.append(chunk)
            out.append(torch.stack(path) if return_path else chunk)
        return torch.cat(out, dim=1 if return_path else 0)
