"""Checks that a ResNet really is a flow of diffeomorphisms (THEORY §4-5): weight norms per layer (conservation of
H), Lipschitz bounds and invertibility of the blocks, the Jacobian of the learned map, and depth as time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .identities import backprop_momenta, least_action_weights
from .resnet import ACTIVATIONS, ResNetFlow

__all__ = ["LayerDiagnostics", "layer_diagnostics", "min_jacobian_determinant", "depth_consistency"]


@dataclass
class LayerDiagnostics:
    """Per-layer quantities of a ResNetFlow.

    Attributes
    ----------
    weight_norms : ndarray
        (L,) ``‖W_k‖_F² + ‖b_k‖²`` (= 2 H(q_k, p_k) at a least-action point).
    spread : float
        ``(max - min) / mean`` of weight_norms (O(Δt) by conservation of H).
    hamiltonian : ndarray or None
        (L,) ``H(q_k, p_k)`` from backpropagated momenta (when X, Y are given).
    lipschitz : ndarray
        (L,) bound ``Lip(φ) ‖W_k‖_2`` of each velocity field.
    block_invertible : ndarray of bool
        (L,) ``Δt Lip(v_k) < 1`` (each block ``I + Δt v_k`` is then invertible by fixed point).
    """

    weight_norms: np.ndarray
    spread: float
    hamiltonian: np.ndarray | None
    lipschitz: np.ndarray
    block_invertible: np.ndarray


def layer_diagnostics(model: ResNetFlow, X: torch.Tensor | None = None, Y: torch.Tensor | None = None,
                      loss: str = "cross_entropy") -> LayerDiagnostics:
    """Weight norms, Hamiltonian and Lipschitz bounds per layer."""
    with torch.no_grad():
        W, b = model.layer_weights()
        norms = ((W ** 2).sum((1, 2)) + (b ** 2).sum(1)).cpu().numpy()
        lip = (ACTIVATIONS[model.activation][1] * torch.linalg.matrix_norm(W, ord=2)).cpu().numpy()
    H = None
    if X is not None and Y is not None and model.nu > 0:
        m = backprop_momenta(model, X, Y, loss)
        Wp, bp = least_action_weights(m.q, m.p, model.activation)
        H = (0.5 * ((Wp ** 2).sum((1, 2)) + (bp ** 2).sum(1))).cpu().numpy()
    spread = float((norms.max() - norms.min()) / max(norms.mean(), np.finfo(float).tiny))
    return LayerDiagnostics(weight_norms=norms, spread=spread, hamiltonian=H, lipschitz=lip,
                            block_invertible=model.dt * lip < 1)


def min_jacobian_determinant(model: ResNetFlow, x: torch.Tensor) -> float:
    """Smallest ``det DΦ_L`` of the learned map over lifted points x (M, D), e.g. a grid over the data.

    Positive everywhere means the map is orientation-preserving there (diffeomorphic on a grid, THEORY §4).
    """
    x = x.detach()
    D = x.shape[1]
    with torch.enable_grad():
        xx = x.clone().requires_grad_(True)
        y = model.flow(xx)
        J = torch.stack([torch.autograd.grad(y[:, i].sum(), xx, retain_graph=i < D - 1)[0] for i in range(D)], 1)
    return float(torch.linalg.det(J).min())


def depth_consistency(model: ResNetFlow, X: torch.Tensor, n_steps: int) -> float:
    """Relative difference of the features when a network trained with L layers is evaluated with M = n_steps.

    Returns ``‖Φ_M(X) - Φ_L(X)‖ / ‖Φ_L(X) - X‖`` (0 for a perfect flow; O(1) when depth is not time).
    """
    with torch.no_grad():
        x = model.lift(X)
        zL = model.flow(x)
        zM = model.flow(x, n_steps=n_steps)
        return float((zM - zL).norm() / (zL - x).norm().clamp_min(torch.finfo(x.dtype).tiny))
