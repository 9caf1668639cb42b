"""``register_shapes``: curves, surfaces and point clouds registered by geodesic shooting without correspondence.

Model (THEORY §3, §8). Momenta ``p0`` live on control points ``q0`` (a grid, a subsample or the source vertices);
the control points follow the landmark Hamiltonian flow of the deformation kernel and the source vertices are
ambient points carried by it, integrated together by one of the engine's schemes over ``n_steps``. Each level of
the coarse-to-fine schedule minimises

    ``E(p0) = γ H(q0, p0) / σ² + (1/n) Σ_o D_l(φ_1(S_o), T_o) / D_l(S_o, T_o)``

over ``p0`` with the engine's optimiser (L-BFGS, strong Wolfe line search): ``H = ½ ⟨p0, K p0⟩`` is the kinetic
energy of the geodesic, ``σ`` the deformation kernel's width, ``D_l`` the data term at level ``l``'s width, divided
by its value before registration so that one ``γ`` (``regularization``) suits shapes of any size, unit or
resolution, and ``n`` the number of objects. Levels run from coarse to fine data widths; each starts from the
previous level's momenta and compares coarser meshes where the width allows (``registration.shapes.pyramid``).

Preconditioning. With ``K = L Lᵀ`` (Cholesky of the control points' Gram matrix, a jitter of 1e-6 added) the
optimiser sees ``z`` with ``p0 = (σ / √γ) L^{-T} z``, so that the regularity is ``½ |z|²``: L-BFGS starts on a
well-conditioned problem (the whitening of ``registration.landmarks``; a Cholesky factor instead of ``K^{-1/2}``:
L-BFGS is invariant under the rotation between them, and the factor costs a sixth of an eigendecomposition). Above
``WHITEN_MAX`` control points (O(K²) memory) ``p0 = (σ / √γ) z`` without whitening.

Flips. A triangle flips when its warped normal turns against its source normal (``normal_ratios <= 0``; segments:
tangents). With ``check_flips`` (default) a step that flips a cell of the level's source is infeasible (the
objective returns None) and the line search steps back: registrations never flip a cell of the meshes they compare.
A level whose starting point flips a cell of its (finer) mesh halves the momenta until none flips and records the
factor (``LevelRecord.start_scale``). Only triangles are guarded (``GUARD_KINDS``): a curve's segments may turn by
more than 90° under an ordinary large deformation, so they are reported, not refused. Beside the hard check, a log
barrier ``(barrier / F) Σ ψ(s)`` with ``ψ(s) = −log s − 1 + s``, ``s = (r − m) / (τ − m)``, on the cells whose normal
ratio ``r`` is below ``τ = BARRIER_THRESHOLD`` keeps triangles away from the boundary ``m`` (``FLIP_MARGIN`` with
``check_flips``, else 0): the objective rises without bound as a cell nears it, so the line search brackets a minimum
before it. (A barrier infinite at 0 instead of at the margin stays finite where steps become infeasible: on
fsaverage5 left pial → mirrored right at full resolution the iterates walked onto the margin, where every trial
step flipped a cell, and 60-70 % of the evaluations were infeasible.)

A step whose shooting diverges (non-finite vertices) is infeasible too.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lddmm_nets import GaussianKernel, HamiltonianSystem, Kernel, integrators
from lddmm_nets.checks import check_choice, check_int, check_positive
from lddmm_nets.optim import ConvergenceWarning, minimize
from lddmm_nets.shapes import Currents, Measure, ShapeDistance, Varifold

from .control import CONTROL_POINTS, control_points as make_control_points
from .measures import vector_ratios
from .pyramid import Pyramid
from .result import LevelRecord, ShapeRegistration
from .shape import Shape, as_shape
from .transform import ShapeTransform, hamiltonian_system, integrate

__all__ = ["register_shapes", "DATA_TERMS", "WHITEN_MAX", "make_data_term", "level_term", "flip_barrier"]

DATA_TERMS = ("auto", "varifold", "oriented_varifold", "currents", "measure")
WHITEN_MAX = 4096
#: truncation radius of the data terms' Gaussians, in widths (``lddmm_nets.shapes.terms``: a C¹ compactly supported
#: kernel within 3e-3 of the Gaussian, summed block-sparsely when the shapes span many widths), used by the levels
#: whose data term has at least ``TRUNCATE_MIN_CELL_PAIRS`` pairs of cells (from where the full sums leave dense
#: matrices for KeOps). Measured on fsaverage5 white against pial at 3.5 mm, one thread (forward and backward):
#: 10,242 vertices 73 s in full (KeOps) against 4 s truncated in torch blocks and 0.17 s in the compiled pass
#: (``lddmm_nets.shapes._native``); 2,562 vertices 4.6 s against 0.4-0.6 s (torch blocks); 642 vertices: the full
#: dense sums are 4x faster
TRUNCATE = 4.0
TRUNCATE_MIN_CELL_PAIRS = 2**22
#: cells whose orientation is guarded (flip check and barrier): surfaces; a curve's tangent may turn by more than
#: 90° under an ordinary large deformation (a circle bent into a C), so segments are only reported
GUARD_KINDS = ("triangles",)
#: normal ratio at or below which a step is infeasible: a margin above 0 so that the float64 evaluation of the
#: result (the optimisation runs in float32) cannot find a flip the optimiser did not see
FLIP_MARGIN = 1e-3
#: ``τ``: the barrier acts on cells whose normal ratio is below it
BARRIER_THRESHOLD = 0.1
#: ``control_points="auto"``: the source vertices up to this many (the fused dense system's size), a grid beyond
VERTEX_CONTROL_MAX = 1024
#: grid control points are kept within this many spacings of a source vertex
GRID_REACH = 0.5
#: default iteration budgets and objective tolerances of the coarse levels and of the last one
COARSE_MAX_ITER, FINE_MAX_ITER = 40, 100
COARSE_FTOL, FINE_FTOL = 1e-3, 1e-4


def flip_barrier(ratio: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """``Σ ψ(s)`` over the cells whose normal ratio ``r`` is below ``τ = BARRIER_THRESHOLD``, ``ψ(s) = −log s − 1 + s``
    with ``s = (r − floor) / (τ − floor)``: 0 with a zero slope at ``τ`` (C¹), unbounded as a ratio nears ``floor``.

    Parameters
    ----------
    ratio : (F,) tensor
        Normal ratios (``registration.shapes.measures.normal_ratios``), all above ``floor``.
    floor : float
        Where the barrier is infinite (``FLIP_MARGIN`` when flips are infeasible), below ``τ``.

    Raises
    ------
    ValueError
        A ratio at or below ``floor`` (the barrier is infinite there), or ``floor`` not below ``τ``.
    """
    if not floor < BARRIER_THRESHOLD:
        raise ValueError(f"floor: expected a value below BARRIER_THRESHOLD={BARRIER_THRESHOLD}, got {floor}")
    low = (ratio[ratio < BARRIER_THRESHOLD] - floor) / (BARRIER_THRESHOLD - floor)
    if low.numel() and not float(low.detach().min()) > 0:
        raise ValueError(f"ratio: expected normal ratios above floor={floor}, got "
                         f"{float(ratio.detach().min()):.6g}")
    return (low - low.log() - 1.0).sum()


def level_term(data_term, width: float, source: Shape, target: Shape, backend: str = "auto") -> ShapeDistance:
    """The data term of a level at ``width``: ``data_term`` itself when it is a ``ShapeDistance``, else the named
    term, its Gaussians truncated at ``TRUNCATE`` widths when the shapes have ``TRUNCATE_MIN_CELL_PAIRS`` pairs of
    cells or more (the levels and the evaluation of the result use the same term)."""
    if not isinstance(data_term, str):
        return data_term
    truncate = TRUNCATE if source.n_cells * target.n_cells >= TRUNCATE_MIN_CELL_PAIRS else None
    return make_data_term(data_term, width, source.kind, backend, truncate)


def make_data_term(name: str, sigma, kind: str, backend: str = "auto", truncate: float | None = None):
    """The data term ``name`` (``DATA_TERMS``) at width(s) ``sigma`` for shapes of ``kind`` (Gaussians truncated
    at ``truncate`` widths, ``lddmm_nets.shapes.terms``)."""
    check_choice("data_term", name, DATA_TERMS)
    if name == "auto":
        name = "measure" if kind == "points" else "varifold"
    if kind == "points" and name != "measure":
        raise ValueError(f"data_term: point clouds carry no directions, expected 'measure' or 'auto', got {name!r}")
    kw = dict(backend=backend, truncate=truncate)
    if name == "varifold":
        return Varifold(sigma, **kw)
    if name == "oriented_varifold":
        return Varifold(sigma, oriented=True, **kw)
    if name == "currents":
        return Currents(sigma, **kw)
    return Measure(sigma, **kw)


def _as_list(obj, name: str) -> tuple[list[Shape], bool]:
    if isinstance(obj, (list, tuple)) and not (len(obj) == 2 and not isinstance(obj[0], (Shape, str))
                                               and hasattr(obj[1], "shape") and getattr(obj[1], "ndim", 0) == 2
                                               and not getattr(obj[1], "is_floating_point", lambda: True)()):
        shapes = [as_shape(o, f"{name}[{i}]") for i, o in enumerate(obj)]
        if not shapes:
            raise ValueError(f"{name}: expected a shape or a non-empty list of shapes, got an empty list")
        return shapes, False
    return [as_shape(obj, name)], True


@dataclass
class _Deformation:
    """What every level shares: kernel, scheme, control points and the momenta parametrisation."""

    kernel: Kernel
    system: HamiltonianSystem
    scheme: integrators.Integrator
    q0: torch.Tensor
    factor: torch.Tensor | None  # upper-triangular Lᵀ, or None (no whitening)
    gram: torch.Tensor | None
    scale: float  # σ / √γ
    n_steps: int

    def momenta(self, z: torch.Tensor) -> torch.Tensor:
        if self.factor is None:
            return self.scale * z
        return self.scale * torch.linalg.solve_triangular(self.factor, z, upper=True)

    def variables(self, p0: torch.Tensor) -> torch.Tensor:
        return p0 / self.scale if self.factor is None else (self.factor @ p0) / self.scale

    def regularity(self, z: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
        """``γ H / σ² = ½ ⟨p0, K p0⟩ / scale²`` (exact: the Gram matrix without jitter)."""
        Kp = self.gram @ p0 if self.gram is not None else self.system.dH_dp(self.q0, p0)
        return 0.5 * (p0 * Kp).sum() / self.scale**2

    def shoot(self, p0: torch.Tensor, x: torch.Tensor):
        """Control points, momenta and ambient points integrated together: ``(qs, ps, x1)``."""
        return integrate(self.system, self.scheme, self.q0, p0, x, self.n_steps)


def _whitening(kernel: Kernel, q0: torch.Tensor):
    """``(Lᵀ, K)`` with ``K + jitter I = L Lᵀ`` in float64, or ``(None, None)`` above ``WHITEN_MAX`` points."""
    if q0.shape[0] > WHITEN_MAX:
        return None, None
    K = kernel.gram(q0.double())
    jitter = 1e-6 * float(K.diagonal().mean())
    L = torch.linalg.cholesky(K + jitter * torch.eye(K.shape[0], dtype=K.dtype, device=K.device))
    return L.T.contiguous().to(q0.dtype), K.to(q0.dtype)


class _Level:
    """One level: the objects' source and target at this width, their data terms and normalisations."""

    def __init__(self, width, sources: list[Shape], targets: list[Shape], data_term: str, backend: str,
                 dtype, device):
        self.width = width
        self.sources = [s.to(dtype, device) for s in sources]
        self.terms = []
        self.norms = []
        for s, t in zip(self.sources, targets):
            attached = level_term(data_term, width, s, t, backend).attach(t.to(dtype, device).cells_geometry())
            with torch.no_grad():
                d0 = float(attached(s.cells_geometry()))
            self.terms.append(attached)
            self.norms.append(d0)
        self.vertices = torch.cat([s.vertices for s in self.sources])
        self.splits = [s.n_vertices for s in self.sources]
        self.reference = [s.cells_geometry().vectors.detach() if s.kind != "points" else None
                          for s in self.sources]

    def data(self, x1: torch.Tensor, barrier: float = 0.0, guarded: bool = True, margin: float | None = None):
        """``(mean relative distance, barrier term, min normal ratio)`` of warped vertices ``x1``, or None when
        ``margin`` is given and a guarded cell's normal ratio is at or below it: the orientations are checked first,
        so an infeasible trial step costs its shooting but no data term.

        The barrier term is ``(barrier / F) Σ ψ(s)`` over the guarded cells (``GUARD_KINDS``) with
        ``ψ(s) = −log s − 1 + s``, ``s = (r − m) / (τ − m)``, below ``τ = BARRIER_THRESHOLD`` and 0 above
        (continuous with its slope); ``m`` is ``margin`` (0 when None).
        """
        cells = [s.cells_geometry(xo) for s, xo in zip(self.sources, torch.split(x1, self.splits))]
        penalty = x1.new_zeros(())
        worst = math.inf
        floor = margin if margin is not None else 0.0
        for s, c, ref in zip(self.sources, cells, self.reference):
            if ref is None or not guarded or s.kind not in GUARD_KINDS:
                continue
            ratio = vector_ratios(ref, c.vectors)
            worst = min(worst, float(ratio.detach().min()))
            if barrier > 0 and worst > floor:
                penalty = penalty + (barrier / len(ratio)) * flip_barrier(ratio, floor)
        if margin is not None and worst <= margin:
            return None
        total = x1.new_zeros(())
        for c, term, d0 in zip(cells, self.terms, self.norms):
            if d0 > 0:
                total = total + term(c) / d0
        return total / len(self.sources), penalty, worst


def _run_level(deform: _Deformation, level: _Level, z0: torch.Tensor, *, max_iter: int, ftol: float,
               check_flips: bool, barrier: float, callback, index: int, n_levels: int):
    """Minimise the level's objective from ``z0``; returns ``(OptimResult, start_scale, start_distance)``."""

    on_control_points = level.vertices.shape == deform.q0.shape and torch.equal(level.vertices, deform.q0)

    def fun(z):
        p0 = deform.momenta(z)
        qs, _, x1 = deform.shoot(p0, None if on_control_points else level.vertices)
        x1 = qs[-1] if on_control_points else x1
        if not bool(torch.isfinite(x1).all()):  # a step so long that the shooting diverged: infeasible
            return None
        out = level.data(x1, barrier, check_flips, FLIP_MARGIN if check_flips else None)
        if out is None:
            return None
        data, penalty, _ = out
        return deform.regularity(z, p0) + data + penalty, data

    scale, start = 1.0, 1.0
    if z0.abs().max() > 0:
        with torch.no_grad():
            out = fun(z0)
            while out is None and scale > 1e-3:
                scale *= 0.5
                out = fun(z0 * scale)
        start = float(out[1]) if out is not None else math.nan
    progress = None
    if callback is not None:
        def progress(it, f, aux):
            callback(dict(level=index, n_levels=n_levels, iteration=it, objective=f, distance=aux))
    res = minimize(fun, z0 * scale, max_iter=max_iter, ftol=ftol, gtol=1e-6, patience=3, history_size=10,
                   line_search="wolfe", callback=progress, warn=False, name=f"register_shapes level {index + 1}")
    return res, scale, start


def _initial(momenta, q0: torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(momenta).to(q0)
    if p.shape != q0.shape or not bool(torch.isfinite(p).all()):
        raise ValueError(f"initial_momenta: expected finite momenta of shape {tuple(q0.shape)} (one per control "
                         f"point), got shape {tuple(p.shape)}")
    return p


def _per_level(name: str, value, coarse, fine, n: int) -> list:
    """One value per level: ``value`` repeated, a sequence of ``n``, or (None) ``coarse`` then ``fine`` last."""
    if value is None:
        return [coarse] * (n - 1) + [fine]
    values = [value] * n if isinstance(value, (int, float)) else list(value)
    if len(values) != n:
        raise ValueError(f"{name}: expected one value or {n} (one per level), got {len(values)}")
    return values


def _defaults(sources: list[Shape], sigma, data_sigma, spacing):
    diameter = max(s.diameter for s in sources) or 1.0
    sigma = check_positive("sigma", sigma) if sigma is not None else 0.05 * diameter
    if data_sigma is None:
        data_sigma = 0.5 * sigma
    data_sigma = check_positive("data_sigma", data_sigma)
    spacing = check_positive("spacing", spacing) if spacing is not None else sigma
    return sigma, data_sigma, spacing


def _control_points(control_points, sources, targets, spacing, dtype, device):
    """``(q0, kind)``: the control points and how they were made (``"auto"`` resolved)."""
    verts = torch.cat([s.vertices for s in sources]).to(dtype=dtype, device=device)
    if not isinstance(control_points, str):
        q0 = torch.as_tensor(control_points).to(verts)
        if q0.ndim != 2 or q0.shape[1] != verts.shape[1]:
            raise ValueError(f"control_points: expected shape (K, {verts.shape[1]}), got {tuple(q0.shape)}")
        return q0, "given"
    check_choice("control_points", control_points, ("auto",) + CONTROL_POINTS)
    if control_points == "auto":
        control_points = "vertices" if verts.shape[0] <= VERTEX_CONTROL_MAX else "grid"
    extent = torch.cat([t.vertices for t in targets]).to(verts)
    return make_control_points(verts, control_points, spacing, reach=GRID_REACH, extent=extent), control_points


def register_shapes(source, target, *, sigma: float | None = None, kernel: Kernel | None = None,
                    data_term: str | ShapeDistance = "auto", data_sigma: float | None = None,
                    levels: Sequence[float] = (2.0, 1.0), control_points="auto", spacing: float | None = None,
                    regularization: float = 1e-4, n_steps: int = 5, integrator: str = "euler",
                    max_iter: int | Sequence[int] | None = None, ftol: float | Sequence[float] | None = None,
                    resolution: float = 2.0,
                    check_flips: bool = True, barrier: float = 0.1, backend: str = "auto",
                    dtype: torch.dtype = torch.float32, device=None, initial_momenta=None,
                    callback: Callable[[dict], None] | None = None) -> ShapeRegistration:
    """Register shapes without correspondence by geodesic shooting (module docstring).

    Parameters
    ----------
    source, target : Shape, path, (vertices, cells) pair, (N, d) points, or lists of them (objects registered
        together with one deformation, paired in order)
        Shapes in world coordinates (data units, e.g. mm).
    sigma : float, optional
        Width of the Gaussian deformation kernel (data units); default 5 % of the source's bounding-box diagonal.
    kernel : Kernel, optional
        Any engine kernel instead (its ``sigma`` attribute sets the momentum scale).
    data_term : {"auto", "varifold", "oriented_varifold", "currents", "measure"} or ShapeDistance
        ``"auto"``: unoriented varifold (Gaussian × Cauchy–Binet) for curves and surfaces, kernel measure for
        point clouds. A ``ShapeDistance`` instance is used as is at every level (no coarse-to-fine).
    data_sigma : float, optional
        Final width of the data term's Gaussian (data units); default ``sigma / 2``.
    levels : sequence of float
        Coarse-to-fine multiples of ``data_sigma`` (default 2, 1; start at 4 for deformations much larger than
        ``data_sigma``).
    control_points : {"grid", "subsample", "vertices"} or (K, d) tensor
        Where the momenta live (``registration.shapes.control``).
    spacing : float, optional
        Grid step or subsampling side (default ``sigma``).
    regularization : float
        ``γ``: weight of the kinetic energy ``H / σ²`` against the relative data term.
    n_steps : int
        Time steps of the shooting. 5 instead of 10 (the earlier default), fsaverage5 at 642 vertices, white → pial,
        left → mirrored right and a random warp, left hemisphere seed 0 and right seed 1 (``scripts/bench_shapes.py``
        cases; one thread, best of two runs): the same vertex errors and Chamfer distances to within their spread
        (warp 0.031 / 0.027 → 0.030 / 0.026 mm, white → pial 0.079 / 0.086 → 0.081 / 0.087 mm, left → right Chamfer
        0.403 / 0.413 → 0.401 / 0.411 mm), no flip, in 0.5-0.7 of the time. 4 steps moved white → pial to 0.085 mm
        (Hausdorff 0.36 → 0.85 mm); RK2 with 3 steps (6 stages) cost as much as Euler with 5 and lost on left → right
        (hold-out Chamfer 0.419, Hausdorff 4.60 mm).
    integrator : str
        A scheme of ``lddmm_nets.integrators`` (default ``"euler"``).
    max_iter : int or sequence of int, optional
        L-BFGS iterations per level (default ``COARSE_MAX_ITER`` for the coarse levels, ``FINE_MAX_ITER`` for the
        last).
    ftol : float or sequence of float, optional
        A level stops when its objective decreased by less than ``ftol`` (relative) over 3 iterations (default
        ``COARSE_FTOL`` for the coarse levels, ``FINE_FTOL`` for the last).
    resolution : float
        A level compares meshes whose mean edge length is at most ``resolution`` times its data width (coarser
        copies from the pyramid); the last level always uses the full shapes.
    check_flips : bool
        Treat steps that flip a triangle as infeasible (module docstring).
    barrier : float
        Weight of the log barrier that keeps triangles away from flipping (module docstring); 0: none.
    backend : {"auto", "dense", "keops"}
    dtype : torch.dtype
        Dtype of the optimisation (default float32); results are evaluated in float64.
    device : torch device, optional
        Default: the source's.
    initial_momenta : (K, d) tensor or array, optional
        Momenta on the control points to start from (a warm start, e.g. the previous atlas round's); default 0.
    callback : callable, optional
        ``callback(info)`` after every iteration, ``info`` with ``level``, ``n_levels``, ``iteration``,
        ``objective``, ``distance`` (relative data term).

    Returns
    -------
    ShapeRegistration
    """
    t_start = time.perf_counter()
    sources, single = _as_list(source, "source")
    targets, single_t = _as_list(target, "target")
    if len(sources) != len(targets) or single != single_t:
        raise ValueError(f"target: expected {len(sources)} object(s) (as source), got {len(targets)}")
    for i, (s, t) in enumerate(zip(sources, targets)):
        if s.dim != t.dim:
            raise ValueError(f"target[{i}]: expected {s.dim}-D (as the source), got {t.dim}-D")
    check_choice("backend", backend, ("auto", "dense", "keops"))
    n_steps = check_int("n_steps", n_steps)
    gamma = check_positive("regularization", regularization)
    levels = [check_positive("levels", f) for f in levels]
    if not levels:
        raise ValueError("levels: expected at least one multiple of data_sigma, got none")
    # coarse levels only bring the shapes near each other; the last one fits
    iters = [check_int("max_iter", m, minimum=0)
             for m in _per_level("max_iter", max_iter, COARSE_MAX_ITER, FINE_MAX_ITER, len(levels))]
    ftols = [check_positive("ftol", f, allow_zero=True)
             for f in _per_level("ftol", ftol, COARSE_FTOL, FINE_FTOL, len(levels))]
    sigma, data_sigma, spacing = _defaults(sources, sigma if kernel is None else kernel.sigma, data_sigma, spacing)
    kernel = kernel if kernel is not None else GaussianKernel(sigma=sigma)
    device = torch.device(device) if device is not None else sources[0].vertices.device
    q0, cp_kind = _control_points(control_points, sources, targets, spacing, dtype, device)
    system = hamiltonian_system(kernel, backend, int(q0.shape[0]))
    factor, gram = _whitening(kernel, q0)
    deform = _Deformation(kernel, system, integrators.get(integrator), q0, factor, gram,
                          sigma / math.sqrt(gamma), n_steps)
    pyramids = ([Pyramid(s) for s in sources], [Pyramid(t) for t in targets])
    z = torch.zeros_like(q0) if initial_momenta is None else deform.variables(_initial(initial_momenta, q0))
    records, history = [], []
    for index, factor_l in enumerate(levels):
        t0 = time.perf_counter()
        width = data_sigma * factor_l
        last = index == len(levels) - 1
        pick = (lambda p: p.shape) if last else (lambda p: p.at(width, resolution))
        level = _Level(width if isinstance(data_term, str) else None,
                       [pick(p) for p in pyramids[0]], [pick(p) for p in pyramids[1]],
                       data_term, backend, dtype, device)
        res, scale, start = _run_level(deform, level, z, max_iter=iters[index], ftol=ftols[index],
                                       check_flips=check_flips, barrier=barrier,
                                callback=callback, index=index, n_levels=len(levels))
        z = res.x
        history.extend(res.history)
        records.append(LevelRecord(
            data_sigma=width, n_source_cells=sum(s.n_cells for s in level.sources),
            n_target_cells=sum(t.n_cells for t in (pick(p) for p in pyramids[1])), n_iter=res.n_iter,
            n_eval=res.n_eval, stop_reason=res.stop_reason, converged=res.converged,
            relative_distance_before=start,
            relative_distance_after=float(res.aux) if res.aux is not None else math.nan,
            start_scale=scale, seconds=time.perf_counter() - t0))
    p0 = deform.momenta(z).detach()
    transform = ShapeTransform(kernel, q0.detach(), p0, n_steps, integrator if isinstance(integrator, str)
                               else integrator.name)
    result = ShapeRegistration.build(sources, targets, transform, records, history, single=single,
                                     data_term=data_term, data_sigma=data_sigma, backend=backend,
                                     seconds=time.perf_counter() - t_start,
                                     config=dict(sigma=sigma, data_sigma=data_sigma, levels=levels,
                                                 control_points=cp_kind, n_control_points=int(q0.shape[0]),
                                                 spacing=spacing, regularization=gamma, n_steps=n_steps,
                                                 integrator=str(integrator), max_iter=iters, ftol=ftols,
                                                 resolution=resolution, check_flips=check_flips,
                                                 barrier=barrier,
                                                 backend=backend, dtype=str(dtype).replace("torch.", ""),
                                                 whitened=factor is not None))
    if not result.converged:
        warnings.warn(f"register_shapes: the last level stopped without converging ({result.stop_reason}); "
                      f"relative distance {records[-1].relative_distance_after:.3g}", ConvergenceWarning,
                      stacklevel=2)
    return result

