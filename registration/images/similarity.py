"""The similarity box: ``psi ↦ D(M ∘ psi↑, F)`` for a map on the deformation grid, computed only where it matters.

The map's displacement is upsampled (corner-aligned multilinear, separable) straight to ``grid_sample``'s normalised
coordinates, and only on the nodes of a box of the level grid: for LNCC, the bounding box of the fixed image's
nonzero voxels (and of the mask's) with a margin of ``2 r + 1`` voxels (``r`` = half window). Outside it the fixed
image is 0 over every LNCC window, so there ``lncc² = 0`` whatever the warped image: the full-grid loss
``1 - Σ lncc² w / Σ w`` is recovered exactly from the box's. Other metrics use the whole grid (SSD / NCC see the
warped image in the background too). Per level, everything that does not depend on the map (box, interpolation
weights, normalised box coordinates) is computed once.

The moving image is interpolated with a cubic kernel in 2-D (``grid_sample``'s bicubic, Keys' a = -0.75, C¹) and
multilinearly in 3-D (torch has no tricubic ``grid_sample``). With bilinear interpolation the objective is only
piecewise smooth: its gradient jumps wherever a warped node crosses a pixel edge, and the loss of a noisy image
changes with the sub-pixel offset (interpolation averages the noise). Measured on the 2-D cases of
``scripts/bench_images.py --suite`` (T1 and MNI coronal slices, 18 cases, dipy SyN as reference): more finest-level
iterations made Dice *worse* with bilinear interpolation, even without noise (``t1slice/rd-0/none``, 15 iterations:
Dice -0.0098 against dipy, 5: -0.0057); with bicubic the median Dice gap fell from -0.0028 to -0.0019 and the
median map error from +0.037 to -0.007 mm against dipy's.
"""

from __future__ import annotations

import math

import torch

from lddmm_nets.fields import GRID_SAMPLE_MODES, interpolate, resample_map
from lddmm_nets.grid import Grid

__all__ = ["BoxSimilarity", "INTERP"]

#: the interpolation of the moving image per dimension (``lddmm_nets.fields.interpolate``; the module docstring)
INTERP = {1: "linear", 2: "cubic", 3: "linear"}


def _axis_lerp(src: int, dst: int, lo: int, hi: int, dtype, device):
    """Corner-aligned linear resampling from ``src`` to ``dst`` nodes along one axis, for the output nodes
    ``lo .. hi-1`` only: ``(i0, i1, w)`` with ``out[j] = lerp(x[i0[j]], x[i1[j]], w[j])``."""
    t = torch.arange(lo, hi, dtype=torch.float64) * ((src - 1) / (dst - 1))
    i0 = torch.floor(t).clamp(0, src - 2).long()
    w = (t - i0.double()).clamp(0.0, 1.0)
    return i0.to(device), (i0 + 1).to(device), w.to(dtype=dtype, device=device)


def _box(metric: str, window: int, fixed: torch.Tensor, mask: torch.Tensor | None) -> tuple[list, list]:
    """Lower and upper node indices of the box the loss is evaluated on (the whole grid but for LNCC)."""
    shape = tuple(fixed.shape)
    d = len(shape)
    lo, hi = [0] * d, list(shape)
    if metric == "lncc":
        r = window // 2
        nz = torch.nonzero(fixed != 0)
        if len(nz):
            lo = [max(int(a) - 2 * r - 1, 0) for a in nz.min(0).values]
            hi = [min(int(b) + 2 * r + 2, n) for b, n in zip(nz.max(0).values, shape)]
        if mask is not None:
            nzm = torch.nonzero(mask != 0)
            if len(nzm):
                lo = [max(a, int(b) - r) for a, b in zip(lo, nzm.min(0).values)]
                hi = [min(a, int(b) + r + 1) for a, b in zip(hi, nzm.max(0).values)]
            hi = [max(a, b) for a, b in zip(lo, hi)]
    if any(b - a < 2 for a, b in zip(lo, hi)):  # degenerate box (e.g. an empty mask): the whole grid
        lo, hi = [0] * d, list(shape)
    return lo, hi


class BoxSimilarity:
    """The level's similarity loss of a map on the deformation grid (see the module docstring).

    Parameters
    ----------
    metric : registration.metrics.Metric
        The similarity loss (LNCC restricts the box; its ``window`` sets the margin).
    moving, fixed : torch.Tensor
        ``(*grid.shape)`` images on the level grid.
    mask : torch.Tensor or None
        ``(*grid.shape)`` weights.
    grid : Grid
        The level grid of the images.
    def_grid : Grid, optional
        The deformation grid of the maps (covering the same box); None when only ``loss_on_box`` is needed.
    """

    def __init__(self, metric, moving, fixed, mask, grid: Grid, def_grid: Grid | None):
        shape = grid.shape
        d = grid.ndim
        self.moving, self.grid, self.def_grid = moving, grid, def_grid
        dtype, dev = fixed.dtype, fixed.device
        lo, hi = _box(metric.name, metric.window, fixed, mask)
        self.box = tuple(slice(a, b) for a, b in zip(lo, hi))
        full = self.box == tuple(slice(0, n) for n in shape)
        self.fixed = fixed if full else fixed[self.box].contiguous()
        self.mask = None if mask is None else (mask if full else mask[self.box].contiguous())
        # the box's share of the full-grid weight (LNCC only; 1 for the whole grid)
        w_full = float(mask.sum()) if mask is not None else float(math.prod(shape))
        w_box = float(self.mask.sum()) if mask is not None else float(math.prod(self.fixed.shape))
        self.share = w_box / max(w_full, 1e-12)
        self.full = full
        self.loss = metric.bind(self.fixed, self.mask)  # the fixed image's statistics, once per level
        self.fast = (def_grid is not None and d in (2, 3) and all(n > 1 for n in shape)
                     and all(n > 1 for n in def_grid.shape))
        if not self.fast:  # generic path: full-grid upsampling and interpolation, then the box
            return
        self.def_ident = def_grid.identity_map(dtype=dtype, device=dev)
        # every grid covers the same box (corners aligned): displacements to normalised units
        self.to_norm = torch.tensor([2.0 / e for e in grid.extent], dtype=dtype, device=dev).reshape((d,) + (1,) * d)
        self.lerps = []
        for m, n, a, b in zip(def_grid.shape, shape, lo, hi):
            self.lerps.append(("narrow", a, b - a) if m == n else ("lerp",) + _axis_lerp(m, n, a, b, dtype, dev))
        # normalised coordinates of the box nodes, grid_sample's order (last axis first), channels last
        axes = [torch.arange(a, b, dtype=dtype, device=dev) * (2.0 / (n - 1)) - 1.0 for a, b, n in zip(lo, hi, shape)]
        self.base = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)
        self.image = moving.reshape((1, 1) + shape)

    def warped(self, psi: torch.Tensor) -> torch.Tensor:
        """The moving image warped by ``psi`` (a map on the deformation grid), on the box."""
        if not self.fast:
            up = resample_map(psi, self.def_grid, self.grid)
            return interpolate(self.moving, up[(slice(None),) + self.box], self.grid, interp=INTERP[self.grid.ndim])
        d = self.grid.ndim
        # displacement in normalised units; non-finite or huge values (a diverging step) are clamped on the coarse
        # grid before they can reach grid_sample (beyond ±3 every padding is the same anyway); the optimiser's
        # feasibility check has already rejected non-finite maps
        u = torch.nan_to_num((psi - self.def_ident) * self.to_norm, nan=4.0, posinf=4.0, neginf=-4.0)
        u = u.clamp(-4.0, 4.0).flip(0).movedim(0, -1)
        # the outermost axis last: its gathers (and their backward) move contiguous slabs
        for k, op in reversed(list(enumerate(self.lerps))):
            if op[0] == "narrow":
                u = u.narrow(k, op[1], op[2])
            else:
                _, i0, i1, w = op
                u = torch.lerp(u.index_select(k, i0), u.index_select(k, i1),
                               w.reshape([-1 if a == k else 1 for a in range(d + 1)]))
        g = (self.base + u).unsqueeze(0)
        out = torch.nn.functional.grid_sample(self.image, g, mode=GRID_SAMPLE_MODES[INTERP[d]], padding_mode="border",
                                              align_corners=True)
        return out.reshape(self.fixed.shape)

    def loss_on_box(self, warped_box: torch.Tensor) -> torch.Tensor:
        """The full-grid loss from a warped image given on the box only."""
        sim = self.loss(warped_box)
        return sim if self.full else 1.0 - (1.0 - sim) * self.share

    def __call__(self, psi: torch.Tensor) -> torch.Tensor:
        return self.loss_on_box(self.warped(psi))
