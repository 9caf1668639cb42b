"""The engine's one optimiser: L-BFGS on torch tensors with a feasibility hook, and scipy's L-BFGS-B behind the
same interface.

``minimize(fun, x0, ...)`` minimises ``fun(x)`` over a tensor ``x`` of any shape; the gradient comes from autograd.
``fun`` returns the objective (a 0-d tensor), or ``(objective, aux)`` where ``aux`` is any value recorded beside
the objective at every iteration (e.g. the similarity of a registration), or ``None`` when ``x`` is *infeasible*
(e.g. a map that folds): the line search then treats the point as an infinite objective and steps back. Every
caller in the project (images, affine pre-alignment, landmarks, shapes, estimators, ResNets, mean-field fits)
goes through this function; none keeps an optimiser of its own.

**Methods.** ``"lbfgs"``: limited-memory BFGS (two-loop recursion, ``history_size`` pairs, the initial Hessian scaled by
``sᵀy / yᵀy``; a pair enters the memory only when ``sᵀy > 0``). Two line searches:

``line_search="armijo"`` (registration): backtracking by 0.3 from the last accepted step length times 3 (at most
1) until ``f(x + t d) <= f(x) + 1e-4 t gᵀd``, at most 12 trials. The first direction is steepest descent scaled to a
unit largest entry (the caller scales its variables so that a unit step means something, e.g. one voxel of motion)
and is extended by doubling while the objective keeps decreasing. A failed search with a non-empty memory forgets
the memory and spends the iteration; from steepest descent it stops the run.
``line_search="wolfe"`` (smooth objectives): the strong Wolfe conditions (``c1 = 1e-4``, ``c2 = 0.9``) by
bracketing and cubic interpolation (Nocedal & Wright, Algorithms 3.5-3.6), at most 25 evaluations; the first step
is ``min(1, 1/‖g‖₁)`` along ``-g``, later ones 1. Infeasible points: a step that decreases enough and lies within
an eighth of itself from an infeasible one is accepted (the curvature condition may be out of reach at the edge of
the feasible region), and the bracket stops shrinking at the resolution of ``x``'s dtype.

``"scipy"``: scipy's L-BFGS-B (the reference Fortran code and its Moré-Thuente line search) in float64 on the
CPU; ``x`` is converted at every evaluation, so the objective runs where ``x0`` lives. No feasibility hook.

**Stopping rule** (``OptimResult.stop_reason``; ``converged`` is True for the first two): ``"gradient"``,
``max |g| <= gtol``; ``"objective"``, ``f_{k-patience} - f_k <= ftol · max(|f_{k-patience}|, 1e-12)`` (relative
decrease over the last ``patience`` iterations; for ``"scipy"`` its own ``ftol`` rule); ``"max_iter"``, the
iteration budget was spent; ``"max_eval"``, the evaluation budget was spent; ``"line_search"``, no decrease along
steepest descent (the limit of precision, or a barrier of infeasible points all around); ``"infeasible_start"``,
``fun(x0)`` is ``None``; ``"non_finite"``, the objective or gradient at ``x0`` is not finite.

A run that stops without converging warns with ``ConvergenceWarning`` unless ``warn=False``; callers that spend a
deliberate budget (a registration level, inner cross-validation fits) pass ``warn=False`` and report the stop
reason in their own result.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .checks import check_choice, check_int, check_positive

__all__ = ["minimize", "OptimResult", "ConvergenceWarning", "METHODS", "LINE_SEARCHES", "STOP_REASONS"]

METHODS = ("lbfgs", "scipy")
LINE_SEARCHES = ("armijo", "wolfe")
#: stop reason -> (converged, meaning)
STOP_REASONS = {
    "gradient": (True, "largest gradient entry below gtol"),
    "objective": (True, "relative decrease of the objective below ftol"),
    "max_iter": (False, "iteration budget spent"),
    "max_eval": (False, "evaluation budget spent"),
    "line_search": (False, "the line search made no progress, even along steepest descent"),
    "infeasible_start": (False, "the starting point is infeasible"),
    "non_finite": (False, "the objective or its gradient is not finite at the starting point"),
}


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before its convergence criterion was met."""


@dataclass
class OptimResult:
    """Outcome of ``minimize``.

    Attributes
    ----------
    x : torch.Tensor
        The last accepted point (shape, dtype and device of ``x0``), detached.
    fun : float
        Objective at ``x``.
    aux : Any
        The auxiliary value ``fun`` returned at ``x`` (None if it returns none).
    initial : float
        Objective at ``x0`` (``inf`` when infeasible).
    n_iter, n_eval : int
        Iterations taken and objective evaluations (each with its gradient).
    converged : bool
    stop_reason : str
        A key of ``STOP_REASONS``.
    history : list of float
        Objective after every accepted iteration.
    aux_history : list
        ``aux`` after every accepted iteration.
    grad_max : float
        ``max |g|`` at ``x``.
    seconds : float
    x_mean : torch.Tensor or None
        With ``average_from``: the mean of the accepted iterates from that iteration on (``x`` if none), else None.
    """

    x: torch.Tensor
    fun: float
    aux: Any = None
    initial: float = math.nan
    n_iter: int = 0
    n_eval: int = 0
    converged: bool = False
    stop_reason: str = ""
    history: list = field(default_factory=list)
    aux_history: list = field(default_factory=list)
    grad_max: float = math.nan
    seconds: float = 0.0
    x_mean: torch.Tensor | None = None

    @property
    def message(self) -> str:
        """The stop reason in words."""
        return STOP_REASONS.get(self.stop_reason, (False, self.stop_reason))[1]


class _Evaluator:
    """``x -> (f, g, aux)`` with autograd, counting evaluations; infeasible points give ``(inf, None, None)``."""

    def __init__(self, fun: Callable, max_eval: int | None):
        self.fun = fun
        self.count = 0
        self.max_eval = max_eval
        self.status = "ok"  # of the last evaluation: "ok", "infeasible" or "non_finite"

    @property
    def exhausted(self) -> bool:
        return self.max_eval is not None and self.count >= self.max_eval

    def __call__(self, x: torch.Tensor):
        self.count += 1
        self.status = "infeasible"
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.fun(x)
            if out is None:
                return math.inf, None, None
            loss, aux = out if isinstance(out, tuple) else (out, None)
            if loss is None:
                return math.inf, None, None
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError(f"fun: expected a 0-d tensor (or (tensor, aux) or None), got {type(loss).__name__}")
            (g,) = torch.autograd.grad(loss, x, allow_unused=True)
        g = torch.zeros_like(x) if g is None else g.detach()
        f = float(loss.detach())
        if not math.isfinite(f) or not bool(torch.isfinite(g).all()):
            self.status = "non_finite"
            return math.inf, None, None
        self.status = "ok"
        return f, g, _detach(aux)


def _detach(aux):
    if isinstance(aux, torch.Tensor):
        return float(aux.detach()) if aux.numel() == 1 else aux.detach()
    return aux


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def _two_loop(g: torch.Tensor, pairs: list) -> torch.Tensor:
    """``-H g`` by the L-BFGS two-loop recursion (H0 = sᵀy / yᵀy of the newest pair); ``pairs`` holds ``(s, y, sᵀy,
    yᵀy)``, the products computed once when the pair was stored."""
    q = g.clone()
    alphas = []
    for s, y, sy, _ in reversed(pairs):
        rho = 1.0 / sy
        a = rho * _dot(s, q)
        alphas.append((a, rho))
        q = q - a * y
    _, _, sy, yy = pairs[-1]
    q = q * (sy / yy)
    for (s, y, _, _), (a, rho) in zip(pairs, reversed(alphas)):
        b = rho * _dot(y, q)
        q = q + (a - b) * s
    return -q


class _Armijo:
    """Backtracking from ``min(1, 3 t_last)`` by 0.3 (12 trials); the first steepest step is doubled while it pays."""

    c1, shrink, trials, doublings = 1e-4, 0.3, 12, 6

    def __init__(self):
        self.t_last = 1.0

    @staticmethod
    def steepest(g: torch.Tensor) -> torch.Tensor:
        return -g / max(float(g.abs().max()), 1e-30)

    def search(self, evaluate, x, f, g, d, gtd, first: bool):
        t = 1.0 if first else min(1.0, 3.0 * self.t_last)
        for _ in range(self.trials):
            f_new, g_new, aux = evaluate(x + t * d)
            if g_new is not None and f_new <= f + self.c1 * t * gtd:
                break
            t *= self.shrink
        else:
            return None
        if first and t == 1.0:  # extend the first (steepest) step while it keeps paying off
            for _ in range(self.doublings):
                f2, g2, aux2 = evaluate(x + 2 * t * d)
                if g2 is None or not f2 < f_new:
                    break
                t, f_new, g_new, aux = 2 * t, f2, g2, aux2
        self.t_last = 1.0 if first else t
        return t, f_new, g_new, aux


def _cubic_min(t1, f1, g1, t2, f2, g2, lo, hi) -> float:
    """Minimiser of the cubic through ``(t1, f1, g1)`` and ``(t2, f2, g2)``, clipped to ``[lo, hi]`` (bisection when
    the cubic has no minimum or a value is infinite)."""
    if not all(math.isfinite(v) for v in (f1, g1, f2, g2)) or t1 == t2:
        return 0.5 * (lo + hi)
    d1 = g1 + g2 - 3 * (f1 - f2) / (t1 - t2)
    disc = d1 * d1 - g1 * g2
    if disc < 0:
        return 0.5 * (lo + hi)
    d2 = math.copysign(math.sqrt(disc), t2 - t1)
    t = t2 - (t2 - t1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)) if (g2 - g1 + 2 * d2) != 0 else 0.5 * (lo + hi)
    return min(max(t, lo), hi) if math.isfinite(t) else 0.5 * (lo + hi)


class _Wolfe:
    """Strong Wolfe line search by bracketing and zoom with cubic interpolation (Nocedal & Wright 3.5-3.6)."""

    c1, c2, max_evals = 1e-4, 0.9, 25
    #: a sufficient-decrease step within this fraction of itself from an infeasible one is accepted (the
    #: curvature condition may be out of reach when the objective still decreases at the feasible region's edge)
    wall = 0.125

    @staticmethod
    def steepest(g: torch.Tensor) -> torch.Tensor:
        return -g

    def search(self, evaluate, x, f, g, d, gtd, first: bool):
        t = min(1.0, 1.0 / max(float(g.abs().sum()), 1e-30)) if first else 1.0
        evals = 0

        def phi(step):
            nonlocal evals
            evals += 1
            fv, gv, aux = evaluate(x + step * d)
            gd = _dot(gv, d) if gv is not None else math.nan
            return (step, fv, gd, gv, aux)

        prev = (0.0, f, gtd, g, None)
        bracket = None
        cur = None
        while evals < self.max_evals:
            cur = phi(t)
            if cur[3] is None or cur[1] > f + self.c1 * t * gtd or (prev[0] > 0 and cur[1] >= prev[1]):
                bracket = (prev, cur)
                break
            if abs(cur[2]) <= -self.c2 * gtd:
                return cur[0], cur[1], cur[3], cur[4]
            if cur[2] >= 0:
                bracket = (cur, prev)
                break
            t_new = _cubic_min(prev[0], prev[1], prev[2], cur[0], cur[1], cur[2], t + 0.01 * (t - prev[0]), 10 * t)
            prev, t = cur, t_new
        if bracket is None:  # budget spent while extrapolating: accept the last point if it decreased
            return (cur[0], cur[1], cur[3], cur[4]) if cur is not None and cur[3] is not None and cur[1] < f else None
        lo, hi = bracket
        # trial points closer than the dtype's resolution are one point (float32: the feasible side of a barrier
        # would otherwise be bisected to the budget)
        resolution = max(1e-14, torch.finfo(x.dtype).eps) * (1 + float(x.abs().max())) / float(d.abs().max())
        while evals < self.max_evals:
            a, b = sorted((lo[0], hi[0]))
            if b - a < resolution:
                break
            if hi[3] is None and lo[0] > 0 and b - a <= self.wall * lo[0]:
                break  # a wall of infeasible points just beyond a step that decreases enough: take that step
            width = b - a
            t = _cubic_min(lo[0], lo[1], lo[2], hi[0], hi[1], hi[2], a + 0.1 * width, b - 0.1 * width)
            cur = phi(t)
            if cur[3] is None or cur[1] > f + self.c1 * t * gtd or cur[1] >= lo[1]:
                hi = cur
                continue
            if abs(cur[2]) <= -self.c2 * gtd:
                return cur[0], cur[1], cur[3], cur[4]
            if cur[2] * (hi[0] - lo[0]) >= 0:
                hi = lo
            lo = cur
        if lo[0] > 0 and lo[3] is not None and lo[1] < f:
            return lo[0], lo[1], lo[3], lo[4]
        return None


def _lbfgs(evaluate: _Evaluator, x0: torch.Tensor, *, max_iter, gtol, ftol, patience, history_size, line_search,
           callback, average_from=None):
    """The L-BFGS loop; returns the fields of ``OptimResult`` as a dict."""
    x = x0.detach().clone()
    x_sum, n_sum = 0.0, 0  # Polyak-Ruppert: the accepted iterates from ``average_from`` on
    f, g, aux = evaluate(x)
    out = dict(x=x, fun=f, aux=aux, initial=f, history=[], aux_history=[], n_iter=0,
               x_mean=None if average_from is None else x)
    if g is None:
        out.update(stop_reason="non_finite" if evaluate.status == "non_finite" else "infeasible_start",
                   grad_max=math.nan)
        return out
    ls = _Armijo() if line_search == "armijo" else _Wolfe()
    pairs = []  # (s, y, sᵀy, yᵀy), oldest first
    reason = "max_iter"
    for it in range(max_iter):
        if float(g.abs().max()) <= gtol:
            reason = "gradient"
            break
        if evaluate.exhausted:
            reason = "max_eval"
            break
        d = _two_loop(g, pairs) if pairs else ls.steepest(g)
        gtd = _dot(g, d)
        if not gtd < 0:  # not a descent direction: restart from steepest descent
            pairs = []
            d = ls.steepest(g)
            gtd = _dot(g, d)
            if not gtd < 0:
                reason = "gradient"
                break
        step = ls.search(evaluate, x, f, g, d, gtd, first=not pairs)
        if step is None:
            if pairs:  # the quasi-Newton model is stale: forget it and try steepest descent (spends the iteration)
                pairs = []
                continue
            reason = "line_search"
            break
        t, f_new, g_new, aux = step
        s, y = t * d, g_new - g
        sy, yy = _dot(s, y), _dot(y, y)
        if sy > 0 and sy > 1e-12 * math.sqrt(yy) * float(s.norm()):
            pairs.append((s, y, sy, yy))
            if len(pairs) > history_size:
                pairs.pop(0)
        x, f, g = x + s, f_new, g_new
        if average_from is not None and it + 1 >= average_from:
            x_sum, n_sum = x_sum + x, n_sum + 1
        out["history"].append(f)
        out["aux_history"].append(aux)
        out["n_iter"] += 1
        if callback is not None:
            callback(it + 1, f, aux)
        if float(g.abs().max()) <= gtol:
            reason = "gradient"
            break
        hist = out["history"]
        if len(hist) > patience:
            ref = hist[-1 - patience]
            if ref - hist[-1] <= ftol * max(abs(ref), 1e-12):
                reason = "objective"
                break
    else:
        if float(g.abs().max()) <= gtol:
            reason = "gradient"
    out.update(x=x, fun=f, aux=aux, stop_reason=reason, grad_max=float(g.abs().max()))
    if average_from is not None:
        out["x_mean"] = x_sum / n_sum if n_sum else x
    return out


def _scipy(evaluate: _Evaluator, x0: torch.Tensor, *, max_iter, gtol, ftol, history_size, callback, max_eval):
    from scipy import optimize

    shape, like = x0.shape, x0.detach()
    last = {}

    def fg(z):
        x = torch.from_numpy(z).reshape(shape).to(dtype=like.dtype, device=like.device)
        f, g, aux = evaluate(x)
        last.update(f=f, aux=aux, g=g)
        if g is None:
            raise FloatingPointError("the objective is not finite (or infeasible) at a trial point of L-BFGS-B")
        return f, g.detach().cpu().double().numpy().ravel()

    history, aux_history = [], []

    def record(intermediate_result):
        history.append(float(intermediate_result.fun))
        aux_history.append(last.get("aux"))
        if callback is not None:
            callback(len(history), history[-1], last.get("aux"))

    z0 = like.cpu().double().numpy().ravel()
    f0, g0, aux0 = evaluate(like)
    if g0 is None:
        return dict(x=like.clone(), fun=f0, aux=aux0, initial=f0, history=[], aux_history=[], n_iter=0,
                    stop_reason="non_finite" if evaluate.status == "non_finite" else "infeasible_start",
                    grad_max=math.nan)
    options = dict(maxiter=max_iter, gtol=gtol, ftol=ftol, maxcor=history_size, maxls=40)
    if max_eval is not None:
        options["maxfun"] = max_eval
    res = optimize.minimize(fg, z0, jac=True, method="L-BFGS-B", callback=record, options=options)
    message = str(res.message).upper()
    if "PROJECTED_GRADIENT" in message:
        reason = "gradient"
    elif "REL_REDUCTION" in message:
        reason = "objective"
    elif "ITERATIONS" in message:
        reason = "max_iter"
    elif "FUNCTION EVALUATIONS" in message or "MAXFUN" in message:
        reason = "max_eval"
    else:
        reason = "line_search"
    x = torch.from_numpy(res.x).reshape(shape).to(dtype=like.dtype, device=like.device)
    f, g, aux = evaluate(x)
    return dict(x=x, fun=f, aux=aux, initial=f0, history=history, aux_history=aux_history, n_iter=int(res.nit),
                stop_reason=reason, grad_max=float(g.abs().max()) if g is not None else math.nan)


def minimize(fun: Callable, x0: torch.Tensor, *, method: str = "lbfgs", max_iter: int = 100, gtol: float = 1e-8,
             ftol: float = 1e-9, patience: int = 1, history_size: int = 10, line_search: str = "wolfe",
             max_eval: int | None = None, callback: Callable | None = None, warn: bool = True,
             name: str = "minimize", average_from: int | None = None) -> OptimResult:
    """Minimise ``fun(x)`` by L-BFGS (see the module docstring for the methods and the stopping rule).

    Parameters
    ----------
    fun : callable
        ``fun(x) -> loss`` (0-d tensor), ``(loss, aux)``, or ``None`` at an infeasible point. Differentiable in
        ``x`` by autograd.
    x0 : torch.Tensor
        Starting point, any shape; floating dtype. The result keeps its shape, dtype and device.
    method : {"lbfgs", "scipy"}
    max_iter : int
        Iteration budget (0: evaluate ``x0`` only).
    gtol : float
        Stop when the largest gradient entry is at most ``gtol``.
    ftol : float
        Stop when the objective decreased by at most ``ftol`` (relative) over the last ``patience`` iterations.
    patience : int
        See ``ftol`` (``"lbfgs"`` only).
    history_size : int
        Correction pairs kept.
    line_search : {"wolfe", "armijo"}
        ``"lbfgs"`` only; ``"armijo"`` is the one with the feasibility-aware backtracking of registration.
    max_eval : int, optional
        Evaluation budget.
    callback : callable, optional
        ``callback(iteration, objective, aux)`` after every accepted iteration.
    warn : bool
        Warn with ``ConvergenceWarning`` when the run stops without converging.
    name : str
        What the warning calls the caller (e.g. ``"register_images level 2"``).
    average_from : int, optional
        ``"lbfgs"`` only: also return ``x_mean``, the mean of the accepted iterates from this iteration on
        (Polyak-Ruppert averaging: where the objective is noisy, the iterates' fits to the noise partly cancel).

    Returns
    -------
    OptimResult

    Raises
    ------
    ValueError
        Bad options or ``x0``.
    """
    check_choice("method", method, METHODS)
    check_choice("line_search", line_search, LINE_SEARCHES)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        got = x0.dtype if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0: expected a floating torch.Tensor, got {got}")
    max_iter = check_int("max_iter", max_iter, minimum=0)
    gtol = check_positive("gtol", gtol, allow_zero=True)
    ftol = check_positive("ftol", ftol, allow_zero=True)
    patience = check_int("patience", patience)
    history_size = check_int("history_size", history_size)
    if max_eval is not None:
        max_eval = check_int("max_eval", max_eval)
    if average_from is not None and method != "lbfgs":
        raise ValueError(f"average_from: expected None with method={method!r} (averaging is 'lbfgs' only)")
    average_from = None if average_from is None else check_int("average_from", average_from)
    t0 = time.perf_counter()
    evaluate = _Evaluator(fun, max_eval)
    if max_iter == 0:
        f, g, aux = evaluate(x0)
        x = x0.detach().clone()
        out = dict(x=x, fun=f, aux=aux, initial=f, history=[], aux_history=[], n_iter=0, stop_reason="max_iter",
                   grad_max=float(g.abs().max()) if g is not None else math.nan, x_mean=None if average_from is None else x)
    elif method == "scipy":
        out = _scipy(evaluate, x0, max_iter=max_iter, gtol=gtol, ftol=ftol, history_size=history_size,
                     callback=callback, max_eval=max_eval)
    else:
        out = _lbfgs(evaluate, x0, max_iter=max_iter, gtol=gtol, ftol=ftol, patience=patience,
                     history_size=history_size, line_search=line_search, callback=callback,
                     average_from=average_from)
    res = OptimResult(**out, n_eval=evaluate.count, converged=STOP_REASONS[out["stop_reason"]][0],
                      seconds=time.perf_counter() - t0)
    if warn and not res.converged and max_iter > 0:
        warnings.warn(f"{name}: stopped without converging after {res.n_iter} iterations ({res.message}; "
                      f"objective {res.fun:.6g}, max |gradient| {res.grad_max:.3g})", ConvergenceWarning,
                      stacklevel=2)
    return res
