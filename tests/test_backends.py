"""Backend selection: the auto policy, the KeOps fallback, placement by device."""

import math
import warnings

import pytest
import torch

from lddmm_nets import GaussianKernel, backends


def test_auto_policy_by_size_and_device(monkeypatch):
    monkeypatch.setattr(backends, "_keops_status", lambda: (True, ""))
    cpu = torch.device("cpu")
    for dtype, limit in backends.AUTO_DENSE_MAX_PAIRS.items():
        assert backends.select_backend("auto", 100, 100, cpu, dtype) == "dense"
        assert backends.select_backend("auto", limit, 1, cpu, dtype) == "dense"
        assert backends.select_backend("auto", limit + 1, 1, cpu, dtype) == "keops"
    # wide inputs (one matrix product in dense) stay dense much longer
    wide = backends.AUTO_DENSE_MAX_PAIRS_WIDE
    assert backends.select_backend("auto", wide, 1, cpu, torch.float64, dim=64) == "dense"
    assert backends.select_backend("auto", wide + 1, 1, cpu, torch.float64, dim=64) == "keops"
    assert backends.select_backend("auto", wide, 1, cpu, torch.float64, dim=3) == "keops"
    # dense float64 falls behind KeOps earlier than float32 (measured by scripts/bench_kernels.py)
    assert backends.AUTO_DENSE_MAX_PAIRS[torch.float64] < backends.AUTO_DENSE_MAX_PAIRS[torch.float32]
    large = 10 * backends.AUTO_DENSE_MAX_PAIRS_CUDA
    # CUDA tensors keep the dense path longer (fast BLAS), then take KeOps' GPU path
    assert backends.AUTO_DENSE_MAX_PAIRS_CUDA >= max(backends.AUTO_DENSE_MAX_PAIRS.values())
    assert backends.select_backend("auto", backends.AUTO_DENSE_MAX_PAIRS_CUDA, 1, torch.device("cuda")) == "dense"
    assert backends.select_backend("auto", backends.AUTO_DENSE_MAX_PAIRS_CUDA + 1, 1,
                                   torch.device("cuda")) == "keops"
    assert backends.select_backend("dense", large, large) == "dense"


def test_auto_falls_back_to_dense_with_one_warning_and_keops_raises(monkeypatch):
    monkeypatch.setattr(backends, "_keops_status", lambda: (False, "CalledProcessError: g++ not found"))
    monkeypatch.setattr(backends, "_warned_fallback", False)
    n = 2 * backends.AUTO_DENSE_MAX_PAIRS[torch.float64]
    with pytest.warns(RuntimeWarning, match="falls back to dense: CalledProcessError: g\\+\\+ not found"):
        assert backends.select_backend("auto", n, 1, dtype=torch.float64) == "dense"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select_backend("auto", n, 1, dtype=torch.float64) == "dense"  # warned once only
    with pytest.raises(backends.KeOpsUnavailableError, match="g\\+\\+ not found"):
        backends.select_backend("keops", 10, 10)
    # the kernels keep working through the fallback, with the same values
    x = torch.rand(n, 1, dtype=torch.float64)
    y, p = torch.rand(3, 1, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64)
    k = GaussianKernel(sigma=0.3)
    torch.testing.assert_close(k.matvec(x, y, p, backend="auto"), k.matvec(x, y, p, backend="dense"))


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"backend: expected one of \('auto', 'dense', 'keops'\), got 'torch'"):
        backends.select_backend("torch", 1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_keep_the_inputs_dtype_and_device(dtype, device):
    x = torch.rand(20, 3, dtype=dtype, device=device)
    ref = GaussianKernel(sigma=0.5).gram(x.cpu().double()) @ x.cpu().double()
    for backend in ("dense", "keops") if backends.keops_available() else ("dense",):
        out = GaussianKernel(sigma=0.5).matvec(x, x, x, backend=backend)
        assert out.dtype == dtype and out.device == x.device
        # the same values on every backend and device (float32: a few ulps of the O(1) sums)
        torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                   atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_floored_exp_equals_exp_above_the_floor_and_is_twice_differentiable():
    """``backends.exp``: bit-equal to ``torch.exp`` above ``EXP_FLOOR``, ``exp(EXP_FLOOR)`` with zero gradient below,
    gradcheck and gradgradcheck in float64; a Gaussian kernel sum of points 30 widths apart changes by < 1e-24."""
    x = torch.linspace(-59.0, 3.0, 101, dtype=torch.float64)
    torch.testing.assert_close(backends.exp(x), torch.exp(x), rtol=0, atol=0)
    low = torch.tensor([-1e4, -100.0, backends.EXP_FLOOR - 1e-9], dtype=torch.float64, requires_grad=True)
    y = backends.exp(low)
    torch.testing.assert_close(y, torch.full_like(y, math.exp(backends.EXP_FLOOR)), rtol=0, atol=0)
    (g,) = torch.autograd.grad(y.sum(), low)
    assert not g.any()
    z = (torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    assert torch.autograd.gradcheck(backends.exp, (z,)) and torch.autograd.gradgradcheck(backends.exp, (z,))
    from lddmm_nets import GaussianKernel

    pts = torch.cat([torch.zeros(3, 2), torch.full((3, 2), 30.0)]).double()
    K = GaussianKernel(sigma=1.0).matvec(pts, pts, torch.ones(6, 1, dtype=torch.float64), "dense")
    torch.testing.assert_close(K, torch.full((6, 1), 3.0, dtype=torch.float64), rtol=0, atol=1e-24)
