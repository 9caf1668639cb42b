"""Matched-landmark registration by geodesic shooting.

Minimise ``E(p0) = H(q0, p0) + |q1(p0) - target|² / σ²`` over the initial momenta ``p0`` with scipy's L-BFGS-B
through the engine's optimiser (``lddmm_nets.optim.minimize(method="scipy")``: the reference Fortran implementation
and its Moré–Thuente line search; gradients by autograd), where ``q1`` is
the endpoint of ``lddmm_nets.shoot``. ``H(q0, p0) = ½ |v_0|²_V`` is the kinetic energy of the geodesic, i.e.
half its squared length.

Stopping rule (``stop_reason`` of the result):

* ``"gradient"``: ``max |∂E/∂p0| <= gtol``;
* ``"objective"``: ``(E_k - E_{k+1}) / max(|E_k|, |E_{k+1}|, 1) <= ftol``;
* ``"max_iter"``: ``max_iter`` L-BFGS iterations were taken (``converged`` is False);
* ``"line_search"``: the line search could not decrease ``E`` any more, which happens at the limit of floating-point
  precision near an optimum or on a very stiff problem (``converged`` is False: check ``residual``).

A run that stops without converging warns with ``lddmm_nets.optim.ConvergenceWarning``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from lddmm_nets import GaussianKernel, Kernel, Trajectory, shoot
from lddmm_nets.checks import check_int, check_points, check_positive, check_same_shape
from lddmm_nets.optim import ConvergenceWarning, minimize

__all__ = ["register_landmarks", "LandmarkRegistration"]


@dataclass
class LandmarkRegistration:
    """Result of ``register_landmarks``.

    Attributes
    ----------
    trajectory : Trajectory
        The optimal geodesic (detached from autograd); ``trajectory.flow(x)`` warps any points.
    p0 : (N, d) tensor
        Optimal initial momenta.
    target : (N, d) tensor
    energy_history : list of float
        Objective ``E`` after every L-BFGS iteration (the first entry is at ``p0 = 0``).
    regularity : float
        ``H(q0, p0)`` at the optimum.
    data_term : float
        ``|q1 - target|² / σ²`` at the optimum.
    residual : float
        Root-mean-square landmark distance ``|q1 - target|`` (data units).
    n_iter : int
    seconds : float
    stop_reason : str
        ``"gradient"``, ``"objective"``, ``"max_iter"`` or ``"line_search"`` (see the module docstring).
    converged : bool
    """

    trajectory: Trajectory
    p0: torch.Tensor
    target: torch.Tensor
    energy_history: list[float] = field(default_factory=list)
    regularity: float = float("nan")
    data_term: float = float("nan")
    residual: float = float("nan")
    n_iter: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    converged: bool = False

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Warp points (M, d) by the registration's diffeomorphism ``φ_1``."""
        return self.trajectory.flow(x)


def register_landmarks(source: torch.Tensor, target: torch.Tensor, *, kernel: Kernel | None = None,
                       sigma: float = 0.1, n_steps: int = 10, integrator: str = "rk4", backend: str = "auto",
                       max_iter: int = 200, gtol: float = 1e-5, ftol: float = 1e-9, p0: torch.Tensor | None = None,
                       precondition: bool | None = None,
                       callback: Callable[[int, float], None] | None = None) -> LandmarkRegistration:
    """Register matched landmarks ``source[i] -> target[i]`` by geodesic shooting.

    Parameters
    ----------
    source, target : (N, d) tensors
        Matched landmarks (data units); device and dtype follow ``source``.
    kernel : Kernel, optional
        Metric kernel; default ``GaussianKernel(sigma=0.25 * diameter of source)``.
    sigma : float
        Noise scale of the data term, in data units: smaller fits the targets more tightly.
    n_steps, integrator, backend
        Passed to ``lddmm_nets.shoot``.
    max_iter : int
        Maximum number of L-BFGS iterations.
    gtol, ftol : float
        Gradient and objective tolerances of the stopping rule (module docstring).
    p0 : (N, d) tensor, optional
        Initial guess (default zeros).
    precondition : bool, optional
        Optimise ``z = K(q0, q0)^{1/2} p0`` instead of ``p0`` (default: when N <= 3000). It costs one dense
        eigendecomposition of the Gram matrix and makes L-BFGS converge in far fewer iterations.
    callback : callable, optional
        ``callback(iteration, objective)`` after every iteration (the CLI's progress bar uses it).

    Returns
    -------
    LandmarkRegistration
    """
    source = check_points("source", source)
    target = check_points("target", target)
    check_same_shape("target", target, "source", source)
    target = target.to(source)
    sigma = check_positive("sigma", sigma)
    max_iter = check_int("max_iter", max_iter)
    gtol, ftol = check_positive("gtol", gtol), check_positive("ftol", ftol)
    if kernel is None:
        diameter = float((source.max(0).values - source.min(0).values).norm()) or 1.0
        kernel = GaussianKernel(sigma=0.25 * diameter)
    if p0 is None:
        p0 = torch.zeros_like(source)
    else:
        p0 = check_points("p0", p0)
        check_same_shape("p0", p0, "source", source)
    p0 = p0.detach().to(source)
    if precondition is None:
        precondition = source.shape[0] <= 3000
    shoot(kernel, source, p0, n_steps=1, integrator=integrator, backend=backend)  # validate options early

    def objective(p):
        traj = shoot(kernel, source, p, n_steps=n_steps, integrator=integrator, backend=backend)
        reg = traj.system.energy(source, p)
        data = ((traj.q[-1] - target) ** 2).sum() / sigma**2
        return reg + data, reg, data, traj

    # Whitening preconditioner p0 = K^{-1/2} z: the regularity becomes ½|z|², and the Hessian's condition number
    # drops from cond(K)² to about cond(K) (eigenvalues below 1e-10 λ_max are cut).
    if precondition:
        lam, V = torch.linalg.eigh(kernel.gram(source).double())
        keep = lam > 1e-10 * lam.max()
        W = (V[:, keep] * lam[keep].rsqrt()) @ V[:, keep].T
        W_inv = (V[:, keep] * lam[keep].sqrt()) @ V[:, keep].T
        W, W_inv = W.to(source), W_inv.to(source)
    else:
        W = W_inv = None

    def to_p(z):
        return z if W is None else W @ z

    report = None if callback is None else (lambda it, f, aux: callback(it, f))
    z0 = p0 if W_inv is None else W_inv @ p0
    res = minimize(lambda z: objective(to_p(z))[0], z0, method="scipy", max_iter=max_iter, gtol=gtol, ftol=ftol,
                   history_size=20, callback=report, warn=False, name="register_landmarks")
    p = to_p(res.x)
    with torch.no_grad():  # the returned trajectory carries no autograd graph
        _, reg, data, traj = objective(p)
    if not res.converged:
        warnings.warn(f"register_landmarks: stopped without converging after {res.n_iter} iterations ({res.message}); "
                      f"residual {float((traj.q[-1] - target).norm(dim=1).pow(2).mean().sqrt()):.3g}",
                      ConvergenceWarning, stacklevel=2)
    return LandmarkRegistration(
        trajectory=traj, p0=p, target=target, energy_history=[res.initial] + list(res.history),
        regularity=float(reg), data_term=float(data),
        residual=float((traj.q[-1] - target).norm(dim=1).pow(2).mean().sqrt()), n_iter=res.n_iter,
        seconds=res.seconds, stop_reason=res.stop_reason, converged=res.converged)
