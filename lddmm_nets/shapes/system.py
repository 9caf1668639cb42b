"""The landmark Hamiltonian system with one kernel matrix per stage: the fast dense path of shape registration.

``HamiltonianSystem`` evaluates ``∂H/∂p = K p`` and the closed form of ``∂H/∂q`` as two kernel sums. For a radial
kernel ``k(x, y) = g(|x − y|²/σ²)`` on the dense backend both come from the same matrix: with ``D2_ij =
|q_i − q_j|²/σ²``, ``K = g(D2)`` and ``A = g'(D2) ∘ (p pᵀ)``,

    ``∂H/∂p = K p + r p``,   ``∂H/∂q_i = (2/σ) Σ_j A_ij (q_i − q_j)/σ = (2/σ) (q̃_i Σ_j A_ij − (A q̃)_i)``

(``q̃ = q/σ``, ``r`` the nugget; for the Gaussian ``g' = −g/2`` reuses ``K``), and ``D2`` is one matrix product on
centred points (``centred_sqdist``, in the points' dtype: a kernel of the deformation suffers no cancellation). Ambient points use the same form for ``K(x, q) p``. This
halves the passes over ``(N, N)`` memory and makes a shooting step about twice as fast as the two separate sums
(measured in ``scripts/bench_shapes.py --profile``). The tests check it against ``HamiltonianSystem`` with
``gradient="autograd"`` (the reference) in float64.

Gaussian components go further: each stage and each ambient velocity is one autograd ``Function`` whose backward
pass is written out (``_GaussianStage``, ``_GaussianVelocity``; derivation in their docstrings). Autograd through the
dozen elementwise operations of a stage kept as many ``(N, N)`` matrices and ran a pass over each; the written
backward keeps two (``K`` and ``K ∘ p pᵀ``) and makes forward and backward of a stage 2.5x faster (642 control points,
one thread, float32: 7.8 → 3.0 ms). Its vector-Jacobian products are checked against autograd of the generic path in
float64; they are not themselves differentiable (the registrations need first derivatives only).

Sizes: the matrices are dense, so ``FusedHamiltonianSystem`` is meant for up to ``DENSE_MAX_PAIRS`` control-point
pairs. Ambient points (a mesh's vertices against the control points) under Gaussian components on the CPU go through
the compiled pass of ``lddmm_nets.shapes._native`` at any size (no matrix kept; 10,242 vertices against 1,196
control points, forward and backward, float32, one thread: 87 → 27 ms); otherwise they are summed densely up to
``DENSE_MAX_AMBIENT_PAIRS`` pairs and through the kernel's own ``matvec`` beyond (KeOps, O(N) memory).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import backends as B
from ..hamiltonian import HamiltonianSystem
from ..kernels import GaussianKernel, RadialKernel, SumKernel
from ._fused import centred, gaussian_matrix
from ._native import GaussianVelocity as CompiledGaussianVelocity, available as compiled_available

__all__ = ["FusedHamiltonianSystem", "DENSE_MAX_PAIRS", "DENSE_MAX_AMBIENT_PAIRS", "centred_sqdist"]

#: largest ``N²`` of the control points' own products evaluated as dense matrices (16 MiB per float32 matrix; a
#: Gaussian stage keeps two for its backward pass, other kernels a few): 2,048 control points
DENSE_MAX_PAIRS = 2**22
#: largest ``M · N`` of ambient points against control points evaluated densely (64 MiB per float32 matrix, one
#: kept per step for a Gaussian's backward pass, a few for other kernels): with a bounded number of control points
#: it grows linearly with the vertices
DENSE_MAX_AMBIENT_PAIRS = 2**24


def centred_sqdist(x: torch.Tensor, y: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """Dense ``|x_i − y_j|²`` by one matrix product, in float64, after centring both sets on their joint mean.

    ``|x|² + |y|² − 2 x·y`` loses ``eps · |x|²`` to cancellation; in float32 with points tens of kernel widths from
    their centre (a cortex at a 3 mm data width) that is a 1e-5 relative error of every kernel value, which biases a
    data term ``⟨S,S⟩ − 2⟨S,T⟩ + ⟨T,T⟩`` by 1e-5 of ``⟨S,S⟩``: far more than the distance itself near convergence.
    Computed in float64 and returned in the inputs' dtype, the result is as accurate as the sum of squared
    differences, at the cost of a ``(M, N)`` float64 matrix product with an inner dimension of ``d``.

    ``exact=False`` stays in the inputs' dtype (twice as fast in float32): enough for a deformation's kernel, whose
    values enter no such difference of large sums.

    Returns
    -------
    (M, N) tensor, dtype of ``x``
    """
    xc, yc = centred(x.double(), y.double()) if exact else centred(x, y)
    return B.matmul_sqdist(xc, yc).to(x.dtype)


def _with_sums(M: torch.Tensor, x: torch.Tensor):
    """``(M x, M 1)`` in one pass over ``M`` (a product with ``x`` and a column of ones)."""
    out = M @ torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
    return out[:, :-1], out[:, -1:]


class _GaussianStage(torch.autograd.Function):
    """``(K p, s (x ∘ B1 − B x))`` for one unit-weight Gaussian: ``x = s q``, ``K = exp(−D2/2)``, ``B = K ∘ p pᵀ``.

    Backward, with upstream ``a`` (of ``dq``) and ``b`` (of ``dp``): ``L = Σ_ij K_ij C_ij`` with
    ``C_ij = a_i·p_j + s P_ij W_ij``, ``P = p pᵀ``, ``W_ij = b_i·(x_i − x_j)``. Then
    ``∂L/∂p = K a + s (K∘W + (K∘W)ᵀ) p``; with ``M = K ∘ C`` and ``∂K_ij/∂x_i = −K_ij (x_i − x_j)``,
    ``∂L/∂x = −(x ∘ (M + Mᵀ)1 − (M + Mᵀ) x) + s (b ∘ B1 − B b)``, and ``∂L/∂q = s ∂L/∂x``.
    """

    @staticmethod
    def forward(ctx, q, p, s):
        x = q * s
        K = gaussian_matrix(x, x)
        Bm = K * (p @ p.T)
        ctx.save_for_backward(x, p, K, Bm)
        ctx.s = s
        Bx, B1 = _with_sums(Bm, x)
        return K @ p, s * (x * B1 - Bx)

    @staticmethod
    @once_differentiable
    def backward(ctx, a, b):
        x, p, K, Bm = ctx.saved_tensors
        s = ctx.s
        KW = torch.addmm((b * x).sum(1, keepdim=True), b, x.T, alpha=-1.0).mul_(K)
        gp = K @ a + s * (KW @ p + KW.T @ p)
        M = (K * (a @ p.T)).add_(KW.mul_(p @ p.T), alpha=s)
        (Mx, M1), (Mtx, Mt1) = _with_sums(M, x), _with_sums(M.T, x)
        Bb, B1 = _with_sums(Bm, b)
        return s * ((Mx + Mtx) - x * (M1 + Mt1) + s * (b * B1 - Bb)), gp, None


class _GaussianVelocity(torch.autograd.Function):
    """``K(x, q) p`` for one unit-width Gaussian on scaled points ``x̃ = s x``, ``q̃ = s q``.

    Backward with upstream ``c``: ``∂L/∂p = Kᵀ c``; with ``M = K ∘ c pᵀ``, ``∂L/∂x = s (M q̃ − x̃ ∘ M1)`` and
    ``∂L/∂q = s (Mᵀ x̃ − q̃ ∘ Mᵀ1)``.
    """

    @staticmethod
    def forward(ctx, x, q, p, s):
        xs, qs = x * s, q * s
        K = gaussian_matrix(xs, qs)
        ctx.save_for_backward(xs, qs, p, K)
        ctx.s = s
        return K @ p

    @staticmethod
    @once_differentiable
    def backward(ctx, c):
        xs, qs, p, K = ctx.saved_tensors
        s = ctx.s
        M = (c @ p.T).mul_(K)
        (Mq, M1), (Mtx, Mt1) = _with_sums(M, qs), _with_sums(M.T, xs)
        return s * (Mq - xs * M1), s * (Mtx - qs * Mt1), K.T @ c, None


def _components(kernel):
    if isinstance(kernel, SumKernel):
        return list(zip(kernel.weights, kernel.kernels))
    return [(1.0, kernel)]


class FusedHamiltonianSystem(HamiltonianSystem):
    """``HamiltonianSystem`` for radial kernels (and sums of them) with one dense kernel matrix per stage.

    Parameters
    ----------
    kernel : RadialKernel or SumKernel
    backend : {"auto", "dense", "keops"}
        Backend of the products larger than ``DENSE_MAX_PAIRS`` (ambient points); the control points' own
        ``(N, N)`` products are always dense here.
    """

    def __init__(self, kernel, backend: str = "auto"):
        if not isinstance(kernel, (RadialKernel, SumKernel)):
            raise TypeError(f"kernel: expected a RadialKernel or SumKernel, got {type(kernel).__name__}")
        super().__init__(kernel, backend=backend, gradient="closed")

    def _stage(self, q, p):
        dq = self.kernel.nugget * p if self.kernel.nugget else torch.zeros_like(p)
        dp = torch.zeros_like(q)
        for w, k in _components(self.kernel):
            s = 1.0 / k.sigma
            if type(k) is GaussianKernel:
                kp, bq = _GaussianStage.apply(q, p, s)
                dq, dp = dq + w * kp, dp + w * bq
                continue
            qs = q * s
            d2 = centred_sqdist(qs, qs, exact=False)
            K = k.profile(d2)
            G = -0.5 * K if isinstance(k, GaussianKernel) else k.dprofile(d2)
            A = G * (p @ p.T)
            dq = dq + w * (K @ p)
            dp = dp - (2.0 * w * s) * (qs * A.sum(1, keepdim=True) - A @ qs)
        return dq, dp

    def velocity(self, x, q, p):
        """``v(x) = Σ_j k(x, q_j) p_j``: Gaussian components on the CPU by the compiled pass (``_native``: any
        size, nothing of size pairs kept), others dense up to ``DENSE_MAX_AMBIENT_PAIRS`` pairs, and the kernel's
        ``matvec`` (its backend policy: KeOps for large sets) above."""
        components = _components(self.kernel)
        compiled = (self.backend != "keops" and x.device.type == "cpu"
                    and compiled_available(x.shape[1], p.shape[1]))
        every_gaussian = all(type(k) is GaussianKernel for _, k in components)
        if x.shape[0] * q.shape[0] > DENSE_MAX_AMBIENT_PAIRS and not (compiled and every_gaussian):
            return self.kernel.matvec(x, q, p, self.backend)
        out = torch.zeros(x.shape[0], p.shape[1], dtype=p.dtype, device=p.device)
        for w, k in components:
            s = 1.0 / k.sigma
            if type(k) is GaussianKernel:
                out = out + w * (CompiledGaussianVelocity if compiled else _GaussianVelocity).apply(x, q, p, s)
                continue
            out = out + w * (k.profile(centred_sqdist(x * s, q * s, exact=False)) @ p)
        return out

    def dH_dp(self, q, p):
        return self._stage(q, p)[0]

    def dH_dq(self, q, p):
        return -self._stage(q, p)[1]

    def rhs(self, state):
        q, p, x = state
        dq, dp = self._stage(q, p)
        return dq, dp, None if x is None else self.velocity(x, q, p)
