"""Geodesic shooting of landmarks and the diffeomorphism it generates.

``shoot`` integrates the Hamiltonian system of ``lddmm_nets.hamiltonian`` from ``(q0, p0)`` over
``[0, t1]`` (unit time by default) in ``n_steps`` equal steps of a registered scheme, and returns a
``Trajectory``. The trajectory carries the states at every step and can push ambient points forward
(``flow``) and backward (``inverse_flow``, the exact inverse of the discrete map, solved by fixed point), and give
the Jacobian of the flow at points. Everything is differentiable in ``q0`` and ``p0`` by autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import integrators as I
from .checks import check_choice, check_int, check_points, check_positive, check_same_shape
from .backends import BACKENDS
from .hamiltonian import HamiltonianSystem
from .kernels import Kernel

__all__ = ["shoot", "Trajectory", "InverseFlowError"]


class InverseFlowError(RuntimeError):
    """The fixed-point inversion of a flow step did not converge."""


@dataclass
class Trajectory:
    """Landmark states along a shooting and the means to flow ambient points with them.

    Attributes
    ----------
    q, p : (n_steps + 1, N, d) tensors
        Positions and momenta at ``times``.
    times : (n_steps + 1,) tensor
        ``linspace(0, t1, n_steps + 1)``.
    system : HamiltonianSystem
        Kernel, backend and gradient mode that made the trajectory.
    integrator : Integrator
        The scheme used (also used to flow ambient points).
    """

    q: torch.Tensor
    p: torch.Tensor
    times: torch.Tensor
    system: HamiltonianSystem
    integrator: I.Integrator = field(repr=False)

    @property
    def n_steps(self) -> int:
        return self.q.shape[0] - 1

    @property
    def kernel(self) -> Kernel:
        return self.system.kernel

    @property
    def h(self) -> float:
        return float(self.times[1] - self.times[0])

    def energy(self) -> torch.Tensor:
        """``H(q_k, p_k)`` at every step: (n_steps + 1,) tensor."""
        return torch.stack([self.system.energy(q, p) for q, p in zip(self.q, self.p)])

    def _points(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked (``(M, d)``, finite, on the trajectory's device) and cast to its dtype."""
        x = check_points(name, x, dim=self.q.shape[-1], finite=False)
        if x.device != self.q.device:
            raise ValueError(f"{name}: expected a tensor on {self.q.device} (the trajectory's device), got one on "
                             f"{x.device}; move it with .to({str(self.q.device)!r})")
        return check_points(name, x).to(self.q.dtype)

    def velocity(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        """Velocity field of step ``k`` at points ``x`` (M, d): ``Σ_j k(x, q_kj) p_kj``, (M, d)."""
        x = self._points("x", x)
        return self.system.velocity(x, self.q[k], self.p[k])

    def _step_points(self, k: int, x: torch.Tensor, h: float, reverse: bool = False) -> torch.Tensor:
        j = k + 1 if reverse else k
        return self.integrator.step(self.system, (self.q[j], self.p[j], x), -h if reverse else h)[2]

    def flow(self, x: torch.Tensor, *, return_path: bool = False) -> torch.Tensor:
        """Push ambient points through the discrete flow ``φ_1`` with the trajectory's scheme.

        Parameters
        ----------
        x : (M, d) tensor
            Points at time 0 (same units as the landmarks).
        return_path : bool
            Return the positions at every step, (n_steps + 1, M, d), instead of the final ones.

        Returns
        -------
        (M, d) or (n_steps + 1, M, d) tensor
        """
        x = self._points("x", x)
        path = [x]
        for k in range(self.n_steps):
            path.append(self._step_points(k, path[-1], self.h))
        return torch.stack(path) if return_path else path[-1]

    def inverse_flow(self, y: torch.Tensor, *, tol: float = 1e-12, max_iter: int = 100) -> torch.Tensor:
        """Pull points back through the discrete flow: solve ``φ_1(x) = y``.

        Each step ``F_k`` is inverted exactly (to ``tol``) by the fixed point ``x ← x + (y - F_k(x))``, started from
        one step of the scheme run backwards in time; it contracts while ``h · Lip(v) < 1``.

        Parameters
        ----------
        y : (M, d) tensor
            Points at time ``t1``.
        tol : float
            Stop when the largest residual ``|F_k(x) - y|`` is below ``tol * (1 + max |y|)``.
        max_iter : int

        Returns
        -------
        (M, d) tensor

        Raises
        ------
        InverseFlowError
            A step did not converge (too few steps for this deformation).
        """
        y = self._points("y", y)
        tol = check_positive("tol", tol)
        max_iter = check_int("max_iter", max_iter)
        for k in reversed(range(self.n_steps)):
            x = self._step_points(k, y, self.h, reverse=True)
            scale = 1 + float(y.detach().abs().max()) if y.numel() else 1.0
            for _ in range(max_iter):
                res = self._step_points(k, x, self.h) - y
                err = float(res.detach().abs().max()) if res.numel() else 0.0
                if err <= tol * scale:
                    break
                x = x - res
            else:
                raise InverseFlowError(f"inverse_flow: step {k} did not converge in max_iter={max_iter} iterations "
                                       f"(residual {err:.3g}); shoot with more n_steps")
            y = x
        return y

    def flow_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """Jacobian ``Dφ_1(x)`` of the discrete flow at points ``x`` (M, d): (M, d, d), ``J[m, i, j] = ∂y_i/∂x_j``."""
        x = self._points("x", x)
        create = torch.is_grad_enabled() and (x.requires_grad or self.p.requires_grad or self.q.requires_grad)
        with torch.enable_grad():
            xx = x if x.requires_grad else x.detach().requires_grad_(True)
            y = self.flow(xx)
            rows = [torch.autograd.grad(y[:, i].sum(), xx, retain_graph=True, create_graph=create)[0]
                    for i in range(y.shape[1])]
        return torch.stack(rows, dim=1)


def shoot(kernel: Kernel, q0: torch.Tensor, p0: torch.Tensor, *, n_steps: int = 10,
          integrator: str | I.Integrator = "rk4", backend: str = "auto", gradient: str = "closed",
          t1: float = 1.0, integrator_options: dict | None = None) -> Trajectory:
    """Shoot landmarks ``q0`` with initial momenta ``p0`` along the geodesic of the kernel's metric.

    Parameters
    ----------
    kernel : Kernel
        The RKHS kernel (any engine kernel).
    q0, p0 : (N, d) tensors
        Initial positions (data units) and momenta. Device and dtype follow ``q0``.
    n_steps : int
        Number of equal steps over ``[0, t1]``.
    integrator : str or Integrator
        A name from ``lddmm_nets.integrators.available`` or an instance.
    backend : {"auto", "dense", "keops"}
        Kernel-sum backend (see ``lddmm_nets.backends``).
    gradient : {"closed", "autograd"}
        ``∂H/∂q`` by the kernel's closed form or by autograd of ``H`` (the reference).
    t1 : float
        Final time (default 1: unit-time geodesics).
    integrator_options : dict, optional
        Options of the scheme (implicit schemes: ``tol``, ``max_iter``).

    Returns
    -------
    Trajectory
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel: expected a lddmm_nets Kernel, got {type(kernel).__name__}")
    q0 = check_points("q0", q0)
    p0 = check_points("p0", p0)
    check_same_shape("p0", p0, "q0", q0)
    if p0.dtype != q0.dtype or p0.device != q0.device:
        raise ValueError(f"p0: expected dtype {q0.dtype} on {q0.device} (as q0), got {p0.dtype} on {p0.device}")
    n_steps = check_int("n_steps", n_steps)
    t1 = check_positive("t1", t1)
    check_choice("backend", backend, BACKENDS)
    scheme = I.get(integrator, **(integrator_options or {}))
    system = HamiltonianSystem(kernel, backend=backend, gradient=gradient)
    h = t1 / n_steps
    qs, ps = [q0], [p0]
    for _ in range(n_steps):
        q, p, _ = scheme.step(system, (qs[-1], ps[-1], None), h)
        qs.append(q)
        ps.append(p)
    times = torch.linspace(0.0, t1, n_steps + 1, dtype=q0.dtype, device=q0.device)
    return Trajectory(torch.stack(qs), torch.stack(ps), times, system, scheme)
