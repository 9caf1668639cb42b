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
