"""The deformation of a shape registration as an object: control points, momenta, kernel and scheme.

``ShapeTransform`` re-shoots the geodesic from ``(q0, p0)`` (in float64 by default: the map the optimiser found in
float32, evaluated without its round-off) and moves any points or shapes forward (``apply``, ``φ_1``) or backward
(``inverse``, the exact inverse of the discrete flow). ``save(dir)`` / ``load(dir)`` write and read
``momenta.npz`` (control points, momenta, kernel widths and weights, steps, scheme).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from lddmm_nets import GaussianKernel, HamiltonianSystem, Kernel, SumKernel, Trajectory, integrators
from lddmm_nets.kernels import RadialKernel
from lddmm_nets.shapes.system import DENSE_MAX_PAIRS, FusedHamiltonianSystem

from .shape import Shape

__all__ = ["ShapeTransform", "MOMENTA_FILE", "hamiltonian_system", "integrate", "make_trajectory"]

MOMENTA_FILE = "momenta.npz"


def hamiltonian_system(kernel: Kernel, backend: str, n_control_points: int) -> HamiltonianSystem:
    """The fused dense system (``lddmm_nets.shapes.system``: one kernel matrix per stage) for radial kernels on up
    to ``DENSE_MAX_PAIRS`` pairs of control points (or ``backend="dense"``); the engine's ``HamiltonianSystem``
    (its own backend policy, KeOps for large sets) otherwise."""
    radial = isinstance(kernel, RadialKernel) or (isinstance(kernel, SumKernel)
                                                  and all(isinstance(k, RadialKernel) for k in kernel.kernels))
    n = int(n_control_points)
    if radial and (backend == "dense" or (backend == "auto" and n * n <= DENSE_MAX_PAIRS)):
        return FusedHamiltonianSystem(kernel, backend=backend)
    return HamiltonianSystem(kernel, backend=backend)


def integrate(system: HamiltonianSystem, scheme: integrators.Integrator, q0: torch.Tensor, p0: torch.Tensor,
              x0: torch.Tensor | None, n_steps: int):
    """Control points, momenta and ambient points integrated together over unit time: ``(qs, ps, x1)`` with the
    ``n_steps + 1`` positions and momenta and the final ambient points (None without ``x0``)."""
    h = 1.0 / n_steps
    state = (q0, p0, x0)
    qs, ps = [q0], [p0]
    for _ in range(n_steps):
        state = scheme.step(system, state, h)
        qs.append(state[0])
        ps.append(state[1])
    return qs, ps, state[2]


def make_trajectory(system: HamiltonianSystem, scheme: integrators.Integrator, q0: torch.Tensor, p0: torch.Tensor,
                    n_steps: int) -> Trajectory:
    """The engine's ``Trajectory`` (``flow``, ``inverse_flow``, ``flow_jacobian``) of a shooting, detached."""
    with torch.no_grad():
        qs, ps, _ = integrate(system, scheme, q0, p0, None, n_steps)
    times = torch.linspace(0.0, 1.0, n_steps + 1, dtype=p0.dtype, device=p0.device)
    return Trajectory(torch.stack(qs), torch.stack(ps), times, system, scheme)


def _kernel_spec(kernel: Kernel) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(kernel, GaussianKernel):
        return np.array([kernel.sigma]), np.array([1.0])
    if isinstance(kernel, SumKernel) and all(isinstance(k, GaussianKernel) for k in kernel.kernels):
        return np.array([k.sigma for k in kernel.kernels]), np.array(kernel.weights)
    raise ValueError(f"kernel: only Gaussian kernels and sums of them can be saved, got {kernel!r}")


def _kernel_from_spec(sigmas, weights) -> Kernel:
    ks = [GaussianKernel(sigma=float(s)) for s in np.ravel(sigmas)]
    return ks[0] if len(ks) == 1 else SumKernel(ks, weights=[float(w) for w in np.ravel(weights)])


@dataclass
class ShapeTransform:
    """``φ_1`` of a shape registration.

    Attributes
    ----------
    kernel : Kernel
        Deformation kernel.
    control_points, momenta : (K, d) tensors
        ``q0`` and ``p0`` (data units).
    n_steps : int
    integrator : str
    """

    kernel: Kernel
    control_points: torch.Tensor
    momenta: torch.Tensor
    n_steps: int = 10
    integrator: str = "rk2"

    def trajectory(self, dtype: torch.dtype = torch.float64, backend: str = "auto", device=None) -> Trajectory:
        """The geodesic of the control points, shot in ``dtype`` on ``device`` (default: the momenta's; detached)."""
        q0 = self.control_points.to(dtype=dtype, device=device or self.control_points.device)
        system = hamiltonian_system(self.kernel, backend, q0.shape[0])
        return make_trajectory(system, integrators.get(self.integrator), q0, self.momenta.to(q0), self.n_steps)

    def _move(self, obj, inverse: bool):
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._move(o, inverse) for o in obj)
        if isinstance(obj, Shape):
            return obj.with_vertices(self._move(obj.vertices, inverse))
        is_numpy = not isinstance(obj, torch.Tensor)
        x = torch.as_tensor(np.asarray(obj, dtype=np.float64) if is_numpy else obj)
        if x.ndim != 2 or x.shape[1] != self.control_points.shape[1]:
            raise ValueError(f"points: expected shape (M, {self.control_points.shape[1]}), got {tuple(x.shape)}")
        traj = self.trajectory(device_dtype(x), device=x.device)
        with torch.no_grad():
            y = traj.inverse_flow(x.to(traj.q)) if inverse else traj.flow(x.to(traj.q))
        return y.cpu().numpy() if is_numpy else y.to(x)

    def apply(self, obj):
        """Move points forward, ``x ↦ φ_1(x)``.

        Parameters
        ----------
        obj : Shape, (M, d) tensor or array, or a list of them

        Returns
        -------
        The same kind of object with moved vertices / points (float64 evaluation).
        """
        return self._move(obj, inverse=False)

    def inverse(self, obj):
        """Move points backward, ``y ↦ φ_1^{-1}(y)`` (exact inverse of the discrete flow; same types as ``apply``)."""
        return self._move(obj, inverse=True)

    def save(self, directory: str) -> str:
        """Write ``directory/momenta.npz``; returns its path."""
        sigmas, weights = _kernel_spec(self.kernel)
        path = os.path.join(directory, MOMENTA_FILE)
        np.savez(path, control_points=self.control_points.detach().cpu().double().numpy(),
                 momenta=self.momenta.detach().cpu().double().numpy(), kernel_sigmas=sigmas,
                 kernel_weights=weights, n_steps=np.int64(self.n_steps), integrator=np.str_(self.integrator))
        return path

    @classmethod
    def load(cls, directory: str) -> "ShapeTransform":
        """Read a transform saved by ``save`` (or by ``lddmm register`` on shapes)."""
        path = os.path.join(directory, MOMENTA_FILE) if os.path.isdir(directory) else directory
        if not os.path.exists(path):
            raise FileNotFoundError(f"result: no {MOMENTA_FILE} in {directory} (is it a shape registration?)")
        with np.load(path) as z:
            return cls(_kernel_from_spec(z["kernel_sigmas"], z["kernel_weights"]),
                       torch.as_tensor(z["control_points"]), torch.as_tensor(z["momenta"]), int(z["n_steps"]),
                       str(z["integrator"]))


def device_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 unless the points are on a device without it."""
    return torch.float64 if x.device.type != "mps" else torch.float32
