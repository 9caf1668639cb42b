"""Peer runner: the LDDMM surface registration of the KeOps tutorial, reimplemented (run with the main venv).

The method of pykeops' tutorial ``pykeops/tutorials/surface_registration/plot_LDDMM_Surface.py`` (KeOps by B.
Charlier, J. Feydy, J. Glaunès et al., "Kernel operations on the GPU, with autodiff, without memory overflows",
JMLR 22(74), 2021; https://www.kernel-operations.io, "Surface registration" tutorial), written anew here, the
same mathematics and settings:

- momenta ``p0`` (N, 3) on the source vertices ``q0``, from zero;
- deformation kernel ``K(x, y) = exp(-|x-y|^2 / sigma_d^2)``, Hamiltonian ``H(p, q) = 1/2 <p, K(q, q) p>``,
  equations of motion ``(dp/dt, dq/dt) = (-dH/dq, dH/dp)`` by autograd (graph kept for the outer gradient);
- shooting over t in [0, 1] with ``nt = 10`` steps of Ralston's second-order Runge-Kutta scheme (stages at 0
  and 2/3, weights 1/4 and 3/4); the warped source is ``q(1)``;
- data term: the unoriented varifold distance between the triangulations, with face centres ``c``, unit
  normals ``n`` and areas ``a``: ``sum_ij a_i a_j exp(-|c_i-c_j|^2 / sigma_v^2) (n_i . n_j)^2`` over
  source-source and target-target pairs minus twice the source-target one;
- loss ``gamma * H(p0, q0) + varifold(q(1))`` with ``gamma = 0`` (the tutorial's default: no explicit
  regularisation, the geodesic parametrisation and the few iterations regularise);
- optimiser ``torch.optim.LBFGS(max_iter=10, max_eval=10)``, no line search (torch's default: unit steps),
  ``steps = 10`` calls of ``step`` (so at most 100 iterations), float32.

``--backend keops`` sums the kernels with pykeops LazyTensors (as the tutorial), ``--backend dense`` with plain
torch (N, M) matrices. Points are divided by the kernel width before a kernel sum, so KeOps compiles one
formula per kernel whatever the widths; the formulas are compiled (or loaded from ~/.cache/keops) on a tiny
mesh before the timing starts.

The budget is checked at every evaluation of the loss: past it, the run stops and returns the best evaluated
warped source (lowest loss), status ``budget``. Usage::

    /work/main/.venv/bin/python scripts/shape_peers/run_keops_tutorial.py --source SRC.npz --target TGT.npz \\
        --out RESULT.npz --sigma-deformation 10 --sigma-varifold 5 --budget 240 --backend keops
"""

from __future__ import annotations

import functools
import sys
import time

import numpy as np
import torch

import peer_io


class BudgetExhausted(Exception):
    """Raised inside the loss when the wall-time budget is spent."""


def _options(parser):
    count = peer_io.positive_int
    parser.add_argument("--gamma", type=float, default=0.0, help="weight of H(p0, q0) in the loss (tutorial: 0)")
    parser.add_argument("--nt", type=count, default=10, help="Ralston steps of the shooting (tutorial: 10)")
    parser.add_argument("--steps", type=count, default=10, help="calls of LBFGS.step (tutorial: 10)")
    parser.add_argument("--max-iter", type=count, default=10, help="LBFGS max_iter per step (tutorial: 10)")
    parser.add_argument("--max-eval", type=count, default=10, help="LBFGS max_eval per step (tutorial: 10)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="(tutorial: float32)")


def kernel_sums(backend: str):
    """``(gauss, gauss_lin)``: ``gauss(x, y, b)_i = sum_j exp(-|x_i-y_j|^2) b_j`` and
    ``gauss_lin(x, y, u, v, b)_i = sum_j exp(-|x_i-y_j|^2) (u_i . v_j)^2 b_j``, points already divided by the
    kernel width; KeOps LazyTensor reductions or dense torch matrices."""
    if backend == "keops":
        from pykeops.torch import LazyTensor

        def gauss(x, y, b):
            k = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
            return (k * LazyTensor(b[None, :, :])).sum(dim=1)

        def gauss_lin(x, y, u, v, b):
            k = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
            k = k * (LazyTensor(u[:, None, :]) | LazyTensor(v[None, :, :])) ** 2
            return (k * LazyTensor(b[None, :, :])).sum(dim=1)

        return gauss, gauss_lin

    def sqdist(x, y):
        return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)

    def gauss(x, y, b):
        return torch.exp(-sqdist(x, y)) @ b

    def gauss_lin(x, y, u, v, b):
        return (torch.exp(-sqdist(x, y)) * (u @ v.T) ** 2) @ b

    return gauss, gauss_lin


def hamiltonian(gauss, sigma):
    """``H(p, q) = 1/2 <p, K(q, q) p>`` with ``K(x, y) = exp(-|x-y|^2 / sigma^2)``."""
    def H(p, q):
        qs = q / sigma
        return 0.5 * (p * gauss(qs, qs, p)).sum()

    return H


def shoot(H, p0, q0, nt):
    """``(p(1), q(1))`` of Hamilton's equations from ``(p0, q0)``, ``nt`` Ralston (RK2) steps, autograd graph kept."""
    def velocity(p, q):
        dp, dq = torch.autograd.grad(H(p, q), (p, q), create_graph=True)
        return -dq, dp

    p, q, dt = p0, q0, 1.0 / nt
    for _ in range(nt):
        kp1, kq1 = velocity(p, q)
        kp2, kq2 = velocity(p + (2 * dt / 3) * kp1, q + (2 * dt / 3) * kq1)
        p, q = p + dt * (0.25 * kp1 + 0.75 * kp2), q + dt * (0.25 * kq1 + 0.75 * kq2)
    return p, q


def varifold_loss(gauss_lin, sigma, source_faces, target, target_faces):
    """``loss(vertices)``: unoriented varifold distance of the source triangulation at ``vertices`` to the target."""
    def centres_normals_areas(v, f):
        a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        n = 0.5 * torch.linalg.cross(b - a, c - a)
        area = n.norm(dim=1, keepdim=True)
        return (a + b + c) / (3 * sigma), n / area, area

    ct, nt, at = centres_normals_areas(target, target_faces)
    target_term = (at * gauss_lin(ct, ct, nt, nt, at)).sum()

    def loss(vertices):
        cs, ns, as_ = centres_normals_areas(vertices, source_faces)
        return (target_term + (as_ * gauss_lin(cs, cs, ns, ns, as_)).sum()
                - 2 * (as_ * gauss_lin(cs, ct, ns, nt, at)).sum())

    return loss


def build_loss(args, source, source_faces, target, target_faces):
    """``loss(p0) -> (loss, q(1))`` of the tutorial on tensors already of the run's dtype."""
    gauss, gauss_lin = kernel_sums(args.backend)
    H = hamiltonian(gauss, args.sigma_deformation)
    data = varifold_loss(gauss_lin, args.sigma_varifold, source_faces, target, target_faces)
    q0 = source.detach().requires_grad_(True)  # a leaf with grad, so autograd can differentiate H in q

    def loss(p0):
        _, q1 = shoot(H, p0, q0, args.nt)
        value = data(q1)
        if args.gamma:
            value = value + args.gamma * H(p0, q0)
        return value, q1

    return loss


def optimise(loss, p0, args, deadline, best):
    """The tutorial's loop: ``args.steps`` calls of LBFGS.step; ``best`` keeps the lowest loss's warped source."""
    optimizer = torch.optim.LBFGS([p0], max_iter=args.max_iter, max_eval=args.max_eval)
    state = optimizer.state[p0]
    evaluated = {"iterations": 0, "evaluations": 0}

    def closure():
        if best and time.perf_counter() > deadline:  # the first evaluation always runs: a result to return
            raise BudgetExhausted
        optimizer.zero_grad()
        value, q1 = loss(p0)
        if not best or value.item() < best["loss"]:
            best.update(loss=value.item(), warped=q1.detach().cpu().numpy().astype(np.float64))
        value.backward()
        # LBFGS counts an iteration before evaluating its point: count those whose point was evaluated
        evaluated.update(iterations=state.get("n_iter", 0), evaluations=evaluated["evaluations"] + 1)
        best["iterations"] = evaluated["iterations"]
        return value

    try:
        for _ in range(args.steps):
            optimizer.step(closure)
    except BudgetExhausted:
        return "budget", evaluated["iterations"], evaluated["evaluations"]
    return "ok", int(state.get("n_iter", 0)), evaluated["evaluations"]


def _warm_up(args, dtype):
    """Compile the KeOps formulas of the forward and backward passes on a tetrahedron (cached afterwards)."""
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=dtype)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    value, _ = build_loss(args, v, f, 1.1 * v, f)(torch.full_like(v, 0.1).requires_grad_(True))
    value.backward()


def register(args, source, source_faces, target, target_faces, best, on_expire):
    """Run the registration; returns the result fields of the contract."""
    dtype = getattr(torch, args.dtype)
    if args.backend == "keops":
        _warm_up(args, dtype)
    src = torch.as_tensor(source, dtype=dtype)
    tgt = torch.as_tensor(target, dtype=dtype)
    sf, tf = torch.as_tensor(source_faces), torch.as_tensor(target_faces)
    mark = peer_io.memory_mark()
    t0, c0 = time.perf_counter(), time.process_time()
    with peer_io.Watchdog(t0 + args.budget + peer_io.slack(args.budget), on_expire):
        loss = build_loss(args, src, sf, tgt, tf)
        p0 = torch.zeros_like(src, requires_grad=True)
        status, iterations, evaluations = optimise(loss, p0, args, t0 + args.budget, best)
        if status == "ok":  # the tutorial's result: the geodesic of the final momenta
            with torch.enable_grad():
                value, q1 = loss(p0)
            warped, final_loss = q1.detach().cpu().numpy().astype(np.float64), value.item()
        else:
            warped, final_loss = best["warped"], best["loss"]
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if not np.isfinite(warped).all():  # unit L-BFGS steps can overshoot: say so rather than return NaNs as "ok"
        status = f"diverged: non-finite warped vertices after {iterations} iterations"
    return dict(warped=warped, seconds=seconds, iterations=iterations, peak_mb=peer_io.memory_peak_mb(mark),
                status=status, evaluations=evaluations, loss=final_loss, cpu_seconds=cpu_seconds)


def main(argv=None) -> int:
    args = peer_io.parse_args(__doc__.split("\n")[0], argv, _options)
    return peer_io.run(args, functools.partial(register, args), f"keops tutorial ({args.backend})")


if __name__ == "__main__":
    sys.exit(main())
