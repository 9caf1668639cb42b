"""ResNets as discretised flows of diffeomorphisms (THEORY §5, R1 and R2).

``ResNetFlow`` is ``x_{k+1} = x_k + Δt (W_k φ(x_k) + b_k)``, ``Δt = 1/L``, trained with the scaled weight decay
``(ν Δt / 2)(‖W_k‖_F² + ‖b_k‖²)`` per layer: the explicit-Euler discretisation of a flow whose velocity fields live
in the RKHS of the feature-map kernel ``Γ(x, y) = (φ(x)ᵀφ(y) + 1) I`` (``lddmm_nets.FeatureMapKernel``). The
functions around it check what the theory says of a trained network: the least-action identity
``W_k = Σ_i p_{k,i} φ(q_{k,i})ᵀ`` with momenta from backpropagation (``backprop_momenta``), the regeneration of
every layer from the initial momentum (``shoot_weights``), the near conservation of ``‖W_k‖² + ‖b_k‖² = 2H``
(``layer_diagnostics``), invertibility of the blocks (``ResNetFlow.inverse``), the Jacobian of the learned
map (``min_jacobian_determinant``) and the train-with-L / evaluate-with-M test (``depth_consistency``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lddmm_nets import FeatureMapKernel

from ._readout import RidgeReadout, ridge_loss, ridge_solve
from ._warping import discrete_hamiltonian_shoot

__all__ = [
    "ResNetFlow", "TrainResult", "train_resnet", "Momenta", "backprop_momenta", "least_action_weights",
    "ShotWeights", "shoot_weights", "LayerDiagnostics", "layer_diagnostics", "InverseResult",
    "min_jacobian_determinant", "depth_consistency",
]

_ACTIVATIONS = {
    # name: (φ, Lipschitz constant of φ)
    "tanh": (torch.tanh, 1.0),
    "relu": (torch.relu, 1.0),
    "sigmoid": (torch.sigmoid, 0.25),
    "softplus": (nn.functional.softplus, 1.0),
}
_HEADS = ("linear", "ridge")
_LOSSES = ("cross_entropy", "mse", "ridge")
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
    """

    x: torch.Tensor
    residual: float
    n_iter: int


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
        Seed of the initial weights.
    dtype : torch.dtype, default=torch.float64
    """

    def __init__(self, in_features: int, n_outputs: int = 1, *, n_layers: int = 10, activation: str = "tanh",
                 nu: float = 1e-2, shared_weights: bool = False, head: str = "linear", augment: int = 0,
                 dropout: float = 0.0, head_decay: float = 1e-4, ridge_sigma: float = 1.0, ridge_lam: float = 1e-2,
                 init_scale: float = 0.1, seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        for name, v in (("in_features", in_features), ("n_outputs", n_outputs), ("n_layers", n_layers)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}; got {activation!r}")
        if head not in _HEADS:
            raise ValueError(f"head must be one of {_HEADS}; got {head!r}")
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

    # ------------------------------------------------------------------ the flow
    @property
    def dt(self) -> float:
        return 1.0 / self.n_layers

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """The activation φ, elementwise."""
        return _ACTIVATIONS[self.activation][0](x)

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
        """``v_k(x) = W_k φ(x) + b_k`` at lifted points x (M, D)."""
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

        Returns
        -------
        InverseResult
            Preimages, forward residual ``max |Φ(x) - y|`` and the largest iteration count over the blocks.
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
        from ._kernels import WideGaussianKernel

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
            from ._kernels import WideGaussianKernel

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

    for _ in range(squarings):
        u = u + interp(u, pts + u)
    return x + interp(u, x)


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """Outcome of ``train_resnet``.

    Attributes
    ----------
    loss_curve : ndarray
        Objective at every evaluation.
    n_iter : int
        Optimiser iterations.
    grad_norm : float
        Largest gradient entry at the end.
    """

    loss_curve: np.ndarray
    n_iter: int
    grad_norm: float


def train_resnet(model: ResNetFlow, X: torch.Tensor, Y: torch.Tensor, *, loss: str = "cross_entropy",
                 optimizer: str = "lbfgs", max_iter: int = 500, tol: float = 1e-10, lr: float = 1e-2,
                 callback=None) -> TrainResult:
    """Full-batch training of a ``ResNetFlow`` on X (N, d) and targets Y (N, k).

    Parameters
    ----------
    loss : {"cross_entropy", "mse", "ridge"}
        "ridge" is the closed-form kernel ridge data term ``ℓ(x_L)/N`` (the head is then fitted at the end).
    optimizer : {"lbfgs", "adam"}
        L-BFGS (strong Wolfe) to converge tightly; Adam for dropout (stochastic objective).
    max_iter, tol, lr :
        Iterations, gradient tolerance (L-BFGS), step size (Adam).
    callback : callable, optional
        ``callback(iteration, loss)`` after every evaluation (progress is the caller's business).
    """
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}; got {loss!r}")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be one of ('lbfgs', 'adam'); got {optimizer!r}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows; got {X.shape[0]} and {Y.shape[0]}")
    params = [p for p in model.parameters() if p.requires_grad]
    curve = []
    model.train()
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
                                tolerance_change=1e-16, history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            f = model.objective(X, Y, loss)
            f.backward()
            curve.append(float(f.detach()))
            if callback is not None:
                callback(len(curve), curve[-1])
            return f

        opt.step(closure)
        n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    else:
        opt = torch.optim.Adam(params, lr=lr)
        for it in range(max_iter):
            opt.zero_grad()
            f = model.objective(X, Y, loss)
            f.backward()
            opt.step()
            curve.append(float(f.detach()))
            if callback is not None:
                callback(it + 1, curve[-1])
        n_iter = max_iter
    model.eval()
    model.zero_grad()
    f = model.objective(X, Y, loss)
    f.backward()
    gmax = max(float(p.grad.abs().max()) for p in params if p.grad is not None)
    model.zero_grad()
    if loss == "ridge" or model.head is None:
        model.fit_ridge_head(X, Y)
    return TrainResult(loss_curve=np.asarray(curve), n_iter=n_iter, grad_norm=gmax)


# ---------------------------------------------------------------------------------------------------- momenta
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
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}; got {activation!r}")
    L = p.shape[0]
    phi = _ACTIVATIONS[activation][0](q[:L])
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
    """
    if X.ndim != 2 or X.shape != p0.shape:
        raise ValueError(f"X and p0 must be (N, D) tensors of one shape; got {tuple(X.shape)} and {tuple(p0.shape)}")
    kernel = FeatureMapKernel(activation=activation, c=1.0, nugget=nugget)
    res = discrete_hamiltonian_shoot(kernel, X, p0, n_layers, tol=tol, max_iter=max_iter)
    W, b = least_action_weights(res.q, res.p, activation)
    return ShotWeights(W=W, b=b, q=res.q, p=res.p, residuals=res.residuals)


# ---------------------------------------------------------------------------------------------------- diagnostics
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
        lip = (_ACTIVATIONS[model.activation][1] * torch.linalg.matrix_norm(W, ord=2)).cpu().numpy()
    H = None
    if X is not None and Y is not None and model.nu > 0:
        m = backprop_momenta(model, X, Y, loss)
        Wp, bp = least_action_weights(m.q, m.p, model.activation)
        H = (0.5 * ((Wp ** 2).sum((1, 2)) + (bp ** 2).sum(1))).cpu().numpy()
    spread = float((norms.max() - norms.min()) / max(norms.mean(), np.finfo(float).tiny))
    return LayerDiagnostics(weight_norms=norms, spread=spread, hamiltonian=H, lipschitz=lip,
                            block_invertible=model.dt * lip < 1)


def _inverse(model: ResNetFlow, y: torch.Tensor, tol: float = 1e-12, max_iter: int = 200) -> InverseResult:
    worst = 0
    with torch.no_grad():
        x = y
        for k in reversed(range(model.n_layers)):
            z = x
            for it in range(1, max_iter + 1):
                z_new = x - model.dt * model.velocity(z, k)
                delta = float((z_new - z).abs().max()) if z.numel() else 0.0
                z = z_new
                if delta <= tol * (1 + float(x.abs().max())):
                    break
            worst = max(worst, it)
            x = z
        residual = float((model.flow(x) - y).abs().max()) if y.numel() else 0.0
    return InverseResult(x=x, residual=residual, n_iter=worst)


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
