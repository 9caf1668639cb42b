"""Exact peakon solutions of Camassa–Holm: the 1-D EPDiff equation of the Laplace kernel (THEORY §6).

With ``k(x, y) = exp(-|x - y|/σ)`` (``LaplaceKernel``) landmarks are peakons: the velocity of
``N`` particles is ``u(x) = Σ_j p_j exp(-|x - q_j|/σ)`` and the landmark equations
``q̇_i = u(q_i)``, ``ṗ_i = (p_i/σ) Σ_j p_j sgn(q_i - q_j) exp(-|q_i - q_j|/σ)`` are the peakon equations.

Factors. Camassa–Holm is usually written with ``m = u - u_xx`` (σ = 1), whose Green's function is
``½ exp(-|x|)``: a particle momentum ``p`` is the Camassa–Holm amplitude ``m = 2p δ``, and the peakon
``c exp(-|x - ct|)`` is one particle with ``p = c``: it travels at its height. Other widths follow by scaling:
``(q, p)`` solves the width-σ system iff ``(q/σ, p/σ)`` solves the unit-width one at the same times.

Two peakons (Beals, Sattinger, Szmigielski; Camassa, Holm, Hyman) with asymptotic speeds ``c_1 > c_2`` (unit
width, ``λ_k = 1/c_k``, ``a_k(t) = w_k exp(c_k (t - t_0))``):

    x_2 = log(a_1 + a_2),     x_1 = log((λ_1 - λ_2)² a_1 a_2 / (λ_1² a_1 + λ_2² a_2)),   x_1 < x_2,

and the momenta follow from ``ẋ_1 = p_1 + E p_2``, ``ẋ_2 = p_2 + E p_1`` with ``E = exp(-(x_2 - x_1))``. For
``c_1 > c_2 > 0`` the fast peakon overtakes the slow one (they exchange speeds, closest at ``t_0``); for
``c_1 > 0 > c_2`` a peakon and an antipeakon collide at ``t_0`` where the momenta blow up
(``p → ±∞``, ``x_1 = x_2``): the solution is classical only before ``t_0``.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch

from ..checks import check_positive
from .report import make_row

__all__ = ["peakon_velocity", "single_peakon", "two_peakon", "peakon_antipeakon", "peakon_convergence",
           "grid_peakon_speed"]


def _times(t) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim > 1 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"t: expected finite times as a scalar or a 1-D sequence, got shape {tuple(t.shape)}")
    return t.reshape(-1)


def peakon_velocity(x: torch.Tensor, q: torch.Tensor, p: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """``u(x) = Σ_j p_j exp(-|x - q_j|/σ)``.

    Parameters
    ----------
    x : (M,) tensor
        Evaluation points (length units).
    q, p : (n,) tensors
        Peakon positions and momenta (momenta in length per unit time).
    sigma : float

    Returns
    -------
    (M,) tensor
    """
    sigma = check_positive("sigma", sigma)
    x, q, p = (torch.as_tensor(a) for a in (x, q, p))
    return (p.reshape(1, -1) * torch.exp(-(x.reshape(-1, 1) - q.reshape(1, -1)).abs() / sigma)).sum(-1)


def single_peakon(t, *, height: float, position: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One peakon ``c exp(-|x - x_0 - ct|/σ)``: it travels at its height ``c`` (any width σ).

    Parameters
    ----------
    t : float or sequence of float
        Times, ``(T,)``.
    height : float
        ``c`` (length per unit time; negative for an antipeakon moving left).
    position : float
        ``x_0``, the position at ``t = 0``.

    Returns
    -------
    q, p : (T, 1) float64 tensors
    """
    t = _times(t)
    c = float(height)
    return (float(position) + c * t)[:, None], torch.full((t.shape[0], 1), c, dtype=torch.float64)


def two_peakon(t, *, speeds: tuple[float, float], t0: float = 0.0, x0: float = 0.0,
               sigma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form two-peakon solution: overtaking (``c_1 > c_2 > 0``) or head-on collision (``c_1 > 0 > c_2``).

    Parameters
    ----------
    t : float or sequence of float
        Times ``(T,)``; for a collision they must precede ``t0``.
    speeds : (float, float)
        Asymptotic speeds ``(c_1, c_2)``, ``c_1 > c_2``, both non-zero: peakon 1 (on the left) moves at ``c_1``
        as ``t → -∞``.
    t0 : float
        Interaction time: the time of closest approach (overtaking) or of the collision (head-on).
    x0 : float
        Position of the right peakon at ``t0`` (for a collision: where it happens).
    sigma : float
        Kernel width σ.

    Returns
    -------
    q, p : (T, 2) float64 tensors
        Positions (``q_1 < q_2``) and momenta of the left and right peakons.

    Raises
    ------
    ValueError
        Bad speeds, or times at or after a collision.
    """
    t = _times(t)
    sigma = check_positive("sigma", sigma)
    c1, c2 = (float(c) for c in speeds)
    if not (c1 > c2) or c1 == 0 or c2 == 0:
        raise ValueError(f"speeds: expected (c1, c2) with c1 > c2 and both non-zero, got {speeds!r}")
    if c2 < 0 and bool((t >= t0).any()):
        raise ValueError(f"t: expected times before the collision at t0={t0:g} (momenta blow up there), "
                         f"got max {float(t.max()):g}")
    C1, C2 = c1 / sigma, c2 / sigma
    X0 = float(x0) / sigma
    l1, l2 = 1 / C1, 1 / C2
    s = abs(C1) + abs(C2)
    # log a_k, so that a_1/a_2 = |c_1/c_2| and a_1 + a_2 = exp(X0) at t0
    la1 = X0 + math.log(abs(C1) / s) + C1 * (t - t0)
    la2 = X0 + math.log(abs(C2) / s) + C2 * (t - t0)
    big = torch.maximum(la1, la2)
    a1, a2 = torch.exp(la1 - big), torch.exp(la2 - big)  # rescaled by exp(-big) to avoid overflow
    x2 = big + torch.log(a1 + a2)
    x1 = big + 2 * math.log(abs(l1 - l2)) + torch.log(a1 * a2 / (l1**2 * a1 + l2**2 * a2))
    v2 = (C1 * a1 + C2 * a2) / (a1 + a2)
    v1 = C1 + C2 - (l1 * a1 + l2 * a2) / (l1**2 * a1 + l2**2 * a2)
    E = torch.exp(-(x2 - x1))
    p1 = (v1 - E * v2) / (1 - E**2)
    p2 = (v2 - E * v1) / (1 - E**2)
    return sigma * torch.stack([x1, x2], -1), sigma * torch.stack([p1, p2], -1)


def peakon_antipeakon(t, *, speed: float, t_collision: float, sigma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric head-on collision at the origin: ``q_2 = -q_1 = σ log cosh(c (T - t)/σ)``, ``p_2 = -p_1``,
    ``p_1 = c coth(c (T - t)/σ)`` (valid for ``t < T``).

    Parameters
    ----------
    t : float or sequence of float
        Times ``(T,)`` before the collision.
    speed : float
        ``c > 0``: the asymptotic speed of each peakon (and ``H = c²``, per unit width).
    t_collision : float
        ``T``.
    sigma : float

    Returns
    -------
    q, p : (T, 2) float64 tensors
    """
    t = _times(t)
    c = check_positive("speed", speed)
    sigma = check_positive("sigma", sigma)
    if bool((t >= t_collision).any()):
        raise ValueError(f"t: expected times before the collision at t_collision={t_collision:g}, "
                         f"got max {float(t.max()):g}")
    s = c * (t_collision - t) / sigma
    q2 = sigma * (s + torch.log1p(torch.exp(-2 * s)) - math.log(2.0))  # log cosh, stable
    p1 = c / torch.tanh(s)
    return torch.stack([-q2, q2], -1), torch.stack([p1, -p1], -1)


_CASES = {  # name -> (speeds, t_start, t_end): the head-on case stops before the collision at t0 = 0
    "overtaking": ((2.0, 1.0), -3.0, 3.0),
    "head_on": ((1.5, -0.8), -2.0, -0.25),
}


def peakon_convergence(steps: Sequence[int] = (25, 50, 100, 200), *,
                       integrators: Sequence[str] = ("rk2", "rk4"), sigma: float = 1.0) -> list[dict]:
    """Errors of the particle solver (``lddmm_nets.shoot``, Laplace kernel) against the two-peakon closed forms.

    Overtaking (speeds 2 and 1, from t = -3 to 3) and head-on (speeds 1.5 and -0.8, from t = -2 to -0.25, before
    the collision at 0), float64, dense backend.

    Returns
    -------
    list of dict
        Tidy rows (``report.ROW_COLUMNS``) with ``study="peakons"``, ``method`` the case, ``axis="h"``,
        ``quantity`` ``"position"`` (``max |q - q_exact|`` in units of σ) or ``"momentum"``
        (``max |p - p_exact| / max |p_exact|``).
    """
    from ..kernels import LaplaceKernel
    from ..shooting import shoot

    kernel = LaplaceKernel(sigma=sigma)
    rows = []
    for case, (speeds, ta, tb) in _CASES.items():
        q, p = two_peakon([ta, tb], speeds=speeds, t0=0.0, x0=0.0, sigma=sigma)
        for integrator in integrators:
            for k in steps:
                t0 = time.perf_counter()
                traj = shoot(kernel, q[0].reshape(2, 1), p[0].reshape(2, 1), n_steps=k, integrator=integrator,
                             t1=tb - ta, backend="dense")
                errs = {"position": float((traj.q[-1, :, 0] - q[1]).abs().max()) / sigma,
                        "momentum": float((traj.p[-1, :, 0] - p[1]).abs().max() / p[1].abs().max())}
                secs = time.perf_counter() - t0
                rows += [make_row("peakons", qty, err, axis="h", method=case, integrator=integrator, n=2, n_steps=k,
                                  h=(tb - ta) / k, seconds=secs) for qty, err in errs.items()]
    return rows


def grid_peakon_speed(cells: Sequence[int] = (256, 512, 1024), *, height: float = 1.0, extent: float = 20.0,
                      t1: float = 2.0, n_steps: int = 200) -> list[dict]:
    """Speed and height of a smoothed single peakon under the grid solver (Laplace kernel, σ = 1, periodic).

    The initial momentum is a Gaussian of total mass ``c = height`` and width ``w = 2.56`` cells (the peakon
    ``c e^{-|x|}`` smoothed at scale w); the crest (located by parabolic interpolation) should travel at its height,
    and both tend to ``c`` as ``w -> 0``.

    Returns
    -------
    list of dict
        Tidy rows (``report.ROW_COLUMNS``) with ``study="peakon_grid"``, ``method="smoothed"``, ``h`` (the width w,
        ``axis="h"``), ``n`` (cells), ``quantity`` in ``"speed_error"`` (``|speed - c| / c``), ``"height_error"`` (``|max u(t1) - c| / c``),
        ``"speed_minus_height"`` (``|speed - max u(t1)| / c``), ``error``, ``seconds``.
    """
    from ..epdiff import solve_epdiff
    from ..grid import Grid
    from ..kernels import LaplaceKernel

    c = check_positive("height", height)
    rows = []
    for n in cells:
        t0 = time.perf_counter()
        h = extent / n
        w = 2.56 * h
        grid = Grid((n,), spacing=h, origin=-extent / 2)
        x = grid.world()[0]
        m0 = (c * torch.exp(-x**2 / (2 * w * w)) / math.sqrt(2 * math.pi * w * w))[None]
        sol = solve_epdiff(m0, LaplaceKernel(sigma=1.0).on_grid(grid), n_steps=n_steps, t1=t1, save_every=n_steps)
        crest = []
        for u in sol.velocity[:, 0]:
            i = int(u.argmax())
            a, b, cc = (float(u[j % n]) for j in (i - 1, i, i + 1))
            crest.append(float(x[i]) + 0.5 * (a - cc) / (a - 2 * b + cc) * h)
        speed = (crest[-1] - crest[0]) / t1
        top = float(sol.velocity[-1, 0].max())
        secs = time.perf_counter() - t0
        for qty, err in (("speed_error", abs(speed - c) / c), ("height_error", abs(top - c) / c),
                         ("speed_minus_height", abs(speed - top) / c)):
            rows.append(make_row("peakon_grid", qty, err, axis="h", method="smoothed", integrator="rk4", n=n,
                                 n_steps=n_steps, h=w, seconds=secs))
    return rows
