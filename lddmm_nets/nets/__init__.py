"""Idea registration and ResNets as flows of diffeomorphisms (THEORY §5).

- ``KernelWarpingRegressor`` / ``KernelWarpingClassifier``: scikit-learn estimators that warp the inputs with a
  flow of RKHS velocity fields (continuous shooting or discrete layers), then read out by kernel ridge regression.
- ``LayerTrajectory``, ``discrete_hamiltonian_shoot``: the discrete network and its least-action system.
- ``ResNetFlow`` (torch module, ``resnet``); ``train_resnet`` and ``fit_flow_network`` (``training``);
  ``backprop_momenta``, ``least_action_weights``, ``shoot_weights`` (``identities``); ``layer_diagnostics``,
  ``min_jacobian_determinant``, ``depth_consistency`` (``diagnostics``); ``WeightPath``, ``weight_distance``
  (``weights``: networks as velocity paths in time).
- ``make_spirals``: two interleaved spirals (the benchmark's toy data).

The mean-field limit of ResNet weights (samples, depth, ``network_weights``, ``mean_field_weights``) is
``lddmm_nets.meanfield``'s.
"""

from ._estimators import KernelWarpingClassifier, KernelWarpingRegressor
from ._momenta import WarpDivergedError
from ._readout import (LOOSelection, RidgeJitterWarning, RidgeReadout, RidgeSolveError, loo_select, ridge_loss,
                       ridge_solve)
from ._selection import one_standard_error_choice
from ._warping import (DiscreteHamiltonianResult, FixedPointError, LayerTrajectory, discrete_hamiltonian_residuals,
                       discrete_hamiltonian_shoot, forward_layers)
from .datasets import make_spirals
from .diagnostics import LayerDiagnostics, depth_consistency, layer_diagnostics, min_jacobian_determinant
from .identities import Momenta, ShotWeights, backprop_momenta, least_action_weights, shoot_weights
from .resnet import InverseResult, ResNetFlow
from .training import FlowFit, TrainResult, fit_flow_network, train_resnet
from .weights import WeightPath, as_weight_path, weight_distance

__all__ = [
    "KernelWarpingClassifier", "KernelWarpingRegressor", "one_standard_error_choice",
    "RidgeReadout", "LOOSelection", "loo_select", "ridge_loss", "ridge_solve", "RidgeSolveError",
    "RidgeJitterWarning", "WarpDivergedError",
    "LayerTrajectory", "DiscreteHamiltonianResult", "discrete_hamiltonian_shoot", "discrete_hamiltonian_residuals",
    "forward_layers", "FixedPointError",
    "ResNetFlow", "InverseResult", "TrainResult", "train_resnet", "FlowFit", "fit_flow_network",
    "Momenta", "backprop_momenta", "least_action_weights", "ShotWeights", "shoot_weights",
    "LayerDiagnostics", "layer_diagnostics", "min_jacobian_determinant", "depth_consistency",
    "WeightPath", "as_weight_path", "weight_distance", "make_spirals",
]

# issue 15, section 2: error bars of the warped GP
from .gp import (GP_MAX_POINTS, WarpedGPClassifierMixin, WarpedGPPosterior, WarpedGPRegressorMixin,  # noqa: E402
                 fit_temperature, signal_variance, warped_gp_posterior)
__all__ += ["WarpedGPPosterior", "warped_gp_posterior", "signal_variance", "fit_temperature", "GP_MAX_POINTS",
            "WarpedGPRegressorMixin", "WarpedGPClassifierMixin"]

# issue 15, section 3: equivariant multichannel kernels on images
from .equivariant import EquivariantKernelWarpingClassifier, EquivariantPatchKernel  # noqa: E402
__all__ += ["EquivariantKernelWarpingClassifier", "EquivariantPatchKernel"]
