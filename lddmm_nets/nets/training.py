"""Training of ResNetFlows: full-batch L-BFGS (the engine's ``lddmm_nets.optim.minimize``) or Adam on a classification
or regression data term (``train_resnet``), and the registration of samples onto a target map
(``fit_flow_network``), whose minimiser is a least-action point.

L-BFGS runs on the network's trainable parameters flattened into one vector: the objective evaluates the module with
that vector's pieces in place of its parameters (``torch.func.functional_call``), so autograd gives the gradient and
the module is written only once, at the end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lddmm_nets.checks import check_choice, check_int, check_points, check_positive
from lddmm_nets.optim import OptimResult, minimize

from ._minibatch import SCHEDULES, STOCHASTIC_OPTIMIZERS, full_gradient_max, minibatch_train
from .resnet import ACTIVATIONS, LOSSES, ResNetFlow
from .weights import as_weight_path

__all__ = ["TrainResult", "train_resnet", "FlowFit", "fit_flow_network", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("lbfgs", "adam", "sgd")


@dataclass
class TrainResult:
    """Outcome of ``train_resnet`` (and of ``fit_flow_network``'s optimisation).

    Attributes
    ----------
    loss_curve : ndarray
        Objective at the start, then after every accepted L-BFGS iteration (full-batch Adam/SGD: every step;
        minibatch: the mean batch objective of every epoch).
    n_iter : int
        Optimiser iterations (Adam/SGD: steps).
    grad_norm : float
        Largest gradient entry of the objective at the end (dropout off).
    converged : bool
        L-BFGS met its stopping rule (``stop_reason`` "gradient" or "objective"); Adam and SGD, which run the
        requested number of steps or epochs, report False (judge them by ``grad_norm``).
    stop_reason : str
        A key of ``lddmm_nets.optim.STOP_REASONS`` (Adam, SGD: "max_iter").
    n_eval : int
        Objective evaluations (each with its gradient; minibatch: batches).
    seconds : float
        Wall time of the optimisation.
    epoch_seconds : ndarray
        Wall time of every epoch (minibatch training; empty otherwise).
    """

    loss_curve: np.ndarray
    n_iter: int
    grad_norm: float
    converged: bool = False
    stop_reason: str = ""
    n_eval: int = 0
    seconds: float = 0.0
    epoch_seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))


class _Closure(nn.Module):
    """Wraps ``fn(model)`` as a module so that ``functional_call`` can evaluate it at other parameter values."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self):
        return self.fn(self.model)


def minimize_parameters(model: nn.Module, fn, *, name: str, **options) -> OptimResult:
    """Minimise ``fn(model)`` over the trainable parameters of ``model`` with ``lddmm_nets.optim.minimize``.

    Parameters
    ----------
    model : torch.nn.Module
        Its parameters with ``requires_grad`` are the variables; they are set to the minimiser at the end.
    fn : callable
        ``fn(model) -> 0-d tensor``.
    name : str
        What a ``ConvergenceWarning`` calls the caller.
    **options
        Passed to ``minimize`` (``max_iter``, ``gtol``, ``ftol``, ``history_size``, ``max_eval``, ``callback``,
        ``line_search``...).

    Returns
    -------
    OptimResult
        ``x`` is the flattened parameter vector.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model: expected trainable parameters, got none with requires_grad")
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    wrapper = _Closure(model, fn)

    def objective(x):
        pieces = torch.split(x, sizes)
        params = {f"model.{n}": piece.view(s) for (n, _), piece, s in zip(named, pieces, shapes)}
        return torch.func.functional_call(wrapper, params, ())

    x0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    res = minimize(objective, x0, method="lbfgs", name=name, **options)
    with torch.no_grad():
        for (_, p), piece in zip(named, torch.split(res.x, sizes)):
            p.copy_(piece.view(p.shape))
    return res


def _final_gradient(model: ResNetFlow, fn) -> float:
    """Largest gradient entry of ``fn(model)`` over the trainable parameters, dropout off."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        grads = torch.autograd.grad(fn(model), params, allow_unused=True)
    model.train(was_training)
    return max((float(g.abs().max()) for g in grads if g is not None), default=0.0)


def _full_batch_stochastic(model: ResNetFlow, fn, *, optimizer: str, max_iter: int, lr: float,
                           callback) -> TrainResult:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
    curve = []
    t0 = time.perf_counter()
    for it in range(max_iter):
        opt.zero_grad()
        f = fn(model)
        f.backward()
        opt.step()
        curve.append(float(f.detach()))
        if callback is not None:
            callback(it + 1, curve[-1])
    model.zero_grad()
    return TrainResult(loss_curve=np.asarray(curve), n_iter=max_iter, grad_norm=math.nan, converged=False,
                       stop_reason="max_iter", n_eval=max_iter, seconds=time.perf_counter() - t0)


def _check_training(X, Y, *, loss, optimizer, batch_size, epochs, schedule):
    check_choice("loss", loss, LOSSES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("schedule", schedule, SCHEDULES)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows; got {X.shape[0]} and {Y.shape[0]}")
    if batch_size is not None:
        check_int("batch_size", batch_size)
        check_int("epochs", epochs)
        if optimizer not in STOCHASTIC_OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {list(STOCHASTIC_OPTIMIZERS)} with batch_size (minibatch "
                             f"training), got {optimizer!r}")
        if loss == "ridge":
            raise ValueError("loss: expected 'cross_entropy' or 'mse' with batch_size (the ridge data term does not "
                             "split over batches), got 'ridge'")


def train_resnet(model: ResNetFlow, X: torch.Tensor, Y: torch.Tensor, *, loss: str = "cross_entropy",
                 optimizer: str = "lbfgs", max_iter: int = 500, tol: float = 1e-9, lr: float = 1e-2,
                 batch_size: int | None = None, epochs: int = 10, schedule: str = "cosine", seed: int = 0,
                 callback=None) -> TrainResult:
    """Train a ``ResNetFlow`` on X (N, d) and targets Y (N, k): full batch, or minibatches for large N.

    Parameters
    ----------
    model : ResNetFlow
        Trained in place on its device (X and Y are moved there; in minibatch mode batch by batch).
    X, Y : torch.Tensor
        (N, d) inputs and (N, k) targets (one-hot for classes).
    loss : {"cross_entropy", "mse", "ridge"}
        "ridge" is the closed-form kernel ridge data term ``ℓ(x_L)/N`` (the head is then fitted at the end;
        full batch only).
    optimizer : {"lbfgs", "adam", "sgd"}
        L-BFGS (``lddmm_nets.optim.minimize``, strong Wolfe line search, 50 correction pairs, at most
        ``2 max_iter`` evaluations) to converge tightly (full batch only); Adam, or SGD with momentum 0.9, for a
        stochastic objective (dropout) or minibatches.
    max_iter, tol, lr :
        Full batch: iterations (L-BFGS) or steps (Adam, SGD); gradient tolerance (L-BFGS: stop when the largest
        gradient entry is below tol); step size (Adam, SGD). The default tol, 1e-9, is near the limit of float64 for
        objectives of order 1e-2 to 1: below about ``sqrt(eps · objective · curvature)`` no step can decrease the
        objective any more and L-BFGS stops with "line_search" (and a ``ConvergenceWarning``).
    batch_size : int, optional
        Minibatch training (Adam or SGD over a shuffled ``DataLoader``) with batches of this size, for ``epochs``
        passes over the data; None (default): full batch.
    epochs : int, default=10
        Passes over the data (minibatch training).
    schedule : {"cosine", "constant"}, default="cosine"
        Step size of minibatch training: cosine decay from ``lr`` to 0 over the run, or constant.
    seed : int, default=0
        Seed of the minibatch shuffling.
    callback : callable, optional
        ``callback(iteration, loss)`` after every L-BFGS iteration or full-batch step, or ``callback(epoch, mean
        batch loss)`` after every epoch of minibatch training (progress bars are the caller's business).

    Returns
    -------
    TrainResult
        With ``grad_norm`` the largest gradient entry of the full objective at the end (accumulated over chunks in
        minibatch mode) and ``epoch_seconds`` the time per epoch. An L-BFGS run that stops without meeting its rule
        also warns with ``lddmm_nets.optim.ConvergenceWarning``.
    """
    _check_training(X, Y, loss=loss, optimizer=optimizer, batch_size=batch_size, epochs=epochs, schedule=schedule)
    if batch_size is not None:
        out = TrainResult(grad_norm=math.nan, **minibatch_train(
            model, X, Y, loss=loss, optimizer=optimizer, batch_size=batch_size, epochs=epochs, lr=lr,
            schedule=schedule, seed=seed, callback=callback))
        model.eval()
        out.grad_norm = full_gradient_max(model, X, Y, loss)
        return out
    X, Y = X.to(model.device), Y.to(model.device)
    fn = lambda m: m.objective(X, Y, loss)  # noqa: E731
    model.train()
    if optimizer == "lbfgs":
        step = None if callback is None else (lambda it, f, aux: callback(it, f))
        # torch's L-BFGS settings of the first version: strong Wolfe, history 50, 2 max_iter evaluations, and an
        # objective rule at the round-off level (stops only when the objective no longer changes)
        res = minimize_parameters(model, fn, name="train_resnet", max_iter=max_iter, max_eval=2 * max_iter,
                                  gtol=tol, ftol=1e-16, history_size=50, line_search="wolfe", callback=step)
        out = TrainResult(loss_curve=np.asarray([res.initial] + res.history), n_iter=res.n_iter, grad_norm=math.nan,
                          converged=res.converged, stop_reason=res.stop_reason, n_eval=res.n_eval,
                          seconds=res.seconds)
    else:
        out = _full_batch_stochastic(model, fn, optimizer=optimizer, max_iter=max_iter, lr=lr, callback=callback)
    model.eval()
    out.grad_norm = _final_gradient(model, fn)
    if loss == "ridge" or model.head is None:
        model.fit_ridge_head(X, Y)
    return out


# ---------------------------------------------------------------------------------------------------- registration
@dataclass
class FlowFit:
    """Outcome of ``fit_flow_network``.

    Attributes
    ----------
    model : ResNetFlow
        The trained network (D inputs, no augmentation; its linear head is unused and frozen).
    result : TrainResult
        The optimiser's report (``converged``, ``stop_reason``, ``grad_norm``...).
    """

    model: ResNetFlow
    result: TrainResult = field(repr=False)


def _check_weights(weights, N: int, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.full((N,), 1.0 / N, dtype=like.dtype, device=like.device)
    if not isinstance(weights, torch.Tensor) or weights.shape != (N,) or not bool((weights >= 0).all()):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights: expected a ({N},) tensor of non-negative weights, got {shape}")
    return weights.to(dtype=like.dtype, device=like.device)


def fit_flow_network(X: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor | None = None, *, n_layers: int,
                     nu: float, activation: str = "tanh", init=None, max_iter: int = 2000,
                     tol: float = 1e-9) -> FlowFit:
    """Train a ResNetFlow to carry X onto Y: ``min Σ_i w_i |Φ_L(x_i) − y_i|² + Σ_k (ν Δt/2)(‖W_k‖² + ‖b_k‖²)``.

    A registration problem with the ResNet kernel (THEORY §5 with the identity readout): its minimiser is a
    least-action point, so the trained layers are the discrete Hamiltonian flow of an initial momentum
    ``p_i = -(2 w_i / ν) (Φ_L(x_i) − y_i)`` transported back, and with ``w_i = 1/N`` they have a mean-field limit as
    N grows. Quadrature weights (``lddmm_nets.meanfield.sample(..., method="gauss_hermite")``) give that limit
    without sampling noise.

    Parameters
    ----------
    X, Y : torch.Tensor
        (N, D) inputs and targets (data units); the network lives on their device and dtype.
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
        L-BFGS iterations and gradient tolerance (largest entry; see ``train_resnet`` for the choice of 1e-9).

    Returns
    -------
    FlowFit
        The network and the optimiser's report; a run that stops without meeting ``tol`` (or the objective rule at
        round-off level) warns with ``lddmm_nets.optim.ConvergenceWarning``.
    """
    X = check_points("X", X)
    Y = check_points("Y", Y, dim=X.shape[1])
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y: expected {X.shape[0]} rows (as X), got shape {tuple(Y.shape)}")
    check_choice("activation", activation, tuple(ACTIVATIONS))
    n_layers = check_int("n_layers", n_layers)
    nu = check_positive("nu", nu)
    N, D = X.shape
    w = _check_weights(weights, N, X)[:, None]
    model = ResNetFlow(D, D, n_layers=n_layers, nu=nu, activation=activation, head_decay=0.0, dtype=X.dtype,
                       device=X.device)
    model.head.requires_grad_(False)
    if init is not None:
        path = as_weight_path(init)
        if path.dim != D:
            raise ValueError(f"init: expected width D={D}, got D={path.dim}")
        W0, b0 = path.at(torch.arange(n_layers, dtype=X.dtype, device=X.device) / n_layers)
        with torch.no_grad():
            model.weight.copy_(W0)
            model.bias.copy_(b0)
    fn = lambda m: (w * (m.flow(X) - Y) ** 2).sum() + m.weight_decay()  # noqa: E731
    res = minimize_parameters(model, fn, name="fit_flow_network", max_iter=max_iter, max_eval=2 * max_iter,
                              gtol=tol, ftol=1e-16, history_size=50, line_search="wolfe")
    model.eval()
    result = TrainResult(loss_curve=np.asarray([res.initial] + res.history), n_iter=res.n_iter,
                         grad_norm=res.grad_max, converged=res.converged, stop_reason=res.stop_reason,
                         n_eval=res.n_eval, seconds=res.seconds)
    return FlowFit(model=model, result=result)
