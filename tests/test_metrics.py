"""Similarity losses: documented zeros and ranges, invariances, masks, exact gradients."""

import pytest
import torch

from registration.metrics import get_metric, lncc, ncc, ssd


def _pair(shape=(12, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64), torch.rand(shape, generator=g, dtype=torch.float64))


def test_ssd_value():
    a, b = _pair()
    assert float(ssd(a, a)) == 0.0
    assert float(ssd(a, b)) == pytest.approx(float(((a - b) ** 2).mean()))


@pytest.mark.parametrize("shape", [(12, 10), (8, 7, 6), (30,)])
def test_ncc_and_lncc_are_invariant_to_affine_intensity_changes(shape):
    a, b = _pair(shape)
    assert float(ncc(3 * a + 1, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(ncc(-a, a)) == pytest.approx(2.0, abs=1e-6)
    assert float(lncc(2 * a - 5, a, window=3)) == pytest.approx(0.0, abs=1e-4)
    assert float(lncc(-a, a, window=3)) == pytest.approx(0.0, abs=1e-4)  # squared local correlation
    assert 0.3 < float(lncc(b, a, window=3)) <= 1.0


def test_mask_restricts_the_metrics():
    a, b = _pair()
    mask = torch.zeros_like(a)
    mask[:, :5] = 1
    c = b.clone()
    c[:, :5] = a[:, :5]
    assert float(ssd(c, a, mask)) == 0.0
    assert float(ncc(c, a, mask)) == pytest.approx(0.0, abs=1e-8)
    assert float(ssd(c, a)) > 0


def test_gradients_match_finite_differences():
    a, b = _pair((7, 6))
    a.requires_grad_(True)
    for name in ("ssd", "ncc", "lncc"):
        fn = get_metric(name, window=3)
        assert torch.autograd.gradcheck(lambda x: fn(x, b), (a,)), name


def test_bad_options():
    with pytest.raises(ValueError, match="metric"):
        get_metric("mi")
    with pytest.raises(ValueError, match="window"):
        get_metric("lncc", window=4)
    for floor in (-0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="floor"):
            get_metric("lncc", floor=floor)
    a, b = _pair()
    with pytest.raises(ValueError, match="warped"):
        ssd(a[:5], b)


def test_bound_lncc_equals_the_stateless_loss_value_and_gradient():
    g = torch.Generator().manual_seed(3)
    fixed, warped = torch.rand(12, 14, generator=g), torch.rand(12, 14, generator=g)
    metric = get_metric("lncc", window=5)
    bound = metric.bind(fixed)
    assert torch.equal(bound(warped), lncc(warped, fixed, window=5))
    assert torch.equal(metric(warped, fixed), lncc(warped, fixed, window=5))
    w = warped.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(bound(w), w)
    (gr,) = torch.autograd.grad(lncc(w, fixed, window=5), w)
    assert torch.allclose(gw, gr)
    mask = (torch.rand(12, 14, generator=g) > 0.3).float()
    assert torch.equal(get_metric("ssd").bind(fixed, mask)(warped), ssd(warped, fixed, mask))


@pytest.mark.parametrize("shape", [(31,), (17, 12), (9, 11, 10)])
def test_direct_sum_box_filter_equals_the_cropped_box_mean(shape):
    import torch.nn.functional as F

    from registration.metrics import box_mean

    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(shape) - 1]
    for seed, windows in ((4, (3, 5, 7)), (5, (3, 5, 9))):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        for window in windows:
            ref = pool(x[None, None], window, 1, window // 2, count_include_pad=False)[0, 0]
            torch.testing.assert_close(box_mean(x, window), ref, atol=1e-12, rtol=0)
    # float32: local variances of a flat region stay ~0 (direct sums, no cancellation of large partial sums)
    flat = torch.full(shape, 0.7, dtype=torch.float32)
    m = box_mean(flat, 5)
    assert float((box_mean(flat * flat, 5) - m * m).abs().max()) < 1e-6


@pytest.mark.parametrize("with_mask", [False, True])
def test_lncc_floor_adds_a_fraction_of_the_foreground_median_to_the_fixed_local_variance(with_mask):
    """The floor's definition, against average pooling: ``cc² = cross² / (v_w (v_f + floor median_fg v_f))``."""
    import torch.nn.functional as F

    fixed, warped = _pair((16, 14), seed=5)
    fixed[:, :4] = 0.0  # a background, outside the foreground
    mask = (torch.rand(16, 14, generator=torch.Generator().manual_seed(6), dtype=torch.float64) > 0.3).double() \
        if with_mask else None

    def pool(x):
        return F.avg_pool2d(x[None, None], 5, 1, 2, count_include_pad=False)[0, 0]

    mf, mw = pool(fixed), pool(warped)
    vf, vw, cross = pool(fixed * fixed) - mf * mf, pool(warped * warped) - mw * mw, pool(fixed * warped) - mf * mw
    fg = mask > 0 if with_mask else fixed > 0.1 * fixed.max()
    tau = 0.1 * vf[fg].median()
    cc2 = cross ** 2 / (vw * (vf + tau))
    expected = 1.0 - (float((cc2 * mask).sum() / mask.sum()) if with_mask else float(cc2.mean()))
    assert float(lncc(warped, fixed, mask, window=5, floor=0.1)) == pytest.approx(expected, rel=1e-7)
    assert float(get_metric("lncc", window=5, floor=0.1).bind(fixed, mask)(warped)) == pytest.approx(expected, rel=1e-7)
    # the image itself: each window weighs v / (v + tau) instead of 1 (plateaus count less than edges)
    same = 1.0 - vf / (vf + tau)
    expected_same = float((same * mask).sum() / mask.sum()) if with_mask else float(same.mean())
    assert float(lncc(fixed, fixed, mask, window=5, floor=0.1)) == pytest.approx(expected_same, rel=1e-6)
    # the floor is relative: an affine change of either image's intensities changes nothing
    assert float(lncc(2 * warped - 5, 3 * fixed + 1, mask, window=5, floor=0.1)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shape", [(9, 8, 7), (12, 10), (20,)])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_lncc_hand_written_gradient_matches_autograd(shape, with_mask, floor):
    """The warped-image gradient of LNCC (hand-written backward) equals autograd's through the box sums."""
    gen = torch.Generator().manual_seed(3)
    fixed = torch.rand(shape, generator=gen, dtype=torch.float64)
    fixed[..., :2] = 0.0  # a zero background
    warped = torch.rand(shape, generator=gen, dtype=torch.float64)
    warped[..., -3:] = 0.5  # a flat patch (zero local variance)
    mask = (torch.rand(shape, generator=gen, dtype=torch.float64) > 0.3).double() if with_mask else None
    x = warped.clone().requires_grad_(True)
    loss = lncc(x, fixed, mask, floor=floor)
    (g,) = torch.autograd.grad(loss, x)
    # a fixed image that requires grad takes the plain autograd path
    x2 = warped.clone().requires_grad_(True)
    ref = lncc(x2, fixed.clone().requires_grad_(True), mask, floor=floor)
    (g_ref,) = torch.autograd.grad(ref, x2)
    assert abs(float(loss.detach()) - float(ref.detach())) < 1e-14
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: lncc(t, fixed, mask, floor=floor), (warped.clone().requires_grad_(True),))
