"""Network weights as functions of time (THEORY §5-6): a depth-L ResNet's layers are a velocity path sampled at
``t = k/L``, so networks of different depths, and the continuous mean-field weights, can be compared in the
``L²(0, 1)`` norm of their velocity fields (``‖v‖_V² = ‖W‖_F² + ‖b‖²`` in the feature-map RKHS)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lddmm_nets.checks import check_choice

from .identities import ShotWeights
from .resnet import ResNetFlow

__all__ = ["WeightPath", "as_weight_path", "weight_distance"]

_KINDS = ("layers", "samples")


# ---------------------------------------------------------------------------------------------------- weight paths
@dataclass
class WeightPath:
    """Weights ``(W(t), b(t))`` of a flow of velocity fields ``v_t(x) = W(t) φ(x) + b(t)`` at a set of times.

    Attributes
    ----------
    times : torch.Tensor
        (K,) increasing times in [0, 1] (unit time; ``Δt = 1/L`` for a network).
    W : torch.Tensor
        (K, D, D) weight matrices at ``times``.
    b : torch.Tensor
        (K, D) biases at ``times``.
    kind : {"layers", "samples"}
        "layers": layer k of a depth-L network acts on ``[k/L, (k+1)/L)`` (``times = k/L``, rectangle rule);
        "samples": point values of a continuous path on ``[0, 1]`` (trapezoid rule).
    q, p : torch.Tensor or None
        (K', N, D) particle positions and momenta that produced the weights, when known.
    """

    times: torch.Tensor
    W: torch.Tensor
    b: torch.Tensor
    kind: str = "layers"
    q: torch.Tensor | None = None
    p: torch.Tensor | None = None

    def __post_init__(self):
        check_choice("kind", self.kind, _KINDS)
        K = self.times.shape[0] if self.times.ndim == 1 else -1
        if self.times.ndim != 1 or K < 1:
            raise ValueError(f"times: expected a (K,) tensor with K >= 1, got shape {tuple(self.times.shape)}")
        if self.W.ndim != 3 or self.W.shape[0] != K or self.W.shape[1] != self.W.shape[2]:
            raise ValueError(f"W: expected shape ({K}, D, D), got {tuple(self.W.shape)}")
        if self.b.shape != self.W.shape[:2]:
            raise ValueError(f"b: expected shape {tuple(self.W.shape[:2])}, got {tuple(self.b.shape)}")
        if K > 1 and not bool((self.times[1:] > self.times[:-1]).all()):
            raise ValueError("times: expected strictly increasing times, got a non-increasing sequence")

    @property
    def dim(self) -> int:
        """D, the width of the network."""
        return self.W.shape[1]

    def quadrature_weights(self) -> torch.Tensor:
        """(K,) weights ``w_k`` of the time quadrature ``∫_0^1 f dt ≈ Σ_k w_k f(t_k)`` on this path's nodes."""
        t = self.times
        if self.kind == "layers":
            return torch.full_like(t, 1.0 / t.shape[0])
        if t.shape[0] == 1:
            return torch.ones_like(t)
        h = t[1:] - t[:-1]
        w = torch.zeros_like(t)
        w[:-1] += h / 2
        w[1:] += h / 2
        return w

    def at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights at times t (M,), linearly interpolated between nodes and held constant outside them.

        Returns
        -------
        W : torch.Tensor
            (M, D, D).
        b : torch.Tensor
            (M, D).
        """
        t = torch.as_tensor(t, dtype=self.times.dtype, device=self.times.device).reshape(-1)
        T = self.times
        if T.shape[0] == 1:
            return self.W.expand(t.shape[0], -1, -1), self.b.expand(t.shape[0], -1)
        t = t.clamp(T[0], T[-1])
        j = torch.searchsorted(T, t, right=True).clamp(1, T.shape[0] - 1)
        lam = ((t - T[j - 1]) / (T[j] - T[j - 1]))
        W = (1 - lam)[:, None, None] * self.W[j - 1] + lam[:, None, None] * self.W[j]
        b = (1 - lam)[:, None] * self.b[j - 1] + lam[:, None] * self.b[j]
        return W, b

    def norm(self) -> float:
        """``(∫_0^1 ‖W(t)‖_F² + ‖b(t)‖² dt)^{1/2}``: the root of twice the kinetic energy of the flow."""
        w = self.quadrature_weights()
        sq = (self.W ** 2).sum((1, 2)) + (self.b ** 2).sum(1)
        return float(torch.sqrt((w * sq).sum()))


def as_weight_path(model) -> WeightPath:
    """The weights of a network as a ``WeightPath``.

    Parameters
    ----------
    model : WeightPath, ResNetFlow, ShotWeights or tuple (W, b)
        A network of depth L (``W`` (L, D, D), ``b`` (L, D); layer k at time ``k/L``) or a path.

    Returns
    -------
    WeightPath
    """
    if isinstance(model, WeightPath):
        return model
    if isinstance(model, ResNetFlow):
        W, b = model.layer_weights()
        W, b = W.detach(), b.detach()
    elif isinstance(model, ShotWeights):
        W, b = model.W, model.b
    elif isinstance(model, (tuple, list)) and len(model) == 2 and all(isinstance(t, torch.Tensor) for t in model):
        W, b = model
    else:
        raise ValueError(f"model: expected a WeightPath, ResNetFlow, ShotWeights or (W, b) tensors, "
                         f"got {type(model).__name__}")
    if W.ndim != 3:
        raise ValueError(f"W: expected shape (L, D, D), got {tuple(W.shape)}")
    L = W.shape[0]
    times = torch.arange(L, dtype=W.dtype, device=W.device) / L
    return WeightPath(times=times, W=W, b=b, kind="layers")


def weight_distance(model_a, model_b, *, relative: bool = False) -> float:
    """``L²(0, 1)`` distance between the weights of two networks (or paths) as functions of time.

    ``d(a, b) = (∫_0^1 ‖W_a(t) − W_b(t)‖_F² + ‖b_a(t) − b_b(t)‖² dt)^{1/2}``: the norm of the difference of the
    velocity fields in the feature-map RKHS (``‖v‖_V² = ‖W‖_F² + ‖b‖²``, THEORY §5), integrated over unit time. The
    integral is taken on the nodes of the coarser path (a layered network before a sampled path; with two layered
    networks the shallower one, whose times ``k/L`` are nodes of the deeper one when the depths are nested); the other
    path is linearly interpolated there.

    Parameters
    ----------
    model_a, model_b : WeightPath, ResNetFlow, ShotWeights or tuple (W, b)
        Networks of the same width D (depths may differ).
    relative : bool, default=False
        Divide by ``‖b-path‖`` (``WeightPath.norm`` of ``model_b``, the reference).

    Returns
    -------
    float
        Same units as the weights (1 / time).
    """
    a, b = as_weight_path(model_a), as_weight_path(model_b)
    if a.dim != b.dim:
        raise ValueError(f"model_b: expected width D={a.dim} (as model_a), got D={b.dim}")

    def rank(path):  # the coarser path supplies the quadrature nodes
        return (path.kind != "layers", path.times.shape[0])

    ref, other = (a, b) if rank(a) <= rank(b) else (b, a)
    W_o, b_o = other.at(ref.times.to(other.times.dtype))
    w = ref.quadrature_weights()
    sq = ((ref.W - W_o) ** 2).sum((1, 2)) + ((ref.b - b_o) ** 2).sum(1)
    d = float(torch.sqrt((w * sq).sum()))
    if relative:
        nb = b.norm()
        if nb == 0:
            raise ValueError("model_b: expected non-zero weights for relative=True, got an all-zero path")
        d /= nb
    return d
