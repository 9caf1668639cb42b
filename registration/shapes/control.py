"""Control points: where the momenta of a shape registration live (Durrleman et al. 2014).

- ``"grid"``: a regular grid of the given spacing over the bounding box of the source (and target), kept where it
  lies within ``reach · spacing`` of a source vertex (farther points barely move the shape: the kernel's tail);
- ``"subsample"``: one point per occupied cube of side ``spacing`` (the centroid of the source vertices in it);
- ``"vertices"``: every source vertex (the KeOps tutorial's choice: costly for large meshes).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

__all__ = ["control_points", "CONTROL_POINTS"]

CONTROL_POINTS = ("grid", "subsample", "vertices")


def control_points(vertices: torch.Tensor, kind: str = "grid", spacing: float = 1.0, *, reach: float = 1.0,
                   extent: torch.Tensor | None = None) -> torch.Tensor:
    """Control points for momenta that move ``vertices``.

    Parameters
    ----------
    vertices : (N, d) tensor
        Source vertices (all objects together).
    kind : {"grid", "subsample", "vertices"}
    spacing : float
        Grid step or subsampling cube side (data units); typically the deformation kernel's width.
    reach : float
        ``"grid"``: keep grid points within ``reach · spacing`` of a vertex.
    extent : (M, d) tensor, optional
        More points whose bounding box the grid covers (e.g. the target's vertices).

    Returns
    -------
    (K, d) tensor
        Same dtype and device as ``vertices``.
    """
    if kind not in CONTROL_POINTS:
        raise ValueError(f"control_points: expected one of {list(CONTROL_POINTS)} or a (K, d) tensor, got {kind!r}")
    if not spacing > 0:
        raise ValueError(f"spacing: expected a positive length, got {spacing!r}")
    v = vertices.detach().cpu().double().numpy()
    if kind == "vertices":
        return vertices.detach().clone()
    if kind == "subsample":
        keys = np.floor(v / spacing).astype(np.int64)
        _, labels = np.unique(keys, axis=0, return_inverse=True)
        labels = labels.ravel()
        sums = np.zeros((labels.max() + 1, v.shape[1]))
        np.add.at(sums, labels, v)
        pts = sums / np.bincount(labels)[:, None]
    else:
        box = v if extent is None else np.concatenate([v, extent.detach().cpu().double().numpy()])
        lo, hi = box.min(0), box.max(0)
        n = np.floor((hi - lo) / spacing).astype(int) + 1
        start = (lo + hi) / 2 - (n - 1) * spacing / 2  # centred on the box
        axes = [start[i] + spacing * np.arange(n[i]) for i in range(v.shape[1])]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, v.shape[1])
        dist = cKDTree(v).query(grid, distance_upper_bound=reach * spacing * (1 + 1e-9))[0]
        pts = grid[np.isfinite(dist)]
    return torch.as_tensor(pts).to(vertices)
