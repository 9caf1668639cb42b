"""Meshes and point sets in world coordinates: GIFTI, FreeSurfer, VTK / PLY / OBJ / STL / OFF, ``.npy``, ``.npz``.

Readers return a ``registration.shapes.Shape`` (vertices in the file's coordinates, float64; cells as stored);
writers write a shape back in the format its path names, keeping what the source file carried beside the vertices
(GIFTI metadata, coordinate systems and other data arrays; FreeSurfer volume geometry), so a warped surface opens in
the same viewers, over the same images, as the original.

Formats, by extension (case-insensitive):

========================================  ============  ====================================================
extension                                 library       notes
========================================  ============  ====================================================
``.gii``, ``.gii.gz``                     nibabel       ``NIFTI_INTENT_POINTSET`` + ``NIFTI_INTENT_TRIANGLE``
``.pial .white .inflated .sphere .orig``  nibabel       FreeSurfer triangle files (any name with their magic
``.smoothwm .surf`` (e.g. ``lh.pial``)                  number is recognised too); surface RAS (tkr) mm
``.vtk .vtu .ply .obj .stl .off``         meshio        triangles, segments (``line``) or vertices;
                                                        quads and polygons are split into triangles (fan)
``.npy``                                  numpy         ``(N, d)`` point set
``.npz``                                  numpy         ``vertices`` (N, d) and optional ``faces`` / ``cells``
========================================  ============  ====================================================

meshio rather than trimesh: meshio reads and writes every cell type (segments of curves, vertices of clouds, not
only triangles) and keeps the vertices exactly as stored, in their order, while trimesh's loaders merge duplicate
vertices and drop unreferenced ones by default, which breaks the vertex correspondence a registration's outputs
must keep. 2-D curves and clouds are written with ``z = 0`` and read back as 2-D when every ``z`` is 0. STL stores
independent triangles without shared vertices: its reader (meshio) merges equal vertices, so an STL file keeps the
surface but not the vertex order; use any other format when vertex indices matter.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

__all__ = ["load_mesh", "save_mesh", "is_mesh_path", "MESH_EXTENSIONS", "FREESURFER_EXTENSIONS",
           "MESHIO_EXTENSIONS", "mesh_extension"]

FREESURFER_EXTENSIONS = (".pial", ".white", ".inflated", ".sphere", ".orig", ".smoothwm", ".surf")
MESHIO_EXTENSIONS = (".vtk", ".vtu", ".ply", ".obj", ".stl", ".off")
MESH_EXTENSIONS = (".gii", ".gii.gz") + FREESURFER_EXTENSIONS + MESHIO_EXTENSIONS + (".npy", ".npz")
_FS_MAGIC = b"\xff\xff\xfe"


def mesh_extension(path) -> str:
    """The format-defining extension of ``path`` (``".gii.gz"`` kept whole), lower case; ``""`` if none."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".gii.gz"):
        return ".gii.gz"
    return os.path.splitext(name)[1]


def _is_freesurfer(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(3) == _FS_MAGIC
    except OSError:
        return False


def is_mesh_path(path) -> bool:
    """Whether ``path`` names a mesh or point-set format of this module (by extension, or by FreeSurfer's magic
    number for an existing file with another name, e.g. ``lh.pial``)."""
    ext = mesh_extension(path)
    if ext in MESH_EXTENSIONS:
        return True
    return os.path.isfile(path) and _is_freesurfer(path)


def _shape(vertices, cells, name, meta):
    import torch

    from ..shapes.shape import Shape

    return Shape(torch.as_tensor(np.asarray(vertices, dtype=np.float64)),
                 None if cells is None else torch.as_tensor(np.asarray(cells, dtype=np.int64)), name=name, meta=meta)


def _load_gifti(path, name):
    import nibabel as nib

    img = nib.load(path)
    points = [d for d in img.darrays if d.intent == nib.nifti1.intent_codes["NIFTI_INTENT_POINTSET"]]
    tris = [d for d in img.darrays if d.intent == nib.nifti1.intent_codes["NIFTI_INTENT_TRIANGLE"]]
    if len(points) != 1:
        raise ValueError(f"{name}: expected one NIFTI_INTENT_POINTSET array in {path}, got {len(points)}")
    return _shape(points[0].data, tris[0].data if tris else None, str(path), {"format": "gifti", "gifti": img})


def _load_freesurfer(path, name):
    import nibabel.freesurfer as fs

    try:
        with warnings.catch_warnings():  # files without volume geometry (valid, e.g. written by nibabel) warn
            warnings.filterwarnings("ignore", message="(Unknown extension code|No volume information)")
            coords, faces, info = fs.read_geometry(path, read_metadata=True)
    except (ValueError, OSError) as err:
        raise ValueError(f"{name}: {path} is not a readable FreeSurfer surface ({err})") from None
    return _shape(coords, faces, str(path), {"format": "freesurfer", "volume_info": info})


def _fan(cells: np.ndarray) -> np.ndarray:
    k = cells.shape[1]
    return np.concatenate([cells[:, [0, i, i + 1]] for i in range(1, k - 1)])


def _load_meshio(path, name):
    import meshio

    try:
        with warnings.catch_warnings():  # meshio's STL size check overflows a 32-bit product harmlessly
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="meshio")
            mesh = meshio.read(path)
    except Exception as err:  # meshio raises many types for unreadable files
        raise ValueError(f"{name}: cannot read {path} with meshio ({type(err).__name__}: {err})") from None
    groups = {"triangle": [], "line": [], "vertex": []}
    for block in mesh.cells:
        data = np.asarray(block.data, dtype=np.int64)
        if block.type == "triangle":
            groups["triangle"].append(data)
        elif block.type in ("quad", "polygon") or block.type.startswith("polygon"):
            groups["triangle"].append(_fan(data))
        elif block.type == "line":
            groups["line"].append(data)
        elif block.type == "vertex":
            groups["vertex"].append(data)
    found = [k for k, v in groups.items() if v]
    if len(found) > 1:
        raise ValueError(f"{name}: expected one kind of cells in {path} (triangles, lines or vertices), got {found}")
    points = np.asarray(mesh.points, dtype=np.float64)
    kind = found[0] if found else "vertex"
    cells = np.concatenate(groups[kind]) if found and kind != "vertex" else None
    if points.shape[1] == 3 and kind != "triangle" and np.all(points[:, 2] == 0):
        points = points[:, :2]
    return _shape(points, cells, str(path), {"format": "meshio"})


def _load_numpy(path, name, ext):
    if ext == ".npy":
        return _shape(np.load(path), None, str(path), {"format": "npy"})
    with np.load(path) as z:
        if "vertices" not in z.files:
            raise ValueError(f"{name}: expected an array 'vertices' in {path}, got {sorted(z.files)}")
        cells = z["faces"] if "faces" in z.files else (z["cells"] if "cells" in z.files else None)
        return _shape(z["vertices"], cells, str(path), {"format": "npz"})


def load_mesh(path, *, name: str = "mesh"):
    """Read a mesh, curve or point set (module docstring) as a ``Shape``.

    Parameters
    ----------
    path : str or path-like
    name : str
        What error messages call the argument.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Unknown format or unreadable content (the message names the file).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such file: {path}")
    ext = mesh_extension(path)
    if ext in (".gii", ".gii.gz"):
        return _load_gifti(path, name)
    if ext in FREESURFER_EXTENSIONS or (ext not in MESH_EXTENSIONS and _is_freesurfer(path)):
        return _load_freesurfer(path, name)
    if ext in MESHIO_EXTENSIONS:
        return _load_meshio(path, name)
    if ext in (".npy", ".npz"):
        return _load_numpy(path, name, ext)
    raise ValueError(f"{name}: unknown mesh format {ext or '(no extension)'!r} of {path}; expected one of "
                     f"{list(MESH_EXTENSIONS)} or a FreeSurfer surface")


def _write_gifti(path, vertices, cells, meta):
    import nibabel as nib

    pointset = nib.nifti1.intent_codes["NIFTI_INTENT_POINTSET"]
    triangle = nib.nifti1.intent_codes["NIFTI_INTENT_TRIANGLE"]
    old = meta.get("gifti") if meta.get("format") == "gifti" else None
    arrays = []
    if old is not None and len(old.darrays[[d.intent for d in old.darrays].index(pointset)].data) == len(vertices):
        for d in old.darrays:
            if d.intent == pointset:
                d = nib.gifti.GiftiDataArray(vertices.astype(np.float32), intent=pointset, datatype="float32",
                                             coordsys=d.coordsys, meta=d.meta)
            arrays.append(d)
        img = nib.gifti.GiftiImage(meta=old.meta, labeltable=old.labeltable, darrays=arrays)
    else:
        arrays.append(nib.gifti.GiftiDataArray(vertices.astype(np.float32), intent=pointset, datatype="float32"))
        if cells is not None:
            arrays.append(nib.gifti.GiftiDataArray(cells.astype(np.int32), intent=triangle, datatype="int32"))
        img = nib.gifti.GiftiImage(darrays=arrays)
    nib.save(img, path)


def _write(path, ext, vertices, cells, meta):
    if ext in (".gii", ".gii.gz"):
        if vertices.shape[1] != 3:
            raise ValueError(f"path: GIFTI holds 3-D surfaces, got {vertices.shape[1]}-D vertices")
        _write_gifti(path, vertices, cells, meta)
    elif ext in FREESURFER_EXTENSIONS or meta.get("format") == "freesurfer" and ext not in MESH_EXTENSIONS:
        import nibabel.freesurfer as fs

        if cells is None or cells.shape[1] != 3:
            raise ValueError("path: FreeSurfer surfaces hold triangles, got no triangles")
        fs.write_geometry(path, vertices, cells.astype(np.int32), volume_info=meta.get("volume_info") or None)
    elif ext in MESHIO_EXTENSIONS:
        import meshio

        pts = vertices if vertices.shape[1] == 3 else np.concatenate([vertices, np.zeros((len(vertices), 1))], 1)
        kind = {None: "vertex", 2: "line", 3: "triangle"}[None if cells is None or cells.shape[1] == 1
                                                          else cells.shape[1]]
        data = (np.arange(len(pts))[:, None] if kind == "vertex" else cells).astype(np.int32)
        meshio.write(path, meshio.Mesh(pts, [(kind, data)]), file_format=ext[1:])
    elif ext == ".npy":
        np.save(path, vertices)
    elif ext == ".npz":
        extra = {} if cells is None else {"faces": cells}
        with open(path, "wb") as f:
            np.savez(f, vertices=vertices, **extra)
    else:
        raise ValueError(f"path: unknown mesh format {ext or '(no extension)'!r}; expected one of "
                         f"{list(MESH_EXTENSIONS)}")


def save_mesh(path, shape) -> str:
    """Write ``shape`` in the format ``path`` names, atomically (a temporary file beside it, then a rename).

    Parameters
    ----------
    path : str or path-like
        Target file; its extension chooses the format (a FreeSurfer name such as ``lh.pial`` writes FreeSurfer).
    shape : Shape
        Vertices in world coordinates; ``shape.meta`` from a reader of the same format is written back (GIFTI
        metadata and other arrays, FreeSurfer volume geometry).

    Returns
    -------
    str
        ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path: the directory of {path} does not exist")
    ext = mesh_extension(path)
    vertices = shape.vertices.detach().cpu().double().numpy()
    cells = None if shape.cells is None else shape.cells.cpu().numpy()
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        _write(tmp, ext, vertices, cells, shape.meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the output private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
