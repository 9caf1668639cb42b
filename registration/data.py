"""Data for users and tests: images bundled with installed packages, and random smooth diffeomorphic warps.

Nothing here downloads: the circle and C images come from dipy's package data (``dipy/data/files``), the MNI152
template and its grey / white matter masks from nilearn's package data. A missing file raises
``FileNotFoundError`` naming the path it looked for.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from .io import Image

__all__ = ["load_circle_c", "load_t1_slice", "load_mni152", "random_diffeomorphism", "RandomWarp", "MNI152",
           "warped_pair", "WarpedPair"]


def _dipy_file(name: str) -> str:
    try:
        import dipy.data
    except ImportError as exc:  # pragma: no cover - dipy is a declared dependency
        raise FileNotFoundError("dipy is not installed; it bundles the circle / C images") from exc
    path = os.path.join(os.path.dirname(dipy.data.__file__), "files", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dipy's bundled file {name} is missing (looked for {path})")
    return path


def load_circle_c() -> tuple[Image, Image]:
    """The 2-D circle (dipy ``reg_o``) and C (dipy ``reg_c``) images, 256 × 256, values in [0, 1].

    Returns
    -------
    circle, c : Image
        Unit spacing, identity affine. The classic large-deformation pair: register circle (moving) to C (fixed).
    """
    circle = np.load(_dipy_file("circle.npy")).astype(np.float32)
    c = np.load(_dipy_file("C.npy")).astype(np.float32)
    return Image(circle, np.eye(4), "dipy:reg_o"), Image(c, np.eye(4), "dipy:reg_c")


def load_t1_slice() -> Image:
    """A 2-D coronal T1 MRI slice bundled with dipy (``t1_coronal_slice.npy``), values in [0, 1], unit spacing."""
    return Image(np.load(_dipy_file("t1_coronal_slice.npy")).astype(np.float32), np.eye(4), "dipy:t1_coronal_slice")


@dataclass
class MNI152:
    """The MNI152 T1 template (2 mm) with its grey and white matter masks (binary, uint8), same grid."""

    t1: Image
    gm: Image
    wm: Image


def load_mni152(resolution: int = 2) -> MNI152:
    """Load nilearn's bundled MNI152 T1 template and GM / WM masks at ``resolution`` mm (1 or 2).

    Raises
    ------
    FileNotFoundError
        If nilearn or its bundled template files are unavailable.
    """
    if resolution not in (1, 2):
        raise ValueError(f"resolution: expected 1 or 2 (mm), got {resolution!r}")
    try:
        from nilearn import datasets
    except ImportError as exc:  # pragma: no cover - nilearn is a declared dependency
        raise FileNotFoundError("nilearn is not installed; it bundles the MNI152 template") from exc
    try:
        t1 = datasets.load_mni152_template(resolution=resolution)
        gm = datasets.load_mni152_gm_mask(resolution=resolution)
        wm = datasets.load_mni152_wm_mask(resolution=resolution)
    except Exception as exc:
        raise FileNotFoundError(f"nilearn's bundled MNI152 files could not be loaded: {exc}") from exc
    aff = np.asarray(t1.affine, dtype=float)
    return MNI152(t1=Image(np.asarray(t1.get_fdata(), dtype=np.float32), aff, "nilearn:mni152_t1"),
                  gm=Image(np.asarray(gm.get_fdata() > 0.5, dtype=np.uint8), np.asarray(gm.affine, float),
                           "nilearn:mni152_gm"),
                  wm=Image(np.asarray(wm.get_fdata() > 0.5, dtype=np.uint8), np.asarray(wm.affine, float),
                           "nilearn:mni152_wm"))


@dataclass
class RandomWarp:
    """A random smooth diffeomorphism with known ground truth, on a grid.

    Attributes
    ----------
    displacement : numpy.ndarray
        ``(d, *shape)`` mm, world components: fixed point ``x`` -> ``x + u(x)`` (pull-back: the warped image is
        ``I(x + u(x))``).
    inverse_displacement : numpy.ndarray
        ``(d, *shape)`` mm: ``y -> y + w(y)``, the inverse.
    affine : numpy.ndarray
        ``(4, 4)`` grid affine.
    max_displacement : float
        ``max |u|`` in mm.
    """

    displacement: np.ndarray
    inverse_displacement: np.ndarray
    affine: np.ndarray
    max_displacement: float

    def transform(self):
        """As a ``registration.transforms.DisplacementTransform``."""
        from .transforms import DisplacementTransform

        return DisplacementTransform(self.displacement, self.affine, self.inverse_displacement)


def random_diffeomorphism(shape, affine=None, *, max_displacement: float = 8.0, smoothness: float = 12.0,
                          n_steps: int = 32, seed: int | None = 0) -> RandomWarp:
    """Draw a random smooth diffeomorphism as the flow of a stationary velocity field.

    A white-noise vector field is smoothed by a Gaussian of width ``smoothness`` mm (FFT), scaled so that the
    resulting displacement reaches ``max_displacement`` mm, and integrated for unit time (``n_steps`` Euler
    steps of the semi-Lagrangian scheme ``phi <- phi ∘ (id + v/n)``; for ``n = 2^k`` the same ``n``-fold composition
    is computed by ``k`` squarings), which gives an invertible map whose
    inverse is the flow of ``-v``. Both are returned, so the ground truth is known both ways.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (2-D or 3-D).
    affine : numpy.ndarray, optional
        ``(4, 4)`` grid affine (default identity: 1 mm voxels).
    max_displacement : float
        Target maximum displacement (mm). The Jacobian stays positive because the map is a flow; the larger
        ``max_displacement / smoothness``, the stronger the local compression.
    smoothness : float
        Width (mm) of the Gaussian that smooths the velocity field.
    n_steps : int
        Integration steps (a power of two is fastest).
    seed : int or None
        Seed of a private ``numpy.random.Generator`` (no global state).

    Returns
    -------
    RandomWarp
    """
    from lddmm_nets.fields import compose
    from lddmm_nets.grid import Grid

    shape = tuple(int(n) for n in shape)
    d = len(shape)
    if d not in (2, 3):
        raise ValueError(f"shape: expected 2 or 3 axes, got {shape}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive integer, got {n_steps!r}")
    if not max_displacement > 0 or not smoothness > 0:
        raise ValueError(f"max_displacement, smoothness: expected > 0, got {max_displacement}, {smoothness}")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    grid = Grid.from_affine(affine, shape)
    rng = np.random.default_rng(seed)
    noise = torch.as_tensor(rng.standard_normal((d,) + shape))
    # smooth with a Gaussian in Fourier space (periodic; then tapered to 0 near the borders so the warp keeps the
    # field of view)
    freqs = [2 * math.pi * torch.fft.fftfreq(n, d=h, dtype=torch.float64) for n, h in zip(shape, grid.spacing)]
    w2 = sum(f.reshape([-1 if i == j else 1 for j in range(d)]) ** 2 for i, f in enumerate(freqs))
    v = torch.fft.ifftn(torch.fft.fftn(noise, dim=tuple(range(1, d + 1))) * torch.exp(-0.5 * smoothness ** 2 * w2),
                        dim=tuple(range(1, d + 1))).real
    v = v * grid.border_taper(smoothness)
    ident = grid.identity_map(dtype=torch.float64)

    def flow(vel):
        step = ident + vel / n_steps
        if n_steps & (n_steps - 1) == 0:  # n = 2^k: the same n-fold composition by k squarings
            phi = step
            for _ in range(n_steps.bit_length() - 1):
                phi = compose(phi, phi, grid)
        else:
            phi = ident.clone()
            for _ in range(n_steps):
                phi = compose(phi, step, grid)
        return phi - ident

    u = flow(v)
    scale = max_displacement / float(u.norm(dim=0).max())
    # the flow is not linear in v: rescale once and correct once more
    u = flow(v * scale)
    scale2 = max_displacement / float(u.norm(dim=0).max())
    v = v * scale * scale2
    u_w = grid.to_world_vectors(flow(v).numpy())
    w_w = grid.to_world_vectors(flow(-v).numpy())
    return RandomWarp(u_w, w_w, affine.copy(), float(np.linalg.norm(u_w, axis=0).max()))


@dataclass
class WarpedPair:
    """A registration problem with known answer: ``moving = fixed ∘ (id + u)`` for a random diffeomorphism.

    Attributes
    ----------
    fixed, moving : Image
        Same grid and affine.
    labels_fixed, labels_moving : dict of str to numpy.ndarray
        Label maps (``uint8``) in each space; the moving ones are warped with nearest-neighbour interpolation.
    warp : RandomWarp
        The ground truth.
    """

    fixed: Image
    moving: Image
    labels_fixed: dict
    labels_moving: dict
    warp: RandomWarp

    def true_map(self) -> np.ndarray:
        """``(d, *shape)`` world coordinates (mm) of the moving-space point that matches each fixed voxel.

        A registration's ``x + u(x)`` (fixed -> moving) should equal this: ``x + w(x)`` with ``w`` the inverse
        displacement of the warp.
        """
        from .evaluation import world_coordinates

        return world_coordinates(self.fixed) + self.warp.inverse_displacement


def warped_pair(image: Image, labels: dict | None = None, *, max_displacement: float = 8.0,
                smoothness: float = 12.0, seed: int | None = 0) -> WarpedPair:
    """Make a realistic pair from real anatomy: warp ``image`` (and its label maps) by a random diffeomorphism.

    Parameters
    ----------
    image : Image
        2-D or 3-D image, used as the fixed image.
    labels : dict of str to Image or numpy.ndarray, optional
        Label maps on the same grid (warped with nearest-neighbour interpolation).
    max_displacement, smoothness, seed
        See ``random_diffeomorphism`` (mm).

    Returns
    -------
    WarpedPair
    """
    labels = {} if labels is None else dict(labels)
    warp = random_diffeomorphism(image.shape, image.affine, max_displacement=max_displacement,
                                 smoothness=smoothness, seed=seed)
    tr = warp.transform()
    moving = Image(tr.apply(image).data.astype(np.float32), image.affine.copy(), None)
    fixed_labels, moving_labels = {}, {}
    for name, lab in labels.items():
        arr = lab.data if isinstance(lab, Image) else np.asarray(lab)
        if arr.shape != image.shape:
            raise ValueError(f"labels[{name!r}]: expected shape {image.shape} (the image's), got {arr.shape}")
        fixed_labels[name] = arr.astype(np.uint8)
        moving_labels[name] = tr.apply(Image(arr.astype(np.uint8), image.affine.copy()), interp="nearest").data
    return WarpedPair(image, moving, fixed_labels, moving_labels, warp)
