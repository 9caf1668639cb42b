"""The images' noise level (Immerkær's estimator in any dimension) and the 2-D options for noisy images (the finest
level's budget, the LNCC window)."""

import numpy as np
import pytest

from registration import Image, register_images
from registration.images.config import RegistrationConfig
from registration.images.preprocessing import NOISE_LEVEL, noise_level


def _smooth(shape, seed=0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.standard_normal(shape), 4.0) * 40.0 + 100.0


@pytest.mark.parametrize("shape", [(160, 140), (48, 40, 44)])
@pytest.mark.parametrize("fraction", [0.005, 0.02, 0.05])
def test_noise_level_measures_white_noise_as_a_fraction_of_the_range(shape, fraction):
    clean = _smooth(shape)
    lo, hi = np.percentile(clean, [0.5, 99.5])
    noisy = clean + np.random.default_rng(1).standard_normal(shape) * fraction * (hi - lo)
    # the noise widens the range a little, and the smooth image adds a little of its own curvature
    assert noise_level(noisy) == pytest.approx(fraction, rel=0.15)
    assert noise_level(clean) < 0.1 * NOISE_LEVEL


def test_noise_level_is_zero_for_linear_and_constant_images():
    ramp = np.add.outer(np.arange(50.0), 2.0 * np.arange(60.0))
    assert noise_level(ramp) == pytest.approx(0.0, abs=1e-12)
    assert noise_level(np.full((30, 30), 3.0)) == 0.0


def test_noisy_options_are_2d_defaults_that_explicit_options_switch_off():
    assert RegistrationConfig.for_dim(3).noisy_iterations is None and RegistrationConfig.for_dim(3).noisy_window is None
    cfg = RegistrationConfig.for_dim(2)
    assert cfg.noisy_iterations is not None and cfg.noisy_iterations < cfg.iterations[-1]
    assert RegistrationConfig.for_dim(2, iterations=(5, 5, 5, 5)).noisy_iterations is None
    assert RegistrationConfig.for_dim(2, shrink_factors=(2, 1)).noisy_iterations is None
    assert RegistrationConfig.for_dim(2, iterations=(5, 5, 5, 5), noisy_iterations=2).noisy_iterations == 2
    for bad in (-1, 2.5, True, "5"):
        with pytest.raises(ValueError, match="noisy_iterations"):
            RegistrationConfig.for_dim(2, noisy_iterations=bad)
    assert RegistrationConfig.for_dim(3).noisy_average is None
    assert cfg.noisy_average is not None and cfg.noisy_average <= cfg.noisy_iterations
    assert RegistrationConfig.for_dim(2, iterations=(5, 5, 5, 5)).noisy_average is None
    assert RegistrationConfig.for_dim(2, shrink_factors=(2, 1), noisy_average=3).noisy_average == 3
    for bad in (0, 2.5, True, "2"):
        with pytest.raises(ValueError, match="noisy_average"):
            RegistrationConfig.for_dim(2, noisy_average=bad)
    assert cfg.noisy_window is not None and cfg.noisy_window > cfg.window
    assert RegistrationConfig.for_dim(2, window=5).noisy_window is None
    for bad in (4, 1, 7.0, True):
        with pytest.raises(ValueError, match="noisy_window"):
            RegistrationConfig.for_dim(2, noisy_window=bad)


def test_the_finest_budget_and_the_window_follow_the_noise_of_either_image():
    from registration.data import load_t1_slice

    small = load_t1_slice()  # 256² (coarser copies read noisier: their edges are sharper, 1/4 of it 0.017)
    lo, hi = np.percentile(small.data, [0.5, 99.5])
    noisy = Image(small.data + np.random.default_rng(0).standard_normal(small.shape) * 0.03 * (hi - lo), small.affine)
    default = RegistrationConfig.for_dim(2)
    for fixed, moving, finest in ((small, small, default.iterations[-1]), (small, noisy, default.noisy_iterations),
                                  (noisy, small, default.noisy_iterations)):
        res = register_images(fixed, moving, threads=1)
        assert res.config.iterations == default.iterations[:-1] + (finest,)
        assert res.config.window == (default.window if finest == default.iterations[-1] else default.noisy_window)


def test_denoise_removes_noise_and_keeps_an_edge():
    from registration.images.preprocessing import denoise

    step = np.zeros((96, 96))
    step[:, 48:] = 1.0
    noisy = step + np.random.default_rng(2).standard_normal(step.shape) * 0.03
    out = denoise(noisy)
    assert noise_level(out) < 0.5 * noise_level(noisy)
    contrast = out[:, 52:60].mean() - out[:, 36:44].mean()
    assert contrast == pytest.approx(1.0, abs=0.05)
    # the conductance is relative to the mean gradient: the same result at any intensity scale
    np.testing.assert_allclose(denoise(noisy * 1000.0) / 1000.0, out, atol=1e-4)


def test_prepare_pair_measures_and_denoises_each_noisy_image_alone():
    from registration.images.preprocessing import prepare_pair

    clean = Image(_smooth((80, 72)), np.eye(4))
    lo, hi = np.percentile(clean.data, [0.5, 99.5])
    noisy = Image(clean.data + np.random.default_rng(3).standard_normal(clean.shape) * 0.03 * (hi - lo), clean.affine)
    ignored = prepare_pair(clean, noisy)
    measured = prepare_pair(clean, noisy, noise="measure")
    denoised = prepare_pair(clean, noisy, noise="denoise")
    assert ignored.noisy == (False, False) and measured.noisy == denoised.noisy == (False, True)
    np.testing.assert_array_equal(measured.moving, ignored.moving)
    np.testing.assert_array_equal(denoised.fixed, measured.fixed)  # the clean image is left alone
    assert noise_level(denoised.moving) < 0.5 * noise_level(measured.moving)
    assert denoised.moving_image is not None and np.array_equal(denoised.moving_image.data, noisy.data)
    with pytest.raises(ValueError, match="noise"):
        prepare_pair(clean, noisy, noise="median")


def test_a_denoised_registration_warps_the_image_as_given():
    from registration.data import load_t1_slice

    t1 = load_t1_slice()
    lo, hi = np.percentile(t1.data, [0.5, 99.5])
    noisy = Image(t1.data + np.random.default_rng(4).standard_normal(t1.shape) * 0.03 * (hi - lo), t1.affine)
    res = register_images(t1, noisy, threads=1)
    assert res.config.noisy_denoise and noise_level(res.warped.data) > NOISE_LEVEL
    with pytest.raises(ValueError, match="noisy_denoise"):
        RegistrationConfig.for_dim(2, noisy_denoise="yes")


def test_denoise_is_an_option_of_register_images_and_of_the_command_line():
    import argparse

    from registration.cli.register import add_parsers

    assert RegistrationConfig.for_dim(3).noise_mode() == "ignore"  # 3-D measures nothing by default
    assert RegistrationConfig.for_dim(3, noisy_denoise=True).noise_mode() == "denoise"
    assert RegistrationConfig.for_dim(2).noise_mode() == "denoise"
    assert RegistrationConfig.for_dim(2, noisy_denoise=False).noise_mode() == "measure"
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    for flag, value in (([], None), (["--denoise"], True), (["--no-denoise"], False)):
        assert parser.parse_args(["register", "f", "m", "--out", "o"] + flag).denoise is value
    small = Image(_smooth((64, 60)), np.eye(4))
    lo, hi = np.percentile(small.data, [0.5, 99.5])
    noisy = Image(small.data + np.random.default_rng(5).standard_normal(small.shape) * 0.03 * (hi - lo), small.affine)
    res = register_images(small, noisy, denoise=False, iterations=(5, 5, 5, 2), threads=1)
    assert not res.config.noisy_denoise and res.config.window == RegistrationConfig.for_dim(2).noisy_window


def test_the_finest_level_keeps_the_mean_of_its_iterates_only_where_it_does_not_fold(monkeypatch):
    import torch

    import registration.images.pipeline as pipeline
    from registration.data import load_t1_slice

    t1 = load_t1_slice()
    fixed = Image(t1.data[::2, ::2].copy(), t1.affine @ np.diag([2.0, 2.0, 1.0, 1.0]))
    lo, hi = np.percentile(fixed.data, [0.5, 99.5])
    shifted = np.roll(fixed.data, 2, axis=0)
    moving = Image(shifted + np.random.default_rng(0).standard_normal(fixed.shape) * 0.03 * (hi - lo), fixed.affine)
    real = pipeline.minimize

    def run(mean_of):  # the finest level's x_mean replaced by mean_of(result)
        def fake(fun, x0, **kw):
            res = real(fun, x0, **kw)
            if kw.get("average_from") is not None:
                res.x_mean = mean_of(res)
            return res

        monkeypatch.setattr(pipeline, "minimize", fake)
        return register_images(fixed, moving, threads=1)

    last = run(lambda res: res.x)  # the mean equal to the last iterate: no averaging
    folding = run(lambda res: res.x + 1e4 * torch.randn(res.x.shape, generator=torch.Generator().manual_seed(0),
                                                         dtype=res.x.dtype))
    averaged = run(lambda res: res.x_mean)
    assert folding.ndv_percent == 0.0
    np.testing.assert_array_equal(folding.displacement, last.displacement)  # the folding mean was not kept
    assert not np.array_equal(averaged.displacement, last.displacement)  # the real mean is kept
    assert averaged.ndv_percent == 0.0
