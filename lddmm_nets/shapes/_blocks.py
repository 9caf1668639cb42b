"""Block-sparse sums of compactly supported kernels: KeOps ranges (``LazyTensor.ranges``) and padded dense blocks.

Points are grouped into cubic cells (clusters), each side sorted so that a cluster is a contiguous range, and the
pair of clusters ``(A, B)`` is reduced only when ``|c_A − c_B| <= radius + r_A + r_B`` (centroids ``c``, cluster
radii ``r``): every pair of points closer than ``radius`` is kept, whatever the clustering. For a Gaussian of
unit width (points scaled by ``1/σ``) and ``radius = 4``, a dropped pair weighs less than ``exp(−8) ≈ 3.4e-4``.
The clusters are recomputed from the current positions at every call (O(N log N)), so moving points never lose a
neighbour. The cluster-pair mask is ``(C_x, C_y)`` booleans with ``C ≈ N / (points per cell)``.

``block_pairs`` prepares the same truncation for dense torch: clusters cut into chunks of at most ``size`` points and
padded to exactly ``size``, and the list of kept cluster pairs; a sum is then a batch of ``(size, size)`` matrix
products over the kept pairs, evaluated in chunks (``lddmm_nets.shapes.terms``).
"""

from __future__ import annotations

import torch

__all__ = ["voxel_clusters", "cluster_pairs", "block_ranges", "padded_clusters", "block_pairs", "filled_cell"]


def _cell_labels(x: torch.Tensor, cell: float) -> torch.Tensor:
    """(N,) index of each point's cubic cell of side ``cell`` among the non-empty cells, in sorted key order."""
    keys = torch.floor(x / cell).long()
    keys = keys - keys.min(0).values
    span = keys.max(0).values + 1
    flat = keys[:, 0]
    for i in range(1, keys.shape[1]):  # one integer per cell (row-major), then a 1-D unique: far faster
        flat = flat * span[i] + keys[:, i]
    return torch.unique(flat, return_inverse=True)[1]


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
        labels = _cell_labels(x, cell)
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


def filled_cell(x: torch.Tensor, candidates, fill: float) -> float:
    """The smallest cell side among ``candidates`` (ascending) whose non-empty cubic cells hold at least ``fill``
    points on average (the largest candidate if none does): padded blocks of ``size ≈ fill`` points are then
    mostly real points, not padding, whatever the density of the shape relative to the kernel width."""
    with torch.no_grad():
        for cell in candidates:
            if x.shape[0] / (int(_cell_labels(x, cell).max()) + 1) >= fill:
                return float(cell)
    return float(candidates[-1])


def _near(cx: torch.Tensor, ax: torch.Tensor, cy: torch.Tensor, ay: torch.Tensor, radius: float) -> torch.Tensor:
    """``(C_x, C_y)`` mask of the cluster pairs that may hold a pair closer than ``radius``: centroid distance at most
    ``radius`` plus both clusters' radii."""
    d2 = ((cx * cx).sum(1)[:, None] + (cy * cy).sum(1)[None, :] - 2 * cx @ cy.T).clamp_min(0)
    return d2 <= (radius + ax[:, None] + ay[None, :]) ** 2


def cluster_pairs(x: torch.Tensor, y: torch.Tensor, radius: float, cell: float):
    """The cubic-cell clusters of ``x`` and ``y`` (``voxel_clusters``; once when ``y`` is ``x``) and the pairs of
    them that may hold a pair ``|x_i − y_j| <= radius``.

    Returns
    -------
    (perm_x, ranges_x), (perm_y, ranges_y) :
        Sort orders and ``[start, end)`` of each cluster in them (``voxel_clusters``).
    keep : (C_x, C_y) bool tensor
    kept : float
        Fraction of the ``M N`` point pairs inside the kept cluster pairs.
    """
    px, rx, cx, ax = voxel_clusters(x, cell)
    py, ry, cy, ay = (px, rx, cx, ax) if y is x else voxel_clusters(y, cell)
    with torch.no_grad():
        keep = _near(cx, ax, cy, ay, radius)
        nx = (rx[:, 1] - rx[:, 0]).to(x.dtype)
        ny = (ry[:, 1] - ry[:, 0]).to(x.dtype)
        kept = float((nx[:, None] * ny[None, :] * keep).sum()) / max(x.shape[0] * y.shape[0], 1)
    return (px, rx), (py, ry), keep, kept


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

    (px, rx), (py, ry), keep, kept = cluster_pairs(x, y, radius, cell)
    return px, py, from_matrix(rx, ry, keep), kept


def padded_clusters(x: torch.Tensor, cell: float, size: int):
    """Clusters of at most ``size`` points: the cubic cells of side ``cell``, cut in chunks of ``size``.

    Returns
    -------
    index : (C, size) long tensor
        Point indices of each cluster; padding slots repeat the cluster's first point.
    mask : (C, size) bool tensor
        Real slots.
    centroids : (C, d) tensor
    radii : (C,) tensor
    """
    perm, ranges, _, _ = voxel_clusters(x, cell)
    with torch.no_grad():
        start, end = ranges[:, 0].long(), ranges[:, 1].long()
        chunks = (end - start + size - 1) // size
        cell_of = torch.repeat_interleave(torch.arange(len(start), device=x.device), chunks)
        first = torch.cumsum(chunks, 0) - chunks
        chunk_start = start[cell_of] + size * (torch.arange(len(cell_of), device=x.device) - first[cell_of])
        chunk_len = torch.minimum(end[cell_of] - chunk_start, torch.full_like(chunk_start, size))
        slot = torch.arange(size, device=x.device)
        mask = slot[None, :] < chunk_len[:, None]
        index = perm[torch.where(mask, chunk_start[:, None] + slot[None, :], chunk_start[:, None])]
        pts = x[index]
        w = mask.to(x.dtype)[..., None]
        centroids = (pts * w).sum(1) / w.sum(1)
        radii = (((pts - centroids[:, None]) ** 2).sum(-1).sqrt() * mask).amax(1)
    return index, mask, centroids, radii


def block_pairs(x: torch.Tensor, y: torch.Tensor, radius: float, cell: float, size: int):
    """Padded clusters of ``x`` and ``y`` and the pairs of clusters that may hold a pair closer than ``radius``.

    Returns
    -------
    rows, cols : tuple
        ``padded_clusters`` of ``x`` and of ``y`` (index, mask, centroids, radii).
    pairs : (K, 2) long tensor
        Cluster of ``x``, cluster of ``y``.
    kept : float
        Fraction of the ``M N`` point pairs inside the kept blocks (padding excluded).
    """
    rows = padded_clusters(x, cell, size)
    cols = padded_clusters(y, cell, size)
    with torch.no_grad():
        pairs = _near(rows[2], rows[3], cols[2], cols[3], radius).nonzero()
        n_rows, n_cols = rows[1].sum(1), cols[1].sum(1)
        kept = float((n_rows[pairs[:, 0]] * n_cols[pairs[:, 1]]).sum()) / max(x.shape[0] * y.shape[0], 1)
    return rows, cols, pairs, kept
