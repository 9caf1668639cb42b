"""Equivariant multichannel kernels on images and the warping classifier built on them (issue 15, §3).

- ``EquivariantPatchKernel``: ``Γ(x, x')_{(c,t),(c',t')} = δ_{cc'} Σ_h k(P_t x, h·P_{t'} x')`` with a patch kernel
  ``k = φ·φ`` (``ActivationFeatures``: the CNN case; ``NystromFeatures``: a Gaussian of finite rank);
- ``forward_blocks`` / ``ImageFlow``: warping blocks ``z ↦ z + Δt v(z)`` driven by momenta on training images;
- ``PooledFeatures``, ``OrbitKernel``, ``pool_matrix``: the pooled readout, invariant to the point group;
- ``EquivariantKernelWarpingClassifier``: the scikit-learn estimator;
- ``point_group``, ``extract_patches``: the groups ``"translations"``, ``"p4"``, ``"p4m"`` and periodic patches.
"""

from ._groups import GROUPS, extract_patches, point_group
from .blocks import ImageFlow, forward_blocks
from .classifier import EquivariantKernelWarpingClassifier
from .kernels import ActivationFeatures, EquivariantPatchKernel, NystromFeatures, PatchFeatureMap
from .readout import OrbitKernel, PooledFeatures, pool_matrix

__all__ = ["EquivariantKernelWarpingClassifier", "EquivariantPatchKernel", "PatchFeatureMap", "ActivationFeatures",
           "NystromFeatures", "ImageFlow", "forward_blocks", "PooledFeatures", "OrbitKernel", "pool_matrix",
           "point_group", "extract_patches", "GROUPS"]
