"""Random warps with known truth both ways, for the image-registration benchmark (``bench_images.py --suite``).

Every family returns a :class:`Truth` on the fixed grid: the fixed -> moving map ``T`` (the answer a registration
should find, ``x -> x + u(x)``) and its inverse ``T^-1`` (``y -> y + w(y)``, used to make the moving image
``M = F o T^-1``), both as displacements in voxel-index units of the grid (world mm through the affine's linear
part), and the largest inverse residual over the grid. Families:

``rd``
    ``registration.data.random_diffeomorphism`` (the project's own: smoothing in mm, flow of a stationary field).
``svf``
    A white-noise vector field smoothed by a Gaussian of ``sigma`` voxels (FFT), tapered to zero at the border,
    and integrated for unit time by scaling and squaring: ``T = exp(v)``, ``T^-1 = exp(-v)``.
``bspline``
    A cubic B-spline free-form displacement ``T = id + b`` on a control grid of ``spacing`` mm with random
    coefficients, scaled to the amplitude and capped so that ``max ||Db||_F <= 0.45`` on the grid (then
    ``id + b`` is injective); ``T^-1`` by the fixed-point iteration ``w <- -b(y + w)`` (a contraction).

The residual of the pair is ``|T^-1(T(x)) - x|`` (``rd``, ``svf``; ``T^-1`` interpolated linearly, as the moving
image is) or ``|T(T^-1(y)) - y|`` (``bspline``, ``T`` evaluated exactly), in mm; ``svf`` and ``rd`` polish ``T`` by
the fixed-point iteration ``u <- -w(x + u)`` until that residual is below ``TOL_MM`` (or stops decreasing).
Everything is seeded (private generators); nothing depends on global random state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TOL_MM = 1e-3  # stated tolerance of every truth: max residual |T^-1(T(x)) - x| over the grid (mm)


@dataclass
class Truth:
    """A warp with known answer on a grid.

    Attributes
    ----------
    forward : numpy.ndarray
        ``(d, *shape)`` voxel units: ``T(x) = x + forward(x)`` (fixed -> moving, the registration's answer).
    inverse : numpy.ndarray
        ``(d, *shape)`` voxel units: ``T^-1(y) = y + inverse(y)`` (moving -> fixed).
    params : dict
        Family, seed, parameters, the actual max displacement (mm), the residual (mm), min / max det DT.
    """

    forward: np.ndarray
    inverse: np.ndarray
    params: dict = field(default_factory=dict)


def _torch():
    import torch

    return torch


class _Sampler:
    """Linear interpolation of fields on one grid at displaced grid points (voxel units), border padding."""

    def __init__(self, shape):
        torch = _torch()
        self.shape = tuple(shape)
        self.d = len(shape)
        axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in self.shape]
        self.base = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)[None]  # (1, *shape, d)
        self.scale = torch.tensor([2.0 / max(n - 1, 1) for n in self.shape][::-1], dtype=torch.float64)

    def __call__(self, f, disp):
        """``f(x + disp(x))``: ``f`` (c, *shape), ``disp`` (d, *shape) voxel units, both float64 tensors."""
        torch = _torch()
        grid = self.base + torch.movedim(disp.flip(0), 0, -1)[None] * self.scale
        out = torch.nn.functional.grid_sample(f[None], grid, mode="bilinear", padding_mode="border",
                                              align_corners=True)
        return out[0]


def world_norm(disp: np.ndarray, lin: np.ndarray) -> np.ndarray:
    """``|A disp|`` in mm for voxel-unit displacements ``(d, *shape)`` and the affine's linear part ``A``."""
    return np.linalg.norm(np.tensordot(lin, disp, axes=1), axis=0)


def to_world(disp: np.ndarray, lin: np.ndarray) -> np.ndarray:
    """Voxel-unit displacement ``(d, *shape)`` -> world mm components."""
    return np.tensordot(lin, disp, axes=1)


def jacobian_range(disp: np.ndarray) -> tuple[float, float]:
    """Min and max of ``det D(x + disp)`` (central differences, voxel units) over the grid."""
    d = disp.shape[0]
    grads = [np.gradient(disp[i]) for i in range(d)]
    jac = np.empty((d, d) + disp.shape[1:])
    for i in range(d):
        for j in range(d):
            jac[i, j] = grads[i][j] + (1.0 if i == j else 0.0)
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    return float(det.min()), float(det.max())


def _residual(fwd, inv, sampler):
    """``|fwd + inv(x + fwd)|`` (voxel units): how far ``T^-1(T(x))`` is from ``x``."""
    return fwd + sampler(inv, fwd)


def sample_points(f, pts):
    """Linear interpolation of ``f`` (c, *shape) at points ``pts`` (d, n) in voxel units (border padding)."""
    torch = _torch()
    shape = f.shape[1:]
    d = len(shape)
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], dtype=torch.float64)
    grid = (pts * scale[:, None] - 1.0).flip(0).T.reshape((1, -1) + (1,) * (d - 1) + (d,))
    out = torch.nn.functional.grid_sample(f[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(f.shape[0], -1)


def _newton_inverse(u, w, lin_t, mask, max_iter: int = 30):
    """Solve ``u + w(x + u) = 0`` by Newton's method at the grid points in ``mask`` (in place on ``u``).

    The Jacobian of ``w`` is the central difference (step 1/4 voxel) of its linear interpolant. Used where the
    fixed-point iteration does not contract (``||Dw|| > 1``: strongly expanding regions of ``T^-1``).
    """
    torch = _torch()
    d = u.shape[0]
    idx = torch.nonzero(mask, as_tuple=True)
    x = torch.stack([i.to(torch.float64) for i in idx])  # (d, n)
    ub = u[(slice(None),) + idx].clone()
    eye = torch.eye(d, dtype=torch.float64)
    for _ in range(max_iter):
        p = x + ub
        res = ub + sample_points(w, p)
        if float((lin_t @ res).norm(dim=0).max()) <= 0.1 * TOL_MM:
            break
        cols = [(sample_points(w, p + 0.25 * eye[:, j:j + 1]) - sample_points(w, p - 0.25 * eye[:, j:j + 1])) / 0.5
                for j in range(d)]
        jac = eye[None] + torch.stack(cols, dim=-1).permute(1, 0, 2)  # (n, d, d)
        ub = ub - torch.linalg.solve(jac, res.T[..., None])[..., 0].T
    u[(slice(None),) + idx] = ub
    return u


def polish_forward(fwd: np.ndarray, inv: np.ndarray, lin: np.ndarray, fixed_point_iter: int = 10):
    """Make ``T`` the inverse of the (linearly interpolated) ``T^-1``: solve ``u + w(x + u) = 0`` at every voxel.

    A few fixed-point iterations ``u <- -w(x + u)`` where they reduce the residual, then Newton's method at the
    voxels still above ``TOL_MM / 10``. Returns the polished forward displacement and the max residual (mm).
    """
    torch = _torch()
    sampler = _Sampler(fwd.shape[1:])
    u, w = torch.as_tensor(fwd).clone(), torch.as_tensor(inv)
    lin_t = torch.as_tensor(lin)

    def res_mm(a):
        return torch.einsum("ij,j...->i...", lin_t, _residual(a, w, sampler)).norm(dim=0)

    err = res_mm(u)
    for _ in range(fixed_point_iter):
        cand = -sampler(w, u)
        err_c = res_mm(cand)
        better = err_c < err
        u = torch.where(better[None], cand, u)
        err = torch.minimum(err, err_c)
    bad = err > 0.1 * TOL_MM
    if bool(bad.any()):
        u = _newton_inverse(u, w, lin_t, bad)
        err = res_mm(u)
    return u.numpy(), float(err.max())


def _smooth_noise(shape, sigma: float, rng) -> np.ndarray:
    """``(d, *shape)`` white noise smoothed by a Gaussian of ``sigma`` voxels (FFT), tapered to 0 at the border."""
    torch = _torch()
    d = len(shape)
    noise = torch.as_tensor(rng.standard_normal((d,) + tuple(shape)))
    freqs = [2 * math.pi * torch.fft.fftfreq(n, dtype=torch.float64) for n in shape]
    w2 = sum(f.reshape([-1 if i == j else 1 for j in range(d)]) ** 2 for i, f in enumerate(freqs))
    dims = tuple(range(1, d + 1))
    v = torch.fft.ifftn(torch.fft.fftn(noise, dim=dims) * torch.exp(-0.5 * sigma ** 2 * w2), dim=dims).real
    taper = torch.ones(tuple(shape), dtype=torch.float64)
    for i, n in enumerate(shape):
        x = torch.arange(n, dtype=torch.float64)
        width = min(2.0 * sigma, n / 4.0)
        edge = torch.clamp(torch.minimum(x, n - 1 - x) / width, 0, 1)
        taper = taper * torch.sin(0.5 * math.pi * edge).reshape([-1 if j == i else 1 for j in range(d)]) ** 2
    return (v * taper).numpy()


def exp_velocity(v: np.ndarray, sampler=None) -> np.ndarray:
    """``exp(v) - id`` (voxel units) by scaling and squaring: ``2^-K v``, then ``K`` self-compositions."""
    torch = _torch()
    sampler = sampler or _Sampler(v.shape[1:])
    vt = torch.as_tensor(v)
    vmax = float(vt.norm(dim=0).max())
    k = max(6, math.ceil(math.log2(max(vmax, 1e-12) / 0.25)))
    u = vt / 2 ** k
    for _ in range(k):
        u = u + sampler(u, u)
    return u.numpy()


def svf_warp(shape, lin, *, sigma: float, max_mm: float, seed: int) -> Truth:
    """The ``svf`` family: Gaussian-smoothed random stationary velocity, scaling and squaring (see module)."""
    rng = np.random.default_rng([seed, 2])
    v = _smooth_noise(shape, sigma, rng)
    # scale to the target amplitude: the flow is not linear in v, so estimate on a grid subsampled to <= 1e6
    # nodes (v is smooth over >= 4 voxels) and correct twice
    stride = max(1, math.ceil((np.prod(shape) / 1e6) ** (1.0 / len(shape))))
    sub = (slice(None),) + (slice(None, None, stride),) * len(shape)
    vs = v[sub] / stride
    scale = max_mm / float(world_norm(vs * stride, lin).max())
    for _ in range(2):
        peak = float(world_norm(exp_velocity(vs * scale) * stride, lin).max())
        scale *= max_mm / peak
    sampler = _Sampler(shape)
    v = v * scale
    fwd, inv = exp_velocity(v, sampler), exp_velocity(-v, sampler)
    fwd, res = polish_forward(fwd, inv, lin)
    return Truth(fwd, inv, {"family": "svf", "seed": seed, "sigma_vox": sigma, "target_max_mm": max_mm,
                            "residual_max_mm": res})


def rd_warp(shape, affine, *, max_mm: float, smoothness_mm: float, seed: int) -> Truth:
    """The ``rd`` family: ``registration.data.random_diffeomorphism`` (its ``u`` is ``T^-1``, its ``w`` is ``T``)."""
    from registration.data import random_diffeomorphism

    d = len(shape)
    lin = affine[:d, :d]
    warp = random_diffeomorphism(shape, affine, max_displacement=max_mm, smoothness=smoothness_mm, seed=seed)
    lin_inv = np.linalg.inv(lin)
    inv = np.tensordot(lin_inv, warp.displacement, axes=1)  # moving = F(x + u(x)): u is T^-1
    fwd = np.tensordot(lin_inv, warp.inverse_displacement, axes=1)
    fwd, res = polish_forward(fwd, inv, lin)
    return Truth(fwd, inv, {"family": "rd", "seed": seed, "smoothness_mm": smoothness_mm, "target_max_mm": max_mm,
                            "residual_max_mm": res})


def _bspline_eval(coef: np.ndarray, pts: np.ndarray, step) -> np.ndarray:
    """Cubic B-spline displacement at points ``pts`` (d, *S) voxel units; control ``k`` sits at ``(k - 1) step``."""
    from scipy import ndimage

    d = coef.shape[0]
    t = np.stack([pts[i] / step[i] + 1.0 for i in range(d)])
    return np.stack([ndimage.map_coordinates(coef[i], t, order=3, prefilter=False, mode="grid-constant", cval=0.0)
                     for i in range(d)])


def bspline_warp(shape, lin, *, spacing_mm: float, max_mm: float, seed: int, max_grad: float = 0.45) -> Truth:
    """The ``bspline`` family (see module): exact ``T``, ``T^-1`` by fixed-point iteration to ``TOL_MM``."""
    torch = _torch()
    d = len(shape)
    rng = np.random.default_rng([seed, 3])
    vox = np.linalg.norm(lin, axis=0)
    step = spacing_mm / vox  # control spacing in voxels, per axis
    n_ctrl = [int(math.ceil((n - 1) / s)) + 3 for n, s in zip(shape, step)]
    coef = rng.standard_normal([d] + n_ctrl)
    for i, (n, s) in enumerate(zip(shape, step)):  # control points outside the image carry no displacement
        pos = (np.arange(n_ctrl[i]) - 1.0) * s
        outside = (pos < 0) | (pos > n - 1)
        coef[(slice(None),) + (slice(None),) * i + (outside,)] = 0.0
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    fwd = _bspline_eval(coef, grid, step)
    scale = max_mm / float(world_norm(fwd, lin).max())
    fwd_mm = to_world(fwd * scale, lin)
    grad = float(np.sqrt(sum(g ** 2 for i in range(d) for g in np.gradient(fwd_mm[i], *vox))).max())
    del fwd_mm
    capped = grad > max_grad
    if capped:  # ||Db|| < 1 makes id + b injective and the fixed-point iteration a contraction
        scale *= max_grad / grad
    coef, fwd = coef * scale, fwd * scale
    # inverse: w <- -b(y + w); first with b interpolated linearly (cheap), then exactly
    sampler = _Sampler(shape)
    b_t = torch.as_tensor(fwd)
    w = -b_t
    for _ in range(60):
        nxt = -sampler(b_t, w)
        change = float(world_norm((nxt - w).numpy(), lin).max())
        w = nxt
        if change < 0.1 * TOL_MM:
            break
    w = w.numpy()
    for _ in range(8):
        r = w + _bspline_eval(coef, grid + w, step)  # T(T^-1(y)) - y
        res = float(world_norm(r, lin).max())
        if res <= TOL_MM:
            break
        w = w - r
    actual = float(world_norm(fwd, lin).max())
    return Truth(fwd, w, {"family": "bspline", "seed": seed, "spacing_mm": spacing_mm, "target_max_mm": max_mm,
                          "grad_cap": max_grad, "capped": bool(capped), "max_grad_F": min(grad, max_grad),
                          "residual_max_mm": res, "actual_max_mm": actual})
