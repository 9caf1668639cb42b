"""register_shapes: recovery of known deformations, no flips, inverse, several objects, curves, clouds, bad input."""

import math
import os

import numpy as np
import pytest
import torch

from lddmm_nets import GaussianKernel, HamiltonianSystem, shoot
from lddmm_nets.shapes.system import FusedHamiltonianSystem
from registration.shapes import (Shape, ShapeTransform, chamfer, control_points, normal_ratios, register_shapes,
                                 vertex_error)
from test_shapes_terms import _sphere_mesh

F64 = torch.float64


def _sphere(scale=10.0, n_theta=5, n_phi=8):
    v, f = _sphere_mesh(n_theta, n_phi)
    return Shape(v * scale, f)


def _ellipsoid(shape, axes=(1.25, 0.9, 0.85), shift=(1.5, 0.0, 0.0)):
    v = shape.vertices * torch.tensor(axes, dtype=F64) + torch.tensor(shift, dtype=F64)
    return shape.with_vertices(v)


def _velocity_path(monkeypatch, compiled: bool):
    """Ambient velocities by the compiled pass (``shapes._native``; skipped without a compiler) or torch."""
    from lddmm_nets.shapes import _native, system

    if compiled and not _native.available(3, 3):
        pytest.skip("no C++ compiler for the compiled kernel sums")
    if not compiled:
        monkeypatch.setattr(system, "compiled_available", lambda dim, features: False)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_fused_system_matches_the_autograd_reference(rng, monkeypatch, compiled, dim):
    _velocity_path(monkeypatch, compiled)
    q = 3 * torch.randn(40, dim, generator=rng, dtype=F64) + 20.0
    p = torch.randn(40, dim, generator=rng, dtype=F64)
    x = 3 * torch.randn(25, dim, generator=rng, dtype=F64) + 20.0
    kernel = GaussianKernel(sigma=2.5, nugget=0.01)
    fused = FusedHamiltonianSystem(kernel).rhs((q, p, x))
    ref = HamiltonianSystem(kernel, backend="dense", gradient="autograd").rhs((q, p, x))
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_fused_system_gradients_match_the_autograd_reference(rng, monkeypatch, compiled):
    """The written backward passes of the Gaussian stage and velocity (``_GaussianStage``; ``_GaussianVelocity`` or
    the compiled ``_native.GaussianVelocity``): vector-Jacobian products of ``rhs`` equal autograd's through the
    reference system, for a sum of Gaussians with a nugget, and pass gradcheck."""
    from lddmm_nets import SumKernel

    _velocity_path(monkeypatch, compiled)

    q = 3 * torch.randn(30, 3, generator=rng, dtype=F64) + 20.0
    p = torch.randn(30, 3, generator=rng, dtype=F64)
    x = 3 * torch.randn(20, 3, generator=rng, dtype=F64) + 20.0
    kernel = SumKernel([GaussianKernel(sigma=2.5), GaussianKernel(sigma=6.0, nugget=0.01)], weights=[1.0, 0.5])
    ups = [torch.randn(30, 3, generator=rng, dtype=F64), torch.randn(30, 3, generator=rng, dtype=F64),
           torch.randn(20, 3, generator=rng, dtype=F64)]
    grads = []
    for system in (FusedHamiltonianSystem(kernel), HamiltonianSystem(kernel, backend="dense", gradient="autograd")):
        leaves = [t.clone().requires_grad_() for t in (q, p, x)]
        out = system.rhs(tuple(leaves))
        grads.append(torch.autograd.grad(sum((o * u).sum() for o, u in zip(out, ups)), leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    fused = FusedHamiltonianSystem(GaussianKernel(sigma=2.5))
    small = [t[:8].clone().requires_grad_() for t in (q, p, x)]
    assert torch.autograd.gradcheck(lambda q, p, x: fused.rhs((q, p, x)), small)


def test_sphere_onto_an_ellipsoid_without_correspondence():
    source = _sphere()
    target = _ellipsoid(source)
    res = register_shapes(source, target, sigma=6.0, data_sigma=3.0, regularization=1e-3, dtype=F64,
                          max_iter=60)
    # the vertices were never matched, yet they land near their partners (the ellipsoid is a smooth image of the
    # sphere); 10 % of the initial vertex error is the accuracy a 6 mm kernel leaves on a 10 mm sphere
    assert vertex_error(res.warped, target) < 0.1 * vertex_error(source, target)
    assert res.distance_after[0] < 1e-3 * res.distance_before[0]
    assert res.flipped == 0 and res.min_normal_ratio > 0
    assert res.energy > 0 and res.n_iter == sum(r.n_iter for r in res.levels)
    torch.testing.assert_close(res.apply(source).vertices, res.warped.vertices)
    x = 4 * torch.randn(30, 3, dtype=F64)
    torch.testing.assert_close(res.inverse(res.apply(x)), x, rtol=0, atol=1e-8)  # exact discrete inverse


def test_recovers_a_deformation_of_the_model_class():
    """A target made by the model itself (momenta on the same control points): the fit reaches the data term's
    precision and the map it finds moves the vertices where the true one does."""
    source = _sphere(n_theta=6, n_phi=10)
    q0 = control_points(source.vertices, "grid", 6.0)
    p0 = 2.0 * torch.sin(q0 / 7.0)
    truth = ShapeTransform(GaussianKernel(6.0), q0, p0, 10, "rk2")
    target = truth.apply(source)
    # a deformation of the sphere's size seen at 2 mm: the default levels (2, 1) stop in a local minimum
    # (relative distance 0.9); starting at 4 widths reaches it
    res = register_shapes(source, target, sigma=6.0, data_sigma=2.0, control_points=q0, regularization=1e-4,
                          dtype=F64, max_iter=80, levels=(4.0, 2.0, 1.0))
    assert vertex_error(res.warped, target) < 0.1 * vertex_error(source, target)


def test_curves_and_point_clouds_in_2d(rng):
    t = torch.linspace(0, 2 * math.pi, 61, dtype=F64)[:-1]
    circle = torch.stack([t.cos(), t.sin()], 1) * 10
    ellipse = circle * torch.tensor([1.3, 0.7], dtype=F64)
    segs = torch.stack([torch.arange(60), (torch.arange(60) + 1) % 60], 1)
    curve = register_shapes(Shape(circle, segs), Shape(ellipse, segs), sigma=5.0, data_sigma=1.5, dtype=F64,
                            regularization=1e-3, max_iter=60)
    assert curve.distance_after[0] < 1e-2 * curve.distance_before[0] and curve.flipped == 0
    cloud = register_shapes(circle, ellipse[torch.randperm(60, generator=rng)], sigma=5.0, data_sigma=1.5,
                            dtype=F64, regularization=1e-3, max_iter=60)
    assert cloud.source.kind == "points" and math.isnan(cloud.min_normal_ratio)
    assert cloud.distance_after[0] < 1e-2 * cloud.distance_before[0]


@pytest.mark.filterwarnings("ignore::lddmm_nets.optim.ConvergenceWarning")
def test_several_objects_share_one_deformation():
    a, b = _sphere(5.0), _sphere(5.0)
    b = b.with_vertices(b.vertices + torch.tensor([20.0, 0, 0], dtype=F64))
    ta, tb = _ellipsoid(a, shift=(0, 0, 0)), _ellipsoid(b, shift=(0, 0, 0))
    res = register_shapes([a, b], [ta, tb], sigma=5.0, data_sigma=2.0, dtype=F64, regularization=1e-3,
                          max_iter=40)
    assert isinstance(res.warped, list) and len(res.warped) == 2 and len(res.distance_after) == 2
    for w, s, t in zip(res.warped, (a, b), (ta, tb)):
        assert chamfer(w, t) < 0.3 * chamfer(s, t)
    joined = Shape.union([a, b])
    assert joined.n_vertices == a.n_vertices + b.n_vertices and joined.components().max() == 1
    assert [s.n_vertices for s in joined.split()] == [a.n_vertices, b.n_vertices]


@pytest.mark.filterwarnings("ignore::lddmm_nets.optim.ConvergenceWarning")
def test_no_triangle_flips_even_when_the_fit_would_want_them():
    """Currents against the same triangle with the opposite orientation: the fit is perfect once the triangle is
    turned over. Without the flip check the optimiser does exactly that; with it every step that flips is
    infeasible, and the triangle never turns over (it can only shrink towards the barrier)."""
    v = torch.tensor([[0.0, 0, 0], [10, 0, 0], [5, 8, 0]], dtype=F64)
    f = torch.tensor([[0, 1, 2]])
    kw = dict(sigma=3.0, data_sigma=3.0, dtype=F64, data_term="currents", regularization=1e-4, max_iter=50,
              levels=(1,), control_points="vertices", n_steps=10)  # 10 steps: the free fit turns it fully over
    free = register_shapes(Shape(v, f), Shape(v, f.flip(1)), check_flips=False, **kw)
    assert free.flipped == 1 and free.min_normal_ratio < -0.9
    checked = register_shapes(Shape(v, f), Shape(v, f.flip(1)), **kw)
    assert checked.flipped == 0 and (normal_ratios(checked.source, checked.warped) > 0).all()


def test_flip_barrier_is_c1_at_its_threshold_and_unbounded_at_the_margin():
    """``ψ((r − m)/(τ − m))``: zero with a zero slope at ``τ`` (the barrier starts smoothly), and unbounded as the
    normal ratio nears the margin ``m`` where steps become infeasible (a barrier finite there lets the iterates
    walk onto the margin, where every trial step flips a cell)."""
    from registration.shapes.register import BARRIER_THRESHOLD as tau, FLIP_MARGIN as m, flip_barrier

    h = 1e-4
    r = torch.tensor([tau - h, tau, 0.5], dtype=F64, requires_grad=True)
    value = flip_barrier(r, m)
    (grad,) = torch.autograd.grad(value, r)
    assert float(value) == pytest.approx(0.5 * (h / (tau - m)) ** 2, rel=1e-3)  # ψ(1 − ε) = ε²/2 + O(ε³)
    assert abs(float(grad[0])) < 2 * h / (tau - m) ** 2 and float(grad[1]) == float(grad[2]) == 0.0
    near = [float(flip_barrier(torch.tensor([m + e], dtype=F64), m)) for e in (1e-3, 1e-6, 1e-9)]
    assert near[0] < near[1] < near[2] and near[2] - near[1] == pytest.approx(3 * math.log(10), abs=1e-4)
    with pytest.raises(ValueError, match="ratio: expected normal ratios above floor"):
        flip_barrier(torch.tensor([0.5, m], dtype=F64), m)
    with pytest.raises(ValueError, match="floor: expected a value below"):
        flip_barrier(r.detach(), tau)


@pytest.mark.filterwarnings("ignore::lddmm_nets.optim.ConvergenceWarning")
def test_result_saves_and_reloads(tmp_path):
    source = _sphere(n_theta=4, n_phi=6)
    res = register_shapes(source, _ellipsoid(source), sigma=6.0, data_sigma=3.0, dtype=F64, max_iter=10,
                          levels=(1,))
    paths = res.save(tmp_path / "out", extension=".ply")
    assert sorted(os.listdir(tmp_path / "out")) == ["momenta.npz", "overview.png", "report.json", "warped.ply"]
    assert all(os.path.exists(p) for p in paths)
    back = ShapeTransform.load(str(tmp_path / "out"))
    x = torch.randn(10, 3, dtype=F64)
    torch.testing.assert_close(back.apply(x), res.apply(x))
    arr = np.random.default_rng(0).normal(size=(5, 3))
    assert isinstance(res.apply(arr), np.ndarray)


def test_bad_input():
    s = _sphere(n_theta=3, n_phi=4)
    with pytest.raises(ValueError, match="target"):
        register_shapes(s, Shape(torch.zeros(4, 2, dtype=F64)))
    with pytest.raises(ValueError, match="expected 1 object"):
        register_shapes(s, [s, s])
    with pytest.raises(ValueError, match="max_iter"):
        register_shapes(s, s, max_iter=[1, 2, 3])
    with pytest.raises(ValueError, match="control_points"):
        register_shapes(s, s, control_points="random")
    with pytest.raises(ValueError, match="data_term"):
        register_shapes(s, s, data_term="chamfer")
    with pytest.raises(ValueError, match="point clouds"):
        register_shapes(s.vertices, s.vertices, data_term="varifold")
    with pytest.raises(ValueError, match="regularization"):
        register_shapes(s, s, regularization=-1)
    with pytest.raises(TypeError, match="source"):
        register_shapes(3.0, s)
