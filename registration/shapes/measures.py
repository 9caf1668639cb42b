"""How good a shape registration is: flipped cells, surface distances (Chamfer, Hausdorff), vertex error.

- ``normal_ratios(source, warped)``: ``n_w · n_s / |n_s|²`` per triangle (``t_w · t_s / |t_s|²`` per segment), the
  orientation of each warped cell against its source cell; a cell *flips* when its ratio is ``<= 0``.
- ``surface_distances(a, b)``: the distance of every vertex of ``a`` to the surface (curve, cloud) ``b`` — the exact
  point-to-triangle or point-to-segment distance, candidates from a k-d tree of cell centres and checked against
  the largest cell radius, so the result is the true distance, not a vertex-to-vertex approximation.
- ``chamfer(a, b)``: ``½ (mean_a d(·, b) + mean_b d(·, a))``; ``hausdorff(a, b)``: ``max(max_a d(·, b), max_b
  d(·, a))`` (data units, e.g. mm).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from .shape import Shape

__all__ = ["normal_ratios", "vector_ratios", "transported_ratios", "flipped_cells", "surface_distances", "chamfer",
           "hausdorff", "vertex_error", "point_triangle_distances", "point_segment_distances"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def normal_ratios(source: Shape, warped) -> np.ndarray:
    """``n_w · n_s / |n_s|²`` per cell (triangles: normals, segments: tangents); empty for point clouds.

    Parameters
    ----------
    source : Shape
    warped : Shape or (N, d) array
        The source's cells on warped vertices.
    """
    if source.kind == "points":
        return np.zeros(0)
    v = warped.vertices if isinstance(warped, Shape) else torch.as_tensor(warped)
    ns = source.cells_geometry().vectors.detach()
    nw = source.cells_geometry(v.to(source.vertices)).vectors.detach()
    return _np(vector_ratios(ns, nw))


def vector_ratios(reference: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``v · r / |r|²`` per row of ``(F, d)`` cell vectors (normals or tangents) against their ``reference``,
    differentiable in both; 1 where the reference is degenerate (``|r| = 0``: such a cell cannot flip)."""
    den = (reference * reference).sum(1)
    ratio = (vectors * reference).sum(1) / torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, ratio, torch.ones_like(ratio))


def transported_ratios(source: Shape, warped, jacobian) -> np.ndarray:
    """``n_w · n_J / |n_J|²`` per cell, against the normal (tangent) the deformation itself carries there.

    ``n_J = det(J) J^{-T} n_s`` for triangles (the cofactor: how a smooth map moves an area vector) and ``n_J = J
    t_s`` for segments, with ``J = Dφ_1`` at the cell's centre. Unlike ``normal_ratios`` it does not count a cell
    that turned with its neighbourhood (a curve bent by more than 90°): a ratio ``<= 0`` means the cell is inverted
    with respect to the smooth map, i.e. the piecewise-linear shape folds. For small deformations (``J ≈ I``) the
    two agree.

    Parameters
    ----------
    source : Shape
    warped : Shape or (N, d) array
    jacobian : (F, d, d) tensor or array
        ``Dφ_1`` at the source's cell centres (``Trajectory.flow_jacobian``).
    """
    if source.kind == "points":
        return np.zeros(0)
    v = warped.vertices if isinstance(warped, Shape) else torch.as_tensor(warped)
    ns = source.cells_geometry().vectors.detach().double()
    nw = source.cells_geometry(v.to(source.vertices)).vectors.detach().double()
    J = torch.as_tensor(jacobian).to(ns)
    if source.kind == "triangles":
        nj = torch.linalg.det(J)[:, None] * torch.linalg.solve(J.transpose(1, 2), ns[:, :, None])[:, :, 0]
    else:
        nj = (J @ ns[:, :, None])[:, :, 0]
    return _np(vector_ratios(nj, nw))


def flipped_cells(source: Shape, warped) -> int:
    """Number of cells whose orientation reversed (``normal_ratios <= 0``)."""
    return int((normal_ratios(source, warped) <= 0).sum())


def point_segment_distances(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points ``p`` (M, d) to segments ``[a, b]`` (M, d) each, row by row: (M,)."""
    ab = b - a
    t = np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-300)
    closest = a + np.clip(t, 0.0, 1.0)[:, None] * ab
    return np.linalg.norm(p - closest, axis=1)


def point_triangle_distances(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Distance of points ``p`` (M, 3) to triangles ``(a, b, c)`` (M, 3) each, row by row: (M,).

    The closest point is in the face, on an edge or at a vertex (Voronoi regions of the triangle, Ericson 2005,
    §5.1.5); degenerate triangles fall back to their edges.
    """
    ab, ac, ap = b - a, c - a, p - a
    n = np.cross(ab, ac)
    nn = np.einsum("ij,ij->i", n, n)
    ok = nn > 1e-300
    # barycentric coordinates of the projection onto the plane
    d = np.einsum("ij,ij->i", ap, n) / np.where(ok, nn, 1.0)
    proj = p - d[:, None] * n
    v0, v1, v2 = ab, ac, proj - a
    d00, d01, d11 = (np.einsum("ij,ij->i", x, y) for x, y in ((v0, v0), (v0, v1), (v1, v1)))
    d20, d21 = np.einsum("ij,ij->i", v2, v0), np.einsum("ij,ij->i", v2, v1)
    den = np.where(ok, d00 * d11 - d01 * d01, 1.0)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    inside = ok & (v >= 0) & (w >= 0) & (v + w <= 1)
    edges = np.minimum(np.minimum(point_segment_distances(p, a, b), point_segment_distances(p, b, c)),
                       point_segment_distances(p, c, a))
    return np.where(inside, np.abs(d) * np.sqrt(np.where(ok, nn, 0.0)), edges)


def surface_distances(points, shape: Shape, k: int = 8) -> np.ndarray:
    """Distance of every point to ``shape`` (its triangles, segments or points): (M,) array, data units.

    Parameters
    ----------
    points : Shape or (M, d) array
    shape : Shape
    k : int
        Candidate cells per point, nearest by centre; points whose candidates cannot be proven to hold the
        closest cell (a cell centre farther than the best distance plus the largest cell radius cannot) are redone
        with four times more candidates, until proven.
    """
    p = _np(points.vertices if isinstance(points, Shape) else points)
    verts = _np(shape.vertices)
    if shape.kind == "points":
        return cKDTree(verts).query(p)[0]
    cells = shape.cells.cpu().numpy()
    corners = verts[cells]  # (F, k, d)
    centres = corners.mean(1)
    radius = float(np.linalg.norm(corners - centres[:, None], axis=2).max())
    tree = cKDTree(centres)
    k = max(1, min(k, len(cells)))

    def exact(idx_p, idx_c):
        c = corners[idx_c]
        if cells.shape[1] == 2:
            return point_segment_distances(p[idx_p], c[:, 0], c[:, 1])
        return point_triangle_distances(p[idx_p], c[:, 0], c[:, 1], c[:, 2])

    best = np.full(len(p), np.inf)
    todo = np.arange(len(p))
    while len(todo):
        dist_c, idx = tree.query(p[todo], k=k)
        dist_c, idx = dist_c.reshape(len(todo), k), idx.reshape(len(todo), k)
        best[todo] = exact(np.repeat(todo, k), idx.ravel()).reshape(len(todo), k).min(1)
        if k >= len(cells):
            break
        # a cell farther than best + radius from its centre cannot hold a closer point: redo the others with more
        todo = todo[dist_c[:, -1] < best[todo] + radius]
        k = min(4 * k, len(cells))
    return best


def chamfer(a: Shape, b: Shape) -> float:
    """Symmetric mean surface distance ``½ (mean_a d(·, b) + mean_b d(·, a))`` (data units)."""
    return 0.5 * float(surface_distances(a, b).mean() + surface_distances(b, a).mean())


def hausdorff(a: Shape, b: Shape) -> float:
    """Hausdorff distance ``max(max_a d(·, b), max_b d(·, a))`` (vertices against surfaces; data units)."""
    return float(max(surface_distances(a, b).max(), surface_distances(b, a).max()))


def vertex_error(warped, truth) -> float:
    """Mean distance between corresponding vertices (same indexing), data units."""
    w = _np(warped.vertices if isinstance(warped, Shape) else warped)
    t = _np(truth.vertices if isinstance(truth, Shape) else truth)
    if w.shape != t.shape:
        raise ValueError(f"truth: expected shape {w.shape} (as warped), got {t.shape}")
    return float(np.linalg.norm(w - t, axis=1).mean())
