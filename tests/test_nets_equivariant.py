"""Equivariant multichannel kernels (issue 15, §3): exact equivariance of the warping blocks on the periodic grid,
the kernel identities, the CNN special case (a block with a feature-map kernel is a convolution), the invariant
readout, and the scikit-learn estimator."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.datasets import load_digits

from lddmm_nets.nets import EquivariantKernelWarpingClassifier
from lddmm_nets.optim import ConvergenceWarning
from lddmm_nets.nets.equivariant import (ActivationFeatures, EquivariantPatchKernel, ImageFlow, NystromFeatures,
                                         OrbitKernel, PooledFeatures, extract_patches, forward_blocks, pool_matrix)

C, H = 2, 6  # channels and grid size of the random images


def _kernel(group, kind):
    gen = torch.Generator().manual_seed(0)
    if kind == "tanh":
        feats = ActivationFeatures(C * 9, "tanh", 1.0)
    else:
        x = torch.randn(20, C, H, H, generator=gen, dtype=torch.float64)  # patches like those of _random images
        feats = NystromFeatures.from_patches(extract_patches(x, 1).reshape(-1, C * 9), 12, 3.0, group=group,
                                             channels=C, random_state=0)
    return EquivariantPatchKernel(feats, radius=1, group=group)


def _random(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


SHIFT = lambda z: torch.roll(z, shifts=(1, -2), dims=(-2, -1))  # noqa: E731
ROTATE = lambda z: torch.rot90(z, 1, dims=(-2, -1))  # noqa: E731  (about the grid's centre: a p4 element)
REFLECT = lambda z: torch.flip(z, dims=(-1,))  # noqa: E731
ACTIONS = {"translations": [SHIFT], "p4": [SHIFT, ROTATE, lambda z: ROTATE(SHIFT(z))],
           "p4m": [SHIFT, ROTATE, REFLECT, lambda z: REFLECT(ROTATE(SHIFT(z)))]}


@pytest.mark.parametrize("kind", ["gaussian", "tanh"])
@pytest.mark.parametrize("group", ["translations", "p4", "p4m"])
def test_blocks_commute_exactly_with_the_group(group, kind):
    """Training images and momenta fixed: flow(g·z) = g·flow(z) to round-off (float64, periodic boundary)."""
    kernel = _kernel(group, kind)
    sources, momenta = _random((5, C, H, H), 1), _random((3, 5, C, H, H), 2)
    states, _, _ = forward_blocks(kernel, sources, momenta)
    flow = ImageFlow(kernel, states[:-1], momenta)
    z = _random((4, C, H, H), 3)
    out = flow.flow(z)
    assert float((out - z).abs().max()) > 0.1  # the blocks move the images
    for g in ACTIONS[group]:
        np.testing.assert_allclose(flow.flow(g(z)).numpy(), g(out).numpy(), rtol=0, atol=1e-10)
    if group == "translations" and kind == "gaussian":
        # not equivariant to what the group does not contain: the test can fail
        assert float((flow.flow(ROTATE(z)) - ROTATE(out)).abs().max()) > 1e-3


@pytest.mark.parametrize("group", ["translations", "p4m"])
def test_kernel_is_equivariant_in_each_argument_and_positive(group):
    kernel = _kernel(group, "gaussian")
    x, y = _random((C, H, H), 4), _random((C, H, H), 5)
    n = C * H * H
    perm = lambda g: g(torch.arange(n, dtype=torch.float64).reshape(C, H, H)).flatten().long()  # noqa: E731
    G = kernel.matrix(x, y)
    for g in ACTIONS[group]:
        P = torch.eye(n, dtype=torch.float64)[perm(g)]  # (g·x).flatten() = P x.flatten()
        np.testing.assert_allclose(kernel.matrix(g(x), y).numpy(), (P @ G).numpy(), atol=1e-10)
        np.testing.assert_allclose(kernel.matrix(g(x), g(y)).numpy(), (P @ G @ P.T).numpy(), atol=1e-10)
    # the block matrix [Γ(x_i, x_j)] of three images is symmetric positive semi-definite
    imgs = [x, y, _random((C, H, H), 6)]
    B = torch.cat([torch.cat([kernel.matrix(a, b) for b in imgs], 1) for a in imgs], 0)
    np.testing.assert_allclose(B.numpy(), B.T.numpy(), atol=1e-10)
    assert float(torch.linalg.eigvalsh(B).min()) > -1e-9 * float(B.abs().max())


@pytest.mark.parametrize("group", ["translations", "p4"])
def test_feature_map_block_is_a_convolution(group):
    """k(a, b) = tanh(a)·tanh(b) + c: the block is z + Δt (W ⋆ tanh(z) + b), W = Σ_{i,t',h} h·tanh(P_t' x_i) p_i(t'),
    and ½‖v‖² = ½ (‖W‖² + ‖b‖²/c): weight decay (for translations, where the filter is not symmetrised)."""
    c = 0.5
    kernel = EquivariantPatchKernel(ActivationFeatures(C * 9, "tanh", c), radius=1, group=group)
    sources, p = _random((5, C, H, H), 7), _random((1, 5, C, H, H), 8)
    Wf = kernel.filters(sources, p[0])  # (C*9 + 1, C)
    weight = Wf[:-1].T.reshape(C, C, 3, 3)  # (out, in, dy, dx): unfold order (channel, row, column)
    bias = c**0.5 * Wf[-1]
    z = _random((3, C, H, H), 9)
    conv = F.conv2d(F.pad(torch.tanh(z), (1, 1, 1, 1), mode="circular"), weight, bias)
    np.testing.assert_allclose(kernel.apply(z, Wf).numpy(), conv.numpy(), rtol=0, atol=1e-12)
    states, energy, _ = forward_blocks(kernel, sources, p)
    np.testing.assert_allclose(states[-1].numpy(), (sources + kernel.apply(sources, Wf)).numpy(), atol=1e-12)
    if group == "p4":  # an H-invariant filter
        np.testing.assert_allclose(weight.numpy(), torch.rot90(weight, 1, dims=(-2, -1)).numpy(), atol=1e-12)
    else:
        decay = 0.5 * (float((weight**2).sum()) + float((bias**2).sum()) / c)
        np.testing.assert_allclose(float(energy[0]), decay, rtol=1e-12)


def test_readout_is_invariant_to_the_point_group():
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    feats = NystromFeatures.from_patches(extract_patches(x, 1).reshape(-1, 9), 16, 0.5, group="p4m", channels=1,
                                         random_state=0)
    pooled = PooledFeatures(feats, 1, pool_matrix(8, 8, 1.0, 2))
    K = OrbitKernel(1.0, 8)
    a, b = pooled.orbit(x[:10], "p4m"), pooled.orbit(x[10:], "p4m")
    G = K.gram(a, b)
    for g in (ROTATE, REFLECT):
        np.testing.assert_allclose(K.gram(pooled.orbit(g(x[:10]), "p4m"), b).numpy(), G.numpy(), atol=1e-10)
        np.testing.assert_allclose(K.gram(a, pooled.orbit(g(x[10:]), "p4m")).numpy(), G.numpy(), atol=1e-10)
    np.testing.assert_allclose(K.gram(a).numpy(), K.gram(a).T.numpy(), atol=1e-12)
    # every pooled value is a weighted average of the pixels: the pooling matrix's columns sum to 1
    np.testing.assert_allclose(pool_matrix(8, 8, 1.0, 2).sum(0).numpy(), 1.0, atol=1e-12)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:450], y[:450]


def test_classifier_fits_digits_and_is_rotation_invariant_with_p4(digits):
    X, y = digits
    clf = EquivariantKernelWarpingClassifier((8, 8), group="p4", nu=0.1, max_iter=4, max_warp_images=150,
                                             random_state=0)
    with pytest.warns(ConvergenceWarning, match="iteration budget"):  # 4 iterations: an unconverged fit says so
        clf.fit(X[:300], y[:300])
    assert clf.nu_ == 0.1 and clf.n_iter_ == 4 and not clf.converged_
    rotated = np.rot90(X[300:].reshape(-1, 8, 8), 1, axes=(1, 2)).reshape(-1, 64)
    np.testing.assert_allclose(clf.decision_function(rotated), clf.decision_function(X[300:]), atol=1e-8)
    assert clf.score(X[300:], y[300:]) > 0.85  # 300 training digits, 6 and 9 identified by the rotations
    P = clf.predict_proba(X[300:])
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(clf.classes_[P.argmax(1)], clf.predict(X[300:]))


def test_classifier_defaults_on_digits(digits):
    X, y = digits
    clf = EquivariantKernelWarpingClassifier((8, 8), max_iter=4, max_warp_images=150, random_state=0)
    clf.fit(X[:300], y[:300])
    assert clf.score(X[300:], y[300:]) >= 0.88  # a hard split: a tuned RBF SVC (γ = 0.001, C = 10) scores 0.887
    assert clf.nu_validation_ is not None and len(clf.nu_validation_) == 3
    c = clone(clf).set_params(group="p4m")
    assert c.group == "p4m" and clf.group == "translations"
    assert clf.warp(X[:3]).shape == (3, 64)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_shape": (8,)}, "image_shape"), ({"group": "p6"}, "group"), ({"warp_kernel": "rbf"}, "warp_kernel"),
    ({"image_shape": (8, 4), "group": "p4"}, "square"), ({"pool_stride": 3}, "pool_stride"),
    ({"nu": -1.0}, "nu"), ({"n_layers": 0}, "n_layers"), ({"channels": 2}, "columns"),
])
def test_bad_parameters_raise(digits, kwargs, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        EquivariantKernelWarpingClassifier(**{"image_shape": (8, 8), **kwargs}).fit(X[:50], y[:50])
