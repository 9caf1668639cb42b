"""Shapes (curves, surfaces, point clouds) as a data kind of the atlas (see ``_kinds``): each subject registered
from the template with ``register_shapes``, the template's vertices moved by a gradient step on the summed data
terms (THEORY §9, Deformetrica's deterministic atlas) and the template unbiased by the shapes' shooting.

Conventions. The template is the *source* and each subject the *target*, so ``register_shapes(template, subject)``
gives ``p_s``, the initial momentum of the geodesic ``φ_s`` from the template to the subject, on control points
``q`` that are the same for every subject of a round: the template's vertices ``control_indices(template)`` (all of
them up to ``CONTROL_MAX``, else a subset chosen from the cells alone). The subset depends on the connectivity only,
never on the positions, so it is the same in every round (the template's cells never change) and a momentum row
``k`` always sits on the same vertex: the momenta of a round can be averaged, and those of different rounds
compared.

Template update. With every ``φ_s`` fixed, the template's vertices ``T`` descend ``F(T) = Σ_s D(φ_s(T), S_s)``
(``D`` the registrations' finest data term, absolute): each subject's task writes ``∇_T D(φ_s(T), S_s)`` (autograd
through the flow of the template's vertices along the subject's trajectory, float64) as ``gradient.npy`` with its
transform (``momenta.npz``) and a copy of the subject (``subject.npz``); the reduction sums the gradients ``g`` and
takes a backtracking step ``T - α g``: ``α`` starts where the largest vertex move is ``STEP_FRACTION`` data widths
(the scale on which ``D`` sees anything: a plain gradient's size depends on the units and on the cell sizes) and is
halved (at most ``MAX_HALVINGS`` times) until ``F`` decreases by Armijo's rule and no triangle of the template
flips; when none does, the template is kept. Only the data terms move the template (their sum is what the template
changes), so one step per round is Deformetrica's alternate minimisation of ``Σ_s ½‖p_s‖² + D/σ²``.

Unbiasing. The template is shot along the mean momentum ``p̄ = (1/n) Σ_s p_s`` with the registrations' kernel and
steps (``ShapeTransform`` from the control vertices): a template at the centre of the population has ``p̄ = 0``.
In an updating round ``p̄`` was computed on the control vertices before the update, and it is shot from their
positions after it (each row carried by its vertex: the update moves them by at most ``STEP_FRACTION`` data widths,
a fraction of the deformation kernel's width).

Summaries (``SubjectSummary``, ``report.json``), in the images' names: ``similarity_before`` / ``_after`` the
absolute data term ``D(T, S)`` / ``D(φ(T), S)``; ``energy`` the geodesic's kinetic energy; ``deformation`` the mean
vertex move of the template; ``ndv_percent`` the percentage of template cells that fold (``register_shapes``'
``folded``); ``sdlogj`` the standard deviation of the log ratios of the cells' sizes (lengths or areas) after and
before; ``jacobian_min`` the smallest normal ratio.
"""

from __future__ import annotations

import inspect
import os
import warnings

import numpy as np
import torch

from ..io.meshes import is_mesh_path, mesh_extension, save_mesh
from ..shapes import Shape, ShapeTransform, as_shape, make_data_term, normal_ratios, register_shapes
from ._kinds import MEAN_FILE, START_FILE, load_start

__all__ = ["ShapeKind", "SHAPE_FILES", "control_indices", "is_shape_source", "summed_data"]

#: the files of a subject's folder that ``AtlasResult.save`` delivers: the warped template and the transform
SHAPE_FILES = ("warped.vtk", "momenta.npz")
INITIAL = ("first",)
#: control points: every template vertex up to this many (as ``register_shapes``' ``"auto"``), else a subset
CONTROL_MAX = 1024
#: the template update's first step moves the largest-gradient vertex by this many (finest) data widths
STEP_FRACTION = 1.0
MAX_HALVINGS = 8
ARMIJO = 1e-4
#: ``register_shapes`` options an atlas passes on (JSON values only; the control points are the atlas's)
OPTIONS = ("sigma", "data_term", "data_sigma", "levels", "regularization", "n_steps", "integrator", "max_iter",
           "ftol", "resolution", "check_flips", "barrier", "backend")


def is_shape_source(obj) -> bool:
    """Whether ``obj`` is a shape: a ``Shape``, a ``(vertices, cells)`` pair or a mesh path (by extension, except
    ``.npy``, which images use too; FreeSurfer files by their magic number)."""
    if isinstance(obj, (Shape, tuple)):
        return True
    if isinstance(obj, (str, os.PathLike)):
        return mesh_extension(obj) != ".npy" and is_mesh_path(obj)
    return False


def check_options(options) -> dict:
    """``register_options`` of a shape atlas: keys among ``OPTIONS`` with JSON values (sequences as lists)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"register_options: unknown options {unknown} for shapes; expected keys among "
                         f"{sorted(OPTIONS)} (the control points are the template's vertices)")
    if not isinstance(options.get("data_term", "auto"), str):
        raise ValueError("register_options: data_term must be a name for an atlas (it is stored in the checkpoint)")
    n_levels = len(options.get("levels", (2.0, 1.0)))
    for key in ("max_iter", "ftol"):  # what the workers would otherwise find out once per subject
        value = options.get(key)
        if isinstance(value, (list, tuple)) and len(value) != n_levels:
            raise ValueError(f"register_options: {key} expected one value or {n_levels} (one per level), got "
                             f"{len(value)}")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}


def widths(template: Shape, reg: dict) -> tuple[float, float]:
    """The deformation kernel's and the finest data term's widths (``register_shapes``' defaults: 5 % of the
    template's bounding-box diagonal, and half of that). The defaults follow the template's size from round to round
    (and the unbiasing shot of an updated template uses the new size): give ``sigma`` for one metric throughout."""
    sigma = float(reg["sigma"]) if reg.get("sigma") is not None else 0.05 * (template.diameter or 1.0)
    data_sigma = float(reg["data_sigma"]) if reg.get("data_sigma") is not None else 0.5 * sigma
    return sigma, data_sigma


def _adjacency(shape: Shape):
    from scipy.sparse import coo_matrix, identity

    c = shape.cells.cpu().numpy()
    k = c.shape[1]
    rows = np.concatenate([c[:, i] for i in range(k)])
    cols = np.concatenate([c[:, (i + 1) % k] for i in range(k)])
    n = shape.n_vertices
    a = coo_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(n, n)).tocsr()
    return ((a + a.T + identity(n, dtype=bool, format="csr")) > 0).tocsr()


def control_indices(shape: Shape, limit: int = CONTROL_MAX) -> np.ndarray:
    """The template vertices that carry the momenta: all of them up to ``limit``; else a greedy independent set
    of the ``r``-hop neighbourhoods (vertices in index order, each one taken unless within ``r`` edges of one
    taken already), ``r`` the smallest that leaves at most ``limit``; point clouds: evenly spaced indices.
    A function of the cells only, so the same in every round."""
    n = shape.n_vertices
    if n <= limit:
        return np.arange(n)
    if shape.cells is None or shape.cells.shape[1] == 1:
        return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
    step = _adjacency(shape)
    reach = step
    while True:
        covered = np.zeros(n, bool)
        picked = []
        for i in range(n):
            if not covered[i]:
                picked.append(i)
                covered[reach.indices[reach.indptr[i]:reach.indptr[i + 1]]] = True
        if len(picked) <= limit:
            return np.asarray(picked, np.int64)
        reach = ((reach @ step) > 0).tocsr()


def _term(reg: dict, data_sigma: float, shape: Shape, target: Shape):
    term = make_data_term(reg.get("data_term", "auto"), data_sigma, shape.kind, reg.get("backend", "auto"))
    return term.attach(target.to(torch.float64).cells_geometry())


def subject_gradient(template: Shape, subject: Shape, transform: ShapeTransform, reg: dict, data_sigma: float):
    """``(D, ∇_T D, φ(T))``: the data term ``D(φ(T), S)`` with ``φ`` fixed, its gradient with respect to the
    template's vertices (autograd through the flow of the vertices along the trajectory, float64) and the warped
    vertices."""
    traj = transform.trajectory(torch.float64)
    template = template.to(torch.float64)
    x = template.vertices.detach().clone().requires_grad_(True)
    warped = traj.flow(x)
    value = _term(reg, data_sigma, template, subject)(template.cells_geometry(warped))
    (grad,) = torch.autograd.grad(value, x)
    return float(value.detach()), grad.numpy(), warped.detach()


def summed_data(template: Shape, folders: list, reg: dict, data_sigma: float):
    """``F(T') = Σ_s D(φ_s(T'), S_s)`` as a function of template vertices ``T'`` (array (N, d)), the subjects'
    transforms and copies read from their folders (in order) once, for all the evaluations of a line search."""
    from ..io.meshes import load_mesh

    t64 = template.to(torch.float64)
    parts = []
    for folder in folders:
        trajectory = ShapeTransform.load(folder).trajectory(torch.float64)
        subject = load_mesh(os.path.join(folder, "subject.npz"), name="subject")
        parts.append((trajectory, _term(reg, data_sigma, t64, subject)))

    def value(vertices) -> float:
        shape = t64.with_vertices(torch.as_tensor(vertices, dtype=torch.float64))
        total = 0.0
        with torch.no_grad():
            for trajectory, term in parts:
                total += float(term(shape.cells_geometry(trajectory.flow(shape.vertices))))
        return total

    return value


def _log_size_ratios(template: Shape, warped: torch.Tensor) -> np.ndarray:
    if template.kind == "points":
        return np.zeros(0)
    a = template.cells_geometry().vectors.detach().norm(dim=1)
    b = template.cells_geometry(warped).vectors.detach().norm(dim=1)
    ok = (a > 0) & (b > 0)
    return (b[ok] / a[ok]).log().numpy()


def _warm_start(start: str | None, shape: tuple):
    """The momenta to start from: the subject's of the previous round minus the mean the template was then shot
    along (to first order the geodesic from the shifted template to the subject: ``p_s - p̄``), or None. Measured
    on the 642-vertex benchmark (4 subjects, 2 iterations): the template's vertex error 0.118 mm from zero momenta
    (hence ``ShapeKind.default_warm_start = False``), 0.143 mm from ``p_s - p̄`` (closer fits, better centred) and
    0.370 mm from ``p_s`` itself (the template moved 3 mm in the first round)."""
    p = load_start(start, shape)
    if p is None:
        return None
    mean = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(start))), MEAN_FILE)
    return p - np.load(mean) if os.path.exists(mean) else p


class ShapeKind:
    """Curves (segments), surfaces (triangles) and point clouds: mesh paths, ``Shape`` s, ``(vertices, cells)``."""

    name = "shapes"
    template_suffix = ".vtk"
    subject_suffix = ".npz"
    subject_files = SHAPE_FILES
    initial_choices = INITIAL
    default_initial = "first"
    default_warm_start = False

    # ---- reading ----
    def read(self, source, *, name: str = "shape") -> Shape:
        shape = as_shape(source, name)
        return shape.to(torch.float64)

    def digest(self, subject: Shape) -> bytes:
        cells = b"" if subject.cells is None else subject.cells.numpy().tobytes()
        return subject.vertices.double().numpy().tobytes() + cells

    def size_hint(self, what) -> int:
        if isinstance(what, Shape):
            return what.n_vertices
        return what.data.n_vertices if getattr(what, "data", None) is not None else 0

    def probe(self, subject: Shape) -> dict:
        return {"dim": subject.dim, "cells": subject.kind, "n_vertices": subject.n_vertices,
                "n_cells": subject.n_cells}

    def probe_template(self, template: Shape) -> dict:
        return self.probe(template)

    def check_probe(self, info: dict, reference: dict) -> None:
        if info["dim"] != reference["dim"] or info["cells"] != reference["cells"]:
            raise ValueError(f"expected a {reference['dim']}-D shape of {reference['cells']} (the template's), got a "
                             f"{info['dim']}-D shape of {info['cells']} ({info['n_vertices']} vertices)")

    def check_options(self, options) -> dict:
        return check_options(options)

    # ---- templates ----
    def read_template(self, source) -> Shape:
        if isinstance(source, str) and source in ("affine", "mean"):  # the images' choices
            raise ValueError(f"initial: expected one of {INITIAL}, a mesh path or a shape for shapes, got {source!r}")
        return self.read(source, name="template")

    def save_template(self, template: Shape, path: str) -> None:
        save_mesh(path, template)

    def save_subject(self, subject: Shape, path: str) -> None:
        save_mesh(path, subject)

    def momentum_shape(self, template: Shape) -> tuple:
        return (len(control_indices(template)), template.dim)

    def template_change(self, old: Shape, new: Shape) -> float:
        """RMS vertex move over the old template's bounding-box diagonal."""
        a, b = old.vertices.double(), new.vertices.double()
        return float((b - a).pow(2).sum(1).mean().sqrt()) / max(old.diameter, 1e-30)

    def initial_template(self, run, initial) -> Shape:
        """``"first"``: the first (usable) subject."""
        if initial not in INITIAL:
            raise ValueError(f"initial: expected one of {INITIAL}, a mesh path or a shape, got {initial!r}")
        spec = run.specs[run.active[0]]
        return spec.load(self)

    # ---- one subject ----
    def register(self, template: Shape, subject: Shape, options: dict, folder: str, write_transform: bool,
                 start: str | None = None):
        reg = dict(options.get("register", {}))
        sigma, data_sigma = widths(template, reg)
        reg.update(sigma=sigma, data_sigma=data_sigma)
        q0 = template.vertices.double()[torch.as_tensor(control_indices(template))]
        initial = _warm_start(start, tuple(q0.shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the summary says whether it converged
            res = register_shapes(template, subject, control_points=q0, initial_momenta=initial, **reg)
        before = float(_term(reg, data_sigma, template, subject)(template.to(torch.float64).cells_geometry()))
        after, grad, warped = subject_gradient(template, subject, res.transform, reg, data_sigma)
        np.save(os.path.join(folder, "gradient.npy"), grad)
        res.transform.save(folder)
        save_mesh(os.path.join(folder, "subject.npz"), subject)
        save_mesh(os.path.join(folder, "warped.vtk"), template.to(torch.float64).with_vertices(warped))
        logs = _log_size_ratios(template.to(torch.float64), warped)
        move = (warped - template.vertices.double()).norm(dim=1)
        summary = {"similarity_before": before, "similarity_after": after, "energy": res.energy,
                   "regularization": float(res.config["regularization"]) / sigma**2, "metric": "data term",
                   "deformation": float(move.mean()), "ndv_percent": 100.0 * res.folded / max(template.n_cells, 1),
                   "sdlogj": float(logs.std()) if logs.size else 0.0, "jacobian_min": res.min_normal_ratio,
                   "flipped": res.flipped, "iterations": [lv.n_iter for lv in res.levels],
                   "stop_reason": res.stop_reason, "converged": res.converged, "registration_seconds": res.seconds,
                   "warm_start": initial is not None}
        momenta = res.momenta.detach().cpu().numpy().astype(np.float32)
        np.save(os.path.join(folder, START_FILE), momenta)
        return momenta, summary

    # ---- the reduction ----
    def update(self, template: Shape, folders: list, options: dict) -> Shape:
        """A backtracking gradient step on ``Σ_s D(φ_s(T), S_s)`` (module docstring)."""
        reg = dict(options.get("register", {}))
        _, data_sigma = widths(template, reg)
        grad = None
        for folder in folders:
            g = np.load(os.path.join(folder, "gradient.npy"))
            grad = g if grad is None else grad + g
        x = template.vertices.double().numpy()
        largest = float(np.linalg.norm(grad, axis=1).max())
        if not largest > 0:
            return template.to(torch.float64)
        data = summed_data(template, folders, reg, data_sigma)
        f0 = data(x)
        alpha = STEP_FRACTION * data_sigma / largest
        for _ in range(MAX_HALVINGS + 1):
            y = x - alpha * grad
            moved = template.to(torch.float64).with_vertices(torch.as_tensor(y))
            flips = template.kind == "triangles" and bool((normal_ratios(template, moved) <= 0).any())
            if not flips and data(y) <= f0 - ARMIJO * alpha * float((grad * grad).sum()):
                return moved
            alpha *= 0.5
        return template.to(torch.float64)

    def unbias(self, template: Shape, momentum: np.ndarray, options: dict):
        """Shoot ``template`` along ``momentum`` from its control vertices with the registrations' kernel, steps and
        scheme; reports the mean and largest vertex move."""
        from lddmm_nets import GaussianKernel

        reg = dict(options.get("register", {}))
        sigma, _ = widths(template, reg)
        t64 = template.to(torch.float64)
        q0 = t64.vertices[torch.as_tensor(control_indices(template))]
        defaults = inspect.signature(register_shapes).parameters  # the registrations' own steps and scheme
        transform = ShapeTransform(GaussianKernel(sigma=sigma), q0, torch.as_tensor(momentum, dtype=torch.float64),
                                   int(reg.get("n_steps", defaults["n_steps"].default)),
                                   str(reg.get("integrator", defaults["integrator"].default)))
        shifted = transform.apply(t64)
        move = (shifted.vertices - t64.vertices).norm(dim=1)
        return shifted, {"bias_mean": float(move.mean()), "bias_max": float(move.max())}

    # ---- results ----
    def load_transform(self, folder: str) -> ShapeTransform:
        return ShapeTransform.load(folder)
