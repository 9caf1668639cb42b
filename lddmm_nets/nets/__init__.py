"""Idea registration and ResNets as flows of diffeomorphisms (THEORY §5).

- ``KernelWarpingRegressor`` / ``KernelWarpingClassifier``: scikit-learn estimators that warp the inputs with a
  flow of RKHS velocity fields (continuous shooting or discrete layers), then read out by kernel ridge regression.
- ``LayerTrajectory``, ``discrete_hamiltonian_shoot``: the discrete network and its least-action system.
"""

from ._estimators import KernelWarpingClassifier, KernelWarpingRegressor
from ._readout import LOOSelection, RidgeReadout, loo_select, ridge_loss, ridge_solve
from ._warping import (DiscreteHamiltonianResult, LayerTrajectory, discrete_hamiltonian_residuals,
                       discrete_hamiltonian_shoot, forward_layers)

__all__ = [
    "KernelWarpingClassifier", "KernelWarpingRegressor",
    "RidgeReadout", "LOOSelection", "loo_select", "ridge_loss", "ridge_solve",
    "LayerTrajectory", "DiscreteHamiltonianResult", "discrete_hamiltonian_shoot", "discrete_hamiltonian_residuals",
    "forward_layers",
]
