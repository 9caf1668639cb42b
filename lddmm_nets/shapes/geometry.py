"""Shapes as the data terms see them: weighted, oriented cells (THEORY §8).

A shape is a finite set of cells — points of a cloud, segments of a polyline, triangles of a surface — each with a
centre ``c``, a unit direction ``u`` (tangent of a segment, normal of a triangle) and a size ``a`` (length, area or
weight). ``cell_geometry`` computes them once from vertex positions and cell indices, differentiably in the
vertices, as ``Cells(centers, vectors)`` with ``vectors = a u``:

- points ``(F, 1)`` cells (or none): ``c = x``, ``vectors`` = the weights, shape ``(F, 1)``;
- segments ``(F, 2)``, any dimension: ``c = (x1 + x2)/2``, ``a u = x2 − x1``;
- triangles ``(F, 3)``, 3-D only: ``c = (x1 + x2 + x3)/3``, ``a u = ½ (x2 − x1) × (x3 − x1)``.

Degenerate cells (zero length or area) are allowed: their direction is defined as 0 and every data term gives them
weight 0, with finite gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_points

__all__ = ["Cells", "cell_geometry", "KINDS", "safe_norm"]

#: number of vertices per cell -> kind
KINDS = {1: "points", 2: "segments", 3: "triangles"}


def safe_norm(v: torch.Tensor) -> torch.Tensor:
    """``|v|`` along the last axis, keepdim, with a finite zero gradient at ``v = 0`` (never ``0/0``)."""
    s = (v * v).sum(-1, keepdim=True)
    return s.clamp_min(torch.finfo(v.dtype).tiny).sqrt()


@dataclass
class Cells:
    """Cells of a shape: centres and size-weighted directions.

    Attributes
    ----------
    centers : (F, d) tensor
        Cell centres (data units).
    vectors : (F, d) or (F, 1) tensor
        ``a u``: the segment vector ``x2 − x1``, the area-weighted normal ``½ (x2 − x1) × (x3 − x1)``, or (points)
        the weights, shape (F, 1).
    kind : {"points", "segments", "triangles"}
    """

    centers: torch.Tensor
    vectors: torch.Tensor
    kind: str

    @property
    def sizes(self) -> torch.Tensor:
        """Lengths, areas or weights ``a``: (F, 1)."""
        return self.vectors.abs() if self.kind == "points" else safe_norm(self.vectors)

    @property
    def directions(self) -> torch.Tensor:
        """Unit tangents or normals ``u`` (0 for degenerate cells): (F, d); points: (F, 1) ones."""
        if self.kind == "points":
            return torch.ones_like(self.vectors)
        return self.vectors / safe_norm(self.vectors)

    def __len__(self) -> int:
        return self.centers.shape[0]


def _check_cells(cells, n_vertices: int) -> torch.Tensor:
    if not isinstance(cells, torch.Tensor):
        raise TypeError(f"cells: expected an integer torch.Tensor of shape (F, k), got {type(cells).__name__}")
    if cells.ndim != 2 or cells.shape[1] not in KINDS:
        raise ValueError(f"cells: expected shape (F, 1), (F, 2) or (F, 3), got shape {tuple(cells.shape)}")
    if cells.dtype.is_floating_point or cells.dtype == torch.bool or cells.is_complex():
        raise ValueError(f"cells: expected an integer dtype, got {cells.dtype}")
    if cells.numel() and (int(cells.min()) < 0 or int(cells.max()) >= n_vertices):
        raise ValueError(f"cells: expected indices in [0, {n_vertices}), got [{int(cells.min())}, {int(cells.max())}]")
    return cells.long()


def cell_geometry(vertices: torch.Tensor, cells: torch.Tensor | None = None,
                  weights: torch.Tensor | None = None) -> Cells:
    """Centres and size-weighted directions of a shape's cells (differentiable in ``vertices``).

    Parameters
    ----------
    vertices : (N, d) tensor
        Vertex positions (data units).
    cells : (F, k) integer tensor, optional
        Vertex indices of each cell, ``k`` = 1 (points), 2 (segments) or 3 (triangles, ``d = 3``). ``None``: every
        vertex is a point.
    weights : (F,) or (F, 1) tensor, optional
        Point weights (points only; default 1 each).

    Returns
    -------
    Cells

    Raises
    ------
    ValueError
        Bad shapes, indices out of range, triangles outside 3-D, or weights given for segments or triangles.
    """
    vertices = check_points("vertices", vertices)
    n, d = vertices.shape
    if cells is None:
        cells = torch.arange(n, device=vertices.device)[:, None]
    cells = _check_cells(cells, n)
    kind = KINDS[cells.shape[1]]
    if weights is not None and kind != "points":
        raise ValueError(f"weights: expected None for {kind} (their sizes are lengths or areas), got a tensor")
    if kind == "points":
        centers = vertices[cells[:, 0]]
        if weights is None:
            vectors = torch.ones_like(centers[:, :1])
        else:
            vectors = torch.as_tensor(weights, dtype=vertices.dtype, device=vertices.device).reshape(-1, 1)
            if vectors.shape[0] != centers.shape[0]:
                raise ValueError(f"weights: expected {centers.shape[0]} values (one per point), got {vectors.shape[0]}")
        return Cells(centers, vectors, kind)
    x = vertices[cells]  # (F, k, d)
    if kind == "segments":
        return Cells(0.5 * (x[:, 0] + x[:, 1]), x[:, 1] - x[:, 0], kind)
    if d != 3:
        raise ValueError(f"vertices: triangles need 3-D vertices (shape (N, 3)), got shape {tuple(vertices.shape)}")
    normal = 0.5 * torch.linalg.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0], dim=-1)
    return Cells(x.mean(1), normal, kind)
