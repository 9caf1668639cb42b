"""Kernel distances between shapes without point correspondence: currents, varifolds, measures (THEORY §8).

For shapes ``S`` (cells ``c_i, u_i, a_i``) and ``T`` (``d_j, v_j, b_j``),
``⟨S, T⟩ = Σ_i Σ_j a_i b_j k_e(c_i, d_j) k_u(u_i, v_j)`` and ``D(S, T) = ⟨S,S⟩ − 2⟨S,T⟩ + ⟨T,T⟩ ≥ 0``: a squared
RKHS distance, zero iff the two shapes have the same representation, blind to the order of cells and vertices.
``k_e`` is any engine radial kernel (``GaussianKernel(sigma)``, or a ``SumKernel`` for several scales at once);
the direction kernel ``k_u`` makes the family:

=====================  ===================================  ==========================  ========
direction              ``k_u(u, v)``                        class                       oriented
=====================  ===================================  ==========================  ========
``"linear"``           ``u·v``                              ``Currents``                yes
``"sphere"``           ``exp(2 (u·v − 1) / σ_u²)``          ``Varifold(oriented=True)`` yes
``"binet"``            ``(u·v)²`` (Cauchy–Binet)            ``Varifold()``              no
``"sphere_unoriented"`` ``exp(2 ((u·v)² − 1) / σ_u²)``       ``Varifold(angular=...)``   no
``"constant"``         ``1``                                ``Measure``                 no
=====================  ===================================  ==========================  ========

Evaluation. The formula is written once on the backend's pairwise objects (``lddmm_nets.backends``: dense tensors or
KeOps LazyTensors). Direction kernels that are linear in a feature of the cell (``"linear"``: ``f = a u``;
``"binet"``: ``f = a u⊗u``, stored as the 3 (2-D) or 6 (3-D) entries of the symmetric matrix with off-diagonal
weights √2 so that ``f·g = a b (u·v)²``; ``"constant"``: ``f = a``) factor as ``⟨S, T⟩ = Σ_i f_i · Σ_j k_e(c_i,
d_j) g_j``: one kernel sum of features, the cheapest form (``factorize=True``, default); ``factorize=False`` uses the
pairwise formula, the reference the tests compare with. The Gaussian width ``σ_u`` of the spherical kernels scales
the directions, never the formula, so KeOps compiles one formula per family.

Memory and speed. With ``backend="auto"`` the sums are dense (``(F_S, F_T)`` matrices, squared distances by one
matrix product on centred points, in float64) up to ``DENSE_MAX_PAIRS`` pairs and KeOps (O(F) memory) beyond,
through ``lddmm_nets.backends.select_backend`` (its fallback to dense when KeOps cannot compile, with a warning).
The dense limit is higher than the engine's general ``auto`` policy because, for these formulas on this class of
CPU, the dense path stays 2-4 times faster than KeOps' up to a few million pairs (``scripts/bench_shapes.py
--profile`` prints the crossover) and a few such matrices cost tens of MiB.

Truncation (``truncate=R``, in units of σ; off by default). Gaussian components become the compactly supported,
continuously differentiable kernel ``k_R(r) = exp(−r²/2σ²) − e^{−R²/2} (1 + (R² − r²/σ²)/2)`` for ``r < Rσ`` and 0
beyond (value and slope vanish at ``Rσ``; at ``R = 4`` it differs from the Gaussian by at most ``9 e^{−8} = 3e-3``).
Being a fixed kernel, it makes every split of the sums consistent (``⟨T,T⟩`` computed once, ``⟨S,S⟩ − 2⟨S,T⟩`` at
every step) and exact on both backends; what it buys is speed: when the shapes span many supports, KeOps reduces
only the pairs of cell clusters that may hold a pair closer than ``Rσ`` (``LazyTensor.ranges``,
``lddmm_nets.shapes._blocks``): O(F k) work for ``k`` neighbours instead of O(F²), and ``auto`` takes that path
whenever the shapes' extent exceeds ``TRUNCATE_SPAN`` supports and the sum has more than ``TRUNCATE_MIN_PAIRS``
pairs. On the CPU the Gaussian sums of cell features run that truncation in compiled code
(``lddmm_nets.shapes._native``: only the pairs within the radius, one pass forward and one backward, none
backward for a distance to a fixed target), and padded
dense torch blocks otherwise (no compiler, or the spherical direction kernels).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from .. import backends as B
from ..checks import check_choice, check_positive
from ..kernels import GaussianKernel, RadialKernel, SumKernel
from ._blocks import block_pairs, block_ranges, filled_cell
from .geometry import Cells, cell_geometry, safe_norm
from ._fused import GaussianPairSum, TruncatedBlockSum
from ._native import UNTRUNCATED, TruncatedPairSum, every_pair_plan, neighbour_plan
from ._native import available as compiled_available
from .system import centred_sqdist

__all__ = ["ShapeDistance", "Currents", "Varifold", "Measure", "TargetDistance", "DIRECTIONS", "as_cells",
           "TRUNCATE_MIN_PAIRS", "TRUNCATE_CELL", "DENSE_MAX_PAIRS"]

DIRECTIONS = ("linear", "binet", "sphere", "sphere_unoriented", "constant")
_LINEAR = ("linear", "binet", "constant")
#: pairs (F_S · F_T) from which ``auto`` sums truncated Gaussian components block-sparsely on KeOps
TRUNCATE_MIN_PAIRS = 2**16
#: ... when the shapes' extent is at least this many truncation radii
TRUNCATE_SPAN = 3.0
#: dense blocks: candidate sides of the clustering cells (in widths; the smallest whose cells hold BLOCK_SIZE
#: of the summed-against points on average, ``_blocks.filled_cell``), points per padded cluster, cluster pairs per batch, and the
#: padded size (entries) above which a batch is recomputed in the backward pass instead of kept in memory.
#: Measured on fsaverage5 white -> pial, varifold at 3.54 mm truncated at 4 widths, one thread, forward and
#: backward: 20,480 triangles 19.4 s with 1-width cells, 3.4 s with 2 (the one chosen); 5,120 triangles 7.0 s with
#: 1-width cells, 0.40 s with 4 (chosen); 32-point blocks were slower at every cell size tried.
BLOCK_CELLS, BLOCK_SIZE, BLOCK_CHUNK, BLOCK_KEEP_MAX = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0), 16, 8192, 2**24
#: side of the clustering cells of the truncation, in units of the kernel width
TRUNCATE_CELL = 2.0
#: ``backend="auto"``: dense up to this many pairs (16 MiB per float32 matrix), KeOps beyond
DENSE_MAX_PAIRS = 2**22


def as_cells(shape, name: str = "shape") -> Cells:
    """``Cells`` from a ``Cells``, a ``(vertices, cells)`` pair, or an object with a ``cells_geometry()`` method."""
    if isinstance(shape, Cells):
        return shape
    if hasattr(shape, "cells_geometry"):
        return shape.cells_geometry()
    if isinstance(shape, (tuple, list)) and len(shape) == 2:
        return cell_geometry(shape[0], shape[1])
    raise TypeError(f"{name}: expected Cells, a (vertices, cells) pair or a Shape, got {type(shape).__name__}")


def _symmetric_square(n: torch.Tensor) -> torch.Tensor:
    """``n⊗n / |n|`` as its upper-triangular entries, off-diagonal ones times √2: (F, d(d+1)/2)."""
    d = n.shape[1]
    i, j = torch.triu_indices(d, d, device=n.device)
    w = torch.full(i.shape, math.sqrt(2.0), dtype=n.dtype, device=n.device)
    w[i == j] = 1.0
    return n[:, i] * n[:, j] * w / safe_norm(n)


def _inner(a, b, backend):
    """Pairwise inner products; dense inputs may carry batch dimensions (blocks)."""
    return B.inner(a, b, backend) if backend == "keops" else a @ b.transpose(-1, -2)


def _step(x):
    """Heaviside step ``1[x > 0]`` on a dense tensor or a LazyTensor."""
    return (x > 0).to(x.dtype) if isinstance(x, torch.Tensor) else x.step()


def _components(kernel) -> list:
    if isinstance(kernel, SumKernel):
        return list(zip(kernel.weights, kernel.kernels))
    return [(1.0, kernel)]


class ShapeDistance:
    """Kernel distance ``D(S, T)`` between two shapes (module docstring): the base of the data terms.

    Parameters
    ----------
    sigma : float or sequence of float, optional
        Width(s) of the Gaussian position kernel ``exp(−|x − y|²/2σ²)``, in data units; several widths give their
        equal-weight sum (multiscale). Exactly one of ``sigma`` and ``kernel``.
    kernel : RadialKernel or SumKernel, optional
        Any engine position kernel instead.
    direction : str
        One of ``DIRECTIONS``.
    sigma_u : float
        Width of the spherical direction kernels (``"sphere"``, ``"sphere_unoriented"``); default 0.5.
    backend : {"auto", "dense", "keops"}
    truncate : float or None
        Truncation radius of the Gaussian components in units of σ (module docstring: the compactly supported
        kernel ``k_R``); None (default): the Gaussian itself, every pair summed.
    factorize : bool
        Evaluate linear direction kernels as kernel sums of cell features (default) or by the pairwise formula.
    """

    def __init__(self, sigma: float | Sequence[float] | None = None, *, kernel=None, direction: str = "binet",
                 sigma_u: float = 0.5, backend: str = "auto", truncate: float | None = None, factorize: bool = True):
        if (sigma is None) == (kernel is None):
            raise ValueError("sigma, kernel: expected exactly one of them, got "
                             f"{'both' if sigma is not None else 'neither'}")
        if kernel is None:
            sigmas = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
            if not sigmas:
                raise ValueError("sigma: expected a width or a non-empty sequence of widths, got an empty sequence")
            kernels = [GaussianKernel(sigma=check_positive("sigma", s)) for s in sigmas]
            kernel = kernels[0] if len(kernels) == 1 else SumKernel(kernels)
        if not isinstance(kernel, (RadialKernel, SumKernel)):
            raise TypeError(f"kernel: expected a RadialKernel or SumKernel, got {type(kernel).__name__}")
        check_choice("direction", direction, DIRECTIONS)
        check_choice("backend", backend, B.BACKENDS)
        self.kernel = kernel
        self.direction = direction
        self.sigma_u = check_positive("sigma_u", sigma_u)
        self.backend = backend
        self.truncate = None if truncate is None else check_positive("truncate", truncate)
        self.factorize = bool(factorize)
        self.oriented = direction in ("linear", "sphere")
        self.last_kept = 1.0  # fraction of pairs reduced by the last truncated sum (diagnostics)

    # --- cells -> what the formula needs ------------------------------------------------------------------------
    def side(self, cells: Cells):
        """``(centres, weights, directions)`` of one side: weights are features (factorized) or sizes."""
        if cells.kind == "points" and self.direction != "constant":
            raise ValueError(f"shape: points carry no direction; use Measure (direction 'constant') for point "
                             f"clouds, got direction {self.direction!r}")
        if self.factorize and self.direction in _LINEAR:
            if self.direction == "linear":
                return cells.centers, cells.vectors, None
            if self.direction == "binet":
                return cells.centers, _symmetric_square(cells.vectors), None
            return cells.centers, cells.sizes, None
        u = None if self.direction == "constant" else cells.directions
        if self.direction in ("sphere", "sphere_unoriented") and u is not None:
            u = u * (math.sqrt(2.0) / self.sigma_u)
        return cells.centers, cells.sizes, u

    def _direction_pairs(self, u, v, backend):
        """``k_u`` on the backend's pairwise objects (the factor ``exp(−2/σ_u²)`` of the spherical ones apart)."""
        if self.direction == "sphere":
            return _inner(u, v, backend).exp()
        if self.direction == "sphere_unoriented":
            return (_inner(u, v / (math.sqrt(2.0) / self.sigma_u), backend) ** 2).exp()
        t = _inner(u, v, backend)
        return t * t if self.direction == "binet" else t

    def _constant(self) -> float:
        return math.exp(-2.0 / self.sigma_u**2) if self.direction in ("sphere", "sphere_unoriented") else 1.0

    def _backend(self, m: int, n: int, x: torch.Tensor) -> str:
        if self.backend == "auto" and m * n <= DENSE_MAX_PAIRS:
            return "dense"
        return B.select_backend(self.backend, m, n, x.device, x.dtype, x.shape[1])

    def _sparse(self, k, cl, cr) -> str | None:
        """How a (scaled) sum of a truncated Gaussian is reduced block-sparsely: ``"dense"`` blocks (CPU),
        ``"keops"`` ranges (CUDA, or ``backend="keops"``), or None (every pair)."""
        if self.truncate is None or not isinstance(k, GaussianKernel):
            return None
        if self.backend == "keops":
            return "keops"
        if cl.shape[0] * cr.shape[0] < TRUNCATE_MIN_PAIRS:
            return None
        with torch.no_grad():
            both = torch.cat([cl, cr])
            span = float((both.max(0).values - both.min(0).values).norm())
        if span < TRUNCATE_SPAN * self.truncate:
            return None
        return "keops" if cl.device.type == "cuda" and B.keops_available() else "dense"

    def _block_sum(self, k, left, right, symmetric: bool = False) -> torch.Tensor:
        """The same formula over the pairs of neighbouring clusters: for Gaussian sums of cell features on the CPU,
        by the compiled pass of ``_native`` (every pair within the radius, skipped beyond it before any
        exponential; ``symmetric``: ``right`` is ``left``, no backward pass); otherwise on padded dense blocks of
        cluster pairs (``_blocks.block_pairs``), in local coordinates (each block centred on its row cluster: no
        cancellation in float32)."""
        (c, w, u), (d, g, v) = left, right
        rows = c.detach()
        cols = rows if symmetric else d.detach()  # the same object: clustered once
        cell = filled_cell(cols, BLOCK_CELLS, BLOCK_SIZE)
        if (u is None and type(k) is GaussianKernel and c.device.type == "cpu"
                and compiled_available(c.shape[1], w.shape[1])):
            columns = not symmetric and torch.is_grad_enabled() and (d.requires_grad or g.requires_grad)
            plan = neighbour_plan(rows, cols, self.truncate, cell, transposed=columns)
            self.last_kept = plan[-1]
            return TruncatedPairSum.apply(c, w, d, g, plan[:4], self.truncate**2, symmetric)
        rows, cols, pairs, self.last_kept = block_pairs(rows, cols, self.truncate, cell, BLOCK_SIZE)
        (ri, rm, rc, _), (ci, cm, _, _) = rows, cols
        if u is None and type(k) is GaussianKernel:  # sums of cell features: the written backward (``_fused``)
            return TruncatedBlockSum.apply(c, w, d, g, (ri, rm, rc, ci, cm, self.truncate**2), pairs, BLOCK_CHUNK)
        heavy = torch.is_grad_enabled() and len(pairs) * BLOCK_SIZE**2 > BLOCK_KEEP_MAX

        def chunk(a, b, c, w, d, g, u, v):
            ia, ib, ctr = ri[a], ci[b], rc[a][:, None, :]
            X, Y = c[ia] - ctr, d[ib] - ctr
            d2 = ((X * X).sum(-1)[:, :, None] + (Y * Y).sum(-1)[:, None, :] - 2 * X @ Y.transpose(1, 2))
            G = self._profile(k, d2.clamp_min(0))
            if u is not None:
                G = G * self._direction_pairs(u[ia], v[ib], "dense")
            W = w[ia] * rm[a][..., None].to(w.dtype)
            return (W * (G @ (g[ib] * cm[b][..., None].to(g.dtype)))).sum()

        total = c.new_zeros((), dtype=torch.float64)
        for start in range(0, len(pairs), BLOCK_CHUNK):
            a, b = pairs[start:start + BLOCK_CHUNK].T
            args = (a, b, c, w, d, g, u, v)
            total = total + (checkpoint(chunk, *args, use_reentrant=False) if heavy else chunk(*args)).double()
        return total

    def _profile(self, k, d2):
        """``k``'s profile, or the C¹ compactly supported ``k_R`` of a truncated Gaussian (module docstring)."""
        if self.truncate is None or not isinstance(k, GaussianKernel):
            return k.profile(d2)
        r2 = self.truncate**2
        tail = math.exp(-0.5 * r2)
        inside = r2 - d2
        return _step(inside) * (B.exp(-0.5 * d2) - tail - (0.5 * tail) * inside)

    def pair_sum(self, left, right) -> torch.Tensor:
        """``Σ_i w_i · Σ_j k_e(c_i, d_j) k_u(u_i, v_j) g_j``: the one formula, on dense tensors or LazyTensors.

        Returns a float64 0-d tensor whatever the inputs' dtype: the kernel sums run in the inputs' dtype, their
        totals are added in float64 (a distance is a small difference of such totals)."""
        symmetric = right is left  # ⟨S, S⟩: the compiled sums need no backward pass
        (c, w, u), (d, g, v) = left, right
        total = c.new_zeros((), dtype=torch.float64)
        for weight, k in _components(self.kernel):
            s = 1.0 / k.sigma
            cl, wl, ul = c * s, w, u
            cr, gr, vr = (cl, wl, ul) if symmetric else (d * s, g, v)
            ranges = None
            sparse = self._sparse(k, cl, cr)
            if sparse == "dense":
                total = total + weight * self._block_sum(k, (cl, wl, ul), (cr, gr, vr), symmetric)
                continue
            if sparse == "keops":
                b = "keops"
                px, py, ranges, self.last_kept = block_ranges(cl.detach(), cr.detach(), self.truncate,
                                                              TRUNCATE_CELL)
                cl, wl, cr, gr = cl[px], wl[px], cr[py], gr[py]
                ul, vr = (None, None) if u is None else (ul[px], vr[py])
            else:
                b = self._backend(cl.shape[0], cr.shape[0], cl)
                if b == "dense" and ul is None and self.truncate is None and type(k) is GaussianKernel:
                    if cl.device.type == "cpu" and compiled_available(cl.shape[1], wl.shape[1]):
                        plan = every_pair_plan(cl.shape[0], cr.shape[0])
                        total = total + weight * TruncatedPairSum.apply(cl, wl, cr, gr, plan, UNTRUNCATED,
                                                                        symmetric)
                    else:
                        total = total + weight * GaussianPairSum.apply(cl, wl, cr, gr)
                    continue
            G = self._profile(k, B.sqdist(cl, cr, b) if b == "keops" else centred_sqdist(cl, cr))
            if ul is not None:
                G = G * self._direction_pairs(ul, vr, b)
            if ranges is not None:
                G.ranges = ranges
            total = total + weight * (wl * B.reduce(G, gr)).sum().double()
        return total * self._constant()

    # --- public API ----------------------------------------------------------------------------------------------
    def _check_pair(self, S: Cells, T: Cells) -> None:
        if S.centers.shape[1] != T.centers.shape[1]:
            raise ValueError(f"target: expected {S.centers.shape[1]}-D cells (as source), "
                             f"got {T.centers.shape[1]}-D")
        if S.kind != T.kind and self.direction != "constant":
            raise ValueError(f"target: expected {S.kind} (as source) for direction {self.direction!r}, got {T.kind}")
        if T.centers.dtype != S.centers.dtype or T.centers.device != S.centers.device:
            raise ValueError(f"target: expected dtype {S.centers.dtype} on {S.centers.device} (as source), got "
                             f"{T.centers.dtype} on {T.centers.device}")

    def inner(self, source, target) -> torch.Tensor:
        """``⟨S, T⟩``: 0-d float64 tensor, differentiable in both shapes' vertices."""
        S, T = as_cells(source, "source"), as_cells(target, "target")
        self._check_pair(S, T)
        return self.pair_sum(self.side(S), self.side(T))

    def distance(self, source, target) -> torch.Tensor:
        """``D(S, T) = ⟨S,S⟩ − 2⟨S,T⟩ + ⟨T,T⟩``: 0-d float64 tensor, ≥ 0 up to round-off.

        Parameters
        ----------
        source, target : Cells, (vertices, cells) pair, or Shape
            Shapes of the same dimension and kind (any kinds for ``Measure``).
        """
        return self.attach(target)(source)

    __call__ = distance

    def attach(self, target) -> "TargetDistance":
        """Fix the target: ``attach(T)(S) = D(S, T)`` with ``⟨T, T⟩`` computed once (for registrations)."""
        return TargetDistance(self, as_cells(target, "target"))

    def __repr__(self):
        extra = f", sigma_u={self.sigma_u:g}" if self.direction in ("sphere", "sphere_unoriented") else ""
        return f"{type(self).__name__}(kernel={self.kernel!r}, direction={self.direction!r}{extra})"


class TargetDistance:
    """``S ↦ D(S, T)`` for a fixed target (``ShapeDistance.attach``): ``⟨T, T⟩`` is computed once; ``⟨S,S⟩`` and
    ``−2⟨S,T⟩`` are two sums over the source's rows, the first symmetric and the second against constant columns,
    so that the compiled sums' backward passes are the forward's row quantities (one pass over the pairs in all,
    where one sum against source and target cells together took a pass forward and one backward)."""

    def __init__(self, term: ShapeDistance, target: Cells):
        self.term = term
        self.target = target
        c, g, v = term.side(target)
        target_side = (c.detach(), g.detach(), None if v is None else v.detach())
        with torch.no_grad():
            self.target_energy = term.pair_sum(target_side, target_side)
        self._cross_side = (target_side[0], -2.0 * target_side[1], target_side[2])

    def __call__(self, source) -> torch.Tensor:
        S = as_cells(source, "source")
        self.term._check_pair(S, self.target)
        side = self.term.side(S)
        return self.term.pair_sum(side, side) + self.term.pair_sum(side, self._cross_side) + self.target_energy


class Currents(ShapeDistance):
    """Currents (Vaillant & Glaunès 2005): ``k_u(u, v) = u·v``, oriented; a flipped cell cancels its twin.

    Parameters: as ``ShapeDistance`` (without ``direction``).
    """

    def __init__(self, sigma=None, *, kernel=None, backend="auto", truncate=None, factorize=True):
        super().__init__(sigma, kernel=kernel, direction="linear", backend=backend, truncate=truncate,
                         factorize=factorize)


class Varifold(ShapeDistance):
    """Varifolds (Charon & Trouvé 2013; oriented: Kaltenmark, Charlier & Charon 2017).

    Parameters
    ----------
    sigma, kernel, backend, truncate, factorize
        As ``ShapeDistance``.
    oriented : bool
        ``True``: ``k_u = exp(2 (u·v − 1)/σ_u²)`` (oriented varifold). ``False`` (default): unoriented.
    angular : {"binet", "gaussian"}
        Unoriented direction kernel: Cauchy–Binet ``(u·v)²`` (default, the KeOps tutorial's and Deformetrica's) or
        ``exp(2 ((u·v)² − 1)/σ_u²)``. Oriented varifolds always use the Gaussian on the sphere.
    sigma_u : float
        Width of the Gaussian direction kernels (default 0.5).
    """

    ANGULAR = ("binet", "gaussian")

    def __init__(self, sigma=None, *, kernel=None, oriented: bool = False, angular: str = "binet",
                 sigma_u: float = 0.5, backend="auto", truncate=None, factorize=True):
        check_choice("angular", angular, self.ANGULAR)
        if oriented:
            direction = "sphere"
        else:
            direction = "binet" if angular == "binet" else "sphere_unoriented"
        super().__init__(sigma, kernel=kernel, direction=direction, sigma_u=sigma_u, backend=backend,
                         truncate=truncate, factorize=factorize)


class Measure(ShapeDistance):
    """Kernel distance between measures (point clouds with weights, or cells weighted by their sizes):
    ``k_u ≡ 1`` (MMD). Parameters: as ``ShapeDistance`` (without ``direction``)."""

    def __init__(self, sigma=None, *, kernel=None, backend="auto", truncate=None, factorize=True):
        super().__init__(sigma, kernel=kernel, direction="constant", backend=backend, truncate=truncate,
                         factorize=factorize)
