"""Shapes bundled with installed packages, with known answers: fsaverage5 cortical surfaces and 2-D contours.

Nothing here downloads. ``load_fsaverage`` reads nilearn's bundled fsaverage5 GIFTI meshes (10,242 vertices per
hemisphere: pial, white, inflated, sphere). fsaverage is an icosahedral mesh: its first 642 / 2,562 vertices are
the vertices of the 3- and 4-times subdivided icosahedron (checked: the convex hull of the first ``n`` vertices
of the sphere surface is a triangulation with ``2n − 4`` faces whose edges match the subdivision, and for
``n = 10,242`` it is exactly the bundled triangulation), so a decimated surface keeps the same anatomy and the same
vertex indexing on every surface of the subject: the vertex error of white → pial is measurable at every
resolution. ``random_warp`` moves a shape by a known random diffeomorphism (a geodesic of random momenta), and
``load_contours`` extracts 2-D curves from dipy's bundled images (the circle and the C, a T1 slice's brain outline).
"""

from __future__ import annotations

import numpy as np
import torch

from lddmm_nets import GaussianKernel

from .shape import Shape

__all__ = ["load_fsaverage", "mirror", "random_warp", "load_contours", "FSAVERAGE_SURFACES", "ICO_VERTICES"]

FSAVERAGE_SURFACES = ("pial", "white", "infl", "sphere")
#: vertices of the icosahedral subdivisions bundled in fsaverage5 (ico3, ico4, ico5)
ICO_VERTICES = (642, 2562, 10242)


def _fsaverage_arrays(surface: str, hemi: str):
    import nibabel as nib
    from nilearn import datasets

    files = datasets.fetch_surf_fsaverage("fsaverage5")  # bundled in nilearn's wheel: no download
    img = nib.load(files[f"{surface}_{hemi}"])
    return np.asarray(img.darrays[0].data, dtype=np.float64), np.asarray(img.darrays[1].data, dtype=np.int64)


def _ico_faces(n: int, hemi: str) -> np.ndarray:
    """Triangles of the first ``n`` vertices: the convex hull of the sphere's, oriented outwards."""
    from scipy.spatial import ConvexHull

    sphere, _ = _fsaverage_arrays("sphere", hemi)
    pts = sphere[:n]
    faces = ConvexHull(pts).simplices.astype(np.int64)
    normal = np.cross(pts[faces[:, 1]] - pts[faces[:, 0]], pts[faces[:, 2]] - pts[faces[:, 0]])
    inward = (normal * pts[faces].mean(1)).sum(1) < 0
    faces[inward] = faces[inward][:, ::-1]
    return faces


def load_fsaverage(surface: str = "pial", hemi: str = "left", n_vertices: int = 10242) -> Shape:
    """An fsaverage5 surface (nilearn's bundled GIFTI), optionally decimated along its icosahedral hierarchy.

    Parameters
    ----------
    surface : {"pial", "white", "infl", "sphere"}
    hemi : {"left", "right"}
    n_vertices : {642, 2562, 10242}
        Resolution (ico3, ico4 or the full ico5 mesh); the vertices are the first ``n_vertices`` of the full mesh.

    Returns
    -------
    Shape
        Triangles in fsaverage's surface RAS coordinates (mm), outward normals, float64.
    """
    if surface not in FSAVERAGE_SURFACES:
        raise ValueError(f"surface: expected one of {list(FSAVERAGE_SURFACES)}, got {surface!r}")
    if hemi not in ("left", "right"):
        raise ValueError(f"hemi: expected 'left' or 'right', got {hemi!r}")
    if n_vertices not in ICO_VERTICES:
        raise ValueError(f"n_vertices: expected one of {list(ICO_VERTICES)}, got {n_vertices!r}")
    vertices, faces = _fsaverage_arrays(surface, hemi)
    if n_vertices < len(vertices):
        faces = _ico_faces(n_vertices, hemi)
        vertices = vertices[:n_vertices]
    return Shape(torch.as_tensor(vertices), torch.as_tensor(faces), name=f"fsaverage5 {surface} {hemi} "
                                                                          f"({n_vertices} vertices)")


def mirror(shape: Shape, axis: int = 0) -> Shape:
    """The mirror image ``x_axis ↦ −x_axis``, with cells reversed so that normals keep pointing outwards."""
    v = shape.vertices.clone()
    v[:, axis] = -v[:, axis]
    cells = None if shape.cells is None else shape.cells.flip(1)
    return Shape(v, cells, shape.weights, f"mirrored {shape.name}".strip())


def random_warp(shape: Shape, *, max_displacement: float = 8.0, smoothness: float = 20.0, seed: int = 0,
                n_steps: int = 20):
    """Move ``shape`` by a known random diffeomorphism: a Gaussian-kernel geodesic from random momenta.

    Parameters
    ----------
    shape : Shape
    max_displacement : float
        Largest displacement of a vertex (data units).
    smoothness : float
        Width of the Gaussian kernel (data units); momenta on a grid of that spacing around the shape.
    seed : int
    n_steps : int
        RK4 steps of the geodesic (the ground truth is its flow).

    Returns
    -------
    warped : Shape
        Same cells, moved vertices (same indexing: the truth of a vertex error).
    transform : ShapeTransform
        The true map (``apply`` / ``inverse``).
    """
    from .control import control_points
    from .transform import ShapeTransform

    v = shape.vertices.to(torch.float64)
    q0 = control_points(v, "grid", smoothness, reach=1.5)
    gen = torch.Generator().manual_seed(int(seed))
    p0 = torch.randn(q0.shape, generator=gen, dtype=torch.float64)
    kernel = GaussianKernel(sigma=smoothness)
    for _ in range(4):  # rescale to the requested largest displacement (the map is nearly linear in p0 at first)
        moved = ShapeTransform(kernel, q0, p0, n_steps, "rk4").apply(v)
        p0 = p0 * (max_displacement / float((moved - v).norm(dim=1).max()))
    transform = ShapeTransform(kernel, q0, p0, n_steps, "rk4")
    return transform.apply(shape.to(torch.float64)), transform


def _dipy_array(name: str) -> np.ndarray:
    import os

    import dipy.data

    path = os.path.join(os.path.dirname(dipy.data.__file__), "files", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dipy's bundled file {name} is missing (looked for {path})")
    return np.load(path).astype(np.float64)


def load_contours(name: str = "circle", level: float = 0.5, *, spacing: float = 1.0) -> Shape:
    """The longest closed contour of a bundled 2-D image, as a curve (segments), in pixel units × ``spacing``.

    Parameters
    ----------
    name : {"circle", "C", "t1_slice"}
        dipy's ``circle.npy`` / ``C.npy`` (256 × 256) or ``t1_coronal_slice.npy`` (its outline at ``level`` of the
        maximum intensity: the head's outline).
    level : float
        Iso-level, as a fraction of the image's maximum.
    spacing : float
        Pixel size (data units).
    """
    files = {"circle": "circle.npy", "C": "C.npy", "t1_slice": "t1_coronal_slice.npy"}
    if name not in files:
        raise ValueError(f"name: expected one of {list(files)}, got {name!r}")
    import contourpy

    img = _dipy_array(files[name])
    lines = contourpy.contour_generator(z=img, line_type="Separate").lines(level * float(img.max()))
    line = max(lines, key=len)
    pts = np.asarray(line, dtype=np.float64)[:, ::-1] * spacing  # contourpy gives (x=column, y=row)
    closed = np.allclose(pts[0], pts[-1])
    if closed:
        pts = pts[:-1]
    n = len(pts)
    seg = np.stack([np.arange(n), (np.arange(n) + 1) % n], 1) if closed else np.stack([np.arange(n - 1),
                                                                                     np.arange(1, n)], 1)
    return Shape(torch.as_tensor(pts), torch.as_tensor(seg), name=f"dipy {name} contour")
