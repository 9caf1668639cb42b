"""The result of ``register_shapes``: the deformation, the warped shapes and what the run achieved."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from lddmm_nets import Trajectory

from .measures import normal_ratios, surface_distances, transported_ratios
from .shape import Shape
from .transform import ShapeTransform

__all__ = ["ShapeRegistration", "LevelRecord", "REPORT_FILE"]

REPORT_FILE = "report.json"


@dataclass
class LevelRecord:
    """One level of the coarse-to-fine schedule.

    Attributes
    ----------
    data_sigma : float
        Width of the data term's Gaussian (data units).
    n_source_cells, n_target_cells : int
        Cells compared at this level (pyramid resolution).
    n_iter, n_eval : int
    stop_reason : str
        ``lddmm_nets.optim.STOP_REASONS`` key.
    converged : bool
    relative_distance_before, relative_distance_after : float
        Mean over objects of ``D(φ(S), T) / D(S, T)`` at this level, at its start and end.
    start_scale : float
        Factor applied to the previous level's momenta so that no cell of this level's mesh flips (1: none).
    seconds : float
    """

    data_sigma: float
    n_source_cells: int
    n_target_cells: int
    n_iter: int
    n_eval: int
    stop_reason: str
    converged: bool
    relative_distance_before: float
    relative_distance_after: float
    start_scale: float = 1.0
    seconds: float = 0.0


def _unwrap(items: list, single: bool):
    return items[0] if single else items


@dataclass
class ShapeRegistration:
    """Result of ``register_shapes``.

    Attributes
    ----------
    transform : ShapeTransform
        The deformation: control points, momenta, kernel, scheme; ``apply`` / ``inverse`` move anything.
    source, target, warped : Shape or list of Shape
        As given (lists when lists were given); ``warped`` = the source's cells on the moved vertices (float64).
    trajectory : Trajectory
        The control points' geodesic (float64, detached); ``trajectory.flow(x)`` is ``apply`` on tensors.
    distance_before, distance_after : list of float
        The finest data term ``D(S, T)`` and ``D(φ_1(S), T)`` per object, on the full shapes (data units; with the
        last level's truncated Gaussian when that level truncated it, ``register.TRUNCATE_MIN_CELL_PAIRS``).
    energy : float
        Kinetic energy ``H(q0, p0) = ½ ⟨p0, K p0⟩`` of the geodesic (data units²).
    min_normal_ratio : float
        Smallest ``n_w · n_s / |n_s|²`` over the full source's triangles (segments): the warped normal against the
        source normal (``measures.normal_ratios``); ``nan`` for point clouds.
    flipped : int
        Triangles (segments) with ``n_w · n_s <= 0``: turned against their source orientation.
    folded : int
        Cells inverted with respect to the smooth map (``measures.transported_ratios <= 0``): the piecewise-linear
        shape folds there. Equal to ``flipped`` for small deformations; for curves bent by more than 90° (a circle
        into a C) ``flipped`` counts turned segments that are not folds.
    levels : list of LevelRecord
    objective_history : list of float
        The objective after every iteration, all levels in a row.
    n_iter : int
        Iterations over all levels.
    seconds : float
    stop_reason : str
        The last level's.
    converged : bool
        Whether the last level converged.
    config : dict
        The options the run used (defaults resolved).
    """

    transform: ShapeTransform
    source: object
    target: object
    warped: object
    trajectory: Trajectory
    distance_before: list
    distance_after: list
    energy: float
    min_normal_ratio: float
    flipped: int
    folded: int = 0
    levels: list = field(default_factory=list)
    objective_history: list = field(default_factory=list)
    n_iter: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    converged: bool = False
    config: dict = field(default_factory=dict)

    @classmethod
    def build(cls, sources, targets, transform: ShapeTransform, levels, history, *, single: bool, data_term,
              data_sigma, backend, seconds: float, config: dict) -> "ShapeRegistration":
        """Evaluate the final deformation on the full shapes (float64) and assemble the result."""
        from .register import level_term

        traj = transform.trajectory(torch.float64, backend)
        warped = [transform.apply(s.to(torch.float64)) for s in sources]
        before, after, ratios = [], [], []
        with torch.no_grad():
            for s, t, w in zip(sources, targets, warped):
                s64, t64 = s.to(torch.float64), t.to(torch.float64)
                # the last level's term (truncated for shapes this large, as the level was: the full sums would
                # take a minute at 10,242 vertices)
                term = level_term(data_term, data_sigma, s, t, backend)
                attached = term.attach(t64.to(torch.float32).cells_geometry())
                before.append(float(attached(s64.to(torch.float32).cells_geometry())))
                after.append(float(attached(w.to(torch.float32).cells_geometry())))
                ratios.append(normal_ratios(s64, w))
            p0, q0 = traj.p[0], traj.q[0]
            energy = float(traj.system.energy(q0, p0))
        folded = 0
        for s, w in zip(sources, warped):
            if s.kind != "points":
                jac = traj.flow_jacobian(s.to(torch.float64).cells_geometry().centers)
                folded += int((transported_ratios(s.to(torch.float64), w, jac) <= 0).sum())
        all_ratios = np.concatenate(ratios) if ratios else np.zeros(0)
        return cls(transform=transform, source=_unwrap(sources, single), target=_unwrap(targets, single),
                   warped=_unwrap(warped, single), trajectory=traj, distance_before=before, distance_after=after,
                   energy=energy, min_normal_ratio=float(all_ratios.min()) if all_ratios.size else math.nan,
                   flipped=int((all_ratios <= 0).sum()), folded=folded, levels=list(levels), objective_history=list(history),
                   n_iter=sum(r.n_iter for r in levels), seconds=seconds, stop_reason=levels[-1].stop_reason,
                   converged=levels[-1].converged, config=dict(config))

    # --- using the deformation ------------------------------------------------------------------------------------
    @property
    def control_points(self) -> torch.Tensor:
        return self.transform.control_points

    @property
    def momenta(self) -> torch.Tensor:
        return self.transform.momenta

    def apply(self, obj):
        """Move a shape, points (tensor or array) or a list of them forward by ``φ_1`` (``ShapeTransform.apply``)."""
        return self.transform.apply(obj)

    def inverse(self, obj):
        """Move them backward by ``φ_1^{-1}`` (``ShapeTransform.inverse``)."""
        return self.transform.inverse(obj)

    # --- reporting ------------------------------------------------------------------------------------------------
    def report(self) -> dict:
        """Numbers of the run as JSON-ready types (``report.json``)."""
        rel = [a / b if b > 0 else 0.0 for a, b in zip(self.distance_after, self.distance_before)]
        return {
            "distance_before": self.distance_before, "distance_after": self.distance_after,
            "relative_distance_after": rel, "energy": self.energy, "iterations": self.n_iter,
            "seconds": self.seconds, "stop_reason": self.stop_reason, "converged": self.converged,
            "flipped_triangles": self.flipped, "folded_cells": self.folded,
            "min_normal_ratio": self.min_normal_ratio,
            "n_control_points": int(self.control_points.shape[0]),
            "levels": [asdict(r) for r in self.levels], "config": self.config,
        }

    def surface_metrics(self) -> list[dict]:
        """Chamfer and Hausdorff distances (``registration.shapes.measures``) before and after, per object."""
        as_list = (lambda x: x if isinstance(x, list) else [x])  # noqa: E731
        out = []
        for s, t, w in zip(as_list(self.source), as_list(self.target), as_list(self.warped)):
            row = {}
            for when, a in (("before", s), ("after", w)):
                ab, ba = surface_distances(a, t), surface_distances(t, a)
                row[f"chamfer_{when}"] = 0.5 * float(ab.mean() + ba.mean())
                row[f"hausdorff_{when}"] = float(max(ab.max(), ba.max()))
            out.append(row)
        return out

    def save(self, directory, *, extension: str = ".vtk", overview: bool = True, metrics: bool = True) -> list[str]:
        """Write the result into ``directory`` atomically: ``warped<ext>`` (one per object: ``warped_<i><ext>``;
        the source's cells on the moved vertices), ``momenta.npz`` (``ShapeTransform``), ``overview.png`` and
        ``report.json`` (``report()`` plus, with ``metrics``, Chamfer and Hausdorff distances before and after).

        Everything is written in a temporary directory beside ``directory`` and moved into place at the end,
        ``report.json`` last, so an interrupted save never leaves a complete-looking result.

        Returns
        -------
        list of str
            The paths written.
        """
        from ..io.meshes import save_mesh
        from .plot import plot_registration

        directory = os.path.abspath(os.fspath(directory))
        parent = os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".lddmm-partial-", dir=parent)
        try:
            warped = self.warped if isinstance(self.warped, list) else [self.warped]
            names = [f"warped{extension}"] if len(warped) == 1 else [f"warped_{i}{extension}" for i in
                                                                     range(len(warped))]
            for name, w in zip(names, warped):
                save_mesh(os.path.join(tmp, name), w)
            names.append(os.path.basename(self.transform.save(tmp)))
            if overview:
                plot_registration(self, os.path.join(tmp, "overview.png"))
                names.append("overview.png")
            report = self.report()
            if metrics:
                report["surface_distances"] = self.surface_metrics()
            with open(os.path.join(tmp, REPORT_FILE), "w") as fh:
                json.dump(report, fh, indent=2, default=float)
            names.append(REPORT_FILE)
            os.makedirs(directory, exist_ok=True)
            stale = os.path.join(directory, REPORT_FILE)
            if os.path.exists(stale):  # an older result is being replaced: invalidate it first
                os.remove(stale)
            out = []
            for name in names:
                os.replace(os.path.join(tmp, name), os.path.join(directory, name))
                out.append(os.path.join(directory, name))
            return out
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
