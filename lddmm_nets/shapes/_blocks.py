"""Block-sparse truncation of Gaussian kernel sums for KeOps (``LazyTensor.ranges``): O(N) memory, O(N k) work.

Points are grouped into cubic cells (clusters), each side sorted so that a cluster is a contiguous range, and the
pair of clusters ``(A, B)`` is reduced only when ``|c_A − c_B| <= radius + r_A + r_B`` (centroids ``c``, cluster
radii ``r``): every pair of points closer than ``radius`` is kept, whatever the clustering. For a Gaussian of
unit width (points scaled by ``1/σ``) and ``radius = 4``, a dropped pair weighs less than ``exp(−8) ≈ 3.4e-4``.
The clusters are recomputed from the current positions at every call (O(N log N)), so moving points never lose a
neighbour. The cluster-pair mask is ``(C_x, C_y)`` booleans with ``C ≈ N / (points per cell)``.
"""

from __future__ import annotations

import torch

__all__ = ["voxel_clusters", "block_ranges"]


def voxel_clusters(x: torch.Tensor, cell: float):
    """Sort points by cubic cells of side ``cell``.

    Returns
    -------
    perm : (N,) long tensor
        Order that makes every cluster contiguous.
    ranges : (C, 2) int32 tensor
        ``[start, end)`` of each cluster in the sorted order.
    centroids : (C, d) tensor
    radii : (C,) tensor
        Largest distance of a member to its centroid.
    """
    with torch.no_grad():
        keys = torch.floor(x / cell).long()
        _, labels = torch.unique(keys, dim=0, return_inverse=True)
        perm = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        ends = torch.cumsum(counts, 0)
        ranges = torch.stack([ends - counts, ends], 1).int()
        centroids = torch.zeros(len(counts), x.shape[1], dtype=x.dtype, device=x.device)
        centroids.index_add_(0, labels, x)
        centroids /= counts[:, None].to(x.dtype)
        dist = ((x - centroids[labels]) ** 2).sum(1).sqrt()
        radii = torch.zeros(len(counts), dtype=x.dtype, device=x.device).scatter_reduce(0, labels, dist, "amax")
    return perm, ranges, centroids, radii


def block_ranges(x: torch.Tensor, y: torch.Tensor, radius: float, cell: float):
    """KeOps ranges keeping every pair ``|x_i − y_j| <= radius`` (module docstring).

    Parameters
    ----------
    x : (M, d) tensor
    y : (N, d) tensor
        Points (already scaled by the kernel width).
    radius : float
    cell : float
        Side of the clustering cells (same units).

    Returns
    -------
    perm_x, perm_y : long tensors
        Sort orders; apply them to every ``i`` (resp. ``j``) variable of the reduction.
    ranges : tuple
        The 6-tuple of ``LazyTensor.ranges``.
    kept : float
        Fraction of point pairs inside the kept blocks.
    """
    from pykeops.torch.cluster import from_matrix

    px, rx, cx, ax = voxel_clusters(x, cell)
    py, ry, cy, ay = voxel_clusters(y, cell)
    with torch.no_grad():
        d2 = ((cx * cx).sum(1)[:, None] + (cy * cy).sum(1)[None, :] - 2 * cx @ cy.T).clamp_min(0)
        keep = d2 <= (radius + ax[:, None] + ay[None, :]) ** 2
        nx = (rx[:, 1] - rx[:, 0]).to(x.dtype)
        ny = (ry[:, 1] - ry[:, 0]).to(x.dtype)
        kept = float((nx[:, None] * ny[None, :] * keep).sum()) / max(x.shape[0] * y.shape[0], 1)
    return px, py, from_matrix(rx, ry, keep), kept
