"""The warp of idea registration as an optimisation over momenta (THEORY §5, §7).

Given the readout (kernel, λ) and the warp (kernel, mode, layers), ``fit_momenta`` minimises

    ν · (kinetic energy of the warp) + ℓ(q_L) / N,      ℓ(q) = λ tr(Yᵀ (K(q, q) + λI)^{-1} Y),

over the initial momentum (``mode="shooting"``, energy ``H(q_0, p_0)``, the engine's ``shoot``) or one momentum per
explicit-Euler layer (``mode="layers"``, energy ``Δt Σ_k H(q_k, p_k)``), with the engine's one optimiser
(``lddmm_nets.optim.minimize``, L-BFGS with the strong Wolfe line search). ``warp_trajectory`` rebuilds the flow of
fitted momenta without a graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

import lddmm_nets as engine
from lddmm_nets import shoot
from lddmm_nets.optim import minimize

from ._readout import ridge_loss
from ._warping import LayerTrajectory, forward_layers

__all__ = ["WarpProblem", "MomentaFit", "Warp", "fit_momenta", "warp_trajectory", "WarpDivergedError"]


class WarpDivergedError(FloatingPointError):
    """The optimised momenta are not finite (cannot happen with a finite objective at p = 0; raised, never hidden)."""


@dataclass(frozen=True)
class WarpProblem:
    """What ``fit_momenta`` needs besides the data: kernels, ridge parameter and the warp's discretisation.

    Attributes
    ----------
    warp_kernel, readout_kernel : engine kernels
        Γ (velocity fields) and K (readout).
    lam : float
        Ridge parameter λ of the readout.
    mode : {"layers", "shooting"}
    n_layers : int
        Time steps of the flow over [0, 1].
    integrator : str
        Engine integrator of the shooting mode.
    backend : str
        Kernel backend.
    max_iter : int
        L-BFGS iterations (the evaluation budget is ``1.25 max_iter + 1``).
    tol : float
        L-BFGS stops when the largest gradient entry of the normalised objective is below ``tol``.
    n_augment : int
        The last ``n_augment`` coordinates are zero-padding (``augment``). A radial warp kernel and the readouts
        are invariant under reflections of these coordinates, so the gradient in them vanishes while every point
        lies on the plane ``z = 0``: a flow started at p = 0 never leaves it. ``fit_momenta`` therefore starts
        their momenta at random values of size ``augment_init`` (in units of the scaled momenta, see
        ``fit_momenta``).
    augment_init : float
        See ``n_augment``.
    """

    warp_kernel: object
    readout_kernel: object
    lam: float
    mode: str = "layers"
    n_layers: int = 5
    integrator: str = "rk2"
    backend: str = "auto"
    max_iter: int = 30
    tol: float = 1e-5
    n_augment: int = 0
    augment_init: float = 0.1


@dataclass
class MomentaFit:
    """Outcome of ``fit_momenta``.

    Attributes
    ----------
    p : torch.Tensor
        float64 momenta: (N, D) for shooting, (L, N, D) for layers (zeros for the identity warp).
    objective, energy, data, initial_data : float
        ``ν E + ℓ/N`` at ``p``, its parts, and ``ℓ/N`` at the identity warp.
    n_iter : int
    converged : bool
    stop_reason : str
        A key of ``lddmm_nets.optim.STOP_REASONS``, or "identity" when nothing was optimised (ν = ∞, or the
        identity warp already optimal to round-off).
    history : ndarray
        Objective at the start and after every L-BFGS iteration.
    """

    p: torch.Tensor
    objective: float
    energy: float
    data: float
    initial_data: float
    n_iter: int = 0
    converged: bool = True
    stop_reason: str = "identity"
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class Warp:
    """The flow of fitted momenta: trajectory (``flow(x)`` warps new points), energy path, final points, p_0."""

    trajectory: object
    energy: torch.Tensor
    q_final: torch.Tensor
    p0: torch.Tensor


def _momenta_shape(problem: WarpProblem, q0: torch.Tensor) -> tuple:
    n, D = q0.shape
    return (n, D) if problem.mode == "shooting" else (problem.n_layers, n, D)


def _objective(problem: WarpProblem, q0, Yc, nu: float, p):
    """``(ν E + ℓ(q_L)/N, E, ℓ(q_L)/N)`` of momenta p (differentiable in p)."""
    n, L = q0.shape[0], problem.n_layers
    if problem.mode == "shooting":
        traj = shoot(problem.warp_kernel, q0, p, n_steps=L, integrator=problem.integrator, backend=problem.backend)
        energy = engine.hamiltonian(problem.warp_kernel, q0, p, problem.backend)
        qL = traj.q[-1]
    else:
        qs, energies = forward_layers(problem.warp_kernel, q0, p, backend=problem.backend)
        energy = energies.sum() / L
        qL = qs[-1]
    data, _ = ridge_loss(problem.readout_kernel, qL, Yc, problem.lam, backend=problem.backend)
    return nu * energy + data / n, energy, data / n


def _identity(problem: WarpProblem, q0, data: float) -> MomentaFit:
    p = torch.zeros(_momenta_shape(problem, q0), dtype=torch.float64, device=q0.device)
    return MomentaFit(p=p, objective=data, energy=0.0, data=data, initial_data=data)


def _start(problem: WarpProblem, q0: torch.Tensor, seed: int) -> torch.Tensor:
    """Starting scaled momenta: zero, except random entries in the augmented coordinates (symmetry breaking)."""
    P = torch.zeros(_momenta_shape(problem, q0), dtype=q0.dtype, device=q0.device)
    if problem.n_augment:
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(P[..., -problem.n_augment:].shape, generator=g, dtype=torch.float64)
        P[..., -problem.n_augment:] = problem.augment_init * noise.to(dtype=q0.dtype, device=q0.device)
    return P


def fit_momenta(problem: WarpProblem, q0: torch.Tensor, Yc: torch.Tensor, nu: float, *, warn: bool = False,
                name: str = "fit_momenta", seed: int = 0) -> MomentaFit:
    """Minimise ``ν E + ℓ(q_L)/N`` over the momenta; ``ν = ∞`` is the identity warp (p = 0).

    The variables are scaled so that L-BFGS sees O(1) numbers whatever N, ν and λ (THEORY §7: data term scaled by
    1/N): the momenta are ``p = c P`` with ``c`` the largest entry of the linearised optimum
    ``-∇_q(ℓ/N)(q_0) / ν`` (one Euler layer), and the objective is divided by the kinetic energy ``j0`` of that
    linearised step.

    Parameters
    ----------
    problem : WarpProblem
    q0 : torch.Tensor
        (N, D) lifted inputs (the optimisation runs in their dtype).
    Yc : torch.Tensor
        (N, k) centred targets.
    nu : float
        Weight of the kinetic energy (``math.inf``: no warp).
    warn : bool
        Warn with ``ConvergenceWarning`` when L-BFGS stops without meeting its rule (the final fit of an
        estimator; inner cross-validation fits spend a deliberate budget and report instead).
    name : str
        What the warning calls the caller.
    seed : int
        Seed of the starting momenta of the augmented coordinates (``problem.n_augment``).

    Returns
    -------
    MomentaFit

    Raises
    ------
    WarpDivergedError
        Non-finite momenta (the optimiser only accepts finite points, so this signals a bug, not bad data).
    """
    n = q0.shape[0]
    if math.isinf(nu):
        with torch.no_grad():
            d0, _ = ridge_loss(problem.readout_kernel, q0, Yc, problem.lam, backend=problem.backend)
        return _identity(problem, q0, float(d0) / n)
    qq = q0.detach().requires_grad_(True)
    d0, _ = ridge_loss(problem.readout_kernel, qq, Yc, problem.lam, backend=problem.backend)
    (gq,) = torch.autograd.grad(d0 / n, qq)
    initial_data = float(d0.detach()) / n
    c = float(gq.abs().max()) / nu
    with torch.no_grad():
        j0 = nu * float(engine.hamiltonian(problem.warp_kernel, q0.double(), gq.double() / nu, problem.backend))
    # When the possible decrease is below round-off (the identity warp is already optimal to working precision,
    # e.g. data the readout interpolates), there is nothing to optimise.
    if not (c > 0 and math.isfinite(j0) and j0 > 1e-10 * max(initial_data, 1e-30)):
        if not problem.n_augment:
            return _identity(problem, q0, initial_data)
        # nothing to gain in the plane at the start, but the augmented directions may still pay: scale by the data
        j0 = max(initial_data, 1e-30)
        c = math.sqrt(j0 / nu)
    # torch.optim.LBFGS's settings of the first version: strong Wolfe, 20 pairs, 1.25 max_iter evaluations, and
    # an objective rule 1e-4 tol on the normalised objective
    res = minimize(lambda P: _objective(problem, q0, Yc, nu, c * P)[0] / j0, _start(problem, q0, seed),
                   max_iter=problem.max_iter, max_eval=int(problem.max_iter * 1.25) + 1, gtol=problem.tol,
                   ftol=1e-4 * problem.tol, history_size=20, line_search="wolfe", warn=warn, name=name)
    p = c * res.x
    if not bool(torch.isfinite(p).all()):
        raise WarpDivergedError(f"{name}: the optimised momenta are not finite ({res.stop_reason})")
    with torch.no_grad():
        loss, energy, data = _objective(problem, q0, Yc, nu, p)
    return MomentaFit(p=p.double(), objective=float(loss), energy=float(energy), data=float(data),
                      initial_data=initial_data, n_iter=res.n_iter, converged=res.converged,
                      stop_reason=res.stop_reason, history=j0 * np.asarray([res.initial] + res.history))


def warp_trajectory(problem: WarpProblem, q0: torch.Tensor, p: torch.Tensor) -> Warp:
    """The flow of momenta p from q0 (no graph): shooting trajectory or layers."""
    with torch.no_grad():
        if problem.mode == "shooting":
            traj = shoot(problem.warp_kernel, q0, p, n_steps=problem.n_layers, integrator=problem.integrator,
                         backend=problem.backend)
            return Warp(traj, traj.energy(), traj.q[-1], p)
        qs, energies = forward_layers(problem.warp_kernel, q0, p, backend=problem.backend)
        return Warp(LayerTrajectory(problem.warp_kernel, qs, p, backend=problem.backend), energies, qs[-1], p[0])
