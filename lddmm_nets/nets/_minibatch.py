"""Minibatch training of ResNetFlows (Adam or SGD over a ``DataLoader``) for training sets of any size.

Each step minimises the data term averaged over a shuffled batch plus the full scaled weight decay, an unbiased
estimate of the full objective's gradient; the step size follows a cosine decay to zero over the run (or stays
constant), so that the iterates settle near a stationary point of the full objective, where the least-action
identity ``W_k = Σ_i p_{k,i} φ(q_{k,i})ᵀ`` holds up to ``∇_{W_k} J / (ν Δt)`` (THEORY §5). Batches are moved to the
model's device as they are drawn, so X and Y may stay on the CPU.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .resnet import ResNetFlow

__all__ = ["SCHEDULES", "STOCHASTIC_OPTIMIZERS", "minibatch_train", "full_gradient_max"]

SCHEDULES = ("cosine", "constant")
STOCHASTIC_OPTIMIZERS = ("adam", "sgd")


def _optimizer(name: str, params, lr: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _loader(X: torch.Tensor, Y: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(int(seed))
    return DataLoader(TensorDataset(X, Y), batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None)


def minibatch_train(model: ResNetFlow, X: torch.Tensor, Y: torch.Tensor, *, loss: str, optimizer: str,
                    batch_size: int, epochs: int, lr: float, schedule: str, seed: int, callback) -> dict:
    """Run ``epochs`` passes of ``optimizer`` over shuffled batches; returns the fields of a ``TrainResult``.

    ``callback(epoch, mean batch objective of the epoch)`` after every epoch.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(optimizer, params, lr)
    loader = _loader(X, Y, batch_size, shuffle=True, seed=seed)
    total = epochs * len(loader)
    device = model.device
    curve, epoch_seconds, step = [], [], 0
    t_start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        running, seen = 0.0, 0
        for xb, yb in loader:
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            f = model.objective(xb, yb, loss)
            f.backward()
            opt.step()
            running += float(f.detach()) * xb.shape[0]
            seen += xb.shape[0]
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds.append(time.perf_counter() - t0)
        curve.append(running / seen)
        if callback is not None:
            callback(epoch + 1, curve[-1])
    model.zero_grad(set_to_none=True)
    return dict(loss_curve=np.asarray(curve), n_iter=step, n_eval=step, converged=False, stop_reason="max_iter",
                seconds=time.perf_counter() - t_start, epoch_seconds=np.asarray(epoch_seconds))


def full_gradient_max(model: ResNetFlow, X: torch.Tensor, Y: torch.Tensor, loss: str, *,
                      chunk: int = 65536) -> float:
    """Largest entry of the full objective's gradient (dropout off), accumulated over chunks of the data."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    n = X.shape[0]
    grads = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for xb, yb in _loader(X, Y, chunk, shuffle=False):
            xb, yb = xb.to(model.device), yb.to(model.device)
            data = model.data_term(model.features(xb), yb, loss) * (xb.shape[0] / n)
            for g, d in zip(grads, torch.autograd.grad(data, params, allow_unused=True)):
                if d is not None:
                    g += d
        for g, d in zip(grads, torch.autograd.grad(model.weight_decay(), params, allow_unused=True)):
            if d is not None:
                g += d
    model.train(was_training)
    return max(float(g.abs().max()) for g in grads)
