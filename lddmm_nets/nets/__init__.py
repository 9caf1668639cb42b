"""Idea registration and ResNets as flows of diffeomorphisms (THEORY §5).

- ``KernelWarpingRegressor`` / ``KernelWarpingClassifier``: scikit-learn estimators that warp the inputs with a
  flow of RKHS velocity fields (continuous shooting or discrete layers), then read out by kernel ridge regression.
- ``LayerTrajectory``, ``discrete_hamiltonian_shoot``: the discrete network and its least-action system.
- ``ResNetFlow`` (torch module) with ``train_resnet``, ``backprop_momenta``, ``least_action_weights``,
  ``shoot_weights``, ``layer_diagnostics``, ``min_jacobian_determinant``, ``depth_consistency``.
- ``make_spirals``: two interleaved spirals (the benchmark's toy data).
"""

from ._estimators import KernelWarpingClassifier, KernelWarpingRegressor
from .datasets import make_spirals
from ._readout import LOOSelection, RidgeReadout, loo_select, ridge_loss, ridge_solve
from .resnet import (InverseResult, LayerDiagnostics, Momenta, ResNetFlow, ShotWeights, TrainResult,
                     backprop_momenta, depth_consistency, layer_diagnostics, least_action_weights,
                     min_jacobian_determinant, shoot_weights, train_resnet)
from ._warping import (DiscreteHamiltonianResult, LayerTrajectory, discrete_hamiltonian_residuals,
                       discrete_hamiltonian_shoot, forward_layers)

__all__ = [
    "KernelWarpingClassifier", "KernelWarpingRegressor",
    "RidgeReadout", "LOOSelection", "loo_select", "ridge_loss", "ridge_solve",
    "LayerTrajectory", "DiscreteHamiltonianResult", "discrete_hamiltonian_shoot", "discrete_hamiltonian_residuals",
    "forward_layers",
    "ResNetFlow", "TrainResult", "train_resnet", "Momenta", "backprop_momenta", "least_action_weights",
    "ShotWeights", "shoot_weights", "LayerDiagnostics", "layer_diagnostics", "InverseResult",
    "min_jacobian_determinant", "depth_consistency", "make_spirals",
]

# issue 5, part 4: mean-field limit of ResNet weights
from .mean_field import (WeightPath, as_weight_path, fit_flow_network, mean_field_weights,  # noqa: E402
                         network_weights, quadrature_particles, resnet_weight_convergence, sample_particles,
                         weight_distance)
__all__ += ["WeightPath", "as_weight_path", "weight_distance", "sample_particles", "quadrature_particles",
            "network_weights", "mean_field_weights", "fit_flow_network", "resnet_weight_convergence"]

# issue 15, section 2: error bars of the warped GP
from .gp import (GP_MAX_POINTS, WarpedGPClassifierMixin, WarpedGPPosterior, WarpedGPRegressorMixin,  # noqa: E402
                 fit_temperature, signal_variance, warped_gp_posterior)
__all__ += ["WarpedGPPosterior", "warped_gp_posterior", "signal_variance", "fit_temperature", "GP_MAX_POINTS",
            "WarpedGPRegressorMixin", "WarpedGPClassifierMixin"]

# issue 15, section 3: equivariant multichannel kernels on images
from .equivariant import EquivariantKernelWarpingClassifier, EquivariantPatchKernel  # noqa: E402
__all__ += ["EquivariantKernelWarpingClassifier", "EquivariantPatchKernel"]
