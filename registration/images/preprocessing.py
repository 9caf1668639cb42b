"""Intensity preprocessing and the preparation of a fixed / moving pair on the fixed grid.

Intensities are normalised robustly (0.5 / 99.5 percentiles to [0, 1], so one regularisation weight suits every
contrast range); normalised values below ``TINY_INTENSITY`` are set to 0 (this also flushes subnormal numbers, e.g.
MNI152's 1e-45 background, whose arithmetic is many times slower on CPUs; exact zeros also let the LNCC skip the
background). The moving image is resampled onto the fixed grid through the affines, normalised with its own
statistics; fixed voxels outside the moving image's field of view are left out of the similarity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lddmm_nets.grid import Grid, apply_linear

from ..io import Image, load_image, resample_image

__all__ = ["piecewise_constant", "noise_level", "denoise", "NOISE_LEVEL", "NOISE_MODES", "normalize_intensity",
           "intensity_range", "rescale", "gaussian_smooth", "prepare_mask", "PreparedPair", "prepare_pair",
           "TINY_INTENSITY"]

#: an image is noisy when its white noise (``noise_level``) is above this fraction of its intensity range
NOISE_LEVEL = 0.01
#: ``prepare_pair``'s ``noise`` choices
NOISE_MODES = ("ignore", "measure", "denoise")
#: normalised intensities below this are set to 0 (far below float32's resolution of [0, 1])
TINY_INTENSITY = 1e-6


def normalize_intensity(data: np.ndarray, *, name: str = "image", allow_constant: bool = False,
                        lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Robust intensity normalisation to [0, 1]: clip to the ``lower``/``upper`` percentiles and rescale.

    Raises
    ------
    ValueError
        If the image has NaN / infinite values, or (unless ``allow_constant``) no contrast.
    """
    data, lo, hi = intensity_range(data, name=name, allow_constant=allow_constant, lower=lower, upper=upper)
    if not hi > lo:
        return np.zeros_like(data)
    return rescale(data, lo, hi)


def intensity_range(data, *, name: str, allow_constant: bool = False, lower: float = 0.5,
                    upper: float = 99.5) -> tuple[np.ndarray, float, float]:
    """The float32 data and the ``(lo, hi)`` of ``normalize_intensity`` (``lo == hi``: a constant image).

    Raises
    ------
    ValueError
        NaN / infinite voxels, or a constant image unless ``allow_constant``.
    """
    data = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name}: contains {int(np.sum(~np.isfinite(data)))} NaN or infinite voxels")
    lo, hi = np.percentile(data, [lower, upper])
    if not hi > lo:
        lo, hi = float(data.min()), float(data.max())
    if not hi > lo and not allow_constant:
        raise ValueError(f"{name}: the image is constant (all voxels {lo:g}); nothing to register")
    return data, lo, hi


def rescale(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(data - lo) / (hi - lo)`` clipped to [0, 1], values below ``TINY_INTENSITY`` flushed to 0 (float32)."""
    a = np.clip((np.asarray(data, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32, copy=False)
    a[np.abs(a) < TINY_INTENSITY] = 0.0
    return a


def piecewise_constant(normalized: np.ndarray, *, tolerance: float = 0.01, fraction: float = 0.95) -> bool:
    """Whether a normalised image is (nearly) two-valued: at least ``fraction`` of its voxels within ``tolerance`` of
    0 or 1 (binary shapes and masks; an MR image has most of its foreground in between)."""
    a = np.asarray(normalized)
    extreme = (a <= tolerance) | (a >= 1.0 - tolerance)
    return bool(extreme.mean() >= fraction)


def noise_level(data: np.ndarray) -> float:
    """The standard deviation of an image's white noise over its intensity range (0.5th to 99.5th percentile).

    Immerkær's estimator ("Fast noise variance estimation", CVIU 1996), written for any dimension: the image is
    filtered by the tensor product of ``[1, -2, 1]`` along every axis, which cancels locally (multi)linear
    intensities and maps white noise of deviation ``s`` to deviation ``6^(d/2) s``; the mean absolute response of
    the interior is ``sqrt(2/π) 6^(d/2) s``. Edges add a little, more on coarse images: a noise-free MNI152 slice
    at 1 mm reads 0.004-0.006, dipy's T1 slice 0.003 (0.008 and 0.017 subsampled by 2 and 4), circle -> C 0.005;
    the benchmark suite's 2 % noise 0.020-0.023.
    """
    from scipy.ndimage import correlate1d

    a = np.asarray(data, np.float64)
    lo, hi = np.percentile(a, [0.5, 99.5])
    if not hi > lo or min(a.shape) < 3:
        return 0.0
    for axis in range(a.ndim):
        a = correlate1d(a, [1.0, -2.0, 1.0], axis=axis, mode="nearest")
    inner = a[(slice(1, -1),) * a.ndim]
    return float(np.sqrt(np.pi / 2) * np.abs(inner).mean() / 6.0 ** (a.ndim / 2) / (hi - lo))


def denoise(data: np.ndarray, *, iterations: int = 5, conductance: float = 1.0) -> np.ndarray:
    """Edge-preserving smoothing of a noisy image: Perona-Malik gradient anisotropic diffusion (SimpleITK's
    ``GradientAnisotropicDiffusion``, its stable time step ``2^-(d+1)``, torch's thread count; the conductance is
    relative to the image's mean gradient magnitude, so the result does not depend on the intensity scale).

    A Gaussian smoothing of the finest level (0.7 or 1 voxel) made the registration of the benchmark's noisy slices
    worse (it blurs the edges the labels follow); this diffusion, applied to the noisy image only, brought 4 of its 6
    noisy cases within 0.002 of the best peer's Dice (``registration.images.config``).
    """
    import SimpleITK as sitk
    import torch

    a = np.asarray(data, np.float32)
    f = sitk.GradientAnisotropicDiffusionImageFilter()
    f.SetTimeStep(2.0 ** -(a.ndim + 1))
    f.SetConductanceParameter(conductance)
    f.SetNumberOfIterations(iterations)
    f.SetNumberOfThreads(torch.get_num_threads())  # the registration's thread count (``registration.threads``)
    return sitk.GetArrayFromImage(f.Execute(sitk.GetImageFromArray(a))).astype(np.float32, copy=False)


def gaussian_smooth(data: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with a width in voxels (``sigma <= 0``: unchanged), nearest-value boundary."""
    if sigma <= 0:
        return data
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(data, sigma, mode="nearest")


def prepare_mask(mask, fixed: Image, name: str) -> np.ndarray | None:
    """A binary float32 mask on the fixed grid (resampled by nearest neighbour when on another grid), or None.

    Raises
    ------
    ValueError
        A mask of another dimension, or an empty one.
    """
    if mask is None:
        return None
    img = load_image(mask, name=name)
    if img.ndim != fixed.ndim:
        raise ValueError(f"{name}: expected a {fixed.ndim}-D mask, got {img.ndim}-D")
    if img.shape != fixed.shape or not np.allclose(img.affine, fixed.affine, atol=1e-3):
        img = resample_image(Image(img.data.astype(np.float32), img.affine), fixed.affine, fixed.shape,
                             interp="nearest")
    data = (np.asarray(img.data) > 0).astype(np.float32)
    if data.sum() == 0:
        raise ValueError(f"{name}: the mask is empty")
    return data


@dataclass
class PreparedPair:
    """A fixed / moving pair ready for registration, on the fixed grid.

    Attributes
    ----------
    fixed_image, moving_image : Image
        The inputs as read (original intensities and grids).
    grid : Grid
        The fixed grid (world placement from the fixed affine).
    fixed, moving : numpy.ndarray
        ``(*shape)`` float32 normalised intensities on the fixed grid.
    mask : numpy.ndarray or None
        ``(*shape)`` float32 weights of the similarity (masks and the moving field of view), or None for all.
    same_grid : bool
        The moving image was already on the fixed grid (no resampling, no initial affine).
    initial_affine : numpy.ndarray or None
        ``(d+1, d+1)`` world (RAS) fixed -> moving affine the moving image was resampled through.
    noisy : tuple of bool
        Whether the fixed and the moving image have white noise above ``NOISE_LEVEL`` of their range (measured
        only when ``prepare_pair`` is asked to; ``fixed`` and ``moving`` are then the denoised images if it was
        asked to denoise).
    """

    fixed_image: Image
    moving_image: Image
    grid: Grid
    fixed: np.ndarray
    moving: np.ndarray
    mask: np.ndarray | None
    same_grid: bool
    initial_affine: np.ndarray | None = None
    noisy: tuple = (False, False)


def _initial_affine(initial_affine, d: int):
    """The initial affine as a checked RAS matrix (a path is read with ``registration.io.load_affine``), or None for
    none or the identity."""
    from ..io.affine import check_affine, load_affine

    if initial_affine is None:
        return None
    if isinstance(initial_affine, (str, os.PathLike)):
        A = load_affine(initial_affine, d)
    else:
        A = check_affine(initial_affine, d)
    return None if np.allclose(A, np.eye(d + 1), atol=1e-12) else A


def prepare_pair(fixed, moving, fixed_mask=None, moving_mask=None, initial_affine=None, *,
                 noise: str = "ignore") -> PreparedPair:
    """Read, check, resample and normalise a pair (see the module docstring).

    ``initial_affine`` (a ``(d+1, d+1)`` world fixed -> moving matrix, or a path to an ITK / ANTs / plain matrix
    file) resamples the moving image through that affine: the registration then starts from it. ``noise``:
    ``"measure"`` sets ``PreparedPair.noisy`` (``noise_level`` of each image as given), ``"denoise"`` also smooths
    each noisy image by ``denoise`` before its normalisation (the clipping to the intensity range would otherwise
    rectify the noise of a dark background), ``"ignore"`` does neither.

    Raises
    ------
    ValueError
        Different dimensions, NaNs, constant images, no overlap of the fields of view, bad masks.
    FileNotFoundError
        A missing file.
    """
    fixed_img = load_image(fixed, name="fixed")
    moving_img = load_image(moving, name="moving")
    if fixed_img.ndim != moving_img.ndim:
        raise ValueError(f"moving: expected a {fixed_img.ndim}-D image like fixed, got {moving_img.ndim}-D "
                         f"(shapes {fixed_img.shape} and {moving_img.shape})")
    A = _initial_affine(initial_affine, fixed_img.ndim)
    if noise not in NOISE_MODES:
        raise ValueError(f"noise: expected one of {NOISE_MODES}, got {noise!r}")
    f_data, m_data = np.asarray(fixed_img.data, dtype=np.float32), np.asarray(moving_img.data, dtype=np.float32)
    noisy = (False, False)
    if noise != "ignore":  # (NaN voxels read as noise-free here and get their error from the normalisation)
        noisy = tuple(noise_level(a) > NOISE_LEVEL for a in (f_data, m_data))
        if noise == "denoise":
            f_data, m_data = (denoise(a) if n else a for a, n in zip((f_data, m_data), noisy))
    f_np = normalize_intensity(f_data, name="fixed")
    same_grid = A is None and moving_img.shape == fixed_img.shape and np.allclose(moving_img.affine,
                                                                                  fixed_img.affine, atol=1e-6)
    moving_f32 = Image(m_data, moving_img.affine)
    # normalise with the moving image's own statistics (this also rejects NaNs and constant images), then apply the
    # same map to the resampled copy (background outside its field of view stays at 0)
    _, lo, hi = intensity_range(m_data, name="moving")
    world = None
    if A is not None:  # sample the moving image at A x for every fixed voxel x: one interpolation
        d = fixed_img.ndim
        x = fixed_img.grid.world().numpy()
        world = apply_linear(A[:d, :d], x, A[:d, d])
    on_fixed = moving_f32 if same_grid else resample_image(moving_f32, fixed_img.affine, fixed_img.shape,
                                                           world_map=world)
    m_np = rescale(on_fixed.data, lo, hi)
    if float(m_np.max() - m_np.min()) <= 0:
        raise ValueError("moving: after resampling onto the fixed grid the image is constant "
                         "(no overlap between the fields of view?)")
    fmask = prepare_mask(fixed_mask, fixed_img, "fixed_mask")
    mmask = prepare_mask(moving_mask, fixed_img, "moving_mask")
    mask = fmask if mmask is None else (mmask if fmask is None else fmask * mmask)
    if not same_grid:
        # fixed voxels outside the moving image's field of view carry no information (their moving value is a
        # fill): leave them out of the similarity, or the deformation would chase the edge of the field of view
        fov = resample_image(Image(np.ones(moving_img.shape, np.float32), moving_img.affine), fixed_img.affine,
                             fixed_img.shape, world_map=world).data > 0.999
        if not fov.any():
            raise ValueError("moving: its field of view does not overlap the fixed image's")
        if not fov.all():
            mask = fov.astype(np.float32) if mask is None else mask * fov
    return PreparedPair(fixed_img, moving_img, fixed_img.grid, f_np, m_np, mask, same_grid, A, noisy)
