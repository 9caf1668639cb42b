"""What the theory says of a trained ResNet (THEORY §5): momenta from backpropagation, the least-action identity
``W_k = Σ_i p_{k,i} φ(q_{k,i})ᵀ``, ``b_k = Σ_i p_{k,i}``, and every layer regenerated from the initial momentum by
the discrete Hamiltonian system ("trained parameters are unique up to p_0")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lddmm_nets import FeatureMapKernel

from ._warping import discrete_hamiltonian_shoot
from .resnet import ACTIVATIONS, ResNetFlow

__all__ = ["Momenta", "backprop_momenta", "least_action_weights", "ShotWeights", "shoot_weights"]


@dataclass
class Momenta:
    """States and momenta of a network, from backpropagation.

    Attributes
    ----------
    q : torch.Tensor
        (L+1, N, D) states ``q_k`` of the data points.
    p : torch.Tensor
        (L, N, D) momenta ``p_k = -(1/ν) ∂D/∂q_{k+1}`` (D the data term).
    """

    q: torch.Tensor
    p: torch.Tensor


def backprop_momenta(model: ResNetFlow, X: torch.Tensor, Y: torch.Tensor, loss: str = "cross_entropy") -> Momenta:
    """Momenta of a trained network: ``p_k = -λ_{k+1} / ν`` with ``λ_{k+1} = ∂D/∂q_{k+1}`` (THEORY §5).

    Parameters
    ----------
    model : ResNetFlow
        With ``nu > 0`` and without dropout at evaluation.
    X, Y : torch.Tensor
        (N, d) inputs and (N, k) targets used in training.
    loss : str
        The training data term.
    """
    if model.nu <= 0:
        raise ValueError(f"backprop_momenta needs nu > 0 (p = -λ/ν); got nu={model.nu}")
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        states = [model.lift(X).detach()]
        x = states[0]
        outs = []
        for k in range(model.n_layers):
            x = x + model.dt * model.velocity(x, k)
            x.retain_grad()
            outs.append(x)
        data = model.data_term(x, Y, loss)
        grads = torch.autograd.grad(data, outs)
    model.train(was_training)
    q = torch.stack(states + [o.detach() for o in outs])
    p = -torch.stack(grads) / model.nu
    return Momenta(q=q, p=p)


def least_action_weights(q: torch.Tensor, p: torch.Tensor, activation: str = "tanh") -> tuple[torch.Tensor, torch.Tensor]:
    """``W_k = Σ_i p_{k,i} φ(q_{k,i})ᵀ`` and ``b_k = Σ_i p_{k,i}``.

    Parameters
    ----------
    q : torch.Tensor
        (L+1, N, D) or (L, N, D) states (the first L are used).
    p : torch.Tensor
        (L, N, D) momenta.

    Returns
    -------
    W : torch.Tensor
        (L, D, D).
    b : torch.Tensor
        (L, D).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}; got {activation!r}")
    L = p.shape[0]
    phi = ACTIVATIONS[activation][0](q[:L])
    return torch.einsum("kni,knj->kij", p, phi), p.sum(1)


@dataclass
class ShotWeights:
    """Layers regenerated from an initial momentum by the discrete Hamiltonian system.

    Attributes
    ----------
    W : torch.Tensor
        (L, D, D) weights.
    b : torch.Tensor
        (L, D) biases.
    q : torch.Tensor
        (L+1, N, D) states.
    p : torch.Tensor
        (L, N, D) momenta.
    residuals : torch.Tensor
        (L,) relative residuals of the implicit momentum equations.
    """

    W: torch.Tensor
    b: torch.Tensor
    q: torch.Tensor
    p: torch.Tensor
    residuals: torch.Tensor


def shoot_weights(p0: torch.Tensor, X: torch.Tensor, *, n_layers: int, activation: str = "tanh",
                  nugget: float = 0.0, tol: float = 1e-14, max_iter: int = 1000) -> ShotWeights:
    """Regenerate every layer of a ResNet from its initial momentum (THEORY §5, "unique up to p_0").

    Runs ``q_{k+1} = q_k + Δt ∂_pH(q_k, p_k)``, ``p_k = p_{k-1} - Δt ∂_qH(q_k, p_k)`` for the feature-map kernel
    ``Γ(x, y) = φ(x)ᵀφ(y) + 1`` (``FeatureMapKernel``), then ``W_k = Σ_i p_{k,i} φ(q_{k,i})ᵀ``, ``b_k = Σ_i p_{k,i}``.

    Parameters
    ----------
    p0 : torch.Tensor
        (N, D) momentum of the data points at the first layer.
    X : torch.Tensor
        (N, D) lifted inputs.
    n_layers : int
        L.
    activation : str
        φ.
    nugget : float
        Kernel regularisation r (0 for a plain ResNet).
    tol, max_iter :
        Fixed point of the implicit momentum equation (``discrete_hamiltonian_shoot``).

    Raises
    ------
    FixedPointError
        The implicit momentum equation of a layer did not converge (a step Δt too large for this momentum).
    """
    if X.ndim != 2 or X.shape != p0.shape:
        raise ValueError(f"X and p0 must be (N, D) tensors of one shape; got {tuple(X.shape)} and {tuple(p0.shape)}")
    kernel = FeatureMapKernel(activation=activation, c=1.0, nugget=nugget)
    res = discrete_hamiltonian_shoot(kernel, X, p0, n_layers, tol=tol, max_iter=max_iter)
    W, b = least_action_weights(res.q, res.p, activation)
    return ShotWeights(W=W, b=b, q=res.q, p=res.p, residuals=res.residuals)
