"""Affine transforms from other tools: ITK / ANTs transform files and plain matrices, in world (RAS) coordinates.

An affine here is a ``(d+1, d+1)`` homogeneous matrix ``A`` that maps a *fixed*-space world point ``x`` (mm, RAS+) to
the corresponding *moving*-space point ``A x`` — the direction of a registration's transform (the pull-back of
images), the ITK / ANTs convention for the transforms they write. ITK files (``.txt``, ``.tfm``, ANTs' ``.mat``) are
in LPS; they are read by SimpleITK and converted. A plain text or ``.npy`` file holding a ``(d+1, d+1)`` matrix is
taken as already RAS.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["load_affine", "save_affine", "check_affine"]


def _lps(d: int) -> np.ndarray:
    F = np.eye(d + 1)
    F[0, 0] = F[1, 1] = -1.0
    return F


def check_affine(A, d: int, *, name: str = "initial_affine") -> np.ndarray:
    """``A`` as a finite, invertible ``(d+1, d+1)`` float matrix with last row ``(0, ..., 0, 1)``.

    Raises
    ------
    ValueError
        Wrong shape, non-finite entries, a last row that is not homogeneous, or a singular linear part.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.shape == (4, 4) and d == 2:  # a 2-D map given in a 4 x 4 matrix: its top-left block and offsets
        if not np.allclose(A[2, :], [0, 0, 1, 0]) or not np.allclose(A[:2, 2], 0):
            raise ValueError(f"{name}: a 4 x 4 matrix for 2-D images must not mix in the third axis, got {A.tolist()}")
        A = A[np.ix_([0, 1, 3], [0, 1, 3])]
    if A.shape != (d + 1, d + 1):
        raise ValueError(f"{name}: expected a ({d + 1}, {d + 1}) homogeneous matrix for {d}-D images, got shape "
                         f"{A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name}: expected finite entries, got {A.tolist()}")
    if not np.allclose(A[d, :], np.eye(d + 1)[d]):
        raise ValueError(f"{name}: expected a last row (0, ..., 0, 1), got {A[d].tolist()}")
    lin = A[:d, :d]
    if abs(np.linalg.det(lin)) < 1e-8 * max(np.abs(lin).max(), 1e-300) ** d:
        raise ValueError(f"{name}: the affine is not invertible (det of its linear part "
                         f"{np.linalg.det(lin):.3g})")
    return A


def _from_itk(path: str, d: int) -> np.ndarray:
    import SimpleITK as sitk

    tx = sitk.ReadTransform(path)
    if tx.GetDimension() != d:
        raise ValueError(f"initial_affine: {path} holds a {tx.GetDimension()}-D transform, expected {d}-D")
    # the matrix from the images of the origin and the unit vectors, checked on random points (an affine transform of
    # any ITK class: Affine, Euler, Similarity, Versor, Translation, or a composite of them)
    origin = np.asarray(tx.TransformPoint((0.0,) * d))
    lin = np.stack([np.asarray(tx.TransformPoint(tuple(e))) - origin for e in np.eye(d)], axis=1)
    rng = np.random.default_rng(0)
    for x in rng.uniform(-100, 100, (4, d)):
        if not np.allclose(tx.TransformPoint(tuple(x)), lin @ x + origin, atol=1e-6 * (1 + np.abs(x).max())):
            raise ValueError(f"initial_affine: {path} is not an affine transform ({tx.GetName()})")
    A = np.eye(d + 1)
    A[:d, :d], A[:d, d] = lin, origin
    F = _lps(d)
    return F @ A @ F


def load_affine(path, d: int) -> np.ndarray:
    """Read a fixed -> moving affine as a ``(d+1, d+1)`` RAS matrix (see the module docstring).

    Raises
    ------
    FileNotFoundError
        A missing file.
    ValueError
        An unreadable file, a non-affine or non-invertible transform, or one of another dimension.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"initial_affine: no such file: {path}")
    if path.endswith(".npy"):
        try:
            return check_affine(np.load(path, allow_pickle=False), d)
        except (OSError, ValueError) as exc:
            raise ValueError(f"initial_affine: cannot read {path}: {exc}") from None
    try:
        return check_affine(_from_itk(path, d), d)
    except RuntimeError as itk_error:  # not an ITK transform file: a plain matrix, or garbage
        try:
            A = np.loadtxt(path, ndmin=2)
        except ValueError:
            message = str(itk_error).strip().splitlines()[-1] if str(itk_error).strip() else "unknown format"
            raise ValueError(f"initial_affine: cannot read {path} as an ITK / ANTs transform or a matrix "
                             f"({message})") from None
        return check_affine(A, d)


def save_affine(path, A: np.ndarray) -> None:
    """Write a fixed -> moving RAS affine as an ITK transform file (``.txt`` / ``.tfm`` / ``.mat``), LPS inside."""
    import SimpleITK as sitk

    A = np.asarray(A, dtype=np.float64)
    d = A.shape[0] - 1
    check_affine(A, d, name="A")
    F = _lps(d)
    L = F @ A @ F
    tx = sitk.AffineTransform(d)
    tx.SetMatrix(tuple(L[:d, :d].ravel()))
    tx.SetTranslation(tuple(L[:d, d]))
    sitk.WriteTransform(tx, os.fspath(path))
