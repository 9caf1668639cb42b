"""Shape data and measures: fsaverage's icosahedral decimation, random warps, contours, surface distances, flips,
control points, the mesh pyramid."""

import numpy as np
import pytest
import torch

from registration.shapes import (Pyramid, Shape, chamfer, control_points, decimate, hausdorff, mean_edge_length,
                                 normal_ratios, point_triangle_distances, surface_distances, vertex_error)
from registration.shapes.data import load_contours, load_fsaverage, mirror, random_warp


def _signed_volume(shape):
    x = shape.vertices.numpy()[shape.cells.numpy()]
    return float(np.einsum("ij,ij->i", x[:, 0], np.cross(x[:, 1], x[:, 2])).sum() / 6)


@pytest.mark.parametrize("n", [642, 2562])
def test_fsaverage_icosahedral_decimation(n):
    full = load_fsaverage("sphere", "left")
    coarse = load_fsaverage("sphere", "left", n)
    assert coarse.n_cells == 2 * n - 4 and np.unique(coarse.cells.numpy()).size == n  # closed, every vertex used
    np.testing.assert_array_equal(coarse.vertices.numpy(), full.vertices.numpy()[:n])
    # icosahedral hierarchy: the next level's new vertices are the (projected) midpoints of this level's edges
    c = coarse.cells.numpy()
    edges = np.unique(np.sort(np.concatenate([c[:, [0, 1]], c[:, [1, 2]], c[:, [2, 0]]]), 1), axis=0)
    v = full.vertices.numpy()
    mid = v[edges].mean(1)
    mid *= 100.0 / np.linalg.norm(mid, axis=1, keepdims=True)
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(v[: 4 * n - 6]).query(mid)
    assert len(edges) == 3 * n - 6 and dist.max() < 0.5 and set(idx) == set(range(n, 4 * n - 6))
    # same orientation as the bundled full mesh (outward: positive enclosed volume), on the anatomical surfaces too
    assert _signed_volume(coarse) > 0 and _signed_volume(full) > 0
    assert _signed_volume(load_fsaverage("pial", "right", n)) > 0


def test_mirror_and_random_warp():
    s = load_fsaverage("pial", "left", 642)
    m = mirror(s)
    assert _signed_volume(m) == pytest.approx(_signed_volume(s), rel=1e-12)  # still outward
    warped, truth = random_warp(s, max_displacement=6.0, smoothness=25.0, seed=3, n_steps=8)
    disp = (warped.vertices - s.vertices).norm(dim=1)
    assert float(disp.max()) == pytest.approx(6.0, rel=0.02)
    assert torch.equal(warped.cells, s.cells) and normal_ratios(s, warped).min() > 0
    torch.testing.assert_close(truth.inverse(warped).vertices, s.vertices, rtol=0, atol=1e-8)


def test_contours_are_closed_curves():
    for name in ("circle", "C", "t1_slice"):
        curve = load_contours(name, 0.2 if name == "t1_slice" else 0.5)
        assert curve.kind == "segments" and curve.dim == 2 and curve.n_cells == curve.n_vertices > 100
        assert curve.components().max() == 0


def test_point_triangle_distance_against_a_fine_sampling(rng):
    g = np.random.default_rng(0)
    a, b, c = g.normal(size=(3, 200, 3))
    p = 2 * g.normal(size=(200, 3))
    exact = point_triangle_distances(p, a, b, c)
    s = np.linspace(0, 1, 121)
    S, T = np.meshgrid(s, s)
    keep = S + T <= 1
    u, w = S[keep], T[keep]
    pts = a[:, None] + u[None, :, None] * (b - a)[:, None] + w[None, :, None] * (c - a)[:, None]
    sampled = np.linalg.norm(pts - p[:, None], axis=2).min(1)
    step = np.maximum(np.linalg.norm(b - a, axis=1), np.linalg.norm(c - a, axis=1)) / 120
    assert (exact <= sampled + 1e-12).all() and (sampled - exact <= 1.5 * step).all()


def test_surface_distances_chamfer_hausdorff():
    s = load_fsaverage("white", "left", 642)
    t = load_fsaverage("pial", "left", 642)
    assert chamfer(s, s) == 0.0 and hausdorff(t, t) == 0.0
    d = surface_distances(s, t)
    nearest_vertex = np.linalg.norm(s.vertices.numpy()[:, None] - t.vertices.numpy()[None], axis=2).min(1)
    assert (d <= nearest_vertex + 1e-12).all() and d.mean() < nearest_vertex.mean()
    assert chamfer(s, t) == pytest.approx(chamfer(t, s)) and hausdorff(s, t) >= chamfer(s, t)
    assert vertex_error(s, t) >= chamfer(s, t)


def test_normal_ratios_and_flips():
    s = load_fsaverage("pial", "left", 642)
    np.testing.assert_allclose(normal_ratios(s, s), 1.0)
    np.testing.assert_allclose(normal_ratios(s, s.with_vertices(2 * s.vertices)), 4.0)  # areas scale by 4
    flipped = Shape(s.vertices, s.cells.flip(1))
    np.testing.assert_allclose(normal_ratios(flipped, mirror(s).with_vertices(-s.vertices)), 1.0)


def test_control_points_grid_and_subsample(rng):
    v = 10 * torch.randn(500, 3, generator=rng, dtype=torch.float64)
    from scipy.spatial import cKDTree

    grid = control_points(v, "grid", 4.0, reach=1.0)
    d = cKDTree(v.numpy()).query(grid.numpy())[0]
    assert (d <= 4.0 + 1e-9).all() and grid.dtype == v.dtype
    gaps = cKDTree(grid.numpy()).query(grid.numpy(), k=2)[0][:, 1]
    np.testing.assert_allclose(gaps, 4.0)  # a regular grid of the requested spacing
    sub = control_points(v, "subsample", 4.0)
    assert len(sub) < len(v) and cKDTree(sub.numpy()).query(v.numpy())[0].max() < 4.0 * np.sqrt(3)
    assert torch.equal(control_points(v, "vertices", 1.0), v)


def test_pyramid_decimates_meshes_and_compresses_clouds():
    s = load_fsaverage("pial", "left", 10242)
    coarse = decimate(s, 1280)
    assert 1100 <= coarse.n_cells <= 1300 and mean_edge_length(coarse) > 2 * mean_edge_length(s)
    pyr = Pyramid(s)
    assert pyr.at(0.1) is s and pyr.at(1e3).n_cells < s.n_cells
    cloud = Shape(s.vertices, None)
    small = decimate(cloud, 500)
    assert small.kind == "points" and float(small.weights.sum()) == pytest.approx(s.n_vertices)
