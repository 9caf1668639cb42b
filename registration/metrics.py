"""Image similarity measures, each a loss to minimise (0 at a perfect match for NCC / LNCC).

Sign and scale (all dimensionless, all resolution independent because they are means over voxels):

- ``ssd``:  ``mean((I - J)²)`` over the mask; images are normalised to [0, 1] upstream, so it lies in [0, 1].
- ``ncc``:  ``1 - ncc(I, J)`` with the global normalised cross-correlation, in [0, 2].
- ``lncc``: ``1 - mean(lncc²)`` where ``lncc`` is the local correlation in a box window of ``window`` voxels per
  side (ANTs' CC uses the square of the local correlation; so do we), in [0, 1]. With ``floor > 0`` the fixed
  image's local variance is raised by ``floor`` times its median over the foreground (``fixed_statistics``).

Each takes tensors of the same shape ``(*shape)`` (d = 1, 2 or 3 spatial axes) and an optional mask (same shape,
values in [0, 1]) that weights the voxels. One implementation for every dimension.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lddmm_nets.checks import check_positive

__all__ = ["METRICS", "Metric", "ssd", "ncc", "lncc", "get_metric", "box_mean", "fixed_statistics"]

_EPS = 1e-5


def _wmean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp_min(1e-12)


def _check_pair(warped: torch.Tensor, fixed: torch.Tensor, mask):
    if warped.shape != fixed.shape:
        raise ValueError(f"warped: expected the fixed image's shape {tuple(fixed.shape)}, got {tuple(warped.shape)}")
    if mask is not None and mask.shape != fixed.shape:
        raise ValueError(f"mask: expected the fixed image's shape {tuple(fixed.shape)}, got {tuple(mask.shape)}")


def ssd(warped: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference ``mean((I - J)²)`` (weighted by ``mask``). Scalar tensor."""
    _check_pair(warped, fixed, mask)
    return _wmean((warped - fixed) ** 2, mask)


def ncc(warped: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - NCC(I, J)`` with the global normalised cross-correlation (weighted by ``mask``). Scalar tensor."""
    _check_pair(warped, fixed, mask)
    a = warped - _wmean(warped, mask)
    b = fixed - _wmean(fixed, mask)
    num = _wmean(a * b, mask)
    den = torch.sqrt(_wmean(a * a, mask) * _wmean(b * b, mask) + _EPS ** 2)
    return 1.0 - num / den


def box_mean(x: torch.Tensor, window: int, d: int | None = None) -> torch.Tensor:
    """Local mean over a centred box of ``window`` voxels per side, cropped at the border (there the mean is over
    the part of the box inside the image), by direct sums of ``window`` shifted copies along each axis.

    Every output is a direct sum of ``window`` values per axis (no running sums), so float32 keeps the local
    variances ``E[x²] - E[x]²`` accurate to ~1e-7 for intensities in [0, 1] (a float32 running sum over a whole
    axis would not); it is also faster than average pooling for small windows. ``x`` is ``(*shape)``, or
    ``(C, *shape)`` with ``d`` given (the leading axes are batch axes).
    """
    d = x.dim() if d is None else d
    r = window // 2
    # zero-pad every spatial axis once, sum the shifted copies axis by axis (each sum crops its axis), and
    # divide once by the number of voxels of each cropped box (a product of per-axis counts)
    y = F.pad(x, [r, r] * d)
    for k in range(d):
        axis = x.dim() - d + k
        n = x.shape[axis]
        acc = y.narrow(axis, 0, n) + y.narrow(axis, 1, n)  # in place from here: no temporary per shift
        for s in range(2, window):
            acc.add_(y.narrow(axis, s, n))
        y = acc
    return y / _box_counts(x.shape[x.dim() - d:], window, x.dtype, x.device)


@functools.lru_cache(maxsize=32)
def _box_counts(shape, window: int, dtype, device) -> torch.Tensor:
    """Number of voxels of each cropped box (a product of per-axis counts), broadcastable to ``shape``; cached (the
    same few shapes come back at every evaluation; read only)."""
    r = window // 2
    d = len(shape)
    count = None
    for k, n in enumerate(shape):
        idx = torch.arange(n, device=device, dtype=dtype)
        c = (torch.clamp(idx + r, max=n - 1) - torch.clamp(idx - r, min=0) + 1).reshape(
            [-1 if a == k else 1 for a in range(d)])
        count = c if count is None else count * c
    return count


class _LNCCLoss(torch.autograd.Function):
    """``1 - Σ w lncc² / Σ w`` with a hand-written gradient w.r.t. the warped image only.

    Autograd through the box sums kept ~60 image-sized tensors alive for the backward pass; this keeps four
    (local mean and cross term, the denominator, the clamp's support). The box mean ``B`` is ``x ↦ S x / c``
    with ``S`` the symmetric box sum (zero padding) and ``c`` the cropped box size, so ``Bᵀ g = S (g / c)``.
    """

    @staticmethod
    def forward(ctx, warped, fixed, mj, vj, mask, window):
        d = fixed.dim()
        mi, mwf, mww = box_mean(torch.stack([warped, warped * fixed, warped * warped]), window, d)
        cross = mwf - mi * mj
        vi_raw = mww - mi * mi
        den = vi_raw.clamp_min(0) * vj + _EPS ** 2
        cc2 = cross * cross / den
        if mask is None:
            total, weight = cc2.sum(), float(cc2.numel())
        else:
            total, weight = (cc2 * mask).sum(), float(mask.sum().clamp_min(1e-12))
        ctx.window, ctx.weight = window, weight
        ctx.save_for_backward(warped, fixed, mj, vj, mask, mi, cross, den, vi_raw >= 0)
        return 1.0 - total / weight

    @staticmethod
    def backward(ctx, gout):
        warped, fixed, mj, vj, mask, mi, cross, den, pos = ctx.saved_tensors
        g = -gout / ctx.weight
        if mask is not None:
            g = g * mask
        a = g * 2.0 * cross / den                                 # d/d mwf
        b = torch.where(pos, -g * cross * cross * vj / (den * den), torch.zeros((), dtype=den.dtype, device=den.device))  # d/d mww
        grads = torch.stack([-mj * a - 2.0 * mi * b, a, b])       # d/d (mi, mwf, mww)
        d = fixed.dim()
        count = _box_counts(fixed.shape, ctx.window, fixed.dtype, fixed.device)
        back = box_mean(grads / count, ctx.window, d) * count     # Bᵀ = S (· / c), and box_mean is S(·) / c
        return back[0] + back[1] * fixed + 2.0 * warped * back[2], None, None, None, None, None


def fixed_statistics(fixed: torch.Tensor, window: int, floor: float = 0.0, mask: torch.Tensor | None = None):
    """Local mean and variance of the fixed image, reused by every LNCC evaluation against it.

    ``floor > 0`` adds ``floor`` times the median local variance of the foreground (the mask's voxels, else those
    above a tenth of the fixed image's range) to every local variance. A window of far less contrast than the
    image's typical one (a plateau such as deep white matter) then weighs ``v / (v + floor median)`` instead of
    fully: plain LNCC normalises its faint texture up to full weight, where a bias field's ramp or the noise of the
    moving image correlates with it and pushes the map. Returns ``(fixed, mean, variance)``, each ``(*shape)``.
    """
    f = fixed
    mj = box_mean(f, window)
    vj = (box_mean(f * f, window) - mj * mj).clamp_min(0)
    if floor > 0:
        fg = mask > 0 if mask is not None else f > f.min() + 0.1 * (f.max() - f.min())
        vj = vj + floor * (vj[fg] if bool(fg.any()) else vj).median()
    return f, mj, vj


def lncc(warped: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor | None = None, *,
         window: int = 5, floor: float = 0.0, fixed_stats=None) -> torch.Tensor:
    """``1 - mean(lncc²)``: local normalised cross-correlation in a ``window``-voxel box. Scalar tensor.

    Parameters
    ----------
    warped, fixed : torch.Tensor
        ``(*shape)`` images, ``d = 1..3`` spatial axes.
    mask : torch.Tensor, optional
        ``(*shape)`` weights of the voxels in the mean.
    window : int
        Odd box width in voxels (``>= 3``).
    floor : float
        Relative floor of the fixed image's local variance (``fixed_statistics``; 0: plain LNCC).
    fixed_stats : tuple, optional
        ``fixed_statistics(fixed, window, floor, mask)`` computed once (the fixed image does not change during an
        optimisation).
    """
    _check_pair(warped, fixed, mask)
    if not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"window: expected an odd integer >= 3 (voxels), got {window!r}")
    if not 1 <= fixed.dim() <= 3:
        raise ValueError(f"fixed: expected 1 to 3 spatial axes, got shape {tuple(fixed.shape)}")
    # local statistics by direct box sums (separable pooling) in the inputs' dtype: the variances are
    # differences of nearly equal local means, accurate to ~1e-7 in float32 for [0, 1] intensities (running sums
    # in float32 were not: their rounding noise made the loss random in flat regions)
    fixed, mj, vj = fixed_statistics(fixed, window, floor, mask) if fixed_stats is None else fixed_stats
    if not (fixed.requires_grad or mj.requires_grad or vj.requires_grad
            or (mask is not None and mask.requires_grad)):  # the usual case: the warped image alone is optimised
        return _LNCCLoss.apply(warped, fixed, mj, vj, mask, window)
    mi, mwf, mww = box_mean(torch.stack([warped, warped * fixed, warped * warped]), window, fixed.dim())
    cross = mwf - mi * mj
    vi = (mww - mi * mi).clamp_min(0)
    cc2 = cross * cross / (vi * vj + _EPS ** 2)
    return 1.0 - _wmean(cc2, mask)


METRICS = {"ssd": ssd, "ncc": ncc, "lncc": lncc}


@dataclass(frozen=True)
class Metric:
    """A similarity loss by name, with its options (``window`` for LNCC).

    ``metric(warped, fixed, mask)`` evaluates it; ``metric.bind(fixed, mask)`` returns ``warped ↦ loss`` with
    everything that depends on the fixed image alone computed once (LNCC's local statistics): an optimisation
    against one fixed image calls the bound loss.
    """

    name: str
    window: int = 5
    floor: float = 0.0

    def __call__(self, warped: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor | None = None):
        if self.name == "lncc":
            return lncc(warped, fixed, mask, window=self.window, floor=self.floor)
        return METRICS[self.name](warped, fixed, mask)

    def bind(self, fixed: torch.Tensor, mask: torch.Tensor | None = None):
        """``warped ↦ loss(warped, fixed, mask)`` with the fixed image's statistics precomputed (no gradient flows
        to them unless ``fixed`` requires one)."""
        if self.name != "lncc":
            return lambda warped: METRICS[self.name](warped, fixed, mask)
        stats = None
        if not fixed.requires_grad:
            with torch.no_grad():
                stats = fixed_statistics(fixed, self.window, self.floor, mask)
        return lambda warped: lncc(warped, fixed, mask, window=self.window, floor=self.floor, fixed_stats=stats)


def get_metric(name: str, *, window: int = 5, floor: float = 0.0) -> Metric:
    """The ``Metric`` for ``name`` in ``METRICS`` (``window`` and ``floor`` apply to ``lncc``).

    Raises
    ------
    ValueError
        An unknown name, an LNCC window that is not an odd integer >= 3, or a floor that is not a finite number >= 0.
    """
    if name not in METRICS:
        raise ValueError(f"metric: expected one of {sorted(METRICS)}, got {name!r}")
    if name == "lncc" and (isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0):
        raise ValueError(f"window: expected an odd integer >= 3 (voxels), got {window!r}")
    return Metric(name, int(window), check_positive("floor", floor, allow_zero=True))
