"""Gaussian kernel sums of shape registration in compiled code: the CPU path of the truncated data terms and of the
vertices' velocity.

Torch evaluates a block-sparse sum (``_blocks.block_pairs``) as batches of padded ``(16, 16)`` matrices: every
elementwise step is one pass over memory, and the padding and the far corners of the blocks are computed too
(fsaverage5 at full resolution: 86 million entries for 13 million pairs within the radius; 2.2 s forward and
backward on one thread). Here a C++ loop takes each cluster of rows (``_blocks.voxel_clusters``, contiguous after
sorting) against the points of its neighbouring clusters, vectorised over the rows with the radius as a mask, and
OpenMP threads share the row clusters (0.2-0.35 s on the same sum, one thread). The same pass gives the rows' sums
``Σ_j k_R(x_i, y_j) g_j`` and their gradients in ``x_i``; the columns' quantities are the same pass with the roles
swapped, so the forward and the backward pass are one pass each and nothing of size pairs is stored; against a fixed
target (``TargetDistance``: ``⟨S, S⟩`` symmetric, ``⟨S, T⟩`` with constant columns) the backward pass is the
forward's rows and costs no pass (0.17 s in all on the sum above, one thread). Sums run in the
inputs' dtype (float32 or float64), the total in float64.

The same pass with no radius (``UNTRUNCATED``: every pair, the plain Gaussian) is the velocity of a mesh's
vertices against the control points (``GaussianVelocity``, for ``lddmm_nets.shapes.system``): nothing of size pairs
kept, 3x faster than the dense torch ``Function`` in float32 and in float64 (10,242 × 1,196 pairs, one thread).

``k_R(d²) = exp(−d²/2) − t − (t/2)(R² − d²)`` inside the radius (``t = exp(−R²/2)``), 0 beyond: the C¹ truncated
Gaussian of ``lddmm_nets.shapes.terms`` (points already divided by the width), ``2 k_R'(d²) = t − exp(−d²/2)``.

The library is compiled once per source text and processor with the system's C++ compiler (``g++``, which KeOps
needs too) into ``~/.cache/lddmm_nets`` (``LDDMM_NETS_CACHE`` overrides it), about 2 s, and moved into place
atomically so that concurrent workers never load a partial file; ``available`` is False when no compiler works,
and the callers keep their torch paths.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ._blocks import cluster_pairs

__all__ = ["available", "TruncatedPairSum", "neighbour_plan", "GaussianVelocity", "all_pairs_plan",
           "every_pair_plan", "UNTRUNCATED"]

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#define LANES 16
// lddmm_nets.backends.EXP_FLOOR: below it the vector exp leaves its fast path (and the pairs weigh nothing)
#define EXP_FLOOR -60

// Rows of one cluster (local copies by coordinate, m rows padded to a multiple of LANES with far points) against
// column j: branch-free (the radius as a mask) and vectorised over the rows; acc (F, m) and gacc (D, m) accumulate.
template <typename T, int D, int F>
static inline void column(const T* xa, const T* wa, int64_t m, const T* yj, const T* gj, T r2, T tail, T c0, T c1,
                          int grad, T* acc, T* gacc) {
#pragma omp simd simdlen(LANES)
    for (int64_t i = 0; i < m; ++i) {
        T diff[D], d2 = 0;
        for (int k = 0; k < D; ++k) { diff[k] = xa[k * m + i] - yj[k]; d2 += diff[k] * diff[k]; }
        const T inside = d2 < r2 ? T(1) : T(0), dm = d2 < r2 ? d2 : r2;
        const T e = std::exp(T(-0.5) * std::min(dm, T(-2 * EXP_FLOOR)));
        const T kr = inside * (e - c0 + c1 * dm);
        T wg = 0;
        for (int f = 0; f < F; ++f) { acc[f * m + i] += kr * gj[f]; wg += wa[f * m + i] * gj[f]; }
        if (grad) {
            const T s = inside * wg * (tail - e);
            for (int k = 0; k < D; ++k) gacc[k * m + i] += s * diff[k];
        }
    }
}

template <typename T, int D, int F>
static void row_pass(int64_t n_clusters, const int64_t* rows, const int64_t* ptr, const int64_t* cols,
                     const int64_t* col_ranges, const T* x, const T* w, const T* y, const T* g, T r2,
                     int grad, T* kg, T* gx, int threads) {
    const T tail = std::exp(T(-0.5) * r2), c0 = tail * (T(1) + T(0.5) * r2), c1 = T(0.5) * tail;
    int64_t largest = 0;
    for (int64_t a = 0; a < n_clusters; ++a) largest = std::max(largest, rows[2 * a + 1] - rows[2 * a]);
#pragma omp parallel num_threads(threads)
    {
        const int64_t cap = (largest + LANES - 1) / LANES * LANES;
        std::vector<T> xa(D * cap), wa(F * cap), acc(F * cap), gacc(D * cap);
#pragma omp for schedule(dynamic, 4)
        for (int64_t a = 0; a < n_clusters; ++a) {
            const int64_t i0 = rows[2 * a], m = rows[2 * a + 1] - i0, mp = (m + LANES - 1) / LANES * LANES;
            for (int64_t i = 0; i < mp; ++i) {
                for (int k = 0; k < D; ++k) xa[k * mp + i] = i < m ? x[(i0 + i) * D + k] : T(1e4);
                for (int f = 0; f < F; ++f) wa[f * mp + i] = i < m ? w[(i0 + i) * F + f] : T(0);
            }
            std::fill(acc.begin(), acc.begin() + F * mp, T(0));
            std::fill(gacc.begin(), gacc.begin() + D * mp, T(0));
            for (int64_t p = ptr[a]; p < ptr[a + 1]; ++p) {
                const int64_t b = cols[p];
                for (int64_t j = col_ranges[2 * b]; j < col_ranges[2 * b + 1]; ++j)
                    column<T, D, F>(xa.data(), wa.data(), mp, y + j * D, g + j * F, r2, tail, c0, c1, grad,
                                    acc.data(), gacc.data());
            }
            for (int64_t i = 0; i < m; ++i) {
                for (int f = 0; f < F; ++f) kg[(i0 + i) * F + f] = acc[f * mp + i];
                if (grad) for (int k = 0; k < D; ++k) gx[(i0 + i) * D + k] = gacc[k * mp + i];
            }
        }
    }
}

#define CASE(DD, FF) if (d == DD && f == FF) { if (dbl) row_pass<double, DD, FF>(nc, rows, ptr, cols, col_ranges, \
    (const double*)x, (const double*)w, (const double*)y, (const double*)g, r2, grad, (double*)kg, \
    (double*)gx, threads); else row_pass<float, DD, FF>(nc, rows, ptr, cols, col_ranges, (const float*)x, \
    (const float*)w, (const float*)y, (const float*)g, (float)r2, grad, (float*)kg, (float*)gx, threads); \
    return 0; }

// x (M, d), w (M, f), y (N, d), g (N, f) by point; outputs kg (M, f), gx (M, d).
extern "C" int truncated_row_pass(int64_t nc, const int64_t* rows, const int64_t* ptr, const int64_t* cols,
                                  const int64_t* col_ranges, const void* x, const void* w, const void* y,
                                  const void* g, int d, int f, int dbl, double r2, int grad,
                                  void* kg, void* gx, int threads) {
    CASE(2, 1) CASE(2, 2) CASE(2, 3) CASE(3, 1) CASE(3, 3) CASE(3, 6)
    return 1;
}
"""

#: (dimension, features) pairs compiled: measures (1), currents (d), Cauchy–Binet varifolds (3 in 2-D, 6 in 3-D)
SHAPES = {(2, 1), (2, 2), (2, 3), (3, 1), (3, 3), (3, 6)}
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c++17"]


def _cache_dir() -> Path:
    return Path(os.environ.get("LDDMM_NETS_CACHE", Path.home() / ".cache" / "lddmm_nets"))


def _cpu() -> str:
    """The processor's description (``-march=native`` code is kept per processor: a shared home directory on a
    cluster of mixed nodes must not hand one node's instructions to another)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "") + platform.processor()
    except OSError:
        return platform.machine() + platform.processor()


@lru_cache(maxsize=1)
def _library():
    """The compiled library (compiled on first use), or None with the reason logged."""
    key = hashlib.sha256((_SOURCE + " ".join(_FLAGS) + _cpu()).encode()).hexdigest()[:16]
    path = _cache_dir() / f"truncated_{key}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                src = Path(tmp) / "truncated.cpp"
                src.write_text(_SOURCE)
                out = Path(tmp) / path.name
                obj = Path(tmp) / "truncated.o"
                # compiled with the fast-math flags, linked without them: gcc would otherwise link crtfastmath.o,
                # whose constructor sets flush-to-zero for the whole process (every torch computation after it)
                for cmd in (["g++", *_FLAGS, "-c", str(src), "-o", str(obj)],
                            ["g++", "-shared", "-fopenmp", str(obj), "-o", str(out)]):
                    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                os.replace(out, path)  # atomic: a concurrent worker sees no file or the whole file
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("compiled kernel sums unavailable (%s); using the torch paths", err)
        return None
    i64, dbl, i32 = ctypes.c_int64, ctypes.c_double, ctypes.c_int
    ptr = ctypes.c_void_p
    lib.truncated_row_pass.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32, i32, i32, dbl, i32,
                                       ptr, ptr, i32]
    lib.truncated_row_pass.restype = i32
    return lib


def available(dim: int, features: int) -> bool:
    """Whether the compiled pass serves points of dimension ``dim`` with ``features`` per point (compiles the
    library on the first call)."""
    return (dim, features) in SHAPES and _library() is not None


def neighbour_plan(x: torch.Tensor, y: torch.Tensor, radius: float, cell: float, transposed: bool = True):
    """``_blocks.cluster_pairs`` as compressed rows, for both orders (``x`` rows, then ``y`` rows): for each cluster
    of one set, the clusters of the other that may hold a point closer than ``radius`` to one of its points.

    Returns ``(perm_x, perm_y, forward, transposed, kept)``: the sort orders, then for each order ``(row ranges,
    ptr, cols, col ranges)`` as int64 numpy arrays over the sorted points (``transposed`` None unless asked for:
    only a backward pass into ``y`` needs it), and the fraction of the ``M N`` pairs visited."""
    (px, rx), (py, ry), keep, kept = cluster_pairs(x, y, radius, cell)
    rx, ry = rx.long().numpy(), ry.long().numpy()

    def csr(mask, row_ranges, col_ranges):
        counts = mask.sum(1).numpy()
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        cols = mask.nonzero()[:, 1].numpy().astype(np.int64)
        return np.ascontiguousarray(row_ranges), ptr, cols, np.ascontiguousarray(col_ranges)

    return px, py, csr(keep, rx, ry), csr(keep.T.contiguous(), ry, rx) if transposed else None, kept


def _row_pass(plan, x, w, y, g, r2, grad):
    """Run the compiled pass on sorted points: ``(Σ_j k_R g_j, Σ_j (w_i·g_j) 2k_R' (x_i − y_j))`` per row, in the
    dtype of ``x`` (float32 or float64)."""
    rows, ptr, cols, col_ranges = plan
    dtype = np.float64 if x.dtype == torch.float64 else np.float32
    x, w, y, g = (np.ascontiguousarray(t.detach().numpy(), dtype=dtype) for t in (x, w, y, g))
    kg = np.empty_like(w)
    gx = np.empty_like(x) if grad else kg
    d, f = x.shape[1], w.shape[1]
    addr = (a.ctypes.data for a in (rows, ptr, cols, col_ranges, x, w, y, g))
    status = _library().truncated_row_pass(len(rows), *addr, d, f, int(dtype == np.float64), r2, int(grad),
                                            kg.ctypes.data, gx.ctypes.data, torch.get_num_threads())
    if status:
        raise ValueError(f"compiled truncated sums: expected (dimension, features) in {sorted(SHAPES)}, got "
                         f"({d}, {f})")
    return torch.from_numpy(kg), (torch.from_numpy(gx) if grad else None)


def _unsort(perm, t, like):
    out = torch.empty_like(t)
    out[perm] = t
    return out.to(like.dtype)


class TruncatedPairSum(torch.autograd.Function):
    """``Σ_i w_i · Σ_j k_R(c_i, d_j) g_j`` over every pair closer than ``R`` (points divided by the width), by the
    compiled pass (module docstring); CPU tensors. ``plan`` is ``neighbour_plan(c, d, R, cell)[:4]``, ``r2 = R²``.
    Returns a float64 0-d tensor; the backward pass is not itself differentiable.

    The backward pass is the transposed pass, run only when ``d`` or ``g`` needs a gradient (not against a fixed
    target: ``neighbour_plan(..., transposed=False)`` then suffices). With ``symmetric`` (``d, g`` are ``c, w``
    themselves and the plan is ``c``'s against itself) the sum is symmetric in its two sides and the forward's row
    quantities are also the columns': no pass at all in the backward."""

    @staticmethod
    def forward(ctx, c, w, d, g, plan, r2, symmetric=False):
        px, py, fwd, _ = plan
        grad = any(ctx.needs_input_grad[:4])
        ws = w[px]
        kg, gc = _row_pass(fwd, c[px], ws, d[py], g[py], r2, grad)
        total = (ws.double() * kg.double()).sum()
        if grad:
            ctx.save_for_backward(c, w, d, g)
            ctx.plan, ctx.r2, ctx.kg, ctx.gc, ctx.symmetric = plan, r2, kg, gc, symmetric
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, up):
        c, w, d, g = ctx.saved_tensors
        px, py, _, tr = ctx.plan
        up = float(up)
        grads = [_unsort(px, ctx.gc * up, c), _unsort(px, ctx.kg * up, w), None, None]
        if ctx.symmetric:
            grads[2:] = grads[:2]
        elif ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            ktw, gd = _row_pass(tr, d[py], g[py], c[px], w[px], ctx.r2, ctx.needs_input_grad[2])
            grads[3] = _unsort(py, ktw * up, g)
            if gd is not None:
                grads[2] = _unsort(py, gd * up, d)
        return (*grads, None, None, None)


#: ``r2`` of a sum without truncation: every pair inside, ``t = 0`` (the plain Gaussian)
UNTRUNCATED = 1e30
#: rows per cluster of a sum over every pair (one cluster of all the columns each)
ALL_PAIRS_ROWS = 64


def all_pairs_plan(m: int, n: int):
    """The compressed-row plan of every pair of ``m`` rows and ``n`` columns: row clusters of ``ALL_PAIRS_ROWS``
    (the threads' work units), each against one cluster of all the columns."""
    starts = np.arange(0, m, ALL_PAIRS_ROWS, dtype=np.int64)
    rows = np.stack([starts, np.minimum(starts + ALL_PAIRS_ROWS, m)], 1)
    return rows, np.arange(len(rows) + 1, dtype=np.int64), np.zeros(len(rows), np.int64), np.array([[0, n]], np.int64)


def every_pair_plan(m: int, n: int):
    """``TruncatedPairSum``'s plan (``neighbour_plan(...)[:4]``) visiting every pair of ``m`` rows and ``n``
    columns, unsorted: with ``r2=UNTRUNCATED`` it sums the plain Gaussian."""
    return torch.arange(m), torch.arange(n), all_pairs_plan(m, n), all_pairs_plan(n, m)


class GaussianVelocity(torch.autograd.Function):
    """``v(x) = Σ_j exp(−s²|x_i − q_j|²/2) p_j`` by the compiled pass over every pair (CPU tensors): nothing of size
    ``M N`` in memory, forward one pass, backward two (rows for ``∂x``; columns for ``∂q`` and ``∂p``: with upstream
    ``c``, ``∂p_j = Σ_i K_ij c_i``, ``∂x̃_i = −Σ_j K_ij (c_i·p_j)(x̃_i − q̃_j)`` and symmetrically for ``q̃``). The
    backward pass is not itself differentiable."""

    @staticmethod
    def forward(ctx, x, q, p, s):
        xs, qs = x * s, q * s
        v, _ = _row_pass(all_pairs_plan(len(x), len(q)), xs, torch.zeros_like(p[:1]).expand(len(x), -1), qs, p,
                         UNTRUNCATED, False)
        ctx.save_for_backward(xs, qs, p)
        ctx.s = s
        return v.to(p.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, c):
        xs, qs, p = ctx.saved_tensors
        c = c.to(p.dtype)
        _, gx = _row_pass(all_pairs_plan(len(xs), len(qs)), xs, c, qs, p, UNTRUNCATED, True)
        gp, gq = _row_pass(all_pairs_plan(len(qs), len(xs)), qs, p, xs, c, UNTRUNCATED, True)
        s = ctx.s
        return (s * gx).to(xs.dtype), (s * gq).to(qs.dtype), gp.to(p.dtype), None
