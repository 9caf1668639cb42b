"""lddmm-nets engine: kernels, dense/KeOps backends, Hamiltonian geodesic shooting and integrators.

The same kernels, integrators and :func:`shoot` drive landmark, image and idea registration.
"""

from . import backends, integrators
from .grid import Grid, GridOperator, sobolev_operator
from .hamiltonian import HamiltonianSystem, hamiltonian
from .kernels import (
    CauchyKernel,
    FeatureMapKernel,
    GaussianKernel,
    Kernel,
    LaplaceKernel,
    MaternKernel,
    RadialKernel,
    SumKernel,
)
from .shooting import InverseFlowError, Trajectory, shoot

__version__ = "0.1.0"

__all__ = [
    "backends",
    "integrators",
    "Grid",
    "GridOperator",
    "sobolev_operator",
    "HamiltonianSystem",
    "hamiltonian",
    "Kernel",
    "RadialKernel",
    "GaussianKernel",
    "LaplaceKernel",
    "MaternKernel",
    "CauchyKernel",
    "SumKernel",
    "FeatureMapKernel",
    "Trajectory",
    "InverseFlowError",
    "shoot",
]
