"""`lddmm register` / `lddmm apply` on meshes: the files they write, both directions, and one-line errors."""

import json

import numpy as np
import pytest
import torch

from registration.cli import main
from registration.io import load_mesh, save_mesh
from registration.shapes import Shape, vertex_error
from test_shapes_terms import _sphere_mesh

FAST = ["--sigma", "6", "--data-sigma", "3", "--iterations", "5,15", "--regularization", "1e-3", "--quiet",
        "--threads", "1"]


def _pair():
    v, f = _sphere_mesh(5, 8)
    source = Shape(v * 10 + torch.tensor([20.0, -5.0, 3.0], dtype=torch.float64), f)
    target = source.with_vertices(source.vertices * torch.tensor([1.2, 0.9, 0.9], dtype=torch.float64))
    return source, target


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes_cli")
    source, target = _pair()
    save_mesh(tmp / "moving.gii", source)
    save_mesh(tmp / "fixed.gii", target)
    assert main(["register", str(tmp / "fixed.gii"), str(tmp / "moving.gii"), "--out", str(tmp / "out")]
                + FAST) == 0
    return tmp, source, target


def test_register_writes_the_warped_mesh_momenta_report_and_picture(result):
    tmp, source, target = result
    out = tmp / "out"
    assert {"warped.gii", "momenta.npz", "report.json", "overview.png"} <= set(p.name for p in out.iterdir())
    warped = load_mesh(out / "warped.gii")
    assert torch.equal(warped.cells, source.cells)  # same faces, moved vertices, world coordinates
    assert vertex_error(warped, target) < 0.3 * vertex_error(source, target)
    report = json.loads((out / "report.json").read_text())
    for key in ("distance_before", "distance_after", "energy", "iterations", "seconds", "flipped_triangles"):
        assert key in report
    assert report["flipped_triangles"] == 0
    d = report["surface_distances"][0]
    assert d["chamfer_after"] < d["chamfer_before"]


def test_apply_moves_meshes_and_points_both_ways(result):
    tmp, source, _ = result
    out = tmp / "out"
    save_mesh(tmp / "other.vtk", source)
    assert main(["apply", str(out), str(tmp / "other.vtk"), "--out", str(tmp / "moved.vtk")]) == 0
    moved = load_mesh(tmp / "moved.vtk")
    np.testing.assert_allclose(moved.vertices.numpy(), load_mesh(out / "warped.gii").vertices.numpy(), atol=1e-4)
    pts = source.vertices[:7].numpy()
    np.save(tmp / "pts.npy", pts)
    assert main(["apply", str(out), str(tmp / "pts.npy"), "--out", str(tmp / "pts_fixed.npy")]) == 0
    assert main(["apply", str(out), str(tmp / "pts_fixed.npy"), "--out", str(tmp / "back.npy"), "--inverse"]) == 0
    np.testing.assert_allclose(np.load(tmp / "back.npy"), pts, atol=1e-5)


def test_image_options_and_mixed_inputs_are_one_line_errors(result, capsys):
    tmp, _, _ = result
    assert main(["register", str(tmp / "fixed.gii"), str(tmp / "moving.gii"), "--out", str(tmp / "o2"),
                 "--metric", "ssd"]) == 2
    assert "--metric" in capsys.readouterr().err
    assert main(["register", str(tmp / "fixed.gii"), str(tmp / "moving.gii"), "--out", str(tmp / "o2"),
                 "--no-denoise"]) == 2
    assert "--denoise" in capsys.readouterr().err
    assert main(["register", str(tmp / "fixed.gii"), str(tmp / "moving.gii"), "--out", str(tmp / "o2"),
                 "--lncc-floor", "0"]) == 2
    assert "--lncc-floor" in capsys.readouterr().err
    np.save(tmp / "image.npy", np.zeros((8, 8, 8), np.float32))
    assert main(["register", str(tmp / "fixed.gii"), str(tmp / "image.npy"), "--out", str(tmp / "o3")]) == 2
    assert "mesh" in capsys.readouterr().err
    assert not (tmp / "o2").exists() and not (tmp / "o3").exists()
