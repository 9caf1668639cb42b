"""Particle systems against their mean-field limit: errors against N and against the time step.

A ``MeanFieldProblem`` fixes a kernel, a grid (the continuum's domain), a density μ and an initial momentum
per unit mass ``P_0``. The continuum solution is the Eulerian grid EPDiff solution from ``m_0 = P_0 ρ``
(``lddmm_nets.epdiff.solve_epdiff``, zero-padded: free space); a particle solution shoots
``q_i = y_i``, ``p_i = w_i P_0(y_i)`` with ``lddmm_nets.shoot`` and the same kernel. They are compared on the
grid's nodes at ``t = 0`` and ``t = t1`` by relative L2 errors of

- the velocity ``v_t = K ⋆ m_t`` (particles: ``Σ_i k(x, q_i(t)) p_i(t)``), and
- the momentum measure smoothed by a narrower Gaussian ``g_s`` (``Σ_i g_s(x - q_i(t)) p_i(t)`` vs ``g_s ⋆ m_t``).

The studies return *tidy* rows (``report.ROW_COLUMNS``, one dict per measurement) and ``report.fitted_slopes``
gives the log-log slopes: about ``-1/2`` in N for independent samples, steeper for quasi-Monte Carlo and lattice
samples, and the scheme's order in the step size ``h = t1 / n_steps``. Nothing here prints or writes files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import torch

from ..checks import check_choice, check_int, check_positive
from ..epdiff import EPDiffSolution, solve_epdiff
from ..grid import Grid
from ..kernels import GaussianKernel, Kernel, RadialKernel
from ..shooting import shoot
from .particles import SAMPLING_METHODS, GaussianDensity, Sample, sample
from .report import make_row

__all__ = ["MeanFieldProblem", "default_problem", "convergence_in_n", "convergence_in_steps", "energy_convergence"]

QUANTITIES = ("velocity_t0", "velocity_t1", "momentum_t1")


def _default_momentum(amplitude: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def P0(y: torch.Tensor) -> torch.Tensor:
        d = y.shape[-1]
        comps = [amplitude * torch.cos(2.0 * y[..., (i + 1) % d] + 0.7 * i) for i in range(d)]
        return torch.stack(comps, dim=-1)

    return P0


@dataclass
class MeanFieldProblem:
    """A particle-vs-continuum comparison: kernel, continuum grid, density μ and initial momentum ``P_0``.

    Attributes
    ----------
    kernel : RadialKernel
        The RKHS kernel of both solvers (it needs a spectral density for the grid).
    grid : Grid
        Continuum domain (nodes in physical coordinates, ``grid.origin`` included); the grid solver pads it to
        twice its size, so μ's mass and the motion must stay well inside it.
    density : GaussianDensity
    momentum : callable
        ``P_0``: ``(M, d)`` points -> ``(M, d)`` momentum per unit mass of μ.
    t1 : float
        Final time.
    smoothing : float
        Width of the Gaussian that smooths momentum measures before comparing them (length units).
    grid_steps : int, optional
        RK4 steps of the reference grid solution; by default enough for a Courant number of about 0.5 with the
        initial velocity (at least 40).
    """

    kernel: RadialKernel
    grid: Grid
    density: GaussianDensity
    momentum: Callable[[torch.Tensor], torch.Tensor]
    t1: float = 1.0
    smoothing: float = 0.125
    grid_steps: int | None = None
    _reference: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not isinstance(self.kernel, Kernel):
            raise ValueError(f"kernel: expected a lddmm_nets Kernel, got {type(self.kernel).__name__}")
        if self.density.d != self.grid.ndim:
            raise ValueError(f"density: expected a {self.grid.ndim}-D density (as grid), got {self.density.d}-D")
        check_positive("t1", self.t1)
        check_positive("smoothing", self.smoothing)
        if self.grid_steps is not None:
            check_int("grid_steps", self.grid_steps)

    @property
    def d(self) -> int:
        return self.grid.ndim

    def nodes(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """Grid nodes as points: ``(prod(shape), d)``."""
        return self.grid.points(dtype, device)

    def particles(self, n: int, *, method: str = "iid", seed: int = 0, dtype=torch.float64,
                  device=None) -> tuple[Sample, torch.Tensor]:
        """``sample(density, n, ...)`` and its momenta ``p_i = w_i P_0(y_i)``: ``(sample, (N, d) tensor)``."""
        s = sample(self.density, n, method=method, seed=seed, dtype=dtype, device=device)
        return s, s.momenta(self.momentum)

    def initial_momentum(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """``m_0 = P_0 ρ`` on the grid: ``(d, *shape)`` (momentum per unit volume)."""
        x = self.nodes(dtype, device)
        m = self.momentum(x) * self.density.pdf(x)[:, None]
        return m.T.reshape((self.d,) + self.grid.shape)

    def _fractions(self, times) -> tuple[Fraction, ...]:
        if times is None:
            return (Fraction(0), Fraction(1))
        fr = []
        for t in times:
            t = float(t)
            if not 0 <= t <= self.t1:
                raise ValueError(f"times: expected times in [0, t1={self.t1:g}], got {t!r}")
            fr.append(Fraction(t / self.t1).limit_denominator(1000))
        if not fr:
            raise ValueError("times: expected at least one time, got none")
        return tuple(sorted(set(fr)))

    def grid_solution(self, *, times=None, dtype=torch.float64, device=None) -> EPDiffSolution:
        """Continuum reference saved at ``times`` (default ``0`` and ``t1``): RK4 on the zero-padded grid (cached).

        The step count is ``grid_steps`` or, by default, enough for a Courant number of about 0.5 with the initial
        velocity (at least 40), rounded up so that every requested time is a step.
        """
        fr = self._fractions(times)
        key = (dtype, str(device), fr)
        if key not in self._reference:
            op = self.kernel.on_grid(self.grid, boundary="zero")
            m0 = self.initial_momentum(dtype, device)
            steps = self.grid_steps
            if steps is None:
                vmax = float(op(m0).abs().max())
                nyquist = sum(math.pi / dx for dx in self.grid.spacing)
                steps = max(40, math.ceil(self.t1 * vmax * nyquist / 0.5))
            base = math.lcm(*(f.denominator for f in fr))
            steps = base * math.ceil(steps / base)
            save = math.gcd(*(int(f * steps) for f in fr), steps)
            self._reference[key] = solve_epdiff(m0, op, n_steps=steps, t1=self.t1, integrator="rk4",
                                                save_every=save)
        return self._reference[key]

    def errors(self, q0: torch.Tensor, p0: torch.Tensor, *, n_steps: int = 10, integrator: str = "rk4",
               backend: str = "auto", times: Sequence[float] | None = None) -> dict[str, float]:
        """Shoot the particles and return the relative L2 errors against the grid solution.

        Parameters
        ----------
        q0, p0 : (N, d) tensors
            Particles and momenta (see ``MeanFieldProblem.particles``).
        n_steps, integrator, backend
            As in ``lddmm_nets.shoot`` (over ``[0, t1]``).
        times : sequence of float, optional
            Comparison times in ``[0, t1]``, each a multiple of the particle step ``t1 / n_steps``
            (default ``(0, t1)``).

        Returns
        -------
        dict
            ``"velocity_t<t>"`` for every time and ``"momentum_t<t>"`` for every positive time (``<t>`` formatted
            with ``:g``; with the defaults and ``t1 = 1``: ``velocity_t0``, ``velocity_t1``, ``momentum_t1``) ->
            relative error ``‖a - b‖ / ‖b‖`` over the nodes.
        """
        n_steps = check_int("n_steps", n_steps)
        fr = self._fractions(times)
        idx = []
        for f in fr:
            k = f * n_steps
            if k.denominator != 1:
                raise ValueError(f"times: expected multiples of the particle step t1/n_steps = {self.t1 / n_steps:g}, "
                                 f"got {float(f) * self.t1:g}")
            idx.append(int(k))
        ref = self.grid_solution(times=[float(f) * self.t1 for f in fr], dtype=q0.dtype, device=q0.device)
        traj = shoot(self.kernel, q0, p0, n_steps=n_steps, integrator=integrator, backend=backend, t1=self.t1)
        x = self.nodes(q0.dtype, q0.device)
        smooth = GaussianKernel(sigma=self.smoothing)
        op_s = smooth.on_grid(self.grid, boundary="zero")

        def flat(f):  # (d, *shape) -> (M, d)
            return f.reshape(self.d, -1).T

        def rel(a, b):
            return float((a - b).norm() / b.norm())

        out = {}
        for f, k in zip(fr, idx):
            t = float(f) * self.t1
            j = ref.at(t)
            v = self.kernel.matvec(x, traj.q[k], traj.p[k], backend)
            out[f"velocity_t{t:g}"] = rel(v, flat(ref.velocity[j]))
            if k > 0:
                ms = smooth.matvec(x, traj.q[k], traj.p[k], backend)
                out[f"momentum_t{t:g}"] = rel(ms, flat(op_s(ref.momentum[j])))
        return out


def default_problem(d: int = 2, *, cells: int | None = None, sigma: float = 0.25, std: float = 0.35,
                    amplitude: float = 1.0, extent: float = 4.0, t1: float = 1.0,
                    kernel: RadialKernel | None = None) -> MeanFieldProblem:
    """A smooth test problem: μ = N(0, std²), ``P_0(y)_i = a cos(2 y_{i+1} + 0.7 i)``, Gaussian kernel.

    Parameters
    ----------
    d : int
        Dimension, 1 to 3.
    cells : int, optional
        Grid nodes per axis (default 256, 64, 32 for d = 1, 2, 3).
    sigma : float
        Kernel width (length units; the Gaussian kernel unless ``kernel`` is given).
    std : float
        Standard deviation of μ.
    amplitude : float
        ``a``: the velocities are about ``a/2``, displacements over ``t1`` a fraction of the kernel width.
    extent : float
        Side of the cubic domain ``[-extent/2, extent/2]^d``.
    t1 : float
    kernel : RadialKernel, optional

    Returns
    -------
    MeanFieldProblem
    """
    d = check_int("d", d)
    if d > 3:
        raise ValueError(f"d: expected 1, 2 or 3, got {d}")
    cells = check_int("cells", cells if cells is not None else {1: 256, 2: 64, 3: 32}[d], minimum=4)
    extent = check_positive("extent", extent)
    kernel = kernel if kernel is not None else GaussianKernel(sigma=sigma)
    h = extent / cells
    grid = Grid((cells,) * d, spacing=h, origin=-extent / 2 + h / 2)
    return MeanFieldProblem(kernel=kernel, grid=grid, density=GaussianDensity((0.0,) * d, std),
                            momentum=_default_momentum(float(amplitude)), t1=t1, smoothing=kernel.sigma / 2)


def convergence_in_n(problem: MeanFieldProblem, ns: Sequence[int], *, methods: Sequence[str] = ("iid", "qmc", "midpoint"),
                     repeats: int = 4, n_steps: int = 10, integrator: str = "rk4", backend: str = "auto",
                     seed: int = 0, times: Sequence[float] | None = None, dtype=torch.float64,
                     device=None) -> list[dict]:
    """Particle-vs-grid errors against the number of particles.

    Parameters
    ----------
    problem : MeanFieldProblem
    ns : sequence of int
        Particle counts (the lattice methods round each to ``k^d``; the row holds the actual N).
    methods : sequence of {"iid", "qmc", "midpoint", "gauss_hermite"}
    repeats : int
        Independent draws per N for the random methods (the lattices are deterministic: one).
    n_steps, integrator, backend
        Particle shooting.
    seed : int
        Base seed; draw ``r`` uses ``seed + r``.
    times : sequence of float, optional
        Comparison times (see ``MeanFieldProblem.errors``).

    Returns
    -------
    list of dict
        Tidy rows (``report.ROW_COLUMNS``) with ``study="n"``, ``axis="n"``, one per draw and quantity.
    """
    repeats = check_int("repeats", repeats)
    for m in methods:
        check_choice("methods", m, SAMPLING_METHODS)
    rows = []
    for method in methods:
        for n in ns:
            for r in range(repeats if method in ("iid", "qmc") else 1):
                t0 = time.perf_counter()
                s, p0 = problem.particles(n, method=method, seed=seed + r, dtype=dtype, device=device)
                errs = problem.errors(s.points, p0, n_steps=n_steps, integrator=integrator, backend=backend,
                                      times=times)
                secs = time.perf_counter() - t0
                rows += [make_row("n", qty, err, axis="n", method=method, integrator=integrator, n=len(s),
                                  n_steps=n_steps, h=problem.t1 / n_steps, seed=seed + r, seconds=secs)
                         for qty, err in errs.items()]
    return rows


def convergence_in_steps(problem: MeanFieldProblem, steps: Sequence[int], *, integrators: Sequence[str] = ("rk2",),
                         n: int = 4096, method: str = "midpoint", backend: str = "auto", seed: int = 0,
                         dtype=torch.float64, device=None) -> list[dict]:
    """Particle-vs-grid errors against the number of time steps of the particle shooting.

    The particle sample is fixed (a fine lattice by default) so that the sampling error stays below the time
    discretisation error; the fitted slope in ``h = t1 / n_steps`` is then the scheme's order.

    Returns
    -------
    list of dict
        Tidy rows (``report.ROW_COLUMNS``) with ``study="steps"``, ``axis="h"``.
    """
    s, p0 = problem.particles(n, method=method, seed=seed, dtype=dtype, device=device)
    rows = []
    for integrator in integrators:
        for k in steps:
            t0 = time.perf_counter()
            errs = problem.errors(s.points, p0, n_steps=k, integrator=integrator, backend=backend)
            secs = time.perf_counter() - t0
            rows += [make_row("steps", qty, err, axis="h", method=method, integrator=integrator, n=len(s),
                              n_steps=k, h=problem.t1 / k, seed=seed, seconds=secs) for qty, err in errs.items()]
    return rows


def energy_convergence(problem: MeanFieldProblem, steps: Sequence[int] = (8, 16, 32, 64), *,
                       integrators: Sequence[str] = ("euler", "rk2", "rk4"), boundary: str = "periodic",
                       dtype=torch.float64, device=None) -> list[dict]:
    """Energy drift ``max_t |E_t - E_0| / E_0`` of the grid solver against the step size (slope: the order).

    Returns
    -------
    list of dict
        Tidy rows (``report.ROW_COLUMNS``) with ``study="energy"``, ``method="grid"``, ``quantity="energy_drift"``,
        ``axis="h"``.
    """
    op = problem.kernel.on_grid(problem.grid, boundary=boundary)
    m0 = problem.initial_momentum(dtype, device)
    rows = []
    for integrator in integrators:
        for k in steps:
            t0 = time.perf_counter()
            sol = solve_epdiff(m0, op, n_steps=k, t1=problem.t1, integrator=integrator, save_every=k)
            rows.append(make_row("energy", "energy_drift", sol.energy_drift(), axis="h", method="grid",
                                 integrator=sol.integrator, n=problem.grid.size, n_steps=k, h=problem.t1 / k,
                                 seconds=time.perf_counter() - t0))
    return rows
