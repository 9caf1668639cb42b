"""The dense / KeOps switch: one formula, two evaluations.

Every kernel formula in the engine is written once on *pairwise objects*: the squared distances ``D2_ij`` and
inner products ``<a_i, b_j>``. With ``backend="dense"`` these are ordinary ``(M, N)`` torch tensors; with
``backend="keops"`` they are symbolic ``pykeops.torch.LazyTensor`` objects reduced on the fly. The same
arithmetic (``exp``, ``sqrt``, products, ``@ p`` reductions) works on both, so nothing above this module ever
asks which backend it runs on.

Memory cost per backend, for ``M`` target and ``N`` source points:

* ``dense``: materialises ``(M, N)`` matrices, i.e. ``8 M N`` bytes per matrix in float64 (``4 M N`` in float32),
  a few of them alive at once during autograd. Fast for small problems (BLAS, no compilation).
* ``keops``: ``O(M + N)`` memory; the ``(M, N)`` matrix is never stored. The first call of each new formula compiles
  it with the system's C++ compiler (about 10 s, then cached under ``~/.cache/keops*``).

The ``auto`` policy (``select_backend``), on the CPU, for points of dimension ``d``:

* ``d < 8``: dense while ``M * N <= AUTO_DENSE_MAX_PAIRS[dtype]`` (``2**18`` pairs in float32, about N = 510;
  ``2**15`` in float64, about N = 180), KeOps beyond. These are the crossovers measured by
  ``scripts/bench_kernels.py`` for a kernel sum with its gradient: KeOps' per-call overhead is about 0.2 ms and the
  dense float64 path falls behind early.
* ``d >= 8`` (data spaces of idea registration): the dense path is one matrix product, far faster than KeOps'
  per-pair loop over ``d`` coordinates and free of a compilation per dimension, so dense is kept up to
  ``AUTO_DENSE_MAX_PAIRS_WIDE`` (``2**24`` pairs, 128 MiB per float64 matrix).

On CUDA devices the threshold is ``AUTO_DENSE_MAX_PAIRS_CUDA`` (``2**24`` pairs; not measured here). When KeOps
cannot compile, ``auto`` falls back to dense with one warning, while an explicit ``backend="keops"`` raises
``KeOpsUnavailableError`` with the compiler's reason.
"""

from __future__ import annotations

import logging
import math
import warnings
from functools import lru_cache

import torch

__all__ = [
    "BACKENDS",
    "AUTO_DENSE_MAX_PAIRS",
    "AUTO_DENSE_MAX_PAIRS_WIDE",
    "AUTO_DENSE_MAX_PAIRS_CUDA",
    "KeOpsUnavailableError",
    "keops_available",
    "select_backend",
    "sqdist",
    "matmul_sqdist",
    "inner",
    "safe_sqrt",
    "EXP_FLOOR",
    "exp",
    "safe_rsqrt",
    "reduce",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dense", "keops")
AUTO_DENSE_MAX_PAIRS = {torch.float32: 2**18, torch.float64: 2**15}
AUTO_DENSE_MAX_PAIRS_WIDE = 2**24
AUTO_DENSE_MAX_PAIRS_CUDA = 2**24


class KeOpsUnavailableError(RuntimeError):
    """KeOps was requested explicitly but cannot be imported or cannot compile a formula."""


@lru_cache(maxsize=1)
def _keops_status() -> tuple[bool, str]:
    """Import pykeops and compile-test one tiny formula once per process: ``(ok, reason)``."""
    try:
        import pykeops
        from pykeops.torch import LazyTensor

        pykeops.set_verbose(False)
        x = torch.zeros(2, 1, dtype=torch.float32)
        (LazyTensor(x[:, None, :]) - LazyTensor(x[None, :, :])).sum(-1).sum(1)
    except Exception as err:  # pragma: no cover - depends on the machine's compiler
        return False, f"{type(err).__name__}: {err}"
    return True, ""


_warned_fallback = False


def keops_available() -> bool:
    """Whether pykeops imports and compiles here (checked once per process)."""
    return _keops_status()[0]


def select_backend(backend: str, n_targets: int, n_sources: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None, dim: int | None = None) -> str:
    """Resolve ``backend`` to ``"dense"`` or ``"keops"``.

    Parameters
    ----------
    backend : {"auto", "dense", "keops"}
        Requested backend.
    n_targets, n_sources : int
        Sizes ``M`` and ``N`` of the pairwise problem.
    device : torch.device, optional
        Device of the inputs; CUDA raises the dense threshold.
    dtype : torch.dtype, optional
        Dtype of the inputs (default float32's threshold).
    dim : int, optional
        Dimension ``d`` of the points; ``d >= MATMUL_MIN_DIM`` keeps dense longer.

    Returns
    -------
    str
        ``"dense"`` or ``"keops"``.

    Raises
    ------
    ValueError
        Unknown backend name.
    KeOpsUnavailableError
        ``backend="keops"`` and KeOps cannot be used here (the reason is in the message).
    """
    global _warned_fallback
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "dense":
        return "dense"
    if backend == "keops":
        ok, reason = _keops_status()
        if not ok:
            raise KeOpsUnavailableError(f"backend='keops' requested but KeOps cannot be used: {reason}")
        return "keops"
    if device is not None and device.type == "cuda":
        limit = AUTO_DENSE_MAX_PAIRS_CUDA
    elif dim is not None and dim >= MATMUL_MIN_DIM:
        limit = AUTO_DENSE_MAX_PAIRS_WIDE
    else:
        limit = AUTO_DENSE_MAX_PAIRS.get(dtype, AUTO_DENSE_MAX_PAIRS[torch.float32])
    if n_targets * n_sources <= limit:
        return "dense"
    ok, reason = _keops_status()
    if not ok:
        if not _warned_fallback:
            warnings.warn(f"KeOps unavailable, backend='auto' falls back to dense: {reason}", RuntimeWarning,
                          stacklevel=3)
            _warned_fallback = True
        return "dense"
    return "keops"


def _lazy(x: torch.Tensor, axis: int):
    from pykeops.torch import LazyTensor

    return LazyTensor(x[:, None, :]) if axis == 0 else LazyTensor(x[None, :, :])


MATMUL_MIN_DIM = 8


def matmul_sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dense ``|x_i|² + |y_j|² - 2 x_i·y_j`` clamped at 0: (M, N) with one matrix product, O(MN) memory.

    Its gradient at coincident points is ``2x - 2y = 0`` exactly (no sqrt is taken), as THEORY §7 asks. Cancellation
    leaves values of order ``eps |x|²`` at coincident points, so kernels with a square-root kink (Laplace, Matérn 1/2)
    lose accuracy there to about ``sqrt(eps) |x| / σ`` (1e-8 in float64).
    """
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return d2.clamp_min(0.0)


def sqdist(x: torch.Tensor, y: torch.Tensor, backend: str):
    """Pairwise squared distances ``|x_i - y_j|²``, never through ``cdist``.

    KeOps and low-dimensional dense inputs use sums of squared differences (exactly 0 and differentiable at
    coincident points, THEORY §7). Dense inputs with ``d >= MATMUL_MIN_DIM`` (data spaces of idea registration) use
    ``matmul_sqdist``, which avoids the (M, N, d) tensor of differences.

    Parameters
    ----------
    x : (M, d) tensor
    y : (N, d) tensor
    backend : {"dense", "keops"}

    Returns
    -------
    (M, N) tensor or LazyTensor
    """
    if backend == "keops":
        return ((_lazy(x, 0) - _lazy(y, 1)) ** 2).sum(-1)
    if x.shape[1] >= MATMUL_MIN_DIM:
        return matmul_sqdist(x, y)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def inner(a: torch.Tensor, b: torch.Tensor, backend: str):
    """Pairwise inner products ``<a_i, b_j>``: (M, N) tensor or LazyTensor."""
    if backend == "keops":
        return (_lazy(a, 0) | _lazy(b, 1))
    return a @ b.T


def safe_sqrt(d2):
    """``sqrt(d2)`` whose derivative at ``d2 = 0`` is 0 (the symmetric subgradient), for both backends.

    KeOps' ``Sqrt`` already differentiates through ``Rsqrt``, which KeOps defines as 0 at 0.
    """
    if isinstance(d2, torch.Tensor):
        pos = d2 > 0
        return torch.where(pos, torch.where(pos, d2, torch.ones_like(d2)).sqrt(), torch.zeros_like(d2))
    return d2.sqrt()


#: lowest argument of ``exp`` on dense tensors. Below about -87 (float32) or -708 (float64) the result underflows,
#: and torch's vectorised CPU exp leaves its fast path for those elements: a 1,280² float32 matrix of arguments in
#: [-200, 0] took 42 ms against 1.2 ms for arguments in [-30, 0] (one thread). A kernel matrix of points that span
#: many widths (a cortex at a 3.5 mm width, a GP on spread inputs) is mostly such entries. The floor is well above
#: the underflow so that the backward pass's products of these entries with small gradients stay normal numbers
#: (denormal arithmetic is slow too): fsaverage5 white -> pial at 642 vertices, one thread, took 47 s without a
#: floor, 35 s with -80 and 17-28 s with -60, with the same iterates. exp(-60) = 8.8e-27 changes no kernel sum
#: that holds a diagonal entry (1) beyond float64 round-off.
EXP_FLOOR = -60.0


def exp(x):
    """``exp(x)`` of a kernel's argument: dense tensors' arguments below ``EXP_FLOOR`` are raised to it (the same
    sums, 20-40x faster where most entries underflow; zero gradient there, where the true one is below 1e-26),
    LazyTensors as they are (KeOps has no such slow path)."""
    if isinstance(x, torch.Tensor):
        return _FlooredExp.apply(x)
    return x.exp()


class _FlooredExp(torch.autograd.Function):
    """``exp(max(x, EXP_FLOOR))`` keeping only its result for the backward pass (as ``exp`` does; a clamp would
    keep its input too): ``y > exp(EXP_FLOOR)`` is where the gradient ``y`` passes. Twice differentiable."""

    @staticmethod
    def forward(ctx, x):
        y = x.clamp_min(EXP_FLOOR).exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.where(y > math.exp(EXP_FLOOR), grad * y, torch.zeros_like(grad))


def safe_rsqrt(d2):
    """``1 / sqrt(d2)`` with the value 0 at ``d2 = 0`` (KeOps' convention), for both backends."""
    if isinstance(d2, torch.Tensor):
        pos = d2 > 0
        return torch.where(pos, torch.where(pos, d2, torch.ones_like(d2)).rsqrt(), torch.zeros_like(d2))
    return d2.rsqrt()


def reduce(matrix, p: torch.Tensor) -> torch.Tensor:
    """``sum_j matrix_ij p_j``: (M, N) tensor or LazyTensor times (N, D) -> (M, D)."""
    return matrix @ p
