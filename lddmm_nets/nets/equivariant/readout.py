"""The readout of equivariant warping: pooled patch features and a Gaussian kernel summed over the point group.

Features of an image z: the patch features ``φ(P_t z)`` (m per site), blurred by a periodic Gaussian of width
``pool_sigma`` pixels and averaged over ``stride x stride`` blocks (``u = pool(φ(P z))``, (m H W / stride²,)). The
blur and the block average commute with the translations by multiples of the stride and with the rotations and
reflections of the grid about its centre, so ``u(h·z)`` is a permutation of ``u(z)`` for every point-group element h
(Nyström centres closed under H); small shifts move u little (local pooling, approximate invariance).

Readout kernel on images: ``K(z, z') = Σ_{h ∈ H} k_σ(u(z), u(h·z'))`` with k_σ Gaussian: invariant to the point
group in each argument, positive definite since k_σ is invariant under simultaneous permutations. ``OrbitKernel``
evaluates it on stacked features ``[u(h·z)]_{h ∈ H}`` (N, |H| D), so that the engine's ridge solver, ridge loss and
leave-one-out selection apply unchanged.
"""

from __future__ import annotations

import torch

from lddmm_nets.kernels import GaussianKernel

from ._groups import extract_patches, point_group
from .kernels import PatchFeatureMap

__all__ = ["pool_matrix", "PooledFeatures", "OrbitKernel"]


def pool_matrix(height: int, width: int, sigma: float, stride: int, *, dtype=torch.float64,
                device=None) -> torch.Tensor:
    """Periodic Gaussian blur then ``stride x stride`` block average, as a (H W, H W / stride²) matrix.

    Parameters
    ----------
    height, width : int
        Grid size (multiples of ``stride``).
    sigma : float
        Blur width in pixels (0: no blur).
    stride : int
        Block size of the average.
    """
    if height % stride or width % stride:
        raise ValueError(f"stride: expected a divisor of the image size {height} x {width}, got {stride}")

    def blur(n):
        i = torch.arange(n, dtype=dtype, device=device)
        d = (i[:, None] - i[None]).abs()
        d = torch.minimum(d, n - d)  # periodic distance
        B = torch.exp(-0.5 * (d / sigma) ** 2) if sigma > 0 else (d == 0).to(dtype)
        B = B / B.sum(0, keepdim=True)
        avg = torch.zeros(n, n // stride, dtype=dtype, device=device)
        avg[torch.arange(n), torch.arange(n) // stride] = 1.0 / stride
        return B @ avg  # (n, n / stride)

    return torch.kron(blur(height), blur(width))


class PooledFeatures:
    """``u(z) = pool(φ(P z))``: (N, C, H, W) images -> (N, m H W / stride²) features.

    Parameters
    ----------
    features : PatchFeatureMap
        φ.
    radius : int
        Patch radius.
    pool : torch.Tensor
        (H W, H' W') pooling matrix (``pool_matrix``).
    """

    def __init__(self, features: PatchFeatureMap, radius: int, pool: torch.Tensor):
        self.features, self.radius, self.pool = features, int(radius), pool

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        F = self.features(extract_patches(z, self.radius))  # (N, T, m)
        return torch.einsum("ntm,ts->nms", F, self.pool.to(F.dtype)).flatten(1)

    def orbit(self, z: torch.Tensor, group: str) -> torch.Tensor:
        """``[u(h·z)]_{h ∈ H}`` stacked: (N, |H| D), the identity first."""
        return torch.cat([self(h(z)) for h in point_group(group)], dim=1)


class OrbitKernel:
    """``K(a, b) = Σ_h k_σ(a_e, b_h)`` on stacked orbit features a = [a_h] (the identity block first).

    Parameters
    ----------
    sigma : float
        Gaussian width in feature units.
    n_group : int
        |H| (1: the Gaussian kernel on the features).
    """

    def __init__(self, sigma: float, n_group: int = 1):
        self.base, self.sigma, self.n_group = GaussianKernel(sigma=sigma), float(sigma), int(n_group)

    def gram(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(M, N) ``K(x, y)`` (y = x when None)."""
        y = x if y is None else y
        d = x.shape[1] // self.n_group
        return sum(self.base.gram(x[:, :d], y[:, j * d:(j + 1) * d]) for j in range(self.n_group))

    def matvec(self, x: torch.Tensor, y: torch.Tensor | None, p: torch.Tensor, backend: str = "dense") -> torch.Tensor:
        """``K(x, y) p`` (dense; the readout sizes here are a few thousand images)."""
        return self.gram(x, y) @ p

    def __repr__(self):
        return f"OrbitKernel(sigma={self.sigma:g}, n_group={self.n_group})"
