"""Mean-field limit of ResNet weights (THEORY §5 and §6; issue 5, part 4).

A ResNet trained to convergence with the scaled weight decay ``ν Δt / 2`` is a least-action point: every layer is
regenerated from the initial momenta ``p_0`` of its N training points by the discrete Hamiltonian system
(``lddmm_nets.nets.shoot_weights``), and ``W_k = Σ_i p_{k,i} φ(q_{k,i})ᵀ``, ``b_k = Σ_i p_{k,i}``. With
``p_i = P_0(x_i) / N`` for a smooth momentum density ``P_0`` and samples ``x_i ~ μ`` these are Monte Carlo
estimates of the mean-field weights ``W(t) = E_μ[P_t φ(φ_t(x))ᵀ]``, ``b(t) = E_μ[P_t]`` at ``t = k / L``, where
``(φ_t, P_t)`` solve the mean-field Hamiltonian system of THEORY §6 with the feature-map kernel
``φ(x)ᵀφ(y) + 1``. So ``W_N → W_∞`` at the Monte Carlo rate ``N^{-1/2}`` and ``W_L → W`` at the rate ``L^{-1}`` of
the (first-order) discrete system.

This room holds:

- particle measures: ``sample_particles`` (i.i.d. from a Gaussian μ, weights ``1/N``) and
  ``quadrature_particles`` (tensor Gauss–Hermite nodes and weights: a near-exact, noise-free stand-in for μ);
- ``WeightPath``: layer weights as functions of time, with ``as_weight_path`` and ``weight_distance``
  (the ``L²(0, 1)`` distance ``(∫ ‖W_a − W_b‖_F² + ‖b_a − b_b‖² dt)^{1/2}``, interpolating when depths differ);
- ``network_weights`` (a depth-L network regenerated from ``P_0`` on weighted particles) and
  ``mean_field_weights`` (the continuous-time weights of the particle system shot by the engine's ``shoot``);
- ``fit_flow_network``: a real ResNet trained (L-BFGS) to carry samples onto a target map, weighted data term;
- ``resnet_weight_convergence``: the study (tables of errors against N and L with fitted log-log slopes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from lddmm_nets import FeatureMapKernel, shoot
from lddmm_nets.checks import check_choice, check_int, check_points, check_positive

from .resnet import ResNetFlow, ShotWeights, shoot_weights

__all__ = [
    "WeightPath", "as_weight_path", "weight_distance", "sample_particles", "quadrature_particles",
    "network_weights", "mean_field_weights", "fit_flow_network", "resnet_weight_convergence",
]

_log = logging.getLogger(__name__)
_KINDS = ("layers", "samples")
_NETWORK_ACTIVATIONS = ("tanh", "relu", "sigmoid", "softplus")


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


# ---------------------------------------------------------------------------------------------------- particles
def sample_particles(n: int, dim: int, *, seed: int = 0, mean: float = 0.0, std: float = 1.0,
                     dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """N independent samples of the Gaussian ``μ = N(mean, std² I_dim)`` with equal weights ``1/N``.

    Returns
    -------
    points : torch.Tensor
        (n, dim), data units.
    weights : torch.Tensor
        (n,) all ``1/n``.
    """
    n, dim = check_int("n", n), check_int("dim", dim)
    std = check_positive("std", std)
    g = torch.Generator().manual_seed(int(seed))
    x = float(mean) + std * torch.randn(n, dim, generator=g, dtype=dtype)
    return x, torch.full((n,), 1.0 / n, dtype=dtype)


def quadrature_particles(n_per_axis: int, dim: int, *, mean: float = 0.0, std: float = 1.0,
                         dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor Gauss–Hermite rule for ``μ = N(mean, std² I_dim)``: ``E_μ[f] ≈ Σ_i w_i f(y_i)``.

    Exact for polynomials of degree ``< 2 n_per_axis`` in each variable; spectrally accurate for smooth integrands,
    so the particle system on these nodes is a noise-free stand-in for the mean-field limit.

    Returns
    -------
    points : torch.Tensor
        (n_per_axis**dim, dim) nodes, data units.
    weights : torch.Tensor
        (n_per_axis**dim,) positive weights summing to 1.
    """
    n, dim = check_int("n_per_axis", n_per_axis), check_int("dim", dim)
    std = check_positive("std", std)
    x1, w1 = np.polynomial.hermite_e.hermegauss(n)  # weight exp(-x²/2)
    w1 = w1 / w1.sum()
    grids = np.meshgrid(*([x1] * dim), indexing="ij")
    pts = float(mean) + std * np.stack([g.ravel() for g in grids], axis=1)
    wts = np.ones(pts.shape[0])
    for g in np.meshgrid(*([w1] * dim), indexing="ij"):
        wts = wts * g.ravel()
    return torch.tensor(pts, dtype=dtype), torch.tensor(wts, dtype=dtype)


def _initial_momenta(P0, particles: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``p_i = w_i P_0(y_i)`` (with ``w_i = 1/N`` by default), checked."""
    particles = check_points("particles", particles)
    N, D = particles.shape
    if weights is None:
        weights = torch.full((N,), 1.0 / N, dtype=particles.dtype, device=particles.device)
    if not isinstance(weights, torch.Tensor) or weights.shape != (N,):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights: expected a ({N},) tensor (one weight per particle), got {shape}")
    if not bool((weights >= 0).all()) or not bool(torch.isfinite(weights).all()):
        raise ValueError("weights: expected finite non-negative weights, got negative or non-finite entries")
    values = P0(particles) if callable(P0) else P0
    if not isinstance(values, torch.Tensor) or values.shape != (N, D):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"P0: expected a ({N}, {D}) tensor of momenta at the particles "
                         f"(or a callable returning one), got {shape}")
    values = check_points("P0", values.to(particles.dtype))
    return particles, weights.to(particles.dtype)[:, None] * values


def network_weights(P0, particles: torch.Tensor, weights: torch.Tensor | None = None, *, n_layers: int,
                    activation: str = "tanh") -> WeightPath:
    """Weights of the depth-L ResNet whose training points ``y_i`` carry the initial momenta ``p_i = w_i P_0(y_i)``.

    This is the network a training to convergence with the scaled weight decay produces when its initial momentum is
    ``p_0`` ("trained parameters are unique up to the initial momentum", THEORY §5): the layers are regenerated by
    the discrete Hamiltonian system (``lddmm_nets.nets.shoot_weights``, kernel ``φ(x)ᵀφ(y) + 1``, no nugget).

    Parameters
    ----------
    P0 : callable or torch.Tensor
        Momentum density: ``P0(y)`` maps (N, D) points to (N, D) momenta, or the (N, D) values at the particles.
    particles : torch.Tensor
        (N, D) training inputs ``y_i`` (data units).
    weights : torch.Tensor, optional
        (N,) non-negative weights ``w_i`` (default ``1/N``; quadrature weights for a noise-free limit).
    n_layers : int
        L; layer k sits at time ``k / L``.
    activation : {"tanh", "relu", "sigmoid", "softplus"}

    Returns
    -------
    WeightPath
        kind "layers": ``W`` (L, D, D), ``b`` (L, D), with the states ``q`` (L+1, N, D) and momenta ``p`` (L, N, D).
    """
    check_choice("activation", activation, _NETWORK_ACTIVATIONS)
    n_layers = check_int("n_layers", n_layers)
    y, p0 = _initial_momenta(P0, particles, weights)
    shot = shoot_weights(p0, y, n_layers=n_layers, activation=activation)
    path = as_weight_path(shot)
    path.q, path.p = shot.q, shot.p
    return path


def mean_field_weights(P0, particles: torch.Tensor, weights: torch.Tensor | None = None, *, n_steps: int = 64,
                       activation: str = "tanh", integrator: str = "rk4") -> WeightPath:
    """Mean-field weights ``W(t) = E_μ[P_t φ(φ_t(x))ᵀ]``, ``b(t) = E_μ[P_t]`` from a particle system.

    The particles ``y_i`` (a sample or a quadrature rule of μ) with momenta ``p_i = w_i P_0(y_i)`` are shot in
    continuous time by the engine's ``lddmm_nets.shoot`` with the feature-map kernel ``φ(x)ᵀφ(y) + 1``; then
    ``p_i(t) = w_i P_t(y_i)`` and the weights are the quadratures ``W(t_k) = Σ_i p_i(t_k) φ(q_i(t_k))ᵀ``,
    ``b(t_k) = Σ_i p_i(t_k)``. At ``t = 0`` this is exactly ``Σ_i w_i P_0(y_i) φ(y_i)ᵀ`` (= ``E_μ[P_0 φ(x)ᵀ]`` for
    the rule's integrand class).

    Parameters
    ----------
    P0 : callable or torch.Tensor
        Momentum density: ``P0(y)`` maps (N, D) points to (N, D) momenta, or the (N, D) values at the particles.
    particles : torch.Tensor
        (N, D) points ``y_i`` (data units).
    weights : torch.Tensor, optional
        (N,) non-negative weights (default ``1/N``: Monte Carlo).
    n_steps : int, default=64
        Steps of the integrator over [0, 1].
    activation : {"tanh", "relu", "sigmoid", "softplus", "identity"}
    integrator : str, default="rk4"
        Any name of ``lddmm_nets.integrators``.

    Returns
    -------
    WeightPath
        kind "samples": ``times`` (n_steps+1,), ``W`` (n_steps+1, D, D), ``b`` (n_steps+1, D), and the particle
        trajectory ``q``, ``p`` (n_steps+1, N, D).
    """
    n_steps = check_int("n_steps", n_steps)
    kernel = FeatureMapKernel(activation=activation, c=1.0)
    y, p0 = _initial_momenta(P0, particles, weights)
    with torch.no_grad():
        traj = shoot(kernel, y, p0, n_steps=n_steps, integrator=integrator, backend="dense")
        W = torch.einsum("kni,knj->kij", traj.p, kernel.features(traj.q))
        b = traj.p.sum(1)
    return WeightPath(times=traj.times, W=W, b=b, kind="samples", q=traj.q, p=traj.p)


# ---------------------------------------------------------------------------------------------------- training
def fit_flow_network(X: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor | None = None, *, n_layers: int,
                     nu: float, activation: str = "tanh", init=None, max_iter: int = 2000,
                     tol: float = 1e-10) -> ResNetFlow:
    """Train a ResNetFlow to carry X onto Y: ``min Σ_i w_i |Φ_L(x_i) − y_i|² + Σ_k (ν Δt/2)(‖W_k‖² + ‖b_k‖²)``.

    A registration problem with the ResNet kernel (THEORY §5 with the identity readout): its minimiser is a
    least-action point, so the trained layers are the discrete Hamiltonian flow of an initial momentum
    ``p_i = -(2 w_i / ν) (Φ_L(x_i) − y_i)`` transported back, and with ``w_i = 1/N`` they have a mean-field limit as
    N grows. Quadrature weights (``quadrature_particles``) give that limit without sampling noise.

    Parameters
    ----------
    X, Y : torch.Tensor
        (N, D) inputs and targets (data units).
    weights : torch.Tensor, optional
        (N,) non-negative weights of the data term (default ``1/N``).
    n_layers : int
        L.
    nu : float
        Weight-decay scale ν > 0.
    activation : {"tanh", "relu", "sigmoid", "softplus"}
    init : WeightPath, ResNetFlow, ShotWeights or (W, b), optional
        Starting weights (interpolated in time when the depth differs); default: the model's seeded initialisation.
        Warm starts pick the basin of the previous solution in a continuation over N or L.
    max_iter, tol :
        L-BFGS iterations and gradient tolerance.

    Returns
    -------
    ResNetFlow
        The trained network (D inputs, no augmentation; its linear head is unused).
    """
    X = check_points("X", X)
    Y = check_points("Y", Y, dim=X.shape[1])
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y: expected {X.shape[0]} rows (as X), got shape {tuple(Y.shape)}")
    check_choice("activation", activation, _NETWORK_ACTIVATIONS)
    n_layers = check_int("n_layers", n_layers)
    nu = check_positive("nu", nu)
    N, D = X.shape
    if weights is None:
        weights = torch.full((N,), 1.0 / N, dtype=X.dtype)
    if not isinstance(weights, torch.Tensor) or weights.shape != (N,) or not bool((weights >= 0).all()):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights: expected a ({N},) tensor of non-negative weights, got {shape}")
    model = ResNetFlow(D, D, n_layers=n_layers, nu=nu, activation=activation, head_decay=0.0, dtype=X.dtype)
    model.head.requires_grad_(False)
    if init is not None:
        path = as_weight_path(init)
        if path.dim != D:
            raise ValueError(f"init: expected width D={D}, got D={path.dim}")
        W0, b0 = path.at(torch.arange(n_layers, dtype=X.dtype) / n_layers)
        with torch.no_grad():
            model.weight.copy_(W0)
            model.bias.copy_(b0)
    params = [model.weight, model.bias]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
                            tolerance_change=1e-16, history_size=50, line_search_fn="strong_wolfe")
    w = weights.to(X.dtype)[:, None]

    def closure():
        opt.zero_grad()
        f = (w * (model.flow(X) - Y) ** 2).sum() + model.weight_decay()
        f.backward()
        return f

    opt.step(closure)
    model.zero_grad()
    closure()  # gradient at the final weights
    gmax = max(float(p.grad.abs().max()) for p in params)
    model.zero_grad()
    if not gmax <= max(100 * tol, 1e-6):
        _log.warning("fit_flow_network: stopped with max |gradient| = %.3g (tol %.1g); the weights are not a "
                     "least-action point to that accuracy", gmax, tol)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------------- the study
_ROW_KEYS = ("study", "variant", "axis", "N", "L", "quantity", "error", "error_std", "n_reps")


def _momentum_density(x: torch.Tensor) -> torch.Tensor:
    """The study's ``P_0`` on (N, 2) points: smooth, with both odd and even parts (so W(0) ≠ 0 and b(0) ≠ 0)."""
    return torch.stack([0.8 + torch.sin(x[:, 1]), x[:, 0] - 0.5 * torch.cos(x[:, 0] + x[:, 1])], 1)


def _target_map(x: torch.Tensor) -> torch.Tensor:
    """The study's fixed target map ``ψ`` on (N, 2) points for the trained networks (a smooth displacement)."""
    u = torch.stack([torch.sin(x[:, 1]) + 0.3, 0.5 * torch.tanh(x[:, 0]) - 0.3 * torch.cos(x[:, 0] + x[:, 1])], 1)
    return x + 0.6 * u


def _row(study, variant, axis, N, L, quantity, errors) -> dict:
    e = np.asarray(errors, float).reshape(-1)
    return dict(zip(_ROW_KEYS, (study, variant, axis, int(N), int(L), quantity, float(np.sqrt((e ** 2).mean())),
                                float(e.std()), int(e.size))))


def resnet_weight_convergence(*, quick: bool = False, seed: int = 0) -> tuple[list[dict], dict]:
    """Convergence of ResNet weights in the number of samples N and the depth L, and to the mean-field weights.

    Setting: inputs in D = 2 from ``μ = N(0, I_2)``, activation tanh, kernel ``φ(x)ᵀφ(y) + 1``. Errors are the
    ``weight_distance`` (``L²(0, 1)`` in time of ``‖ΔW‖_F² + ‖Δb‖²``) divided by the norm of the noise-free
    limit path, so they are relative. Sampled studies report the root mean square over independent replicates
    (nested samples: the N-sample set is the first N points of the 2N-sample set).

    Two variants:

    - "shot" (fully controlled): a fixed smooth momentum density ``P_0``; the network of N samples and depth L is
      regenerated from ``p_i = P_0(x_i) / N`` by the discrete Hamiltonian system (``network_weights``), which
      is what training to convergence with the scaled weight decay yields for that initial momentum. The
      mean-field weights come from a tensor Gauss–Hermite rule for μ shot by the engine's ``shoot`` (RK4,
      256 steps, ``mean_field_weights``). Studies "samples" (``‖W_N − W_2N‖`` at L = 16, against N: expected
      slope −1/2), "depth" (``‖W_L − W_2L‖`` on the quadrature particles, against L: −1 for the first-order
      system) and "mean_field" (``‖W_{N,L} − W_MF‖`` with ``L = 4 √(N/64)`` so that the time-step bias shrinks
      with the Monte Carlo error, against N: −1/2).
    - "trained": real networks trained by L-BFGS (``fit_flow_network``, ν = 0.1) to carry the samples onto a
      fixed smooth target map ``ψ``, with warm starts along N (from ``W_∞``, so every fit stays in the limit's
      basin of this non-convex objective) and along L. Studies "trained_samples"
      (``‖W_N − W_2N‖`` at L = 8, against N), "trained_mean_field" (``‖W_N − W_∞‖`` with ``W_∞`` trained on the
      Gauss–Hermite rule at the same depth, against N) and "trained_depth" (``‖W_L − W_2L‖`` on the quadrature
      rule, against L).

    Parameters
    ----------
    quick : bool, default=False
        Fewer sizes and replicates (under 20 s on one core; the full study under 3 min).
    seed : int, default=0
        Seed of the samples (replicate r of a study draws with ``seed * 1000 + offset + r``).

    Returns
    -------
    rows : list of dict
        One row per point of a curve, keys ``study`` ("samples", "depth", "mean_field", "trained_samples",
        "trained_depth", "trained_mean_field"), ``variant`` ("shot" | "trained"), ``axis`` ("N" | "L": the
        abscissa of the study's curve), ``N`` (samples; quadrature nodes in the depth studies; the smaller of a
        pair), ``L`` (depth; the smaller of a pair), ``quantity`` (what is measured), ``error`` (relative, RMS over
        replicates), ``error_std`` (standard deviation over replicates, 0 for one), ``n_reps``.
    slopes : dict
        Fitted log-log slope of ``error`` against N (samples, mean-field studies) or L (depth studies), keyed by
        study.
    """
    from lddmm_nets.meanfield import fit_loglog_slope

    if not isinstance(quick, bool):
        raise ValueError(f"quick: expected a bool, got {quick!r}")
    seed = check_int("seed", seed, minimum=0)
    dim, act = 2, "tanh"
    cfg = dict(  # sizes: quick | full
        n_samples=6 if quick else 7, reps=12 if quick else 32, L_samples=16,
        n_depths=5 if quick else 6, n_joint=4 if quick else 5, quad=24 if quick else 32, quad_mf=32 if quick else 40,
        mf_steps=256, t_sizes=5 if quick else 6, t_reps=8 if quick else 16, t_L=8, t_depths=4 if quick else 5,
        t_quad=20 if quick else 24, nu=0.1,
    )
    rows: list[dict] = []
    slopes: dict = {}

    def add_curve(study, variant, quantity, xs_key, entries):
        for N, L, errs in entries:
            rows.append(_row(study, variant, xs_key, N, L, quantity, errs))
        xs = [e[0] if xs_key == "N" else e[1] for e in entries]
        slopes[study] = fit_loglog_slope(xs, [rows[-len(entries) + i]["error"] for i in range(len(entries))])
        _log.info("%s: slope %.3f", study, slopes[study])

    # --- noise-free references: quadrature particles, continuous-time mean field
    yq, wq = quadrature_particles(cfg["quad_mf"], dim)
    mf = mean_field_weights(_momentum_density, yq, wq, n_steps=cfg["mf_steps"], activation=act)
    scale = mf.norm()

    # --- "samples": ‖W_N − W_2N‖ at fixed depth
    Ns = [64 * 2 ** j for j in range(cfg["n_samples"])]
    errs = np.zeros((cfg["reps"], len(Ns) - 1))
    for r in range(cfg["reps"]):
        X, _ = sample_particles(Ns[-1], dim, seed=seed * 1000 + r)
        nets = [network_weights(_momentum_density, X[:N], n_layers=cfg["L_samples"], activation=act) for N in Ns]
        errs[r] = [weight_distance(a, b) / scale for a, b in zip(nets[:-1], nets[1:])]
    add_curve("samples", "shot", "|W_N - W_2N|", "N",
              [(N, cfg["L_samples"], errs[:, j]) for j, N in enumerate(Ns[:-1])])

    # --- "depth": ‖W_L − W_2L‖ on the quadrature rule (no sampling noise)
    yd, wd = quadrature_particles(cfg["quad"], dim)
    Ls = [4 * 2 ** j for j in range(cfg["n_depths"])]
    nets = [network_weights(_momentum_density, yd, wd, n_layers=L, activation=act) for L in Ls]
    add_curve("depth", "shot", "|W_L - W_2L|", "L",
              [(yd.shape[0], L, [weight_distance(a, b) / scale]) for L, a, b in zip(Ls[:-1], nets[:-1], nets[1:])])

    # --- "mean_field": ‖W_{N,L} − W_MF‖ with N = 64·4^j and L = 4·2^j refined together
    pairs = [(64 * 4 ** j, 4 * 2 ** j) for j in range(cfg["n_joint"])]
    errs = np.zeros((cfg["reps"], len(pairs)))
    for r in range(cfg["reps"]):
        X, _ = sample_particles(pairs[-1][0], dim, seed=seed * 1000 + 500 + r)
        errs[r] = [weight_distance(network_weights(_momentum_density, X[:N], n_layers=L, activation=act), mf) / scale
                   for N, L in pairs]
    add_curve("mean_field", "shot", "|W_N,L - W_MF|", "N", [(N, L, errs[:, j]) for j, (N, L) in enumerate(pairs)])

    # --- trained networks: registration of the samples onto ψ (least-action points by construction)
    nu, tL = cfg["nu"], cfg["t_L"]
    yt, wt = quadrature_particles(cfg["t_quad"], dim)
    limit = fit_flow_network(yt, _target_map(yt), wt, n_layers=tL, nu=nu, activation=act)
    t_scale = as_weight_path(limit).norm()
    Ns = [64 * 2 ** j for j in range(cfg["t_sizes"])]
    cau = np.zeros((cfg["t_reps"], len(Ns) - 1))
    lim = np.zeros((cfg["t_reps"], len(Ns)))
    for r in range(cfg["t_reps"]):
        X, _ = sample_particles(Ns[-1], dim, seed=seed * 1000 + 900 + r)
        Y = _target_map(X)
        prev = limit
        models = []
        for N in Ns:
            prev = fit_flow_network(X[:N], Y[:N], n_layers=tL, nu=nu, activation=act, init=prev)
            models.append(prev)
        cau[r] = [weight_distance(a, b) / t_scale for a, b in zip(models[:-1], models[1:])]
        lim[r] = [weight_distance(m, limit) / t_scale for m in models]
    add_curve("trained_samples", "trained", "|W_N - W_2N|", "N", [(N, tL, cau[:, j]) for j, N in enumerate(Ns[:-1])])
    add_curve("trained_mean_field", "trained", "|W_N - W_inf|", "N", [(N, tL, lim[:, j]) for j, N in enumerate(Ns)])

    Ls = [4 * 2 ** j for j in range(cfg["t_depths"])]
    models, prev = [], None
    for L in Ls:
        prev = fit_flow_network(yt, _target_map(yt), wt, n_layers=L, nu=nu, activation=act, init=prev)
        models.append(prev)
    add_curve("trained_depth", "trained", "|W_L - W_2L|", "L",
              [(yt.shape[0], L, [weight_distance(a, b) / t_scale])
               for L, a, b in zip(Ls[:-1], models[:-1], models[1:])])
    return rows, slopes
