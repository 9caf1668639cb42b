"""Shapes as data: point clouds, polylines (curves) and triangle meshes in 2-D and 3-D, in world coordinates.

``Shape`` holds vertex positions and cells (vertex indices: none or ``(F, 1)`` for points, ``(F, 2)`` segments,
``(F, 3)`` triangles); the data terms read it through ``cells_geometry()`` (centres, tangents or normals, lengths or
areas; differentiable in the vertices). Connected components are computed from the cells; several objects of one
subject (two hemispheres, a curve and a surface) are either one ``Shape`` (``Shape.union``, one data term) or a
list of shapes registered together with one deformation (``register_shapes`` takes lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lddmm_nets.shapes import KINDS, Cells, cell_geometry

__all__ = ["Shape", "as_shape"]


def _as_vertices(vertices, name: str = "vertices") -> torch.Tensor:
    v = torch.as_tensor(np.asarray(vertices) if not isinstance(vertices, torch.Tensor) else vertices)
    if v.ndim != 2 or v.shape[1] not in (2, 3):
        raise ValueError(f"{name}: expected shape (N, 2) or (N, 3), got shape {tuple(v.shape)}")
    if not v.is_floating_point():
        v = v.to(torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name}: expected finite coordinates, got {int((~torch.isfinite(v)).sum())} NaN or inf")
    return v


def _as_cells(cells, n: int) -> torch.Tensor | None:
    if cells is None:
        return None
    c = torch.as_tensor(np.asarray(cells) if not isinstance(cells, torch.Tensor) else cells)
    if c.ndim != 2 or c.shape[1] not in KINDS:
        raise ValueError(f"cells: expected shape (F, 1), (F, 2) or (F, 3), got shape {tuple(c.shape)}")
    if c.is_floating_point() or c.dtype == torch.bool:
        raise ValueError(f"cells: expected integer vertex indices, got {c.dtype}")
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= n):
        raise ValueError(f"cells: expected indices in [0, {n}), got [{int(c.min())}, {int(c.max())}]")
    return c.long()


@dataclass(eq=False)
class Shape:
    """A point cloud, curve or surface.

    Attributes
    ----------
    vertices : (N, d) tensor
        Positions in world coordinates (e.g. mm), ``d`` = 2 or 3.
    cells : (F, k) long tensor or None
        ``None`` or ``k = 1``: points; ``k = 2``: segments (curves); ``k = 3``: triangles (3-D surfaces).
    weights : (N,) tensor or None
        Point weights (point clouds only; default 1 each).
    name : str
        Where it came from (a path), for reports.
    meta : dict
        What a writer needs to write the shape back in its own format (e.g. GIFTI metadata).
    """

    vertices: torch.Tensor
    cells: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    name: str = ""
    meta: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.vertices = _as_vertices(self.vertices)
        self.cells = _as_cells(self.cells, self.vertices.shape[0])
        if self.cells is not None and self.cells.shape[1] == 3 and self.dim != 3:
            raise ValueError(f"vertices: triangles need 3-D vertices, got shape {tuple(self.vertices.shape)}")
        if self.weights is not None:
            if self.kind != "points":
                raise ValueError(f"weights: expected None for {self.kind} (their sizes are lengths or areas)")
            self.weights = torch.as_tensor(self.weights).to(self.vertices).reshape(-1)
            if self.weights.shape[0] != self.n_cells:
                raise ValueError(f"weights: expected {self.n_cells} values, got {self.weights.shape[0]}")

    # --- description ----------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"points"``, ``"segments"`` or ``"triangles"``."""
        return "points" if self.cells is None else KINDS[self.cells.shape[1]]

    @property
    def dim(self) -> int:
        return int(self.vertices.shape[1])

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_cells(self) -> int:
        return self.n_vertices if self.cells is None else int(self.cells.shape[0])

    @property
    def diameter(self) -> float:
        """Length of the bounding box's diagonal (data units)."""
        v = self.vertices.detach()
        return float((v.max(0).values - v.min(0).values).norm()) if len(v) else 0.0

    def __repr__(self):
        name = f", name={self.name!r}" if self.name else ""
        return f"Shape({self.kind}, {self.n_vertices} vertices, {self.n_cells} cells, {self.dim}-D{name})"

    # --- geometry -------------------------------------------------------------------------------------------------
    def cells_geometry(self, vertices: torch.Tensor | None = None) -> Cells:
        """Centres, size-weighted directions and sizes of the cells (``lddmm_nets.shapes.Cells``), differentiable
        in ``vertices`` (default: the shape's own)."""
        v = self.vertices if vertices is None else vertices
        cells = self.cells
        if cells is not None:
            cells = cells.to(v.device)
        w = None if self.weights is None else self.weights.to(v)
        return cell_geometry(v, cells, w)

    def with_vertices(self, vertices) -> "Shape":
        """The same cells on other vertex positions (e.g. the warped shape)."""
        v = _as_vertices(vertices)
        if v.shape != self.vertices.shape:
            raise ValueError(f"vertices: expected shape {tuple(self.vertices.shape)}, got {tuple(v.shape)}")
        return Shape(v, self.cells, self.weights, self.name, dict(self.meta))

    def to(self, dtype: torch.dtype | None = None, device=None) -> "Shape":
        """A copy with vertices (and weights) of another dtype or on another device (cells follow the device)."""
        v = self.vertices.to(dtype=dtype or self.vertices.dtype, device=device or self.vertices.device)
        c = None if self.cells is None else self.cells.to(v.device)
        w = None if self.weights is None else self.weights.to(v)
        return Shape(v, c, w, self.name, dict(self.meta))

    # --- components and unions ------------------------------------------------------------------------------------
    def components(self) -> np.ndarray:
        """Connected component of every vertex (0, 1, ... by first vertex; isolated vertices get their own)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = self.n_vertices
        if self.cells is None or self.cells.shape[1] == 1:
            return np.arange(n)
        c = self.cells.cpu().numpy()
        k = c.shape[1]
        rows = np.concatenate([c[:, i] for i in range(k)])
        cols = np.concatenate([c[:, (i + 1) % k] for i in range(k)])
        graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        _, first = np.unique(labels, return_index=True)  # renumber by first vertex
        order = np.argsort(np.argsort(first))
        return order[labels]

    def split(self) -> list["Shape"]:
        """One shape per connected component (vertices renumbered, cells kept)."""
        labels = self.components()
        out = []
        for k in range(int(labels.max()) + 1 if len(labels) else 0):
            keep = np.flatnonzero(labels == k)
            new = -np.ones(self.n_vertices, dtype=np.int64)
            new[keep] = np.arange(len(keep))
            cells = None
            if self.cells is not None:
                c = self.cells.cpu().numpy()
                cells = torch.as_tensor(new[c[labels[c[:, 0]] == k]])
            weights = None if self.weights is None else self.weights[torch.as_tensor(keep)]
            out.append(Shape(self.vertices[torch.as_tensor(keep)], cells, weights, f"{self.name}[{k}]"))
        return out

    @staticmethod
    def union(shapes) -> "Shape":
        """One shape made of several of the same kind and dimension (cells renumbered); e.g. two hemispheres."""
        shapes = list(shapes)
        if not shapes:
            raise ValueError("shapes: expected at least one shape, got none")
        kinds = {(s.kind, s.dim) for s in shapes}
        if len(kinds) != 1:
            raise ValueError(f"shapes: expected one kind and dimension, got {sorted(kinds)}")
        offset, cells, weights = 0, [], []
        for s in shapes:
            if s.cells is not None:
                cells.append(s.cells + offset)
            if s.weights is not None or s.kind == "points":
                weights.append(s.weights if s.weights is not None else torch.ones(s.n_vertices).to(s.vertices))
            offset += s.n_vertices
        v = torch.cat([s.vertices.to(shapes[0].vertices) for s in shapes])
        w = torch.cat(weights) if shapes[0].kind == "points" and any(s.weights is not None for s in shapes) else None
        return Shape(v, torch.cat(cells) if cells else None, w, "+".join(s.name for s in shapes if s.name))


def as_shape(obj, name: str = "shape") -> Shape:
    """A ``Shape`` from a Shape, a path (``registration.io.load_mesh``), a ``(vertices, cells)`` pair, or an
    ``(N, d)`` array of points."""
    if isinstance(obj, Shape):
        return obj
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        from ..io.meshes import load_mesh

        return load_mesh(obj, name=name)
    if isinstance(obj, tuple) and len(obj) == 2:
        return Shape(obj[0], obj[1])
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return Shape(obj)
    raise TypeError(f"{name}: expected a Shape, a path, a (vertices, cells) pair or an (N, d) array, "
                    f"got {type(obj).__name__}")
