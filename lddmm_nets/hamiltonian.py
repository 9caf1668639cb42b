"""The landmark Hamiltonian, written once, and the system of equations it generates.

``H(q, p) = ½ Σ_ij k(q_i, q_j) p_i·p_j`` (+ ``½ r |p|²`` with a nugget ``r``). The equations of motion are
``q̇ = ∂H/∂p = K(q, q) p`` and ``ṗ = -∂H/∂q``; ambient points follow ``ẋ = v(x) = Σ_j k(x, q_j) p_j``.
``gradient="autograd"`` differentiates ``hamiltonian`` (the reference); ``gradient="closed"`` uses the
kernel's closed form (``Kernel.dq_quadratic``), which the tests check against the reference in float64.
"""

from __future__ import annotations

import torch

from .checks import check_choice
from .kernels import Kernel

__all__ = ["hamiltonian", "HamiltonianSystem"]


def hamiltonian(kernel: Kernel, q: torch.Tensor, p: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``H(q, p) = ½ Σ_ij k(q_i, q_j) p_i·p_j + ½ r |p|²``.

    Parameters
    ----------
    kernel : Kernel
    q, p : (N, d) tensors
        Positions and momenta.
    backend : {"auto", "dense", "keops"}

    Returns
    -------
    0-d tensor
    """
    return 0.5 * (p * kernel.matvec(q, None, p, backend)).sum()


class HamiltonianSystem:
    """Right-hand sides of the landmark Hamiltonian system, and of ambient points carried by it.

    Parameters
    ----------
    kernel : Kernel
    backend : {"auto", "dense", "keops"}
    gradient : {"closed", "autograd"}
        How ``∂H/∂q`` is computed.
    """

    GRADIENTS = ("closed", "autograd")

    def __init__(self, kernel: Kernel, backend: str = "auto", gradient: str = "closed"):
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel: expected a lddmm_nets Kernel, got {type(kernel).__name__}")
        check_choice("gradient", gradient, self.GRADIENTS)
        self.kernel = kernel
        self.backend = backend
        self.gradient = gradient

    def energy(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``H(q, p)``: 0-d tensor."""
        return 0.5 * (p * self.kernel.apply(q, None, p, self.backend)).sum()

    def dH_dp(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``∂H/∂p = (K(q, q) + r I) p``: (N, d)."""
        return self.kernel.apply(q, None, p, self.backend)

    def dH_dq(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``∂H/∂q``: (N, d)."""
        if self.gradient == "closed":
            return self.kernel.dq_quadratic(q, p, self.backend)
        return Kernel.dq_quadratic(self.kernel, q, p, self.backend)

    def velocity(self, x: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Velocity field ``v(x) = Σ_j k(x, q_j) p_j`` at ambient points ``x`` (M, d): (M, d)."""
        return self.kernel.apply(x, q, p, self.backend)

    def rhs(self, state):
        """Time derivative of ``(q, p, x)``; ``x`` may be None."""
        q, p, x = state
        dq = self.dH_dp(q, p)
        dp = -self.dH_dq(q, p)
        dx = None if x is None else self.velocity(x, q, p)
        return dq, dp, dx
