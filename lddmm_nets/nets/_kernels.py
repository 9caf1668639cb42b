"""Engine kernels with a low-memory dense distance for high-dimensional inputs (local stop-gap).

The engine's dense ``sqdist`` builds squared distances from an (M, N, d) tensor of differences, which is 1 GB for
1,400 points in 64 dimensions (digits) and several times that under autograd. For idea registration, where d is the
data's dimension, these subclasses compute ``|x|² + |y|² - 2 x·y`` (clamped at 0) with one matrix product when the
dense backend is chosen; the KeOps path is the engine's. Its gradient at coincident points is ``2x - 2y = 0``, so the
sqrt-at-zero pitfall of THEORY §7 does not arise for the Gaussian and Cauchy profiles, and the engine's ``safe_sqrt``
handles Laplace and Matérn.
"""

from __future__ import annotations

import torch

from lddmm_nets import CauchyKernel, GaussianKernel, LaplaceKernel, MaternKernel
from lddmm_nets import backends as B

# Below this many input dimensions the engine's difference form is used unchanged (it is exact at 0).
_MATMUL_MIN_DIM = 8


def matmul_sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, N) squared distances ``|x_i|² + |y_j|² - 2 x_i·y_j`` clamped at 0, in O(MN) memory."""
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return d2.clamp_min(0.0)


class _MatmulPairwise:
    def _pairwise(self, x, y, backend):
        if backend == "dense" and x.shape[1] >= _MATMUL_MIN_DIM:
            return self.profile(matmul_sqdist(x, y))
        return super()._pairwise(x, y, backend)

    def dq_quadratic(self, q, p, backend="auto"):
        b = B.select_backend(backend, q.shape[0], q.shape[0], q.device)
        if b == "dense" and q.shape[1] >= _MATMUL_MIN_DIM:
            G = self.dprofile(matmul_sqdist(q, q)) * (p @ p.T)
            s = G @ torch.cat([torch.ones_like(q[:, :1]), q], dim=1)
            return 2.0 * (q * s[:, :1] - s[:, 1:])
        return super().dq_quadratic(q, p, backend)


class WideGaussianKernel(_MatmulPairwise, GaussianKernel):
    """``GaussianKernel`` whose dense path uses the matrix-product distance (same maths, less memory)."""


class WideLaplaceKernel(_MatmulPairwise, LaplaceKernel):
    """``LaplaceKernel`` with the matrix-product dense distance."""


class WideMaternKernel(_MatmulPairwise, MaternKernel):
    """``MaternKernel`` with the matrix-product dense distance."""


class WideCauchyKernel(_MatmulPairwise, CauchyKernel):
    """``CauchyKernel`` with the matrix-product dense distance."""


KERNELS = {"gaussian": WideGaussianKernel, "laplace": WideLaplaceKernel, "matern": WideMaternKernel,
           "cauchy": WideCauchyKernel}
