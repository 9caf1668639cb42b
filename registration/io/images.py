"""Images in physical space: reading, writing and resampling through affines.

An ``Image`` is an array of voxel values plus the ``4 × 4`` affine that maps voxel indices ``(i, j, k, 1)``
to world coordinates in millimetres, in the NIfTI / nibabel convention (RAS+: x to the Right, y Anterior,
z Superior). 2-D images use the top-left ``2 × 2`` block of the affine and its first two translation entries.

Readers: NIfTI (``.nii``, ``.nii.gz``) through nibabel; ``.mha``, ``.mhd``, ``.nrrd`` (and any other format
SimpleITK reads) through SimpleITK, converting ITK's LPS world frame to RAS; ``.npy`` arrays with unit spacing
and the identity affine. Writers mirror the readers. Vector images (displacement fields) are written through
SimpleITK so that ITK and ANTs read them as displacement fields (see ``save_displacement``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from lddmm_nets.grid import Grid

__all__ = ["Image", "load_image", "save_image", "save_displacement", "load_displacement", "resample_image",
           "sitk_geometry", "slabs", "slab_world"]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


@dataclass
class Image:
    """An image in physical space.

    Attributes
    ----------
    data : numpy.ndarray
        ``(n_1, ..., n_d)`` voxel values, ``d`` in {2, 3}.
    affine : numpy.ndarray
        ``(4, 4)`` voxel index -> world (mm, RAS+).
    path : str or None
        Where it was read from.
    """

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: str | None = None

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel sizes in mm, ``(d,)``."""
        return self.grid.spacing

    @property
    def grid(self) -> Grid:
        """The image's grid in world space (shape, spacing, origin, direction from the affine)."""
        return Grid.from_affine(self.affine, self.shape)

    def with_data(self, data: np.ndarray) -> "Image":
        """A new image on the same grid with other values (``data`` has this image's shape, or channels first)."""
        return Image(np.asarray(data), self.affine.copy(), None)

    def to_nifti(self):
        """This image as a ``nibabel.Nifti1Image`` (float32 unless integer data)."""
        import nibabel as nib

        data = self.data
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        if data.dtype == bool:
            data = data.astype(np.uint8)
        img = nib.Nifti1Image(data, self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        return img


def _squeeze_spatial(data: np.ndarray, name: str) -> np.ndarray:
    """Drop trailing singleton axes; accept 2-D or 3-D; reject anything else with a clear message."""
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2-D or 3-D scalar image, got an array of shape {data.shape}"
                         + (" (a 4-D / multi-volume image: extract one volume first)" if data.ndim >= 4 else ""))
    return data


def _affine_from_sitk(img) -> np.ndarray:
    d = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(d, d)
    lin = direction * np.asarray(img.GetSpacing(), dtype=float)[None, :]
    aff = np.eye(4)
    aff[:d, :d] = lin
    aff[:d, 3] = img.GetOrigin()
    return _LPS @ aff  # ITK physical space is LPS; ours is RAS


def sitk_geometry(affine: np.ndarray, ndim: int):
    """Origin, spacing and direction (ITK LPS convention) of a grid with this RAS affine."""
    aff = _LPS @ affine
    lin = aff[:ndim, :ndim]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing[None, :]
    return tuple(float(o) for o in aff[:ndim, 3]), tuple(float(s) for s in spacing), \
        tuple(float(v) for v in direction.ravel())


def _is_nifti(path: str) -> bool:
    return path.endswith(".nii") or path.endswith(".nii.gz")


def load_image(source, *, name: str = "image") -> Image:
    """Read an image in physical space.

    Parameters
    ----------
    source : str, os.PathLike, Image, nibabel image or numpy.ndarray
        A file (``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd``, ``.npy``, ...), an in-memory image, or an
        array (unit spacing, identity affine).
    name : str
        Argument name used in error messages.

    Returns
    -------
    Image
        ``data`` as float32 (integer label images keep their integer type), 2-D or 3-D.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file cannot be read, or is not a 2-D / 3-D scalar image.
    """
    if isinstance(source, Image):
        return Image(_squeeze_spatial(np.asarray(source.data), name), np.asarray(source.affine, float), source.path)
    if isinstance(source, np.ndarray):
        return Image(_squeeze_spatial(source, name), np.eye(4), None)
    if hasattr(source, "get_fdata") and hasattr(source, "affine"):  # nibabel image
        data = np.asanyarray(source.dataobj)
        return Image(_squeeze_spatial(data, name), np.asarray(source.affine, float), None)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"{name}: expected a path, numpy array, nibabel image or Image, got {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: no such file: {path}")
    try:
        if path.endswith(".npy"):
            return Image(_squeeze_spatial(np.load(path, allow_pickle=False), name), np.eye(4), path)
        if _is_nifti(path):
            import nibabel as nib

            img = nib.load(path)
            data = np.asanyarray(img.dataobj)
            return Image(_squeeze_spatial(data, name), np.asarray(img.affine, float), path)
        import SimpleITK as sitk

        img = sitk.ReadImage(path)
    except ValueError as exc:
        if "expected a 2-D or 3-D" in str(exc):
            raise
        raise ValueError(f"{name}: cannot read {path}: {exc}") from exc
    except Exception as exc:  # nibabel / SimpleITK raise many types for corrupt files
        raise ValueError(f"{name}: cannot read {path}: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}") \
            from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components "
                         f"per voxel in {path}")
    if img.GetDimension() not in (2, 3):
        raise ValueError(f"{name}: expected a 2-D or 3-D image, got {img.GetDimension()}-D in {path}")
    import SimpleITK as sitk

    data = sitk.GetArrayFromImage(img).transpose()  # ITK arrays are (z, y, x)
    return Image(_squeeze_spatial(data, name), _affine_from_sitk(img), path)


def save_image(path, image: Image) -> None:
    """Write an image (NIfTI through nibabel, ``.npy`` as a bare array, anything else through SimpleITK)."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        np.save(path, image.data)
    elif _is_nifti(path):
        import nibabel as nib

        nib.save(image.to_nifti(), path)
    else:
        import SimpleITK as sitk

        data = image.data.astype(np.float32) if image.data.dtype == np.float64 else image.data
        img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose()))
        origin, spacing, direction = sitk_geometry(image.affine, image.ndim)
        img.SetOrigin(origin), img.SetSpacing(spacing), img.SetDirection(direction)
        sitk.WriteImage(img, path)


def save_displacement(path, displacement: np.ndarray, affine: np.ndarray) -> None:
    """Write a displacement field that ITK / ANTs / SimpleITK read as a ``DisplacementFieldTransform``.

    Parameters
    ----------
    path : str
        Output file (``.nii.gz`` recommended).
    displacement : numpy.ndarray
        ``(d, *shape)`` displacement in mm, world RAS components, on the grid of ``affine``: the transform
        maps the fixed-space point ``x`` to ``x + u(x)`` in the moving space (pull-back convention).
    affine : numpy.ndarray
        ``(4, 4)`` grid affine (RAS).

    Notes
    -----
    World convention of the file: ITK's. The vectors are stored in LPS components (x and y negated with
    respect to RAS), as ANTs writes its warps, with the NIfTI intent "vector", in float32 (as ANTs writes them);
    SimpleITK's ``DisplacementFieldTransform`` built from this file (read as float64) reproduces our warped image.
    """
    import SimpleITK as sitk

    d = displacement.shape[0]
    lps = np.asarray(displacement, dtype=np.float32).copy()  # float32: 1e-5 mm resolution, half the bytes
    lps[: min(d, 2)] *= -1.0
    arr = np.moveaxis(lps, 0, -1)  # (*shape, d)
    arr = np.ascontiguousarray(arr.transpose(tuple(range(d))[::-1] + (d,)))  # (z, y, x, d)
    img = sitk.GetImageFromArray(arr, isVector=True)
    origin, spacing, direction = sitk_geometry(affine, d)
    img.SetOrigin(origin), img.SetSpacing(spacing), img.SetDirection(direction)
    # gzip level 1 (as nibabel writes .nii.gz): several times faster than the default, files ~10 % larger
    sitk.WriteImage(img, os.fspath(path), useCompression=True, compressionLevel=1)


def load_displacement(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a displacement field written by ``save_displacement`` (or by ANTs / ITK).

    Returns
    -------
    displacement : numpy.ndarray
        ``(d, *shape)`` mm, RAS components.
    affine : numpy.ndarray
        ``(4, 4)`` grid affine (RAS).
    """
    import SimpleITK as sitk

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"displacement: no such file: {path}")
    img = sitk.ReadImage(path)
    d = img.GetDimension()
    if img.GetNumberOfComponentsPerPixel() != d:
        raise ValueError(f"displacement: expected {d} components per voxel in {path}, "
                         f"got {img.GetNumberOfComponentsPerPixel()}")
    arr = sitk.GetArrayFromImage(img)  # (z, y, x, d)
    arr = arr.transpose(tuple(range(d))[::-1] + (d,))
    disp = np.moveaxis(arr, -1, 0).astype(np.float64)
    disp[: min(d, 2)] *= -1.0
    return disp, _affine_from_sitk(img)


#: voxels per slab of the slab-wise loops (``slabs``): bounded memory for 1 mm brains (8.7 M voxels)
SLAB_VOXELS = 1 << 21


def slabs(shape, voxels: int = SLAB_VOXELS):
    """``(start, stop)`` index ranges along the first axis covering a grid of ``shape`` by about ``voxels`` each."""
    rows = max(1, voxels // max(1, int(np.prod(shape[1:]))))
    return [(a, min(a + rows, shape[0])) for a in range(0, shape[0], rows)]


def slab_world(grid: Grid, a: int, b: int) -> np.ndarray:
    """World coordinates ``(d, b - a, *shape[1:])`` of the nodes ``a .. b-1`` along the first axis of ``grid``."""
    idx = np.stack(np.meshgrid(np.arange(a, b, dtype=np.float64),
                               *[np.arange(n, dtype=np.float64) for n in grid.shape[1:]], indexing="ij"))
    return grid.voxel_to_world(idx)


def resample_image(image: Image, reference_affine: np.ndarray, reference_shape, *, interp: str = "linear",
                   world_map: np.ndarray | None = None, fill: float = 0.0) -> Image:
    """Resample ``image`` onto another grid through the affines (and optionally a world-space map).

    Parameters
    ----------
    image : Image
        Source image.
    reference_affine : numpy.ndarray
        ``(4, 4)`` affine of the target grid.
    reference_shape : tuple of int
        Target grid shape, same dimension as ``image``.
    interp : {"linear", "nearest"}
    world_map : numpy.ndarray or callable, optional
        ``(d, *reference_shape)`` world coordinates (mm) to sample at, or ``world_map(a, b)`` returning those of the
        target's nodes ``a .. b-1`` along its first axis (computed slab by slab: bounded memory); default: the
        target grid's own nodes.
    fill : float
        Value outside the source image.

    Returns
    -------
    Image
        On the target grid.
    """
    import torch

    from lddmm_nets.fields import interpolate

    d = image.ndim
    shape = tuple(int(n) for n in reference_shape)
    if len(shape) != d:
        raise ValueError(f"reference_shape: expected {d} axes (the image's), got {shape}")
    if world_map is not None and not callable(world_map) and tuple(np.shape(world_map)) != (d,) + shape:
        raise ValueError(f"world_map: expected shape {(d,) + shape}, got {tuple(np.shape(world_map))}")
    src = image.data
    integer = np.issubdtype(src.dtype, np.integer) or src.dtype == bool
    f = torch.as_tensor(np.asarray(src, dtype=np.float64 if integer else np.float32)) - fill
    source, target = Grid(src.shape), Grid.from_affine(reference_affine, shape)
    out = np.empty(shape, dtype=np.float64 if integer else np.float32)
    for a, b in slabs(shape):  # bounded memory: the world coordinates of a slab of the target at a time
        if world_map is None:
            world = slab_world(target, a, b)
        elif callable(world_map):
            world = np.asarray(world_map(a, b), dtype=np.float64)
        else:
            world = np.asarray(world_map[:, a:b], dtype=np.float64)
        vox = torch.as_tensor(image.grid.world_to_voxel(world), dtype=f.dtype)  # fractional source indices
        out[a:b] = (interpolate(f, vox, source, interp=interp, padding="zeros") + fill).numpy()
    if integer and interp == "nearest":
        out = np.rint(out).astype(src.dtype)
    return Image(out, np.asarray(reference_affine, float).copy(), None)
