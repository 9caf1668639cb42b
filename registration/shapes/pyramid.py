"""Coarse-to-fine resolutions of a shape for the levels of a registration.

A level compares shapes with a data kernel of width ``σ``: cells much smaller than ``σ`` only cost time. The
pyramid keeps the full shape and, for triangle meshes, quadric-error decimations (Garland & Heckbert 1997, through
``fast_simplification``, the Fast-Quadric-Mesh-Simplification library) by factors of 4 in the number of cells;
``level_shape`` picks the coarsest one whose mean edge length is at most ``ratio · σ``. Point clouds are compressed
exactly as measures: one point per cube of side ``ratio · σ / 2`` at the weighted centroid, carrying the summed
weight. Curves are kept as they are.
"""

from __future__ import annotations

import numpy as np
import torch

from .shape import Shape

__all__ = ["mean_edge_length", "decimate", "Pyramid"]


def mean_edge_length(shape: Shape) -> float:
    """Mean edge length of a mesh or curve; for point clouds the mean nearest-neighbour distance (data units)."""
    v = shape.vertices.detach().cpu().double().numpy()
    if shape.cells is None or shape.cells.shape[1] == 1:
        from scipy.spatial import cKDTree

        return float(cKDTree(v).query(v, k=2)[0][:, 1].mean()) if len(v) > 1 else 0.0
    c = shape.cells.cpu().numpy()
    k = c.shape[1]
    e = np.concatenate([v[c[:, (i + 1) % k]] - v[c[:, i]] for i in range(k if k > 2 else 1)])
    return float(np.linalg.norm(e, axis=1).mean())


def decimate(shape: Shape, n_cells: int) -> Shape:
    """A coarser version of ``shape`` with about ``n_cells`` cells (triangles: quadric decimation; points: voxel
    compression of the measure). Curves are returned unchanged."""
    if shape.kind == "segments" or n_cells >= shape.n_cells:
        return shape
    v = shape.vertices.detach().cpu().double().numpy()
    if shape.kind == "triangles":
        import fast_simplification

        reduction = 1.0 - n_cells / shape.n_cells
        pts, faces = fast_simplification.simplify(v.astype(np.float32), shape.cells.cpu().numpy().astype(np.int32),
                                                  target_reduction=reduction)
        return Shape(torch.as_tensor(np.asarray(pts, dtype=np.float64)).to(shape.vertices),
                     torch.as_tensor(np.asarray(faces, dtype=np.int64)), name=shape.name)
    w = np.ones(len(v)) if shape.weights is None else shape.weights.detach().cpu().double().numpy()
    lo, hi = v.min(0), v.max(0)
    cell = float(np.prod(hi - lo + 1e-12) / n_cells) ** (1.0 / v.shape[1])
    _, labels = np.unique(np.floor((v - lo) / cell).astype(np.int64), axis=0, return_inverse=True)
    labels = labels.ravel()
    mass = np.bincount(labels, weights=w)
    pts = np.stack([np.bincount(labels, weights=w * v[:, i]) for i in range(v.shape[1])], 1) / mass[:, None]
    return Shape(torch.as_tensor(pts).to(shape.vertices), None, torch.as_tensor(mass).to(shape.vertices),
                 name=shape.name)


class Pyramid:
    """The full shape and its decimations by factors of 4 in cells, down to ``min_cells`` (built lazily)."""

    def __init__(self, shape: Shape, *, min_cells: int = 500):
        self.shape = shape
        self.min_cells = int(min_cells)
        self._levels = [(shape, mean_edge_length(shape))]

    def at(self, width: float, ratio: float = 1.0) -> Shape:
        """The coarsest version whose mean edge length is at most ``ratio · width`` (the full shape if none)."""
        if self.shape.kind == "segments":
            return self.shape
        while True:
            coarse, edge = self._levels[-1]
            if edge > ratio * width or coarse.n_cells // 4 < self.min_cells:
                break
            finer = decimate(self.shape, coarse.n_cells // 4)
            if finer.n_cells >= coarse.n_cells:
                break
            self._levels.append((finer, mean_edge_length(finer)))
        for shape, edge in reversed(self._levels):
            if edge <= ratio * width:
                return shape
        return self.shape
