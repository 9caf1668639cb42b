import pytest
import torch

from lddmm_nets import (CauchyKernel, FeatureMapKernel, GaussianKernel, LaplaceKernel, MaternKernel, SumKernel,
                        backends)



def radial_kernels():
    """One instance of every radial kernel family (with a multi-scale sum)."""
    return [
        GaussianKernel(sigma=0.7),
        LaplaceKernel(sigma=0.8),
        MaternKernel(nu=1.5, sigma=0.9),
        MaternKernel(nu=2.5, sigma=0.6),
        CauchyKernel(sigma=0.5),
        SumKernel([GaussianKernel(sigma=0.3), MaternKernel(nu=2.5, sigma=1.2)], weights=[2.0, 1.0]),
    ]


def all_kernels():
    return radial_kernels() + [FeatureMapKernel("tanh", c=1.0)]


requires_keops = pytest.mark.skipif(not backends.keops_available(), reason="KeOps cannot compile on this machine")


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
