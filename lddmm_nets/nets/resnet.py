"""ResNets as discretised flows of diffeomorphisms (THEORY §5, R1 and R2): the network itself.

``ResNetFlow`` is ``x_{k+1} = x_k + Δt (W_k φ(x_k) + b_k)``, ``Δt = 1/L``, trained with the scaled weight decay
``(ν Δt / 2)(‖W_k‖_F² + ‖b_k‖²)`` per layer: the explicit-Euler discretisation of a flow whose velocity fields live
in the RKHS of the feature-map kernel ``Γ(x, y) = (φ(x)ᵀφ(y) + 1) I`` (``lddmm_nets.FeatureMapKernel``). This room
holds the module, its flow (Euler steps at any depth, or scaling and squaring for shared weights) and its inverse by
fixed point. Training is in ``training``, the Hamiltonian identities of trained networks in ``identities``, the
per-layer checks in ``diagnostics``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lddmm_nets.optim import ConvergenceWarning

from ._kernels import WideGaussianKernel
from ._readout import RidgeReadout, ridge_loss, ridge_solve

__all__ = ["ResNetFlow", "InverseResult", "ACTIVATIONS", "HEADS", "LOSSES"]

#: name -> (φ, Lipschitz constant of φ)
ACTIVATIONS = {
    "tanh": (torch.tanh, 1.0),
    "relu": (torch.relu, 1.0),
    "sigmoid": (torch.sigmoid, 0.25),
    "softplus": (nn.functional.softplus, 1.0),
}
HEADS = ("linear", "ridge")
LOSSES = ("cross_entropy", "mse", "ridge")
_METHODS = ("euler", "scaling_squaring")


@dataclass
class InverseResult:
    """Inverse of the network's map by fixed point, block by block.

    Attributes
    ----------
    x : torch.Tensor
        (M, D) preimages.
    residual : float
        ``max |Φ(x) - y|`` after the iteration (forward map applied to the result).
    n_iter : int
        Largest number of fixed-point iterations over the blocks.
    converged : bool
        Every block's fixed point met its tolerance within ``max_iter`` iterations.
    """

    x: torch.Tensor
    residual: float
    n_iter: int
    converged: bool = True


def _check_positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer; got {v!r}")


class ResNetFlow(nn.Module):
    """Residual network ``x_{k+1} = x_k + Δt (W_k φ(x_k) + b_k)`` read as a flow over unit time.

    Parameters
    ----------
    in_features : int
        Input dimension d.
    n_outputs : int
        Outputs of the head (classes for cross-entropy).
    n_layers : int, default=10
        L; the step is ``Δt = 1/L``.
    activation : {"tanh", "relu", "sigmoid", "softplus"}, default="tanh"
    nu : float, default=1e-2
        Scale of the weight decay ``(ν Δt / 2)(‖W_k‖² + ‖b_k‖²)`` per layer (0: a plain ResNet).
    shared_weights : bool, default=False
        One (W, b) for all layers: the stationary flow ``exp(v)`` (R1).
    head : {"linear", "ridge"}, default="linear"
        Linear layer on ``x_L``, or the closed-form kernel ridge readout (Gaussian, width ``ridge_sigma``).
    augment : int, default=0
        Extra zero input dimensions (D = d + augment).
    dropout : float, default=0.0
        Dropout on φ(x_k) during training (the baseline that the nugget of R2 replaces).
    head_decay : float, default=1e-4
        Weight decay of the linear head.
    ridge_sigma, ridge_lam : float
        Gaussian width and ridge parameter of the ridge head.
    init_scale : float, default=0.1
        Standard deviation of the initial weights times sqrt(D).
    seed : int, default=0
        Seed of the initial weights (drawn on the CPU, so that a seed gives the same network on every device).
    dtype : torch.dtype, default=torch.float64
    device : str or torch.device, optional
        Where the parameters live (default: the CPU).
    """

    def __init__(self, in_features: int, n_outputs: int = 1, *, n_layers: int = 10, activation: str = "tanh",
                 nu: float = 1e-2, shared_weights: bool = False, head: str = "linear", augment: int = 0,
                 dropout: float = 0.0, head_decay: float = 1e-4, ridge_sigma: float = 1.0, ridge_lam: float = 1e-2,
                 init_scale: float = 0.1, seed: int = 0, dtype: torch.dtype = torch.float64, device=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("n_outputs", n_outputs), ("n_layers", n_layers)):
            _check_positive_int(name, v)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}; got {activation!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; got {head!r}")
        if not nu >= 0:
            raise ValueError(f"nu must be >= 0; got {nu!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        if isinstance(augment, bool) or not isinstance(augment, (int, np.integer)) or augment < 0:
            raise ValueError(f"augment must be a non-negative integer; got {augment!r}")
        self.in_features, self.n_outputs, self.n_layers = int(in_features), int(n_outputs), int(n_layers)
        self.activation, self.nu, self.shared_weights, self.head_type = activation, float(nu), bool(shared_weights), head
        self.augment, self.dropout, self.head_decay = int(augment), float(dropout), float(head_decay)
        self.ridge_sigma, self.ridge_lam = float(ridge_sigma), float(ridge_lam)
        D = self.in_features + self.augment
        self.dim = D
        g = torch.Generator().manual_seed(int(seed))
        n_w = 1 if shared_weights else n_layers
        self.weight = nn.Parameter((init_scale / math.sqrt(D)) * torch.randn(n_w, D, D, generator=g, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(n_w, D, dtype=dtype))
        self.head = nn.Linear(D, n_outputs, dtype=dtype) if head == "linear" else None
        if self.head is not None:
            with torch.no_grad():
                self.head.weight.copy_(torch.randn(n_outputs, D, generator=g, dtype=dtype) / math.sqrt(D))
                self.head.bias.zero_()
        self.readout: RidgeReadout | None = None
        if device is not None:
            self.to(device)

    # ------------------------------------------------------------------ the flow
    @property
    def dt(self) -> float:
        return 1.0 / self.n_layers

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return self.weight.device

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """The activation φ, elementwise."""
        return ACTIVATIONS[self.activation][0](x)

    def layer_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` of every layer: (L, D, D) and (L, D) (shared weights repeated)."""
        if self.shared_weights:
            return self.weight.expand(self.n_layers, -1, -1), self.bias.expand(self.n_layers, -1)
        return self.weight, self.bias

    def lift(self, x: torch.Tensor) -> torch.Tensor:
        """Append ``augment`` zero columns: (M, d) -> (M, D)."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (M, {self.in_features}); got {tuple(x.shape)}")
        if self.augment:
            x = torch.cat([x, x.new_zeros(x.shape[0], self.augment)], dim=1)
        return x

    def velocity(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``v_k(x) = W_k φ(x) + b_k`` at lifted points x (M, D) (dropout on φ(x) while training)."""
        W, b = self.layer_weights()
        h = self.phi(x)
        if self.training and self.dropout:
            h = nn.functional.dropout(h, self.dropout, training=True)
        return h @ W[k].T + b[k]

    def flow(self, x: torch.Tensor, *, n_steps: int | None = None, method: str = "euler",
             return_path: bool = False, squarings: int = 6, grid_size: int = 64) -> torch.Tensor:
        """Map lifted points x (M, D) through the network's flow.

        Parameters
        ----------
        x : torch.Tensor
            (M, D) lifted inputs.
        n_steps : int, optional
            Euler steps over [0, 1] (default L). With M ≠ L the velocity of layer ``floor(t L)`` is used at time t:
            a network that really is a flow gives nearly the same map.
        method : {"euler", "scaling_squaring"}
            "scaling_squaring" (shared weights, D ≤ 3) computes ``exp(v) = (exp(v / 2^n))^{∘ 2^n}`` on a grid
            around the points by ``squarings`` compositions, then interpolates it at x.
        return_path : bool
            Return every step (n_steps + 1, M, D) (Euler only).

        Returns
        -------
        torch.Tensor
            (M, D), or (n_steps + 1, M, D).
        """
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
        if method == "scaling_squaring":
            return _scaling_squaring(self, x, squarings=squarings, grid_size=grid_size)
        n = self.n_layers if n_steps is None else int(n_steps)
        if n < 1:
            raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}")
        path = [x]
        for j in range(n):
            k = min(int(j * self.n_layers / n), self.n_layers - 1) if n != self.n_layers else j
            x = x + (1.0 / n) * self.velocity(x, k)
            path.append(x)
        return torch.stack(path) if return_path else x

    def inverse(self, y: torch.Tensor, *, tol: float = 1e-12, max_iter: int = 200) -> InverseResult:
        """Invert the flow block by block by the fixed point ``x ← y - Δt v_k(x)`` (contracts when Δt Lip(v_k) < 1).

        Parameters
        ----------
        y : torch.Tensor
            (M, D) lifted outputs of the flow.
        tol : float
            Stop a block when the largest change of an iteration is below ``tol (1 + max |y|)``.
        max_iter : int
            Iterations per block.

        Returns
        -------
        InverseResult
            Preimages, forward residual ``max |Φ(x) - y|``, the largest iteration count over the blocks and whether
            every block converged; a block that does not converge warns with ``ConvergenceWarning`` (a block whose
            velocity has ``Δt Lip(v_k) ≥ 1`` need not be invertible, see ``layer_diagnostics``).
        """
        return _inverse(self, y, tol=tol, max_iter=max_iter)

    def features(self, x: torch.Tensor, **flow_options) -> torch.Tensor:
        """Warped features ``Φ_L(lift(x))``: (M, d) -> (M, D)."""
        return self.flow(self.lift(x), **flow_options)

    def forward(self, x: torch.Tensor, **flow_options) -> torch.Tensor:
        """Head outputs (M, n_outputs) (logits for cross-entropy)."""
        z = self.features(x, **flow_options)
        if self.head is not None:
            return self.head(z)
        if self.readout is None:
            raise ValueError("the ridge head is not fitted: call fit_ridge_head(X, Y) (or train_resnet) first")
        return self.readout(z, backend="dense")

    def fit_ridge_head(self, X: torch.Tensor, Y: torch.Tensor) -> RidgeReadout:
        """Fit the closed-form ridge readout on ``Φ_L(X)``; Y (N, k) real targets (one-hot for classes)."""
        with torch.no_grad():
            z = self.features(X)
            offset = Y.mean(0)
            k = WideGaussianKernel(sigma=self.ridge_sigma)
            alpha = ridge_solve(k, z, Y - offset, self.ridge_lam)
        self.readout = RidgeReadout(k, self.ridge_lam, z, alpha, offset)
        return self.readout

    # ------------------------------------------------------------------ objective
    def weight_decay(self) -> torch.Tensor:
        """``Σ_k (ν Δt / 2)(‖W_k‖_F² + ‖b_k‖²)`` (+ the head's decay)."""
        W, b = self.layer_weights()
        reg = 0.5 * self.nu * self.dt * ((W ** 2).sum() + (b ** 2).sum())
        if self.head is not None and self.head_decay:
            reg = reg + 0.5 * self.head_decay * (self.head.weight ** 2).sum()
        return reg

    def data_term(self, z: torch.Tensor, Y: torch.Tensor, loss: str) -> torch.Tensor:
        """Data term on final states z (N, D), averaged over the N points (THEORY §7)."""
        n = z.shape[0]
        if loss == "ridge":
            val, _ = ridge_loss(WideGaussianKernel(sigma=self.ridge_sigma), z, Y - Y.mean(0), self.ridge_lam,
                                backend="dense")
            return val / n
        if self.head is None:
            raise ValueError(f"loss={loss!r} needs head='linear'; use loss='ridge' with the ridge head")
        out = self.head(z)
        if loss == "cross_entropy":
            return nn.functional.cross_entropy(out, Y.argmax(1))
        return ((out - Y) ** 2).sum() / n

    def objective(self, X: torch.Tensor, Y: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
        """Training objective: data term + scaled weight decay."""
        return self.data_term(self.features(X), Y, loss) + self.weight_decay()


def _grid_interpolator(lo: torch.Tensor, hi: torch.Tensor, grid_size: int, D: int):
    """``(field on the grid (grid_size^D, D), points (M, D)) -> (M, D)`` by multilinear interpolation."""

    def interp(field: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # grid_sample wants (x, y, z) = (last axis, ..., first axis) normalised to [-1, 1].
        g = (2 * (y - lo) / (hi - lo) - 1).flip(-1)
        f = field.reshape(*([grid_size] * D), D).permute(D, *range(D))[None]
        g = g.reshape(1, *([1] * (D - 1)), -1, D) if D > 1 else g
        if D == 1:
            f = f[..., None]
            g = torch.stack([torch.zeros_like(y[:, 0]), g[:, 0]], -1).reshape(1, 1, -1, 2)
        out = nn.functional.grid_sample(f, g, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(D, -1).T

    return interp


def _scaling_squaring(model: ResNetFlow, x: torch.Tensor, *, squarings: int, grid_size: int) -> torch.Tensor:
    """``exp(v)`` of a shared-weight network by scaling and squaring on a grid (D ≤ 3), interpolated at x."""
    if not model.shared_weights:
        raise ValueError("method='scaling_squaring' needs shared_weights=True (a stationary velocity field)")
    D = model.dim
    if D > 3:
        raise ValueError(f"method='scaling_squaring' works on grids of dimension <= 3; got D={D}")
    with torch.no_grad():
        lo, hi = x.min(0).values, x.max(0).values
        pad = 0.25 * (hi - lo) + 1.0
        lo, hi = lo - pad, hi + pad
    axes = [torch.linspace(float(lo[i]), float(hi[i]), grid_size, dtype=x.dtype, device=x.device) for i in range(D)]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, D)
    u = model.velocity(pts, 0) / 2 ** squarings  # displacement of exp(v / 2^n) ≈ id + v / 2^n
    interp = _grid_interpolator(lo, hi, grid_size, D)
    for _ in range(squarings):
        u = u + interp(u, pts + u)
    return x + interp(u, x)


def _inverse(model: ResNetFlow, y: torch.Tensor, tol: float = 1e-12, max_iter: int = 200) -> InverseResult:
    worst, failed = 0, []
    with torch.no_grad():
        x = y
        for k in reversed(range(model.n_layers)):
            z = x
            delta = 0.0
            for it in range(1, max_iter + 1):
                z_new = x - model.dt * model.velocity(z, k)
                delta = float((z_new - z).abs().max()) if z.numel() else 0.0
                z = z_new
                if delta <= tol * (1 + float(x.abs().max())):
                    break
            else:
                failed.append((k, delta))
            worst = max(worst, it)
            x = z
        residual = float((model.flow(x) - y).abs().max()) if y.numel() else 0.0
    if failed:
        k, delta = failed[0]
        warnings.warn(f"ResNetFlow.inverse: the fixed point of {len(failed)} block(s) did not converge in "
                      f"max_iter={max_iter} iterations (block {k}: last change {delta:.3g}); forward residual "
                      f"{residual:.3g}. A block with Δt Lip(v_k) >= 1 need not be invertible "
                      f"(layer_diagnostics(model).block_invertible)", ConvergenceWarning, stacklevel=3)
    return InverseResult(x=x, residual=residual, n_iter=worst, converged=not failed)
