"""Mesh and point-set I/O in world coordinates (registration.io.meshes) and the CLI's format recognition."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch

from registration.cli.register_shapes import is_shape_path
from registration.io import is_mesh_path, load_mesh, save_mesh
from registration.shapes import Shape
from test_shapes_terms import _sphere_mesh


def _mesh():
    v, f = _sphere_mesh(4, 7)
    return Shape(v * 50 + torch.tensor([-30.0, 12.5, 7.25], dtype=torch.float64), f)  # world mm, off-centre


@pytest.mark.parametrize("name", ["m.gii", "m.gii.gz", "m.vtk", "m.vtu", "m.ply", "m.obj", "m.off", "m.npz",
                                  "lh.pial", "m.surf"])
def test_round_trip_keeps_vertices_cells_and_order(tmp_path, name):
    mesh = _mesh()
    path = save_mesh(tmp_path / name, mesh)
    back = load_mesh(path)
    # GIFTI and FreeSurfer store float32 coordinates: 1e-5 mm at 100 mm; the other formats keep float64
    tol = 1e-4 if name.endswith((".gii", ".gii.gz", ".pial", ".surf")) else 1e-9
    np.testing.assert_allclose(back.vertices.numpy(), mesh.vertices.numpy(), rtol=0, atol=tol)
    np.testing.assert_array_equal(back.cells.numpy(), mesh.cells.numpy())
    assert is_mesh_path(path) and is_shape_path(path)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]


def test_stl_keeps_the_surface_but_not_the_vertex_order(tmp_path):
    mesh = _mesh()
    back = load_mesh(save_mesh(tmp_path / "m.stl", mesh))
    key = lambda s: np.sort(np.round(s.vertices.numpy()[s.cells.numpy()].reshape(len(s.cells), -1), 4), 0)  # noqa
    np.testing.assert_allclose(key(back), key(mesh), atol=1e-3)


def test_curves_and_point_sets(tmp_path):
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    curve = Shape(np.stack([np.cos(t), np.sin(t)], 1), np.stack([np.arange(20), (np.arange(20) + 1) % 20], 1))
    for name in ("c.vtk", "c.npz", "c.ply"):
        back = load_mesh(save_mesh(tmp_path / name, curve))
        assert back.kind == "segments" and back.dim == 2
        np.testing.assert_allclose(back.vertices.numpy(), curve.vertices.numpy(), atol=1e-12)
    pts = np.random.default_rng(0).normal(size=(30, 3))
    np.save(tmp_path / "p.npy", pts)
    cloud = load_mesh(tmp_path / "p.npy")
    assert cloud.kind == "points" and np.array_equal(cloud.vertices.numpy(), pts)
    np.save(tmp_path / "image.npy", np.zeros((16, 16)))
    assert is_shape_path(tmp_path / "p.npy") and not is_shape_path(tmp_path / "image.npy")


def test_gifti_metadata_and_other_arrays_are_written_back(tmp_path):
    mesh = _mesh()
    v, f = mesh.vertices.numpy().astype(np.float32), mesh.cells.numpy().astype(np.int32)
    pointset = nib.gifti.GiftiDataArray(v, intent="NIFTI_INTENT_POINTSET", datatype="float32",
                                        meta=nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": "CortexLeft"}))
    arrays = [pointset, nib.gifti.GiftiDataArray(f, intent="NIFTI_INTENT_TRIANGLE", datatype="int32")]
    nib.save(nib.gifti.GiftiImage(darrays=arrays, meta=nib.gifti.GiftiMetaData({"subject": "s01"})),
             tmp_path / "in.gii")
    shape = load_mesh(tmp_path / "in.gii")
    moved = shape.with_vertices(shape.vertices + 1.0)
    img = nib.load(save_mesh(tmp_path / "out.gii", moved))
    assert img.meta["subject"] == "s01"
    assert img.darrays[0].meta["AnatomicalStructurePrimary"] == "CortexLeft"
    np.testing.assert_allclose(img.darrays[0].data, v + 1.0, atol=1e-4)


def test_freesurfer_file_without_extension_is_recognised_by_its_magic_number(tmp_path):
    path = save_mesh(tmp_path / "lh.white", _mesh())
    os.rename(path, tmp_path / "white_surface")
    assert is_mesh_path(tmp_path / "white_surface")
    assert load_mesh(tmp_path / "white_surface").n_cells == _mesh().n_cells


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_mesh(tmp_path / "missing.vtk")
    (tmp_path / "x.xyz").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="unknown mesh format"):
        load_mesh(tmp_path / "x.xyz")
    np.savez(tmp_path / "bad.npz", points=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="vertices"):
        load_mesh(tmp_path / "bad.npz")
    curve = Shape(np.zeros((3, 2)), np.array([[0, 1], [1, 2]]))
    with pytest.raises(ValueError, match="GIFTI holds 3-D"):
        save_mesh(tmp_path / "c.gii", curve)
    assert not os.path.exists(tmp_path / "c.gii")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]  # nothing half-written is left
    with pytest.raises(FileNotFoundError, match="directory"):
        save_mesh(tmp_path / "no" / "m.vtk", _mesh())
