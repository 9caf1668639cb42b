"""register_images: recovers known translations and smooth warps in 2-D and 3-D, keeps the map diffeomorphic,
rejects bad input before doing any work."""

import numpy as np
import pytest

from registration.data import random_diffeomorphism
from registration.images import register_images
from registration.io import Image
from registration.transforms import DisplacementTransform

FAST = dict(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0), iterations=(40, 20), threads=1)


def _blobs(shape, seed=0, n=6, width=None):
    """A smooth textured test image: a sum of Gaussian blobs away from the border."""
    rng = np.random.default_rng(seed)
    d = len(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"))
    out = np.zeros(shape)
    width = width or min(shape) / 8
    for _ in range(n):
        c = np.array([rng.uniform(0.2 * s, 0.8 * s) for s in shape])
        out += rng.uniform(0.5, 1.0) * np.exp(-((grid - c.reshape((d,) + (1,) * d)) ** 2).sum(0) / (2 * width ** 2))
    return out.astype(np.float32)


def _shifted(img, shift, spacing):
    """``img(x + shift)`` on a grid with ``spacing`` (mm): the moving image seen through a translation."""
    aff = np.diag(list(spacing) + [1.0] * (4 - len(spacing)))
    tr = DisplacementTransform(np.broadcast_to(np.asarray(shift, float).reshape((-1,) + (1,) * img.ndim),
                                               (img.ndim,) + img.shape).copy(), aff)
    return Image(img, aff), tr.apply(Image(img, aff)).data


@pytest.mark.parametrize("shape,spacing,shift,momentum", [((40, 36), (1.0, 1.0), (2.5, -1.5), "vector"),
                                                          ((40, 36), (1.0, 1.0), (2.5, -1.5), "scalar"),
                                                          ((20, 22, 18), (2.0, 2.0, 2.0), (3.0, 0.0, -2.0), "vector")])
def test_recovers_a_known_translation(shape, spacing, shift, momentum):
    img = _blobs(shape)
    # moving(y) = img(y - shift): the registration must find u(x) = -shift... pick sign via the transform
    fixed_img, moved = _shifted(img, -np.asarray(shift), spacing)
    fixed = Image(img, fixed_img.affine)
    moving = Image(moved, fixed_img.affine)
    res = register_images(fixed, moving, metric="ssd", momentum=momentum, **FAST)
    # where the image has structure, the displacement's normal component must be the shift's (aperture problem:
    # the tangential component of a minimal-energy deformation is not determined by the images)
    grad = np.stack(np.gradient(img, *spacing))
    gnorm = np.linalg.norm(grad, axis=0)
    sel = gnorm > np.percentile(gnorm, 80)
    normal = grad[:, sel] / gnorm[sel]
    err = np.abs(((res.displacement[:, sel] - np.reshape(shift, (-1, 1))) * normal).sum(0)).mean()
    # recovered to a fifth of a voxel (measured: 0.08-0.10 voxel; the shift is 1.6-1.8 voxels along the normals):
    # the blobs' smooth profile and the kernel's regularisation leave a small under-shoot, a real failure leaves
    # most of the shift
    assert err < 0.2 * spacing[0], (err, spacing)
    assert res.ndv_percent == 0.0
    assert res.similarity_after < 0.2 * res.similarity_before


def test_recovers_a_known_smooth_warp_2d():
    shape = (56, 56)
    img = _blobs(shape, seed=3, n=60, width=2.5)
    warp = random_diffeomorphism(shape, max_displacement=3.0, smoothness=8.0, seed=1, n_steps=16)
    moving = warp.transform().apply(Image(img, np.eye(4))).data  # moving = img ∘ (id + u)
    res = register_images(img, moving, metric="ssd", **FAST)
    # moving ∘ (id + u_est) ≈ img  =>  u_est ≈ inverse of the known warp
    gnorm = np.linalg.norm(np.stack(np.gradient(img)), axis=0)
    sel = gnorm > np.percentile(gnorm, 50)  # where the texture determines the displacement
    err_before = np.linalg.norm(warp.inverse_displacement[:, sel], axis=0).mean()
    err_after = np.linalg.norm(res.displacement[:, sel] - warp.inverse_displacement[:, sel], axis=0).mean()
    assert err_after < 0.4 * err_before, (err_before, err_after)
    jac = res.jacobian_determinant()
    assert jac.min() > 0 and res.ndv_percent == 0.0
    # the inverse displacement undoes the displacement (composition ≈ identity) inside the image
    pts = np.stack(np.meshgrid(np.arange(16, 40.0), np.arange(16, 40.0), indexing="ij")).reshape(2, -1).T
    back = res.transform.inverse_transform_points(res.transform.transform_points(pts))
    assert np.abs(back - pts).max() < 0.3


def test_labels_warp_with_nearest_and_keep_their_values():
    shape = (40, 36)
    img = _blobs(shape)
    fixed_img, moved = _shifted(img, (-2.0, 1.0), (1.0, 1.0))
    res = register_images(img, moved, metric="ncc", shrink_factors=(1,), iterations=(5,))
    labels = (np.arange(np.prod(shape)).reshape(shape) % 3).astype(np.int16)
    out = res.apply(labels, interp="nearest")
    assert out.data.dtype == np.int16 and set(np.unique(out.data)) <= {0, 1, 2}
    assert res.warped.data.shape == shape and np.allclose(res.warped.affine, np.eye(4))


def test_bad_input_is_rejected(tmp_path):
    img = _blobs((20, 20))
    with pytest.raises(ValueError, match="moving: expected a 2-D"):
        register_images(img, np.zeros((8, 8, 8), np.float32) + _blobs((8, 8, 8)))
    with pytest.raises(ValueError, match="constant"):
        register_images(img, np.ones((20, 20), np.float32))
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        register_images(bad, img)
    with pytest.raises(ValueError, match="4-D"):
        register_images(img, np.zeros((4, 4, 4, 3), np.float32))
    with pytest.raises(FileNotFoundError):
        register_images(str(tmp_path / "nope.nii.gz"), img)
    with pytest.raises(ValueError, match="metric"):
        register_images(img, img, metric="mutual")
    with pytest.raises(ValueError, match="shrink_factors"):
        register_images(img, img, shrink_factors=(2, 1), iterations=(3,))
    with pytest.raises(ValueError, match="empty"):
        register_images(img, img, fixed_mask=np.zeros((20, 20)))
    with pytest.raises(ValueError, match="threads"):
        register_images(img, img, threads=0)
    with pytest.raises(ValueError, match="geodesics"):
        register_images(img, img, geodesics="piecewise")
    with pytest.raises(ValueError, match="segments"):
        register_images(img, img, shrink_factors=(2, 1), segments=(2,))
    with pytest.raises(ValueError, match="segments"):
        register_images(img, img, segments=0)
    with pytest.raises(ValueError, match="segments"):
        register_images(img, img, geodesics="single", segments=2)


def test_threads_option_is_restored():
    import torch

    before = torch.get_num_threads()
    img = _blobs((20, 20))
    register_images(img, img + 0.01 * _blobs((20, 20), seed=1), shrink_factors=(1,), iterations=(2,), threads=1)
    assert torch.get_num_threads() == before


def _analytic_blobs(points, seed=5, n=12, width=4.0):
    """Sum of Gaussian blobs evaluated at world points ``(d, ...)`` (mm): one continuous object, any grid."""
    rng = np.random.default_rng(seed)
    out = np.zeros(points.shape[1:])
    for _ in range(n):
        c = rng.uniform(8.0, 28.0, size=points.shape[0]).reshape((-1,) + (1,) * (points.ndim - 1))
        out += np.exp(-((points - c) ** 2).sum(0) / (2 * width ** 2))
    return out.astype(np.float32)


def test_moving_on_another_grid_is_resampled_through_the_affines():
    fixed_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    moving_aff = np.diag([1.5, 1.25, 1.0, 1.0])
    moving_aff[:2, 3] = [-3.0, 2.0]
    fshape, mshape = (36, 36), (30, 32)

    def world(aff, shape):
        idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"))
        return np.tensordot(aff[:2, :2], idx, axes=1) + aff[:2, 3].reshape(2, 1, 1)

    fixed = Image(_analytic_blobs(world(fixed_aff, fshape)), fixed_aff)
    moving = Image(_analytic_blobs(world(moving_aff, mshape)), moving_aff)
    res = register_images(fixed, moving, metric="ssd", **FAST)
    # same object on both grids: the deformation stays near the identity and the warped image is the fixed one
    inner = (slice(None), slice(4, 30), slice(4, 30))
    assert np.abs(res.displacement[inner]).max() < 0.5
    assert res.warped.shape == fshape and np.allclose(res.warped.affine, fixed_aff)
    assert np.abs(res.warped.data - fixed.data)[4:30, 4:30].max() < 0.05 * fixed.data.max()


def test_affine_prealignment_recovers_a_rotation_and_scaling():
    # the pre-alignment is reported in world coordinates: a grid with an origin away from 0 must not change it
    import torch

    from lddmm_nets.fields import interpolate
    from lddmm_nets.grid import Grid

    shape = (48, 48)
    img = _blobs(shape, seed=7, n=8, width=5.0)
    c, s = np.cos(np.deg2rad(8.0)), np.sin(np.deg2rad(8.0))
    B = 1.06 * np.array([[c, -s], [s, c]])
    t = np.array([1.5, -1.0])
    origin = np.array([-30.0, 20.0])
    grid = Grid(shape, 1.0, origin=origin)
    centre = origin + 23.5
    x = grid.identity_map(dtype=torch.float64).numpy()
    inv_pts = np.tensordot(np.linalg.inv(B), x - (centre + t).reshape(2, 1, 1), axes=1) + centre.reshape(2, 1, 1)
    moving = interpolate(torch.as_tensor(img, dtype=torch.float64), torch.as_tensor(inv_pts), grid).numpy()
    aff = grid.affine
    res = register_images(Image(img, aff), Image(moving.astype(np.float32), aff), metric="ssd", affine=True,
                          shrink_factors=(2,), iterations=(5,))
    A = res.affine_matrix
    # 0.03 in the linear part (a 1.5 % scale or 1.7° error) and 0.6 mm in the offset: the affine stage runs on a
    # 4x shrunk copy (4 mm voxels), so a sixth of its voxel is what it can resolve
    np.testing.assert_allclose(A[:2, :2], B, atol=0.03)
    np.testing.assert_allclose(A[:2, 2], centre + t - B @ centre, atol=0.6)


def test_defaults_recover_a_known_warp_on_a_real_t1_slice():
    from registration.data import load_t1_slice

    t1 = load_t1_slice()
    fixed = Image(t1.data * 1000.0 + 37.0, t1.affine)  # any intensity range: normalised inside
    warp = random_diffeomorphism(fixed.shape, max_displacement=6.0, smoothness=10.0, seed=2)
    moving = warp.transform().apply(fixed)
    res = register_images(fixed, moving, threads=1)  # the defaults (one thread: the test machine is shared)
    brain = t1.data > 0.1 * t1.data.max()
    before = np.linalg.norm(warp.inverse_displacement[:, brain], axis=0).mean()
    after = np.linalg.norm((res.displacement - warp.inverse_displacement)[:, brain], axis=0).mean()
    assert after < 0.3 * before, (before, after)
    assert res.ndv_percent == 0.0
    # 2-D default: composed geodesic segments; the forward map is their composition in the reverse order, so
    # it inverts the backward one: phi(psi(x)) = x up to interpolation
    assert res.config.geodesics == "composed" and len(res.momenta) == len(res.levels) >= 2
    assert res.energy == pytest.approx(sum(res.segment_energies))
    pts = np.stack(np.meshgrid(np.arange(20, 236.0, 4), np.arange(20, 236.0, 4), indexing="ij")).reshape(2, -1).T
    back = res.transform.inverse_transform_points(res.transform.transform_points(pts))
    err = np.linalg.norm(back - pts, axis=1)
    assert np.percentile(err, 95) < 0.25 and err.max() < 1.0, (np.percentile(err, 95), err.max())


def _dice(a, b):
    a, b = a > 0.5, b > 0.5
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def circle_c():
    from registration.data import load_circle_c

    return load_circle_c()


def test_defaults_register_circle_to_c(circle_c):
    """A large deformation (dipy's circle -> C) with no options: the hole of the C is carved out of the disk."""
    circle, c = circle_c
    res = register_images(c, circle, threads=1)
    labels = res.apply(Image((circle.data > 0.5).astype(np.float32), circle.affine), interp="nearest").data
    assert _dice(labels, c.data) >= 0.99
    assert _dice(circle.data, c.data) < 0.7  # it was a large deformation
    assert res.ndv_percent == 0.0 and res.jacobian_determinant().min() > 0
    assert res.config.metric == "ssd" and res.config.geodesics == "composed"
    # every fixed point is sent inside the moving image (the segments' velocities vanish on the border)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in c.shape], indexing="ij"))
    y = idx + res.displacement  # unit spacing, identity affine
    assert y.min() >= -0.01 and y.max() <= 255.01


def test_tapered_kernel_operator_is_symmetric_and_vanishes_on_the_border():
    import torch

    from lddmm_nets.grid import Grid
    from registration.images.geodesic import make_kernel

    kern, reach = make_kernel("sum", 3.0, 2)
    op = kern.on_grid(Grid((30, 24), (1.0, 1.5)), boundary="zero", reach=reach, taper=6.0, unit_mass=True)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 30, 24, generator=g, dtype=torch.float64), torch.randn(2, 30, 24, generator=g,
                                                                              dtype=torch.float64)
    va, vb = op(a), op(b)
    assert torch.allclose((a * vb).sum(), (va * b).sum(), rtol=1e-10)  # w K w is self-adjoint
    assert (a * va).sum() > 0
    for edge in (va[:, 0], va[:, -1], va[:, :, 0], va[:, :, -1]):
        assert edge.abs().max() == 0
    inner = op.weight(torch.float64)[6:-6, 4:-4]  # farther than the taper from every border: weight 1
    assert torch.all(inner == 1.0)


def test_quick_circle_to_c_recipe(circle_c):
    """The demo's quick call: the pyramid without the full-resolution level."""
    circle, c = circle_c
    res = register_images(c, circle, shrink_factors=(8, 4, 2), iterations=(30, 20, 10), segments=(4, 2, 1),
                          threads=1)
    labels = res.apply(Image((circle.data > 0.5).astype(np.float32), circle.affine), interp="nearest").data
    assert _dice(labels, c.data) >= 0.98
    assert res.ndv_percent == 0.0
    assert all(lv.shrink > 1 for lv in res.levels)
    # per level at most the requested number of segments, each with the level's kernel (2 level voxels)
    for shrink, limit in zip((8, 4, 2), (4, 2, 1)):
        segs = [lv for lv in res.levels if lv.shrink == shrink]
        assert 1 <= len(segs) <= limit
        assert all(lv.sigma == pytest.approx(2.0 * lv.spacing[0]) for lv in segs)


def test_single_geodesic_is_the_geodesic_of_its_momentum():
    """``geodesics="single"``: the returned map is the one shot from the returned momentum (no composition)."""
    import torch

    from lddmm_nets.epdiff import shoot_vector_momentum
    from lddmm_nets.grid import Grid
    from registration.images.geodesic import make_kernel

    img = _blobs((32, 30), seed=3)
    moving = _shifted(img, (1.5, -1.0), (1.0, 1.0))[1]
    res = register_images(img, moving, metric="ssd", geodesics="single", shrink_factors=(1,), iterations=(15,),
                          threads=1, dtype="float64")
    assert res.momenta == [] and res.segment_energies == []
    kern, reach = make_kernel("sum", res.config.sigma, 2)
    m0 = torch.as_tensor(np.moveaxis(res.momentum.data, -1, 0), dtype=torch.float64)
    op = kern.on_grid(Grid((32, 30)), boundary="zero", reach=reach, unit_mass=True)
    shot = shoot_vector_momentum(m0, op, n_steps=res.config.n_steps)
    np.testing.assert_allclose(res.displacement, shot.inverse_displacement.numpy(), atol=1e-3)


def test_bundled_data_and_random_warp_generator():
    from registration.data import load_circle_c, load_mni152

    circle, c = load_circle_c()
    assert circle.shape == c.shape == (256, 256) and circle.data.max() == 1.0
    mni = load_mni152(2)
    assert mni.t1.shape == mni.gm.shape == mni.wm.shape and mni.t1.spacing == (2.0, 2.0, 2.0)
    assert set(np.unique(mni.gm.data)) == {0, 1}
    warp = random_diffeomorphism((40, 44), np.diag([2.0, 1.5, 1.0, 1.0]), max_displacement=5.0, smoothness=8.0,
                                 seed=4)
    assert warp.max_displacement == pytest.approx(5.0, rel=0.1)
    tr = warp.transform()
    assert tr.jacobian_determinant().min() > 0 and tr.jacobian_determinant(inverse=True).min() > 0
    pts = np.stack(np.meshgrid(np.arange(10, 70.0, 3), np.arange(8, 58.0, 3), indexing="ij")).reshape(2, -1).T
    back = tr.inverse_transform_points(tr.transform_points(pts))
    assert np.abs(back - pts).max() < 0.05 * 5.0
    again = random_diffeomorphism((40, 44), np.diag([2.0, 1.5, 1.0, 1.0]), max_displacement=5.0, smoothness=8.0,
                                  seed=4)
    np.testing.assert_array_equal(again.displacement, warp.displacement)


@pytest.mark.parametrize("shape,with_mask", [((30, 34, 28), False), ((30, 34, 28), True), ((40, 36), False)])
@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_similarity_on_the_foreground_box_equals_the_full_grid_lncc(shape, with_mask, floor):
    """The LNCC computed on the fixed foreground's box (plus margin) is the full-grid loss, value and gradient."""
    import torch

    from lddmm_nets.fields import interpolate, resample_map
    from lddmm_nets.grid import Grid
    from registration.images.similarity import INTERP, BoxSimilarity
    from registration.metrics import get_metric

    d = len(shape)
    f = np.zeros(shape, np.float32)
    inner = tuple(slice(n // 4, 3 * n // 4) for n in shape)  # zero background around a textured object
    f[inner] = _blobs(tuple(s.stop - s.start for s in inner), seed=1, width=2.0)
    fixed = torch.as_tensor(f, dtype=torch.float64)
    moving = torch.roll(fixed, (2,) * d, tuple(range(d)))
    mask = (fixed > 0.2 * float(fixed.max())).double() if with_mask else None
    grid = Grid(shape, 2.0, origin=(-10.0,) * d)
    def_grid = grid.shrunk(2)
    gen = torch.Generator().manual_seed(0)
    psi0 = def_grid.identity_map(dtype=torch.float64) \
        + 2.0 * torch.randn((d,) + def_grid.shape, generator=gen, dtype=torch.float64)
    loss = get_metric("lncc", window=5, floor=floor)
    box = BoxSimilarity(loss, moving, fixed, mask, grid, def_grid)
    assert not box.full  # the box is smaller than the grid
    p = psi0.clone().requires_grad_(True)
    ref = loss(interpolate(moving, resample_map(p, def_grid, grid), grid, interp=INTERP[d]), fixed, mask)
    (g_ref,) = torch.autograd.grad(ref, p)
    p = psi0.clone().requires_grad_(True)
    val = box(p)
    (g,) = torch.autograd.grad(val, p)
    assert abs(float(val.detach()) - float(ref.detach())) < 1e-12
    assert float((g - g_ref).norm()) < 1e-9 * float(g_ref.norm())


def test_normalisation_flushes_subnormal_background():
    from registration.images import normalize_intensity

    a = np.full((8, 8), 1e-45, np.float32)  # subnormal background (as in MNI152)
    a[0] = 0.0
    a[2:6, 2:6] = np.linspace(0.1, 1.0, 16).reshape(4, 4)
    out = normalize_intensity(a)
    assert np.all(out[a < 1e-30] == 0) and out.max() == 1.0


def test_lncc_registration_with_zero_background_covers_the_whole_grid():
    """3-D LNCC with a zero background (similarity on the foreground's box): the translation is recovered and
    every result field still covers the whole fixed grid."""
    shape, spacing, shift = (36, 34, 32), (2.0, 2.0, 2.0), (3.0, -2.0, 0.0)
    img = np.zeros(shape, np.float32)
    inner = (slice(8, 28), slice(7, 27), slice(6, 26))
    img[inner] = _blobs((20, 20, 20), seed=2, width=2.5) + 0.2
    fixed_img, moved = _shifted(img, -np.asarray(shift), spacing)
    res = register_images(Image(img, fixed_img.affine), Image(moved, fixed_img.affine), metric="lncc", **FAST)
    assert res.warped.shape == shape and res.displacement.shape == (3,) + shape
    assert res.inverse_displacement.shape == (3,) + shape and res.jacobian_determinant().shape == shape
    sel = (slice(12, 24), slice(11, 23), slice(10, 22))  # well inside the object
    # LNCC on this smooth synthetic object recovers about half of the shift with these settings (as it did with
    # the similarity on the whole grid): the displacement must point the right way and reduce the error
    err = np.abs(res.displacement[(slice(None),) + sel] - np.reshape(shift, (3, 1, 1, 1))).mean()
    assert err < 0.6 * np.abs(shift).mean(), err
    assert res.ndv_percent == 0.0
    assert res.similarity_after < 0.9 * res.similarity_before


def test_shooting_the_result_momentum_reproduces_its_transform():
    # ImageRegistration.shoot is the same geodesic as the registration's own: shooting its momentum gives its maps
    # (to float32 round-off: the momentum, stored on the image grid, comes back to the coarser deformation grid by
    # the least-squares restriction; a plain linear resize was 0.27 mm off); half the momentum moves less
    from registration.data import load_t1_slice, warped_pair

    pair = warped_pair(load_t1_slice(), max_displacement=4.0, smoothness=12.0, seed=1)
    res = register_images(pair.fixed, pair.moving, geodesics="single", iterations=(10, 5, 5, 3))
    assert res.config.deformation_shrink == 2
    tr = res.shoot(res.momentum)
    assert np.abs(tr.displacement - res.displacement).max() < 1e-4
    assert np.abs(tr.inverse_displacement - res.inverse_displacement).max() < 1e-4
    half = res.shoot(0.5 * res.momentum.data)
    assert 0.3 < np.abs(half.displacement).max() / np.abs(res.displacement).max() < 0.7
    with pytest.raises(ValueError, match="momentum"):
        res.shoot(np.zeros((3, 3, 2)))


def test_the_finest_level_of_composed_geodesics_makes_progress():
    # A fresh segment starts from the identity map. Scored on a moving image resampled by the previous segments, it
    # sat exactly on the nodes of linear interpolation, where any step blurs the image and raises the loss to first
    # order while the autograd gradient is one-sided: the finest level (no smoothing) spent 50 evaluations for a
    # relative decrease of 1e-6. Scored through the composed map, it must decrease like the other levels.
    from scipy.ndimage import zoom

    from registration.data import load_t1_slice, warped_pair

    t1 = load_t1_slice()
    small = Image(zoom(t1.data, 0.5, order=1).astype(np.float32), np.diag([2.0, 2.0, 1.0, 1.0]))
    pair = warped_pair(small, max_displacement=6.0, smoothness=16.0, seed=3)
    res = register_images(pair.fixed, pair.moving, metric="ssd", shrink_factors=(4, 2, 1), iterations=(15, 10, 6),
                          segments=(2, 1, 1), threads=1)
    finest = res.levels[-1]
    assert finest.shrink == 1 and finest.iterations == 6
    assert finest.objective[-1] < 0.9  # measured 0.77 (0.99999 with the resampled image)
    assert finest.evaluations <= 2 * finest.iterations  # the line search accepts its first or second trial


def test_a_level_without_iterations_is_not_evaluated_and_zero_momentum_is_the_identity():
    """``iterations=0`` at every level: no evaluation of the objective, zero momentum and energy, and the transform
    is exactly the affine pre-alignment (world points ``A x``) or, without it, the identity."""
    from registration.data import load_t1_slice, warped_pair
    from registration.evaluation import world_coordinates

    pair = warped_pair(load_t1_slice(), max_displacement=4.0, smoothness=12.0, seed=1)
    for affine in (False, True):
        res = register_images(pair.fixed, pair.moving, iterations=(0, 0, 0, 0), affine=affine, threads=1)
        assert all(lv.evaluations == 0 and lv.iterations == 0 for lv in res.levels) and res.levels
        assert res.energy == 0.0 and not np.asarray(res.momentum.data).any()
        x = world_coordinates(pair.fixed)
        A = np.eye(3) if not affine else res.affine_matrix
        assert affine == (not np.allclose(A, np.eye(3)))
        expected = np.tensordot(A[:2, :2], x, axes=1) + A[:2, 2].reshape(2, 1, 1)
        np.testing.assert_allclose(res.transform.world_map(), expected, atol=1e-3)  # mm, float32 maps


def test_warm_start_and_public_shooting_share_the_registration_metric():
    # geodesic_transform(fixed, m, **options) is the registration's own geodesic; starting a registration from its
    # own momentum with no iterations gives back its transform
    from registration.data import load_t1_slice, warped_pair
    from registration.images import geodesic_transform

    pair = warped_pair(load_t1_slice(), max_displacement=4.0, smoothness=12.0, seed=1)
    options = dict(geodesics="single", iterations=(10, 5, 5, 3), threads=1)
    res = register_images(pair.fixed, pair.moving, **options)
    tr = geodesic_transform(pair.fixed, res.momentum, geodesics="single")
    assert np.abs(tr.displacement - res.displacement).max() < 1e-4  # float32 round-off of the restriction
    again = register_images(pair.fixed, pair.moving, initial_momentum=res.momentum, geodesics="single",
                            iterations=(0, 0, 0, 0), threads=1)
    assert np.abs(again.displacement - res.displacement).max() < 1e-4
    with pytest.raises(ValueError, match="initial_momentum"):
        register_images(pair.fixed, pair.moving, initial_momentum=np.zeros((4, 4, 2)), geodesics="single")


def test_the_lncc_floor_reduces_what_a_bias_field_alone_moves_on_real_t1_slices():
    """A bias field alone (the true map is the identity) on MNI slices: plain LNCC gives the faint texture of the
    white matter's plateaus full weight, the bias ramp correlates with it and moves the map there; the floor of the
    fixed image's local variance (the 2-D default ``lncc_floor``) leaves 0.59-0.68 of it here."""
    from registration.data import load_mni152
    from registration.images.config import RegistrationConfig

    for bad in (-0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="lncc_floor"):
            RegistrationConfig.for_dim(2, lncc_floor=bad)
    t1 = load_mni152(1).t1.data
    for axis, index in ((0, 116), (1, 109), (2, 91)):  # a lateral sagittal, the middle coronal and axial slices
        fixed = np.take(t1, index, axis=axis).astype(np.float32)
        brain = fixed > 0.1 * fixed.max()
        ramp = np.linspace(-1.0, 1.0, fixed.shape[0], dtype=np.float32)[:, None]
        moving = fixed * (1.0 + 0.2 * ramp)
        moved = [np.linalg.norm(register_images(fixed, moving, lncc_floor=floor, threads=1).transform.displacement,
                                axis=0)[brain] for floor in (0.0, None)]
        assert moved[1].mean() < 0.75 * moved[0].mean(), (axis, moved[0].mean(), moved[1].mean())
        assert moved[1].max() < moved[0].max()
