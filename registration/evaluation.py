"""Evaluation of a registration against known answers: Dice overlap and the error of a map against the truth."""

from __future__ import annotations

import numpy as np

from .io import Image

__all__ = ["dice", "world_coordinates", "map_error"]


def dice(a, b) -> float:
    """Dice overlap ``2|A ∩ B| / (|A| + |B|)`` of two binary masks (nonzero = inside), 1.0 if both are empty.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"b: expected shape {a.shape} (a's), got {b.shape}")
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def world_coordinates(image: Image) -> np.ndarray:
    """``(d, *shape)`` world coordinates (mm) of every voxel centre of ``image`` through its affine."""
    return image.grid.world().numpy()


def map_error(displacement: np.ndarray, true_map: np.ndarray, image: Image, roi=None) -> float:
    """Mean distance (mm) between ``x + displacement(x)`` and ``true_map(x)`` over ``roi`` (default: every voxel).

    Parameters
    ----------
    displacement : numpy.ndarray
        ``(d, *shape)`` mm, world components, on ``image``'s grid (e.g. ``ImageRegistration.displacement``).
    true_map : numpy.ndarray
        ``(d, *shape)`` world coordinates (mm) of the true corresponding points.
    image : Image
        The grid (its affine gives the voxel positions).
    roi : numpy.ndarray of bool, optional
        ``(*shape)`` voxels to average over.
    """
    expected = (image.ndim,) + tuple(image.shape)
    for name, arr in (("displacement", displacement), ("true_map", true_map)):
        if tuple(np.shape(arr)) != expected:
            raise ValueError(f"{name}: expected shape {expected}, got {tuple(np.shape(arr))}")
    err = np.linalg.norm(world_coordinates(image) + displacement - true_map, axis=0)
    return float(err.mean() if roi is None else err[np.asarray(roi, dtype=bool)].mean())
