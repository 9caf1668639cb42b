"""lddmm-nets engine: kernels, dense/KeOps backends, Hamiltonian geodesic shooting and integrators.

The same kernels, integrators and ``shoot`` drive landmark, image and idea registration.
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


def __getattr__(name):
    # `lddmm_nets.nets` imports scikit-learn: load it on first use only
    if name == "nets":
        import importlib

        return importlib.import_module(".nets", __name__)
    raise AttributeError(f"module 'lddmm_nets' has no attribute {name!r}")


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
