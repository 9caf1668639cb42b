"""Shape data terms (lddmm_nets.shapes): zero iff identical, invariances, orientation, closed forms, backends,
gradients."""

import math

import numpy as np
import pytest
import torch

from lddmm_nets import GaussianKernel, SumKernel
from lddmm_nets.shapes import Cells, Currents, Measure, ShapeDistance, Varifold, cell_geometry
from lddmm_nets.shapes import terms as shape_terms

from conftest import requires_keops

F64 = torch.float64


def _terms(**kw):
    return [Currents(0.6, **kw), Varifold(0.6, **kw), Varifold(0.6, oriented=True, **kw),
            Varifold(0.6, angular="gaussian", **kw), Measure(0.6, **kw)]


def _ids(terms):
    return [t.direction for t in terms]


def _sphere_mesh(n_theta=5, n_phi=8, dtype=F64):
    """A closed, consistently oriented (outward) triangulated sphere of radius 1 (poles + rings)."""
    th = torch.linspace(0, math.pi, n_theta + 2, dtype=dtype)[1:-1]
    ph = torch.linspace(0, 2 * math.pi, n_phi + 1, dtype=dtype)[:-1]
    T, P = torch.meshgrid(th, ph, indexing="ij")
    ring = torch.stack([T.sin() * P.cos(), T.sin() * P.sin(), T.cos()], -1).reshape(-1, 3)
    v = torch.cat([torch.tensor([[0, 0, 1.0]], dtype=dtype), ring, torch.tensor([[0, 0, -1.0]], dtype=dtype)])
    idx = lambda i, j: 1 + i * n_phi + (j % n_phi)  # noqa: E731
    faces = [[0, idx(0, j), idx(0, j + 1)] for j in range(n_phi)]
    for i in range(n_theta - 1):
        for j in range(n_phi):
            faces += [[idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)], [idx(i, j), idx(i + 1, j + 1), idx(i, j + 1)]]
    south = len(v) - 1
    faces += [[south, idx(n_theta - 1, j + 1), idx(n_theta - 1, j)] for j in range(n_phi)]
    return v, torch.tensor(faces)


def test_sphere_mesh_is_outward():
    v, f = _sphere_mesh()
    c = cell_geometry(v, f)
    assert bool(((c.vectors * c.centers).sum(1) > 0).all())


@pytest.mark.parametrize("term", _terms(), ids=_ids(_terms()))
def test_zero_iff_identical(term, rng):
    v, f = _sphere_mesh()
    shape = (v, f) if term.direction != "constant" else (v, None)
    ss = float(term.inner(shape, shape))
    assert abs(float(term(shape, shape))) <= 1e-12 * ss  # round-off of three sums of size ⟨S,S⟩
    moved = v + 0.05 * torch.randn(v.shape, generator=rng, dtype=F64)
    assert float(term(shape, (moved, shape[1]))) > 1e-4 * ss


@pytest.mark.parametrize("term", _terms(), ids=_ids(_terms()))
def test_invariant_to_reindexing_vertices_and_cells(term, rng):
    v, f = _sphere_mesh()
    w = v + 0.1 * torch.randn(v.shape, generator=rng, dtype=F64)
    perm = torch.randperm(len(v), generator=rng)
    inv = torch.argsort(perm)
    f2 = inv[f][torch.randperm(len(f), generator=rng)]  # same triangles, new vertex labels, new cell order
    f2 = f2.roll(1, dims=1)  # and a cyclic shift of the vertices inside each cell (orientation kept)
    d1 = term((v, f), (w, f))
    d2 = term((v[perm], f2), (w, f))
    torch.testing.assert_close(d1, d2, rtol=1e-12, atol=0)


def test_orientation_currents_flip_sign_varifolds_do_not():
    v, f = _sphere_mesh()
    flipped = (v, f.flip(1))
    S = (v, f)
    cur = Currents(0.6)
    torch.testing.assert_close(cur.inner(S, flipped), -cur.inner(S, S), rtol=1e-13, atol=0)
    torch.testing.assert_close(cur(S, flipped), 4 * cur.inner(S, S), rtol=1e-12, atol=0)
    for unoriented in (Varifold(0.6), Varifold(0.6, angular="gaussian"), Measure(0.6)):
        assert abs(float(unoriented(S, flipped))) <= 1e-12 * float(unoriented.inner(S, S))
    oriented = Varifold(0.6, oriented=True)
    assert float(oriented(S, flipped)) > 0.5 * float(oriented.inner(S, S))


@pytest.mark.parametrize("direction", ["linear", "binet", "sphere", "sphere_unoriented", "constant"])
def test_two_segments_closed_form(direction):
    """One segment against one segment: ⟨S, T⟩ = a b k_e(c, d) k_u(u, v), computed here by hand in numpy."""
    p1, p2, q1, q2 = np.array([0.1, 0.2]), np.array([1.3, 0.7]), np.array([-0.4, 0.9]), np.array([0.5, 1.6])
    sigma, sigma_u = 0.8, 0.7
    a, b = np.linalg.norm(p2 - p1), np.linalg.norm(q2 - q1)
    u, v = (p2 - p1) / a, (q2 - q1) / b
    c, d = (p1 + p2) / 2, (q1 + q2) / 2
    ke = np.exp(-np.sum((c - d) ** 2) / (2 * sigma**2))
    t = u @ v
    ku = {"linear": t, "binet": t * t, "sphere": np.exp(2 * (t - 1) / sigma_u**2),
          "sphere_unoriented": np.exp(2 * (t * t - 1) / sigma_u**2), "constant": 1.0}[direction]
    expected = a * b * ke * ku
    seg = torch.tensor([[0, 1]])
    S = (torch.tensor(np.stack([p1, p2])), seg)
    T = (torch.tensor(np.stack([q1, q2])), seg)
    for factorize in (True, False):
        term = ShapeDistance(sigma, direction=direction, sigma_u=sigma_u, factorize=factorize)
        assert float(term.inner(S, T)) == pytest.approx(expected, rel=1e-13)
        # D of two single segments: a² + b² − 2⟨S, T⟩ (k_u(u, u) = 1 for every direction kernel)
        assert float(term(S, T)) == pytest.approx(a * a + b * b - 2 * expected, rel=1e-12)


def test_factorized_features_equal_the_pairwise_formula(rng):
    v, f = _sphere_mesh()
    w = v + 0.2 * torch.randn(v.shape, generator=rng, dtype=F64)
    for direction in ("linear", "binet", "constant"):
        fast, ref = (ShapeDistance(0.5, direction=direction, factorize=fz) for fz in (True, False))
        torch.testing.assert_close(fast((v, f), (w, f)), ref((v, f), (w, f)), rtol=1e-12, atol=0)


def test_multiscale_is_the_mean_of_the_scales(rng):
    v, f = _sphere_mesh()
    w = v + 0.2 * torch.randn(v.shape, generator=rng, dtype=F64)
    multi = Varifold([0.3, 1.1])((v, f), (w, f))
    single = [Varifold(s)((v, f), (w, f)) for s in (0.3, 1.1)]
    torch.testing.assert_close(multi, 0.5 * (single[0] + single[1]), rtol=1e-12, atol=0)
    weighted = Varifold(kernel=SumKernel([GaussianKernel(0.3), GaussianKernel(1.1)], weights=[3, 1]))
    torch.testing.assert_close(weighted((v, f), (w, f)), 0.75 * single[0] + 0.25 * single[1], rtol=1e-12, atol=0)


def test_curves_in_2d_and_point_clouds(rng):
    t = torch.linspace(0, 2 * math.pi, 41, dtype=F64)[:-1]
    circle = torch.stack([t.cos(), t.sin()], 1)
    segs = torch.stack([torch.arange(40), (torch.arange(40) + 1) % 40], 1)
    c = cell_geometry(circle, segs)
    assert c.kind == "segments" and float(c.sizes.sum()) == pytest.approx(40 * 2 * math.sin(math.pi / 40))
    # a circle against itself reversed: currents see a reversed orientation, the varifold does not
    assert float(Currents(0.5)((circle, segs), (circle, segs.flip(1)))) > 1.0
    assert abs(float(Varifold(0.5)((circle, segs), (circle, segs.flip(1))))) < 1e-12
    cloud = Measure(0.5)
    weights = torch.rand(40, generator=rng, dtype=F64)
    P = cell_geometry(circle, None, weights)
    assert float(cloud(P, P)) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(P.vectors[:, 0], weights)


@pytest.mark.parametrize("term", _terms(), ids=_ids(_terms()))
def test_gradcheck_float64(term, rng):
    v, f = _sphere_mesh(3, 5)
    w = v + 0.1 * torch.randn(v.shape, generator=rng, dtype=F64)
    cells = f if term.direction != "constant" else None
    x = (v + 0.1 * torch.randn(v.shape, generator=rng, dtype=F64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: term((x, cells), (w, cells)), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("term", _terms()[:2] + _terms()[4:], ids=_ids(_terms()[:2] + _terms()[4:]))
def test_gradcheck_inner_in_both_shapes(term, rng):
    """The dense Gaussian sum of cell features has its backward written out (``terms._GaussianPairSum``): both
    sides' derivatives, checked in float64, for a sum of two widths too."""
    v, f = _sphere_mesh(3, 5)
    cells = f if term.direction != "constant" else None
    x = (v + 0.1 * torch.randn(v.shape, generator=rng, dtype=F64)).requires_grad_(True)
    y = (v + 0.1 * torch.randn(v.shape, generator=rng, dtype=F64)).requires_grad_(True)
    multi = type(term)([0.6, 1.5]) if not isinstance(term, Varifold) else Varifold([0.6, 1.5])
    for t in (term, multi):
        assert torch.autograd.gradcheck(lambda x, y: t.inner((x, cells), (y, cells)), (x, y), eps=1e-6, atol=1e-7)


def test_degenerate_cells_have_finite_gradients():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]], dtype=F64, requires_grad=True)
    f = torch.tensor([[0, 1, 2], [0, 1, 3]])  # the first triangle has zero area
    for term in _terms():
        cells = None if term.direction == "constant" else f
        (g,) = torch.autograd.grad(term((v, cells), (v.detach() + 0.1, cells)), v)
        assert bool(torch.isfinite(g).all()), term.direction


@requires_keops
@pytest.mark.parametrize("term", _terms(), ids=_ids(_terms()))
def test_dense_and_keops_agree(term, rng):
    v, f = _sphere_mesh()
    w = v + 0.1 * torch.randn(v.shape, generator=rng, dtype=F64)
    cells = f if term.direction != "constant" else None
    out = {}
    for backend in ("dense", "keops"):
        term.backend = backend
        x = v.clone().requires_grad_(True)
        d = term((x, cells), (w, cells))
        out[backend] = (d, torch.autograd.grad(d, x)[0])
    torch.testing.assert_close(out["keops"][0], out["dense"][0], rtol=1e-10, atol=0)
    torch.testing.assert_close(out["keops"][1], out["dense"][1], rtol=1e-9, atol=1e-12)


def test_truncated_gaussian_is_c1_and_close_to_the_gaussian(rng):
    """k_R vanishes with its slope at R σ, differs from the Gaussian by at most 9 e^(−R²/2), and D_R is then
    within that bound times Σ |w_i · w_j| of D."""
    term = Varifold(0.3, truncate=4.0)
    d2 = torch.tensor([15.999, 16.0, 16.001, 0.0, 4.0], dtype=F64, requires_grad=True)
    k = term._profile(term.kernel, d2)
    (slope,) = torch.autograd.grad(k.sum(), d2)
    assert abs(float(k[0])) < 1e-9 and float(k[1]) == 0.0 and float(k[2]) == 0.0
    assert abs(float(slope[0])) < 1e-6 and float(slope[2]) == 0.0
    assert abs(float(k[3]) - 1.0) <= 9 * math.exp(-8) + 1e-15
    v, f = _sphere_mesh(8, 14)
    w = v + 0.05 * torch.randn(v.shape, generator=rng, dtype=F64)
    exact = Varifold(0.3)((v, f), (w, f))
    bound = 9 * math.exp(-8) * float(Varifold(0.3, truncate=None).inner((v, f), (v, f)) * 4)
    assert abs(float(term((v, f), (w, f)) - exact)) < bound


def _every_pair_and_blocks(rng, monkeypatch, backend):
    """(value, gradient, kept fraction) of the truncated varifold summed over every pair and block-sparsely."""
    v, f = _sphere_mesh(14, 28)
    v = v * torch.tensor([4.0, 2.0, 1.0], dtype=F64)  # an ellipsoid larger than the kernel's support
    w = v + 0.05 * torch.randn(v.shape, generator=rng, dtype=F64)
    out = []
    for b, min_pairs in (("dense", 10**18), (backend, 1)):  # the reference sums k_R over every pair
        monkeypatch.setattr(shape_terms, "TRUNCATE_MIN_PAIRS", min_pairs)
        term = Varifold(0.3, backend=b, truncate=4.0)
        x = v.clone().requires_grad_(True)
        d = term((x, f), (w, f))
        out.append((d.detach(), torch.autograd.grad(d, x)[0], term.last_kept))
    return out


def _compiled(monkeypatch, compiled: bool):
    """Take the compiled pass of the truncated sums (``shapes._native``; skipped without a compiler) or the torch
    blocks."""
    from lddmm_nets.shapes import _native

    if compiled and not _native.available(3, 6):
        pytest.skip("no C++ compiler for the compiled truncated sums")
    if not compiled:
        monkeypatch.setattr(shape_terms, "compiled_available", lambda dim, features: False)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
@pytest.mark.parametrize("cells", [(1.0,), (2.0,), (4.0,), shape_terms.BLOCK_CELLS])
def test_dense_blocks_equal_the_sum_over_every_pair_for_any_cell_side(rng, monkeypatch, cells, compiled):
    """The block-sparse sums (compiled pass or padded torch blocks) keep every pair closer than the truncation
    radius whatever the side of the clustering cells (fixed, or chosen by occupancy from ``BLOCK_CELLS``): value
    and gradient equal the sum of k_R over all pairs, and blocks are really skipped."""
    from lddmm_nets.shapes._blocks import filled_cell

    _compiled(monkeypatch, compiled)
    monkeypatch.setattr(shape_terms, "BLOCK_CELLS", cells)
    full, blocks = _every_pair_and_blocks(rng, monkeypatch, "auto")
    assert full[2] == 1.0 and blocks[2] < 0.9
    torch.testing.assert_close(blocks[0], full[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(blocks[1], full[1], rtol=1e-9, atol=1e-12)
    # the chosen side: the smallest candidate whose non-empty cells hold BLOCK_SIZE points on average
    pts = torch.randn(4000, 3, generator=rng, dtype=F64) * 5
    side = filled_cell(pts, (1.0, 2.0, 4.0, 8.0), 16)
    occupancy = lambda c: len(pts) / len(torch.unique(torch.floor(pts / c).long(), dim=0))  # noqa: E731
    assert occupancy(side) >= 16 and (side == 1.0 or occupancy(side / 2) < 16)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_dense_blocks_gradcheck_in_both_shapes(rng, monkeypatch, compiled):
    """The block sum of the truncated Gaussian has its backward written out (``_native.TruncatedPairSum``,
    ``_fused.TruncatedBlockSum``): gradcheck in both shapes' vertices, on an ellipsoid that spans several supports
    (blocks really skipped); and of the distance to a fixed target, whose compiled backward is the forward's rows
    (``⟨S, S⟩`` symmetric, ``⟨S, T⟩`` against constant columns)."""
    _compiled(monkeypatch, compiled)
    monkeypatch.setattr(shape_terms, "TRUNCATE_MIN_PAIRS", 1)
    v, f = _sphere_mesh(5, 9)
    v = v * torch.tensor([4.0, 2.0, 1.0], dtype=F64)
    x = (v + 0.05 * torch.randn(v.shape, generator=rng, dtype=F64)).requires_grad_(True)
    y = (v + 0.05 * torch.randn(v.shape, generator=rng, dtype=F64)).requires_grad_(True)
    for term in (Varifold(0.4, truncate=3.0), Currents(0.4, truncate=3.0)):
        assert torch.autograd.gradcheck(lambda x, y: term.inner((x, f), (y, f)), (x, y), eps=1e-6, atol=1e-7)
        assert term.last_kept < 0.9
        target = term.attach((y.detach(), f))
        assert torch.autograd.gradcheck(lambda x: target((x, f)), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("term", [Currents(0.3, truncate=3.0), Varifold(0.3, truncate=3.0),
                                  Measure(0.3, truncate=3.0)], ids=["currents", "varifold", "measure"])
def test_compiled_truncated_sums_of_curves_in_2d_and_in_float32(rng, monkeypatch, term):
    """2-D polylines (a long spiral, many supports): the compiled pass equals the torch blocks (float64, to
    round-off; value and gradient), and its float32 value and gradient are within float32 round-off of them."""
    _compiled(monkeypatch, True)
    monkeypatch.setattr(shape_terms, "TRUNCATE_MIN_PAIRS", 1)
    t = torch.linspace(0, 6 * math.pi, 400, dtype=F64)
    v = torch.stack([t.cos(), t.sin()], 1) * (1 + 0.3 * t[:, None])
    segs = torch.stack([torch.arange(399), torch.arange(1, 400)], 1)
    w = v + 0.05 * torch.randn(v.shape, generator=rng, dtype=F64)

    def value_and_grad(dtype):
        x = v.to(dtype).requires_grad_(True)
        d = term((x, segs), (w.to(dtype), segs))
        return d.detach(), torch.autograd.grad(d, x)[0].double(), term.last_kept

    compiled32, compiled = value_and_grad(torch.float32), value_and_grad(F64)
    _compiled(monkeypatch, False)
    blocks = value_and_grad(F64)
    assert compiled[2] < 0.5
    torch.testing.assert_close(compiled[0], blocks[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(compiled[1], blocks[1], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(compiled32[0], compiled[0], rtol=1e-4, atol=0)
    torch.testing.assert_close(compiled32[1], compiled[1], rtol=1e-3, atol=1e-4 * float(compiled[1].abs().max()))


@pytest.mark.parametrize("dim", [2, 3])
def test_compiled_sums_over_every_pair_equal_the_dense_function(rng, monkeypatch, dim):
    """Without truncation the default terms' Gaussian sums of features run the compiled pass over every pair
    (``_native.every_pair_plan``) instead of the dense ``_fused.GaussianPairSum``: same value and gradient in
    float64 (2-D curves, 3-D meshes; currents, Cauchy–Binet varifold, measure), and float32 within its round-off."""
    if dim == 3:
        v, cells = _sphere_mesh(6, 10)
        v = v * torch.tensor([3.0, 2.0, 1.0], dtype=F64)
    else:
        t = torch.linspace(0, 4 * math.pi, 120, dtype=F64)
        v = torch.stack([t.cos(), t.sin()], 1) * (1 + 0.2 * t[:, None])
        cells = torch.stack([torch.arange(119), torch.arange(1, 120)], 1)
    w = v + 0.1 * torch.randn(v.shape, generator=rng, dtype=F64)
    for term in (Currents(0.5), Varifold(0.5), Measure(0.5)):
        out = {}
        for path, dtype in (("compiled", F64), ("compiled32", torch.float32), ("dense", F64)):
            _compiled(monkeypatch, path != "dense")
            x = v.to(dtype).requires_grad_(True)
            d = term((x, cells), (w.to(dtype), cells))
            out[path] = (d.detach(), torch.autograd.grad(d, x)[0].double())
        torch.testing.assert_close(out["compiled"][0], out["dense"][0], rtol=1e-10, atol=0)
        torch.testing.assert_close(out["compiled"][1], out["dense"][1], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(out["compiled32"][0], out["dense"][0], rtol=1e-4, atol=0)
        scale = float(out["dense"][1].abs().max())
        torch.testing.assert_close(out["compiled32"][1], out["dense"][1], rtol=1e-3, atol=1e-4 * scale)


def test_compiled_sums_leave_the_process_floating_point_mode_alone(monkeypatch):
    """The compiled library is built with fast-math flags but linked without them: loading it must not switch the
    process to flush-to-zero (gcc's crtfastmath.o would), which would silently change every later torch result."""
    _compiled(monkeypatch, True)
    tiny = torch.tensor([1e-38], dtype=torch.float32) * torch.tensor([1e-3], dtype=torch.float32)
    assert float(tiny) > 0  # a float32 denormal survives


@requires_keops
def test_block_sparse_keops_equals_the_sum_over_every_pair(rng, monkeypatch):
    """KeOps' block-sparse reduction (``LazyTensor.ranges``, taken with ``backend="keops"``) skips only blocks where
    k_R is exactly 0: it equals the sum over every pair (values and gradients, to round-off)."""
    full, ranges = _every_pair_and_blocks(rng, monkeypatch, "keops")
    assert ranges[2] < 0.6
    torch.testing.assert_close(ranges[0], full[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(ranges[1], full[1], rtol=1e-9, atol=1e-12)


def test_bad_inputs():
    v, f = _sphere_mesh(3, 4)
    with pytest.raises(ValueError, match="triangles need 3-D"):
        cell_geometry(v[:, :2], f)
    with pytest.raises(ValueError, match="points carry no direction"):
        Varifold(1.0)((v, None), (v, None))
    with pytest.raises(ValueError, match="exactly one"):
        Varifold(1.0, kernel=GaussianKernel(1.0))
    with pytest.raises(ValueError, match="cells: expected indices"):
        cell_geometry(v, f + 100)
    with pytest.raises(ValueError, match="direction"):
        ShapeDistance(1.0, direction="cosine")
    with pytest.raises(ValueError, match="target: expected 3-D"):
        Currents(1.0)((v, f), (v[:, :2], torch.tensor([[0, 1]])))
    with pytest.raises(TypeError, match="source"):
        Currents(1.0)("mesh.gii", (v, f))
    assert isinstance(cell_geometry(v, f), Cells)
