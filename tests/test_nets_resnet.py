"""ResNetFlow: least action, identification from p_0, conservation, invertibility, flows vs depth."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons

from lddmm_nets import FeatureMapKernel, hamiltonian
from lddmm_nets.nets import (ResNetFlow, backprop_momenta, depth_consistency, layer_diagnostics,
                             least_action_weights, min_jacobian_determinant, shoot_weights, train_resnet)



def _rel(A, B):
    return float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(A, B)) / sum((b ** 2).sum() for b in B)))


@pytest.fixture(scope="module")
def trained():
    X, y = make_moons(60, noise=0.2, random_state=0)
    X = torch.tensor(X)
    Y = torch.eye(2, dtype=torch.float64)[torch.as_tensor(y)]
    model = ResNetFlow(2, 2, n_layers=6, nu=0.05, activation="tanh", seed=1)
    res = train_resnet(model, X, Y, max_iter=3000, tol=1e-12)
    return model, X, Y, res


def test_least_action_identity(trained):
    model, X, Y, res = trained
    assert res.grad_norm < 1e-7
    m = backprop_momenta(model, X, Y)
    W, b = least_action_weights(m.q, m.p, model.activation)
    Wm, bm = model.layer_weights()
    assert _rel((W, b), (Wm.detach(), bm.detach())) < 1e-3
    # At the least-action point ‖W_k‖² + ‖b_k‖² = 2 H(q_k, p_k) with the feature-map kernel (φ(x)ᵀφ(y) + 1).
    k = FeatureMapKernel("tanh", c=1.0)
    H = torch.stack([hamiltonian(k, m.q[i], m.p[i]) for i in range(model.n_layers)])
    d = layer_diagnostics(model, X, Y)
    np.testing.assert_allclose(d.weight_norms, 2 * H.detach().numpy(), rtol=1e-3)


def test_least_action_fails_for_an_untrained_network(trained):
    _, X, Y, _ = trained
    model = ResNetFlow(2, 2, n_layers=6, nu=0.05, seed=2)
    m = backprop_momenta(model, X, Y)
    W, b = least_action_weights(m.q, m.p, model.activation)
    assert _rel((W, b), tuple(t.detach() for t in model.layer_weights())) > 0.1


def test_shoot_weights_reproduces_every_layer(trained):
    model, X, Y, _ = trained
    m = backprop_momenta(model, X, Y)
    sw = shoot_weights(m.p[0], model.lift(X), n_layers=model.n_layers, activation=model.activation)
    Wm, bm = model.layer_weights()
    assert _rel((sw.W, sw.b), (Wm.detach(), bm.detach())) < 1e-2
    assert float(sw.residuals.max()) < 1e-10
    assert torch.allclose(sw.q, m.q, atol=1e-6)
    with pytest.raises(ValueError, match="p0"):
        shoot_weights(m.p[0][:5], model.lift(X), n_layers=6)


def test_weight_decay_is_scaled_by_the_step():
    model = ResNetFlow(3, 1, n_layers=4, nu=0.2, head_decay=0.0, seed=0)
    W, b = model.layer_weights()
    expected = 0.5 * 0.2 * 0.25 * ((W ** 2).sum() + (b ** 2).sum())
    assert torch.allclose(model.weight_decay(), expected)


def test_inverse_by_fixed_point(trained):
    model, X, _, _ = trained
    d = layer_diagnostics(model)
    assert d.block_invertible.all()
    y = model.flow(model.lift(X)).detach()
    inv = model.inverse(y)
    assert inv.residual < 1e-9
    assert torch.allclose(inv.x, model.lift(X), atol=1e-8)
    assert min_jacobian_determinant(model, model.lift(X)) > 0


def test_identity_network_has_unit_jacobian():
    model = ResNetFlow(2, 1, n_layers=3)
    with torch.no_grad():
        model.weight.zero_()
    x = torch.randn(10, 2, dtype=torch.float64)
    assert min_jacobian_determinant(model, x) == pytest.approx(1.0, abs=1e-12)


def test_shared_weights_is_a_flow():
    torch.manual_seed(0)
    model = ResNetFlow(2, 1, n_layers=64, shared_weights=True, init_scale=1.5, seed=3)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([[0.3, -0.2]]))
    x = torch.randn(30, 2, dtype=torch.float64)
    fine = model.flow(x, n_steps=2048).detach()
    # Euler error of exp(v) decays like 1/M.
    with torch.no_grad():
        e1 = float((model.flow(x, n_steps=32) - fine).norm())
        e2 = float((model.flow(x, n_steps=64) - fine).norm())
    assert 1.7 < e1 / e2 < 2.3
    ss = model.flow(x, method="scaling_squaring", squarings=8, grid_size=129).detach()
    assert float((ss - fine).abs().max()) < 2e-2
    assert depth_consistency(model, x, 128) < 0.05
    with pytest.raises(ValueError, match="shared_weights"):
        ResNetFlow(2, 1, n_layers=4).flow(x, method="scaling_squaring")


def test_dropout_and_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        ResNetFlow(2, 1, activation="gelu")
    with pytest.raises(ValueError, match="head"):
        ResNetFlow(2, 1, head="svm")
    with pytest.raises(ValueError, match="dropout"):
        ResNetFlow(2, 1, dropout=1.0)
    model = ResNetFlow(2, 2, dropout=0.5)
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        model(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="nu > 0"):
        backprop_momenta(ResNetFlow(2, 2, nu=0.0), torch.zeros(4, 2, dtype=torch.float64),
                         torch.zeros(4, 2, dtype=torch.float64))


def test_ridge_head_training():
    X, y = make_moons(50, noise=0.1, random_state=1)
    X = torch.tensor(X)
    Y = torch.eye(2, dtype=torch.float64)[torch.as_tensor(y)]
    model = ResNetFlow(2, 2, n_layers=4, nu=0.05, head="ridge", ridge_sigma=0.5, ridge_lam=0.1, augment=1)
    res = train_resnet(model, X, Y, loss="ridge", max_iter=200)
    assert res.loss_curve[-1] < res.loss_curve[0]
    acc = float((model(X).argmax(1) == Y.argmax(1)).double().mean())
    assert acc > 0.9
