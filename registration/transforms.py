"""The deformation as an object: a dense displacement field in world coordinates on the fixed grid.

Convention (the same as ITK / ANTs "displacement field transforms"): the transform maps a point ``x`` of the
fixed space to ``y = x + u(x)`` in the moving space, both in world millimetres (RAS+ here; LPS in the files
written for ITK, see ``registration.io.save_displacement``). Warping an image ``M`` into the fixed space is
the pull-back ``M(x + u(x))``. The inverse displacement ``w`` maps moving-space points back,
``x = y + w(y)``, and is sampled on the same grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from lddmm_nets.fields import interpolate, jacobian_determinant
from lddmm_nets.grid import Grid

from .io import Image, load_displacement, load_image, resample_image, save_displacement
from .io.images import slab_world, slabs

__all__ = ["DisplacementTransform", "ndv_percent", "sdlogj"]

_INTERPS = ("linear", "nearest")


def ndv_percent(jac: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percentage of voxels with a non-positive Jacobian determinant (inside ``mask`` if given)."""
    j = jac if mask is None else jac[mask > 0]
    return float(100.0 * np.mean(j <= 0)) if j.size else 0.0


def sdlogj(jac: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Standard deviation of ``log det`` (non-positive determinants clipped to 1e-9), inside ``mask`` if given."""
    j = jac if mask is None else jac[mask > 0]
    return float(np.std(np.log(np.clip(j, 1e-9, None)))) if j.size else 0.0


@dataclass
class DisplacementTransform:
    """A dense deformation on the fixed grid.

    Attributes
    ----------
    displacement : numpy.ndarray
        ``(d, *shape)`` mm, world (RAS) components: fixed point ``x`` -> moving point ``x + u(x)``.
    affine : numpy.ndarray
        ``(4, 4)`` fixed grid affine (voxel -> world mm).
    inverse_displacement : numpy.ndarray or None
        ``(d, *shape)`` mm: moving point ``y`` -> fixed point ``y + w(y)``, sampled on the same grid.
    """

    displacement: np.ndarray
    affine: np.ndarray
    inverse_displacement: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.displacement.shape[1:])

    @property
    def ndim(self) -> int:
        return self.displacement.shape[0]

    @property
    def grid(self) -> Grid:
        """The fixed grid the displacement is sampled on."""
        return Grid.from_affine(self.affine, self.shape)

    def world_map(self) -> np.ndarray:
        """``x + u(x)`` at every fixed voxel: ``(d, *shape)`` mm."""
        return self.grid.world().numpy() + self.displacement

    def apply(self, image, *, interp: str = "linear", fill: float = 0.0) -> Image:
        """Warp an image (any grid, with its own affine) into the fixed space.

        Parameters
        ----------
        image : Image, path, nibabel image or array
            Moving-space image (an array is taken on the fixed grid).
        interp : {"linear", "nearest"}
            ``"nearest"`` for label maps (integer labels keep their type).
        fill : float
            Value outside the image's field of view.

        Returns
        -------
        Image
            On the fixed grid with the fixed affine.
        """
        if interp not in _INTERPS:
            raise ValueError(f"interp: expected one of {_INTERPS}, got {interp!r}")
        if isinstance(image, np.ndarray):
            image = Image(image, self.affine.copy())
        img = load_image(image)
        if img.ndim != self.ndim:
            raise ValueError(f"image: expected a {self.ndim}-D image (the transform's), got {img.ndim}-D "
                             f"shape {img.shape}")
        grid = self.grid

        def world_map(a, b):  # x + u(x) for a slab of fixed voxels
            return slab_world(grid, a, b) + self.displacement[:, a:b]

        return resample_image(img, self.affine, self.shape, interp=interp, world_map=world_map, fill=fill)

    def apply_inverse(self, image, reference, *, interp: str = "linear", fill: float = 0.0) -> Image:
        """Warp a fixed-space image (labels too) into the moving space, on a reference grid of the moving space.

        Each reference voxel ``y`` (world) takes the image's value at ``y + w(y)``, the inverse displacement ``w``
        being interpolated from the fixed grid (its border value outside it).

        Parameters
        ----------
        image : Image, path, nibabel image or array
            Fixed-space image (an array is taken on the fixed grid).
        reference : Image, path or ``(affine, shape)``
            The moving-space grid to resample onto (e.g. the moving image).
        interp, fill
            As in ``apply``.

        Returns
        -------
        Image
            On the reference grid.
        """
        if interp not in _INTERPS:
            raise ValueError(f"interp: expected one of {_INTERPS}, got {interp!r}")
        if self.inverse_displacement is None:
            raise ValueError("inverse_displacement: this transform has none")
        if isinstance(image, np.ndarray):
            image = Image(image, self.affine.copy())
        img = load_image(image)
        if isinstance(reference, tuple) and len(reference) == 2:
            ref_affine, ref_shape = np.asarray(reference[0], float), tuple(int(n) for n in reference[1])
        else:
            ref = load_image(reference, name="reference")
            ref_affine, ref_shape = ref.affine, ref.shape
        if img.ndim != self.ndim or len(ref_shape) != self.ndim:
            raise ValueError(f"image: expected {self.ndim}-D image and reference (the transform's), got "
                             f"{img.ndim}-D and {len(ref_shape)}-D")
        y = Grid.from_affine(ref_affine, ref_shape).world().numpy()
        pts = y.reshape(self.ndim, -1).T
        x = (pts + self._sample(self.inverse_displacement, pts)).T.reshape(y.shape)
        return resample_image(img, ref_affine, ref_shape, interp=interp, world_map=x, fill=fill)

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Map fixed-space world points ``(N, d)`` (mm) to the moving space: ``x + u(x)`` (linear interpolation)."""
        return points + self._sample(self.displacement, points)

    def inverse_transform_points(self, points: np.ndarray) -> np.ndarray:
        """Map moving-space world points ``(N, d)`` to the fixed space with the inverse displacement."""
        if self.inverse_displacement is None:
            raise ValueError("inverse_displacement: this transform has none")
        return points + self._sample(self.inverse_displacement, points)

    def _sample(self, field: np.ndarray, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        d = self.ndim
        if points.ndim != 2 or points.shape[1] != d:
            raise ValueError(f"points: expected shape (N, {d}), got {points.shape}")
        vox = self.grid.world_to_voxel(points.T)
        out = interpolate(torch.as_tensor(field), torch.as_tensor(np.ascontiguousarray(vox)), Grid(self.shape),
                          padding="border")
        return out.numpy().T

    def jacobian_determinant(self, *, inverse: bool = False) -> np.ndarray:
        """``det(I + Du)`` at every voxel, ``(*shape)``; positive everywhere for a diffeomorphism.

        Computed slab by slab along the first axis (with a one-voxel halo, so the values are those of the whole
        field): bounded memory on large grids.
        """
        field = self.inverse_displacement if inverse else self.displacement
        if field is None:
            raise ValueError("inverse_displacement: this transform has none")
        grid = self.grid
        out = np.empty(self.shape, dtype=np.float32 if field.dtype == np.float32 else np.float64)
        for a, b in slabs(self.shape):
            lo, hi = max(a - 1, 0), min(b + 1, self.shape[0])
            u = grid.to_frame_vectors(np.asarray(field[:, lo:hi]))  # components along the grid's axes
            part = Grid((hi - lo,) + self.shape[1:], grid.spacing)
            det = jacobian_determinant(torch.as_tensor(u), part, displacement=True).numpy()
            out[a:b] = det[a - lo: a - lo + (b - a)]
        return out

    def save(self, directory) -> None:
        """Write ``displacement.nii.gz`` (and ``inverse_displacement.nii.gz``) into ``directory`` (ITK readable)."""
        os.makedirs(directory, exist_ok=True)
        save_displacement(os.path.join(directory, "displacement.nii.gz"), self.displacement, self.affine)
        if self.inverse_displacement is not None:
            save_displacement(os.path.join(directory, "inverse_displacement.nii.gz"), self.inverse_displacement,
                              self.affine)

    @classmethod
    def load(cls, directory) -> "DisplacementTransform":
        """Read a transform saved by ``save`` (or by ``lddmm register``) from ``directory``."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"directory: no such result directory: {directory}")
        path = os.path.join(directory, "displacement.nii.gz")
        if not os.path.exists(path):
            raise FileNotFoundError(f"directory: {directory} has no displacement.nii.gz (not a registration result)")
        disp, affine = load_displacement(path)
        inv_path = os.path.join(directory, "inverse_displacement.nii.gz")
        inv = load_displacement(inv_path)[0] if os.path.exists(inv_path) else None
        return cls(disp, affine, inv)
