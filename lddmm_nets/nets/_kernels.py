"""Kernel names accepted by the estimators, mapped to the engine's kernels.

The ``Wide*`` names are kept for compatibility: the engine's dense path itself now computes squared distances of
wide inputs (``d >= 8``) as ``|x|² + |y|² - 2 x·y`` with one matrix product (``lddmm_nets.backends.matmul_sqdist``),
which is what these classes used to add.
"""

from __future__ import annotations

from lddmm_nets import CauchyKernel, GaussianKernel, LaplaceKernel, MaternKernel
from lddmm_nets.backends import matmul_sqdist

__all__ = ["KERNELS", "matmul_sqdist", "WideGaussianKernel", "WideLaplaceKernel", "WideMaternKernel",
           "WideCauchyKernel"]

WideGaussianKernel = GaussianKernel
WideLaplaceKernel = LaplaceKernel
WideMaternKernel = MaternKernel
WideCauchyKernel = CauchyKernel

KERNELS = {"gaussian": GaussianKernel, "laplace": LaplaceKernel, "matern": MaternKernel, "cauchy": CauchyKernel}
