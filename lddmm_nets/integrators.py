"""Registry of named time-stepping schemes for Hamiltonian systems, each with its declared order.

A scheme advances the state ``(q, p, x)`` of a ``HamiltonianSystem`` by one step
``h``: ``q, p`` the landmark positions and momenta, ``x`` ambient points carried by the flow (or None). Ambient
points are treated as extra landmarks with zero momentum, so every scheme moves a point placed on a landmark
exactly as the landmark.

========================  =====  ========  ===========================================================
name                      order  implicit  notes
========================  =====  ========  ===========================================================
``euler``                 1      no        explicit Euler: the ResNet step ``x + h v(x)``
``rk2``                   2      no        explicit midpoint rule
``rk4``                   4      no        classical Runge–Kutta
``symplectic_euler``      1      yes       ``p' = p - h ∂_qH(q, p')``, ``q' = q + h ∂_pH(q, p')``
``implicit_midpoint``     2      yes       symplectic, symmetric
``verlet``                2      yes       Störmer–Verlet (implicit half-kick and drift: H is not separable)
``leapfrog``              1      no        explicit kick-drift-kick; order 2 only for separable H
========================  =====  ========  ===========================================================

The landmark Hamiltonian is not separable, so the explicit leapfrog (Owhadi's explicit scheme, R2) is neither
symplectic nor second order here: its drift ``q + h ∂_pH(q, p_{1/2})`` misses the ``∂_{pq}H`` term. Implicit
schemes solve their stage equations by fixed-point iteration (options ``tol`` and ``max_iter``); the iteration
contracts when ``h`` times the Lipschitz constant of the vector field is below 1, and an unconverged solve raises
``ImplicitSolveError``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from .checks import check_int, check_positive

__all__ = ["Integrator", "ImplicitSolveError", "register", "get", "available", "REGISTRY"]


class ImplicitSolveError(RuntimeError):
    """The fixed-point solve of an implicit scheme did not converge (step too large for the vector field)."""


def _axpy(state, h, deriv):
    return tuple(None if s is None else s + h * d for s, d in zip(state, deriv))


class Integrator:
    """A one-step scheme. Subclasses set ``name``, ``order`` and implement ``step``."""

    name: str = ""
    order: int = 0
    implicit: bool = False

    def step(self, system, state, h: float):
        """Advance ``state = (q, p, x)`` by ``h``; returns the new state (``x`` stays None when None)."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, order={self.order})"


class ExplicitRK(Integrator):
    """Explicit Runge–Kutta scheme from its Butcher tableau ``(a, b)``."""

    a: tuple = ()
    b: tuple = ()

    def step(self, system, state, h):
        ks = []
        for i, row in enumerate(self.a):
            stage = state
            for aij, kj in zip(row, ks):
                if aij:
                    stage = _axpy(stage, h * aij, kj)
            ks.append(system.rhs(stage))
        out = state
        for bi, ki in zip(self.b, ks):
            if bi:
                out = _axpy(out, h * bi, ki)
        return out


class Euler(ExplicitRK):
    name, order = "euler", 1
    a, b = ((),), (1.0,)


class RK2(ExplicitRK):
    name, order = "rk2", 2
    a, b = ((), (0.5,)), (0.0, 1.0)


class RK4(ExplicitRK):
    name, order = "rk4", 4
    a = ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
    b = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


class _Implicit(Integrator):
    implicit = True

    def __init__(self, *, tol: float = 1e-12, max_iter: int = 100):
        self.tol = check_positive("tol", tol)
        self.max_iter = check_int("max_iter", max_iter, minimum=1)

    def _solve(self, fn: Callable, z0):
        """Fixed point ``z = fn(z)`` for a tuple of tensors (None entries pass through)."""
        z = z0
        err = float("inf")
        for _ in range(self.max_iter):
            z_new = fn(z)
            err = max(float(((a - b).abs().max() / (1 + b.abs().max())).detach())
                      for a, b in zip(z_new, z) if a is not None and a.numel())
            z = z_new
            if err <= self.tol:
                return z
        raise ImplicitSolveError(
            f"{self.name}: fixed-point solve did not converge in max_iter={self.max_iter} iterations "
            f"(relative change {err:.3g} > tol={self.tol:g}); take more steps or raise max_iter")


def _present(*parts):
    return tuple(x for x in parts if x is not None)


class SymplecticEuler(_Implicit):
    name, order = "symplectic_euler", 1

    def step(self, system, state, h):
        q, p, x = state
        (p1,) = self._solve(lambda z: (p - h * system.dH_dq(q, z[0]),), (p,))
        q1 = q + h * system.dH_dp(q, p1)
        x1 = None if x is None else x + h * system.velocity(x, q, p1)
        return q1, p1, x1


class ImplicitMidpoint(_Implicit):
    name, order = "implicit_midpoint", 2

    def step(self, system, state, h):
        q, p, x = state

        def fn(z):
            qm, pm = (q + z[0]) / 2, (p + z[1]) / 2
            return q + h * system.dH_dp(qm, pm), p - h * system.dH_dq(qm, pm)

        q1, p1 = self._solve(fn, (q, p))
        if x is None:
            return q1, p1, None
        qm, pm = (q + q1) / 2, (p + p1) / 2
        (x1,) = self._solve(lambda z: (x + h * system.velocity((x + z[0]) / 2, qm, pm),), (x,))
        return q1, p1, x1


class Verlet(_Implicit):
    name, order = "verlet", 2

    def step(self, system, state, h):
        q, p, x = state
        (ph,) = self._solve(lambda z: (p - 0.5 * h * system.dH_dq(q, z[0]),), (p,))
        dq0 = system.dH_dp(q, ph)
        (q1,) = self._solve(lambda z: (q + 0.5 * h * (dq0 + system.dH_dp(z[0], ph)),), (q,))
        p1 = ph - 0.5 * h * system.dH_dq(q1, ph)
        if x is None:
            return q1, p1, None
        dx0 = system.velocity(x, q, ph)
        (x1,) = self._solve(lambda z: (x + 0.5 * h * (dx0 + system.velocity(z[0], q1, ph)),), (x,))
        return q1, p1, x1


class Leapfrog(Integrator):
    name, order = "leapfrog", 1

    def step(self, system, state, h):
        q, p, x = state
        ph = p - 0.5 * h * system.dH_dq(q, p)
        q1 = q + h * system.dH_dp(q, ph)
        p1 = ph - 0.5 * h * system.dH_dq(q1, ph)
        x1 = None if x is None else x + h * system.velocity(x, q, ph)
        return q1, p1, x1


REGISTRY: dict[str, type[Integrator]] = {}


def register(cls: type[Integrator]) -> type[Integrator]:
    """Add a scheme class (with ``name`` and ``order``) to the registry; usable as a decorator."""
    if not cls.name or cls.order < 1:
        raise ValueError(f"cls: expected a class with a name and an order >= 1, got {cls!r}")
    REGISTRY[cls.name] = cls
    return cls


for _cls in (Euler, RK2, RK4, SymplecticEuler, ImplicitMidpoint, Verlet, Leapfrog):
    register(_cls)


def available() -> dict[str, int]:
    """Registered scheme names and their declared orders."""
    return {name: cls.order for name, cls in REGISTRY.items()}


def get(integrator: str | Integrator = "rk4", **options) -> Integrator:
    """Build a scheme by name.

    Parameters
    ----------
    integrator : str or Integrator
        A registered name (see ``available``) or an Integrator instance (returned as is).
    **options
        Scheme options (implicit schemes: ``tol``, ``max_iter``).

    Raises
    ------
    ValueError
        Unknown name, or an option the scheme does not take (the message lists the valid ones).
    """
    if isinstance(integrator, Integrator):
        if options:
            raise ValueError(f"integrator_options: expected none with an Integrator instance, got {sorted(options)}")
        return integrator
    if integrator not in REGISTRY:
        raise ValueError(f"integrator: expected one of {sorted(REGISTRY)}, got {integrator!r}")
    cls = REGISTRY[integrator]
    valid = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"integrator_options: {integrator!r} takes {valid or 'no options'}, got unknown {unknown}")
    return cls(**options)
