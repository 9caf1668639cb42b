"""The Hamiltonian written once: closed-form gradients against autograd, on both backends."""

import pytest
import torch

from conftest import all_kernels, requires_keops
from lddmm_nets import FeatureMapKernel, GaussianKernel, HamiltonianSystem, LaplaceKernel, hamiltonian
from lddmm_nets.kernels import Kernel

F64 = torch.float64


def _state(rng, n=25, d=3, coincident=True):
    q = torch.randn(n, d, generator=rng, dtype=F64)
    if coincident:
        q[1] = q[0]  # coincident landmarks: the kink of the Laplace kernel
    return q, torch.randn(n, d, generator=rng, dtype=F64)


def test_hamiltonian_is_half_the_squared_rkhs_norm(rng):
    q, p = _state(rng)
    k = GaussianKernel(sigma=0.8, nugget=0.2)
    K = k.gram(q)
    torch.testing.assert_close(hamiltonian(k, q, p), 0.5 * torch.einsum("id,ij,jd->", p, K, p))


@pytest.mark.parametrize("kernel", all_kernels(), ids=repr)
def test_closed_form_dq_matches_autograd_reference(kernel, rng):
    q, p = _state(rng)
    closed = kernel.dq_quadratic(q, p, backend="dense")
    ref = Kernel.dq_quadratic(kernel, q, p, backend="dense")
    assert torch.isfinite(closed).all()
    torch.testing.assert_close(closed, ref, rtol=1e-12, atol=1e-12)


@requires_keops
@pytest.mark.parametrize("kernel", all_kernels(), ids=repr)
def test_closed_form_dq_on_keops_matches_dense(kernel, rng):
    q, p = _state(rng)
    torch.testing.assert_close(kernel.dq_quadratic(q, p, backend="keops"), kernel.dq_quadratic(q, p, backend="dense"),
                               rtol=1e-10, atol=1e-12)


def test_feature_map_gradient_is_the_resnet_formula(rng):
    """∂H/∂q_i = φ'(q_i) ⊙ (Wᵀ p_i), W = Σ_j p_j φ(q_j)ᵀ (THEORY §5)."""
    q, p = _state(rng, coincident=False)
    W = p.T @ torch.tanh(q)
    expected = (1 - torch.tanh(q) ** 2) * (p @ W)
    torch.testing.assert_close(FeatureMapKernel("tanh").dq_quadratic(q, p), expected)


def test_system_equations_of_motion_are_the_gradients_of_h(rng):
    q, p = _state(rng)
    q.requires_grad_(True)
    p.requires_grad_(True)
    k = LaplaceKernel(sigma=0.7, nugget=0.1)
    gq, gp = torch.autograd.grad(hamiltonian(k, q, p, backend="dense"), (q, p))
    for gradient in ("closed", "autograd"):
        system = HamiltonianSystem(k, backend="dense", gradient=gradient)
        dq, dp, dx = system.rhs((q, p, None))
        torch.testing.assert_close(dq, gp)
        torch.testing.assert_close(dp, -gq)
        assert dx is None


def test_system_rejects_bad_options():
    with pytest.raises(ValueError, match="gradient: expected one of"):
        HamiltonianSystem(GaussianKernel(sigma=1.0), gradient="numeric")
    with pytest.raises(TypeError, match="kernel: expected a lddmm_nets Kernel"):
        HamiltonianSystem(lambda x, y: x @ y.T)
