"""Discrete warps of idea registration: L explicit-Euler layers and the discrete Hamiltonian system (THEORY §5).

The continuous warp ("shooting" mode) is the engine's ``shoot``; this room holds what is specific to the discrete
network: layers ``q_{k+1} = q_k + Δt Γ(q_k, q_k) p_k`` driven by one momentum per layer, the flow of new points
through them, and the discrete Hamiltonian system (implicit forward, explicit backward) that the momenta of a trained
network satisfy, with the map ``p_0 -> (q_k, p_k)_k`` that regenerates every layer from the initial momentum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lddmm_nets import hamiltonian

__all__ = ["LayerTrajectory", "forward_layers", "DiscreteHamiltonianResult", "discrete_hamiltonian_shoot",
           "discrete_hamiltonian_residuals", "FixedPointError"]


class FixedPointError(RuntimeError):
    """The fixed-point iteration of an implicit momentum equation did not converge."""


@dataclass
class LayerTrajectory:
    """States of a discrete warp with ``L`` layers of step ``Δt = 1/L``.

    Layer k moves every point x by ``Δt v_k(x)`` with ``v_k(x) = Σ_i Γ(x, q_{k,i}) p_{k,i}``; on the data points
    themselves the kernel's nugget adds ``Δt r p_{k,i}``.

    Attributes
    ----------
    kernel : engine kernel
        Warping kernel Γ.
    q : torch.Tensor
        (L+1, N, D) data points after each layer (``q[0]`` the inputs).
    p : torch.Tensor
        (L, N, D) momenta of the layers.
    backend : str
        Kernel backend used by ``flow`` and ``energy``.
    """

    kernel: object
    q: torch.Tensor
    p: torch.Tensor
    backend: str = "auto"

    @property
    def n_layers(self) -> int:
        return self.p.shape[0]

    def energy(self) -> torch.Tensor:
        """(L,) tensor of ``H(q_k, p_k) = ½ ‖v_k‖_V²`` (nugget included)."""
        return torch.stack([hamiltonian(self.kernel, self.q[k], self.p[k], self.backend)
                            for k in range(self.n_layers)])

    def flow(self, x: torch.Tensor, return_path: bool = False, backend: str | None = None) -> torch.Tensor:
        """Push ambient points x (M, D) through the layers; (M, D), or (L+1, M, D) with ``return_path``."""
        backend = self.backend if backend is None else backend
        dt = 1.0 / self.n_layers
        path = [x]
        for k in range(self.n_layers):
            x = x + dt * self.kernel.matvec(x, self.q[k], self.p[k], backend=backend)
            path.append(x)
        return torch.stack(path) if return_path else x


def forward_layers(kernel, q0: torch.Tensor, p: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Run the data points through the layers (differentiable in q0 and p).

    Parameters
    ----------
    q0 : torch.Tensor
        (N, D) inputs.
    p : torch.Tensor
        (L, N, D) momenta.

    Returns
    -------
    q : torch.Tensor
        (L+1, N, D) states.
    energy : torch.Tensor
        (L,) ``H(q_k, p_k)``; the regulariser is ``ν Δt Σ_k H(q_k, p_k)``.
    """
    L = p.shape[0]
    dt = 1.0 / L
    qs = [q0]
    energies = []
    q = q0
    for k in range(L):
        vq = kernel.matvec(q, None, p[k], backend=backend)
        energies.append(0.5 * (p[k] * vq).sum())
        q = q + dt * vq
        qs.append(q)
    return torch.stack(qs), torch.stack(energies)


def _dH_dq(kernel, q: torch.Tensor, p: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    # The engine's closed form of ∂H/∂q (checked against autograd of H by the engine's tests).
    return kernel.dq_quadratic(q, p, backend)


@dataclass
class DiscreteHamiltonianResult:
    """The discrete Hamiltonian system regenerated from an initial momentum.

    Attributes
    ----------
    q : torch.Tensor
        (L+1, N, D) states.
    p : torch.Tensor
        (L, N, D) momenta, ``p[0]`` the given initial momentum.
    residuals : torch.Tensor
        (L,) relative residual of the implicit momentum equation at every layer (0 for layer 0).
    """

    q: torch.Tensor
    p: torch.Tensor
    residuals: torch.Tensor


def discrete_hamiltonian_shoot(kernel, q0: torch.Tensor, p0: torch.Tensor, n_layers: int, *, tol: float = 1e-13,
                               max_iter: int = 500, backend: str = "auto") -> DiscreteHamiltonianResult:
    """Regenerate all layers from ``p_0`` with the discrete least-action system of THEORY §5.

    ``q_{k+1} = q_k + Δt ∂_pH(q_k, p_k)`` (explicit) and ``p_k = p_{k-1} - Δt ∂_qH(q_k, p_k)`` (implicit in p_k,
    solved by fixed-point iteration started at ``p_{k-1}``), with ``Δt = 1/n_layers`` and
    ``H(q, p) = ½ pᵀ (Γ(q, q) + rI) p``. These are the stationarity conditions of
    ``ν Δt Σ_k H(q_k, p_k) + D(q_L)`` (backpropagation with ``p_k = -(1/ν) ∂D/∂q_{k+1}``).

    Parameters
    ----------
    kernel : engine kernel
        Warping kernel Γ (``FeatureMapKernel`` for a ResNet).
    q0, p0 : torch.Tensor
        (N, D) inputs and initial momentum.
    n_layers : int
        L.
    tol, max_iter :
        Stopping rule of the fixed point: relative change of p_k below ``max(tol, 8 eps)`` (``eps`` of the dtype,
        so that a float32 run asks no more than its precision).
    backend : str
        Kernel backend.

    Returns
    -------
    DiscreteHamiltonianResult

    Raises
    ------
    FixedPointError
        A layer's fixed point did not converge in ``max_iter`` iterations (the map ``p ↦ p_{k-1} - Δt ∂_qH(q_k, p)``
        contracts only for small enough ``Δt``: use more layers or a smaller momentum).
    """
    if q0.ndim != 2 or q0.shape != p0.shape:
        raise ValueError(f"q0 and p0 must be (N, D) tensors of one shape; got {tuple(q0.shape)} and {tuple(p0.shape)}")
    if isinstance(n_layers, bool) or int(n_layers) != n_layers or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer; got {n_layers!r}")
    n_layers = int(n_layers)
    dt = 1.0 / n_layers
    tol = max(float(tol), 8 * torch.finfo(q0.dtype).eps)
    q, p = q0.detach(), p0.detach()
    qs, ps = [q], [p]
    res = [torch.zeros((), dtype=q0.dtype, device=q0.device)]
    with torch.no_grad():
        for k in range(1, n_layers):
            q = q + dt * kernel.matvec(q, None, p, backend=backend)
            p_prev = p
            p = _implicit_momentum(kernel, q, p_prev, dt, tol=tol, max_iter=max_iter, backend=backend, layer=k)
            r = _relative_residual(kernel, q, p, p_prev, dt, backend)
            qs.append(q)
            ps.append(p)
            res.append(r)
        qs.append(q + dt * kernel.matvec(q, None, p, backend=backend))
    return DiscreteHamiltonianResult(q=torch.stack(qs), p=torch.stack(ps), residuals=torch.stack(res))


def _relative_residual(kernel, q, p, p_prev, dt, backend) -> torch.Tensor:
    """``‖p - p_prev + Δt ∂_qH(q, p)‖ / ‖p‖``."""
    tiny = torch.finfo(p.dtype).tiny
    return (p - p_prev + dt * _dH_dq(kernel, q, p, backend)).norm() / p.norm().clamp_min(tiny)


def _implicit_momentum(kernel, q, p_prev, dt, *, tol, max_iter, backend, layer) -> torch.Tensor:
    """Solve ``p = p_prev - Δt ∂_qH(q, p)`` by fixed point from ``p_prev``; FixedPointError when it does not converge."""
    tiny = torch.finfo(p_prev.dtype).tiny
    p = p_prev
    change = float("nan")
    for _ in range(max_iter):
        p_new = p_prev - dt * _dH_dq(kernel, q, p, backend)
        change = float((p_new - p).norm() / p_new.norm().clamp_min(tiny))
        p = p_new
        if change < tol:
            return p
    raise FixedPointError(f"discrete_hamiltonian_shoot: the implicit momentum equation of layer {layer} did not "
                          f"converge in max_iter={max_iter} iterations (last relative change {change:.3g}, tol "
                          f"{tol:.3g}, Δt = {dt:.3g}); use more layers or a smaller momentum")


def discrete_hamiltonian_residuals(kernel, q: torch.Tensor, p: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Relative residuals ``‖p_k - p_{k-1} + Δt ∂_qH(q_k, p_k)‖ / ‖p_k‖`` for k = 1..L-1.

    Parameters
    ----------
    kernel : engine kernel
        Warping kernel Γ.
    q : torch.Tensor
        (L+1, N, D) states.
    p : torch.Tensor
        (L, N, D) momenta.

    Returns
    -------
    torch.Tensor
        (L-1,) residuals.
    """
    L = p.shape[0]
    dt = 1.0 / L
    with torch.no_grad():
        out = [_relative_residual(kernel, q[k], p[k], p[k - 1], dt, backend) for k in range(1, L)]
    return torch.stack(out) if out else torch.zeros(0, dtype=p.dtype, device=p.device)
