"""``register_images``: prepare the pair, run the pyramid of geodesic levels, assemble the result.

The energy minimised at each level over the initial momentum ``m_0`` of a geodesic is

    E(m_0) = (λ / 2|Ω|) ‖v_0‖_V²  +  D(M ∘ ψ_1, F) / D(M, F),        v_0 = K ⋆ m_0,

with ``ψ_1`` the inverse map at time 1 of the EPDiff geodesic shot from ``m_0`` (``lddmm_nets.epdiff``), ``D`` the
similarity loss (``registration.metrics``) relative to its value at the level's start (so that one ``λ`` suits every
metric and intensity range), ``K`` a kernel of unit mass. The gradient is autograd through the discrete scheme
("discretise, then optimise"). The optimiser is the engine's L-BFGS (``lddmm_nets.optim``, Armijo line search),
with the parameters scaled so that a unit step moves the image by about one voxel; a step whose map folds (a
non-positive Jacobian determinant on the deformation grid) is infeasible, so the result is diffeomorphic on its grid.
A level stops when its budget is spent, when the objective decreased by less than ``tol`` (relative) over
``patience`` iterations, or when the line search makes no progress even from steepest descent; the level report
records which.

Geodesics: with ``geodesics="single"`` one geodesic carries the whole pyramid (each level starts from the previous
level's momentum; the result is the geodesic of the final ``m_0``); with ``geodesics="composed"`` (the default) each
level shoots segments, fresh geodesics from the moving image warped by all previous ones, with a kernel as wide in
that level's voxels at every level and tapered on the border; the transform is their composition (diffeomorphic since
every piece is, and checked on the composed map).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from lddmm_nets.fields import compose, interpolate, jacobian_determinant, resample_map, resize
from lddmm_nets.grid import Grid
from lddmm_nets.optim import ConvergenceWarning, minimize

from ..io import load_image
from ..metrics import get_metric
from ..threads import torch_threads
from .affine import affine_prealign, apply_affine, from_world, to_world
from .config import RegistrationConfig
from .geodesic import (LevelGeodesic, deformation_shrink, kernel_width, make_kernel, momentum_on, resolve_geometry,
                       shoot_maps)
from .preprocessing import PreparedPair, gaussian_smooth, piecewise_constant, prepare_pair
from .result import ImageRegistration, LevelReport, maps_to_transform, momentum_array
from .similarity import BoxSimilarity

__all__ = ["register_images", "geodesic_transform"]

#: composed geodesics: smallest Jacobian determinant a step may reach (a margin against rounding in compositions)
JACOBIAN_FLOOR = 1e-3


@dataclass
class _Problem:
    """Everything a level needs that does not change across levels."""

    pair: PreparedPair
    cfg: RegistrationConfig
    grid: Grid
    def_shrink: int
    def_grid: Grid
    dtype: torch.dtype
    device: torch.device
    fixed: torch.Tensor
    moving: torch.Tensor
    moving_np: np.ndarray
    mask: torch.Tensor | None
    loss_fn: Callable
    full_sim: BoxSimilarity
    sim_before: float
    affine: torch.Tensor | None
    kernel: object
    reach: float
    sigma: float
    volume: float
    callback: Callable | None


@dataclass
class _State:
    """What the pyramid carries from segment to segment."""

    P: torch.Tensor | None = None
    psi: torch.Tensor | None = None  # composed maps so far, on the finest deformation grid
    phi: torch.Tensor | None = None
    momenta: list = field(default_factory=list)
    energies: list = field(default_factory=list)
    levels: list = field(default_factory=list)


def _noisy_images(pair: PreparedPair, cfg: RegistrationConfig) -> RegistrationConfig:
    """The options for noisy images (``RegistrationConfig.noisy_*``) where either image is noisy: fit less of the
    noise (a shorter finest level, averaged in ``_run_segment``, a wider LNCC window; ``prepare_pair`` denoises)."""
    if not any(pair.noisy):
        return cfg
    finest = cfg.iterations[:-1] + (cfg.noisy_iterations,) if cfg.noisy_iterations is not None else cfg.iterations
    return replace(cfg, iterations=finest, window=cfg.noisy_window or cfg.window)


def _problem(pair: PreparedPair, cfg: RegistrationConfig, callback) -> _Problem:
    if cfg.metric == "auto":  # LNCC has no signal inside uniform regions: shapes get SSD
        cfg = replace(cfg, metric="ssd" if piecewise_constant(pair.fixed) else "lncc")
    cfg = _noisy_images(pair, cfg)
    grid = pair.grid
    dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
    dev = torch.device(cfg.device)
    loss_fn = get_metric(cfg.metric, window=cfg.window, floor=cfg.lncc_floor)
    F = torch.as_tensor(pair.fixed, dtype=dtype, device=dev)
    M = torch.as_tensor(pair.moving, dtype=dtype, device=dev)
    mask = None if pair.mask is None else torch.as_tensor(pair.mask, dtype=dtype, device=dev)
    full_sim = BoxSimilarity(loss_fn, M, F, mask, grid, None)
    sim_before = float(full_sim.loss_on_box(M[full_sim.box]))
    # the moving image already went through the initial affine A0 (prepare_pair); a pre-alignment A1 on top of it
    # gives the total fixed -> moving affine A0 A1 (frame coordinates), composed with the deformation at the end
    A = None if pair.initial_affine is None else torch.as_tensor(from_world(pair.initial_affine, grid),
                                                                  dtype=torch.float64, device=dev)
    if cfg.affine:
        A1 = affine_prealign(M.double(), F.double(), grid, loss_fn, None if mask is None else mask.double(),
                             cfg.affine_iterations, callback)
        M = interpolate(M, apply_affine(A1.to(dtype), grid.identity_map(dtype=dtype, device=dev)), grid,
                        padding="zeros")
        A = A1 if A is None else A @ A1
    A = None if A is None else A.to(dtype=dtype)
    shrink = deformation_shrink(cfg, grid)
    def_grid = grid.shrunk(shrink)
    sigma = kernel_width(cfg, grid, def_grid)
    kernel, reach = make_kernel(cfg.kernel, sigma, grid.ndim)
    cfg = resolve_geometry(cfg, grid)
    return _Problem(pair, cfg, grid, shrink, def_grid, dtype, dev, F, M, M.cpu().numpy(), mask, loss_fn, full_sim,
                    sim_before, A, kernel, reach, sigma, grid.volume, callback)


def _segment_geodesic(pb: _Problem, lv_grid: Grid, shrink: int, smooth: float, moving_np: np.ndarray):
    """The level's geodesic and kernel width. Composed segments use a tapered kernel, ``sigma_voxels`` of the
    level's voxels wide unless the user gave ``sigma``; a single geodesic keeps the problem's kernel."""
    cfg = pb.cfg
    kernel, reach, sigma, taper = pb.kernel, pb.reach, pb.sigma, 0.0
    if cfg.geodesics == "composed":
        if cfg.sigma is None:  # per-level kernels
            sigma = cfg.sigma_voxels * max(lv_grid.spacing)
            kernel, reach = make_kernel(cfg.kernel, sigma, pb.grid.ndim)
        taper = sigma
    geo = LevelGeodesic(cfg, kernel, reach, pb.grid, max(shrink, pb.def_shrink), moving_np, smooth, taper=taper,
                        dtype=pb.dtype, device=pb.device)
    return geo, sigma


def _objective(pb: _Problem, st: _State, geo: LevelGeodesic, sim_fn: BoxSimilarity, scale: float, sim0: float,
               floor: float, before: torch.Tensor | None):
    """``q ↦ (λ E / |Ω| + D / D_0, D)``, or None where the (composed) map folds.

    Composed segments are scored through the composition ``psi_acc ∘ psi_s`` (``before`` is ``psi_acc`` on the
    segment's grid) on the unwarped moving image, not on a moving image resampled by the previous segments: at the
    start of a segment its map is the identity, where a pre-resampled image is sampled exactly on its nodes, the kink
    of linear interpolation. There any step blurs the image and raises the loss to first order while the gradient is
    one-sided: the finest level's line search then made no progress at all.
    """
    composed = pb.cfg.geodesics == "composed"
    lam = pb.cfg.regularization

    def objective(q):
        psi, energy = geo.shoot(q * scale)
        with torch.no_grad():  # the discrete map must stay invertible: folds are infeasible steps
            check, check_grid = psi.detach(), geo.grid
            if composed:  # the composed map, on the grid where it is accumulated
                check = resample_map(check, geo.grid, pb.def_grid)
                check = check if st.psi is None else compose(st.psi, check, pb.def_grid)
                check_grid = pb.def_grid
            if not float(jacobian_determinant(check, check_grid).min()) > floor:  # NaN fails too
                return None
        sim = sim_fn(psi if before is None else compose(before, psi, geo.grid))
        return lam * energy / pb.volume + sim / sim0, sim

    return objective


def _run_segment(pb: _Problem, st: _State, li: int, lv_grid: Grid, Fl, Ml, maskl, shrink: int, smooth: float,
                 iters: int, seg: int):
    """One geodesic segment (or the level's geodesic): returns its geodesic, optimised momentum, D_0 and report."""
    t0 = time.perf_counter()
    cfg = pb.cfg
    moving_np = pb.moving_np
    if st.psi is not None and cfg.momentum == "scalar":  # the scalar momentum is defined on the current image
        with torch.no_grad():
            moving_np = interpolate(pb.moving, resample_map(st.psi, pb.def_grid, pb.grid), pb.grid).cpu().numpy()
    geo, sigma = _segment_geodesic(pb, lv_grid, shrink, smooth, moving_np)
    composed = cfg.geodesics == "composed"
    P0 = geo.zeros() if (st.P is None or composed) else momentum_on(st.P, geo.shape)
    scale = geo.scale()
    floor = JACOBIAN_FLOOR if composed else 0.0
    before = None
    if st.psi is not None:  # the starting point (the maps so far) must stay feasible
        with torch.no_grad():
            floor = min(floor, 0.5 * float(jacobian_determinant(st.psi, pb.def_grid).min()))
            before = resample_map(st.psi, pb.def_grid, geo.grid)
    sim_fn = BoxSimilarity(pb.loss_fn, Ml, Fl, maskl, lv_grid, geo.grid)
    with torch.no_grad():  # the loss where the segment starts (its map: the identity), with the same arithmetic
        start = geo.grid.identity_map(dtype=pb.dtype, device=pb.device) if before is None else before
        sim0 = max(float(sim_fn(start)), 1e-12)
    if iters == 0:  # no budget (e.g. an affine-only registration): the level keeps its start, unevaluated
        return geo, P0, sim0, LevelReport(shrink=shrink, shape=lv_grid.shape, spacing=lv_grid.spacing, iterations=0,
                                          evaluations=0, objective=[], similarity=[], stop_reason="max_iter",
                                          seconds=time.perf_counter() - t0, segment=seg, sigma=float(sigma))
    objective = _objective(pb, st, geo, sim_fn, scale, sim0, floor, before)
    report = None if pb.callback is None else (lambda it, f, sim: pb.callback(
        {"level": li, "iteration": it, "objective": f, "similarity": float(sim)}))
    average = cfg.noisy_average if any(pb.pair.noisy) and li == len(cfg.shrink_factors) - 1 else None
    options = dict(max_iter=iters, gtol=0.0, ftol=cfg.tol, patience=cfg.patience, line_search="armijo",
                   callback=report, warn=False, name=f"register_images level {li + 1}", average_from=average)
    res = minimize(objective, P0 / scale, **options)
    evals = res.n_eval
    if res.stop_reason == "infeasible_start":  # the guess upsampled from a coarser level folds here: restart at 0
        res = minimize(objective, torch.zeros_like(P0), **options)
        evals += res.n_eval
    lv = LevelReport(shrink=shrink, shape=lv_grid.shape, spacing=lv_grid.spacing, iterations=res.n_iter,
                     evaluations=evals, objective=list(res.history), similarity=[float(s) for s in res.aux_history],
                     stop_reason=res.stop_reason, seconds=time.perf_counter() - t0, segment=seg, sigma=float(sigma))
    if res.n_iter == 0:  # a budget spent is the pyramid's design; no step at all is a failure
        warnings.warn(f"register_images: level {li + 1} (shrink {shrink}) made no progress: {res.message} after "
                      f"{evals} evaluations", ConvergenceWarning, stacklevel=4)
    P = res.x
    if average is not None and not torch.equal(res.x_mean, P):  # the mean of fold-free iterates may fold
        with torch.no_grad():
            P = res.x_mean if objective(res.x_mean) is not None else P
    return geo, P * scale, sim0, lv


def _compose_segment(pb: _Problem, st: _State, geo: LevelGeodesic, P: torch.Tensor) -> None:
    """Append a segment: ``psi = psi_acc ∘ psi_s`` (fixed -> moving), ``phi = phi_s ∘ phi_acc`` (moving -> fixed)."""
    psi_s, phi_s, energy = geo.maps_on(P, pb.def_grid)
    with torch.no_grad():
        if st.psi is None:
            st.psi, st.phi = psi_s, phi_s
        else:
            st.psi = compose(st.psi, psi_s, pb.def_grid)
            st.phi = compose(phi_s, st.phi, pb.def_grid)
    st.momenta.append(P.detach())
    st.energies.append(energy / pb.volume)


def _run_level(pb: _Problem, st: _State, li: int, shrink: int, smooth: float, iters: int, n_seg: int) -> None:
    cfg = pb.cfg
    lv_grid = pb.grid.shrunk(shrink)
    if shrink > 1 and min(n for n in lv_grid.shape if n > 1) < 16 and li < len(cfg.shrink_factors) - 1:
        return  # too coarse to carry information: skip (the finest level always runs)
    Fl = resize(torch.as_tensor(gaussian_smooth(pb.pair.fixed, smooth), dtype=pb.dtype, device=pb.device),
                lv_grid.shape)
    Ml = resize(torch.as_tensor(gaussian_smooth(pb.moving_np, smooth), dtype=pb.dtype, device=pb.device),
                lv_grid.shape)
    maskl = None if pb.mask is None else (resize(pb.mask, lv_grid.shape) > 0.5).to(pb.dtype)
    level_sim0 = None
    for seg in range(n_seg if cfg.geodesics == "composed" else 1):
        geo, P, sim0, lv = _run_segment(pb, st, li, lv_grid, Fl, Ml, maskl, shrink, smooth, iters, seg)
        st.levels.append(lv)
        if lv.iterations > 0 or st.P is None:  # a level that did not move keeps the momentum at its resolution
            st.P = P
        if cfg.geodesics != "composed":
            continue
        _compose_segment(pb, st, geo, P)
        level_sim0 = sim0 if seg == 0 else level_sim0
        # a segment that no longer improves the match ends this level's segments
        last = lv.similarity[-1] if lv.similarity else math.inf
        if last > (1.0 - cfg.segment_gain) * sim0 or last < 1e-3 * level_sim0:
            break


def _final_maps(pb: _Problem, st: _State):
    """``(psi, phi, energy, P)`` of the whole registration on the full grid (before the affine)."""
    if pb.cfg.geodesics == "composed":
        psi = resample_map(st.psi, pb.def_grid, pb.grid)
        phi = resample_map(st.phi, pb.def_grid, pb.grid)
        return psi, phi, float(sum(st.energies)), st.momenta[0]
    geo = LevelGeodesic(pb.cfg, pb.kernel, pb.reach, pb.grid, pb.def_shrink, pb.moving_np, 0.0, dtype=pb.dtype,
                        device=pb.device)
    P = momentum_on(st.P, geo.shape)
    if not bool(P.any()):  # the geodesic of zero momentum stays at the identity
        ident = pb.grid.identity_map(dtype=pb.dtype, device=pb.device)
        return ident, ident.clone(), 0.0, P
    psi, phi, energy = geo.maps_on(P, pb.grid)
    return psi, phi, energy / pb.volume, P


def _assemble(pb: _Problem, st: _State, t0: float) -> ImageRegistration:
    grid, pair = pb.grid, pb.pair
    d = grid.ndim
    with torch.no_grad():
        psi, phi, energy, P = _final_maps(pb, st)
        box = (slice(None),) + pb.full_sim.box
        sim_after = float(pb.full_sim.loss_on_box(interpolate(pb.moving, psi[box], grid)))
        if pb.affine is not None:
            ident = grid.identity_map(dtype=pb.dtype, device=pb.device)
            back = apply_affine(torch.linalg.inv(pb.affine.double()).to(pb.dtype), ident)
            psi = apply_affine(pb.affine, psi)
            phi = back + interpolate(phi - ident, back, grid)
        warped = None
        if pair.same_grid:  # one interpolation of the original moving image on the grid, no world coordinates
            data = torch.as_tensor(np.asarray(pair.moving_image.data, dtype=np.float32), device=pb.device)
            warped = interpolate(data.to(pb.dtype), psi, grid, padding="zeros").cpu().numpy()
        transform = maps_to_transform(grid, psi, phi)
        del psi, phi
        P_full = P if tuple(P.shape[-d:]) == grid.shape else resize(P, grid.shape)
        extra = [pair.fixed_image.with_data(momentum_array(resize(m, grid.shape), d)) for m in st.momenta] \
            if pb.cfg.geodesics == "composed" else []
    if warped is None:
        warped_img = transform.apply(pair.moving_image.with_data(np.asarray(pair.moving_image.data, np.float32)))
    else:
        warped_img = pair.fixed_image.with_data(warped.astype(np.float32, copy=False))
    A = None if pb.affine is None else to_world(pb.affine.cpu().double().numpy(), grid)
    return ImageRegistration(fixed=pair.fixed_image, moving=pair.moving_image, transform=transform,
                             warped=warped_img, momentum=pair.fixed_image.with_data(momentum_array(P_full, d)),
                             config=pb.cfg, similarity_before=pb.sim_before, similarity_after=sim_after,
                             energy=energy, levels=st.levels, seconds=time.perf_counter() - t0,
                             stop_reason=st.levels[-1].stop_reason if st.levels else "", affine_matrix=A,
                             initial_affine=pair.initial_affine, momenta=extra, segment_energies=list(st.energies))


def _initial_momentum(momentum, pb: _Problem) -> torch.Tensor | None:
    """A warm-start momentum ``(d, *shape)`` on the problem's device, checked; None for none."""
    if momentum is None:
        return None
    data = np.asarray(momentum.data if hasattr(momentum, "data") else momentum, dtype=np.float32)
    d = pb.grid.ndim
    if pb.cfg.momentum != "vector" or pb.cfg.geodesics != "single":
        raise ValueError(f"initial_momentum: needs momentum='vector' and geodesics='single', got "
                         f"{pb.cfg.momentum!r} and {pb.cfg.geodesics!r}")
    if data.shape != pb.grid.shape + (d,) or not np.all(np.isfinite(data)):
        raise ValueError(f"initial_momentum: expected a finite array of shape {pb.grid.shape + (d,)} (the fixed "
                         f"grid's, components last), got shape {data.shape}")
    return torch.as_tensor(np.moveaxis(data, -1, 0), dtype=pb.dtype, device=pb.device)


def geodesic_transform(fixed, momentum, **options):
    """The transform of the geodesic shot from a vector momentum on ``fixed``'s grid, with the metric (kernel,
    deformation grid, time steps) that ``register_images(fixed, ..., **options)`` would use.

    Parameters
    ----------
    fixed : path, Image, nibabel image or array
        Gives the grid.
    momentum : array-like or Image
        ``(*shape, d)`` vector momentum (components along the voxel axes, density per mm^d), as
        ``ImageRegistration.momentum``.
    **options
        Options of ``register_images`` that set the metric (``sigma``, ``kernel``, ``n_steps``,
        ``deformation_shrink``, ``dtype``, ``device``); ``geodesics`` is "single".

    Returns
    -------
    DisplacementTransform
    """
    img = load_image(fixed, name="fixed")
    grid = img.grid
    cfg = resolve_geometry(RegistrationConfig.for_dim(grid.ndim, **{**options, "geodesics": "single"}), grid)
    data = np.asarray(momentum.data if hasattr(momentum, "data") else momentum, dtype=np.float32)
    if data.shape != grid.shape + (grid.ndim,):
        raise ValueError(f"momentum: expected shape {grid.shape + (grid.ndim,)}, got {data.shape}")
    with torch.no_grad():
        psi, phi = shoot_maps(cfg, grid, torch.as_tensor(np.moveaxis(data, -1, 0)))
    return maps_to_transform(grid, psi, phi)


def register_images(fixed, moving, *, metric: str | None = None, window: int | None = None,
                    lncc_floor: float | None = None, denoise: bool | None = None, sigma: float | None = None,
                    kernel: str | None = None, regularization: float | None = None,
                    shrink_factors: Sequence[int] | None = None,
                    smoothing_sigmas: Sequence[float] | None = None, iterations: Sequence[int] | None = None,
                    n_steps: int | None = None, momentum: str | None = None, geodesics: str | None = None,
                    segments: int | Sequence[int] | None = None, deformation_shrink: int | None = None,
                    affine: bool | None = None, affine_iterations: int | None = None, fixed_mask=None,
                    moving_mask=None, tol: float | None = None, patience: int | None = None, dtype: str | None = None,
                    device: str | None = None, initial_affine=None, initial_momentum=None,
                    threads: int | str | None = "auto",
                    callback: Callable[[dict], None] | None = None) -> ImageRegistration:
    """Register ``moving`` onto ``fixed`` by geodesic shooting (diffeomorphic, in physical space).

    Options left as None take the defaults for the images' dimension (``RegistrationConfig.for_dim``).

    Parameters
    ----------
    fixed, moving : path, Image, nibabel image or numpy array
        2-D or 3-D scalar images of the same dimension (arrays: unit spacing). The moving image is resampled
        onto the fixed grid through the affines first; any intensity range is fine (normalised inside).
    metric : {"auto", "lncc", "ncc", "ssd"}, optional
        Similarity loss (``registration.metrics``). Default ``"auto"``: LNCC (robust to bias fields and contrast
        changes, suits MRI), except SSD on the normalised intensities for a piecewise-constant fixed image (shapes
        and masks, where LNCC has almost no signal inside uniform regions).
    window : int, optional
        LNCC box width in voxels of each level (odd). Default 5 in 3-D; 7 in 2-D, 9 for noisy 2-D images (white
        noise above 1 % of the intensity range in either image, ``preprocessing.noise_level``), where the finest
        level also runs fewer iterations and keeps the mean of its iterates (``RegistrationConfig.noisy_iterations``
        and ``noisy_average``); an explicit ``window`` or ``iterations`` is used as given.
    lncc_floor : float, optional
        LNCC's local variance of the fixed image gets a floor of this fraction of its median over the foreground,
        so that plateaus (deep white matter) weigh less than edges (``registration.metrics.fixed_statistics``).
        Default 0.05 in 2-D; 0 (plain LNCC) in 3-D, where it made the maps worse.
    denoise : bool, optional
        Register each noisy image after an edge-preserving diffusion (``preprocessing.denoise``; the outputs warp
        the images as given). Default: True in 2-D, False in 3-D.
    sigma : float, optional
        Kernel width in mm. Default: one geodesic: the larger of 2 image voxels and 1 deformation-grid voxel,
        the same physical kernel at every level; composed geodesics: 2 voxels of each level's grid.
    kernel : {"sum", "gaussian", "matern"}, optional
        ``"sum"`` (default): equal-mass sum of unit-mass Gaussians of widths σ, 2σ, 4σ (multi-scale);
        ``"gaussian"``: one Gaussian; ``"matern"``: Matérn ν = 5/2.
    regularization : float, optional
        λ (see ``registration.images.pipeline``; the data term is relative to its initial value); larger is
        smoother. Default 0.01 (3-D), 0.001 (2-D).
    shrink_factors, smoothing_sigmas, iterations : sequences, optional
        The pyramid: per level the shrink factor, the Gaussian smoothing (fine voxels) of both images and the
        L-BFGS iteration budget (per segment). Defaults: 3-D ``(4, 1)`` and ``(50, 9)``; 2-D ``(8, 4, 2, 1)`` and
        ``(20, 20, 20, 10)``; smoothing ``shrink / 2`` (0 at shrink 1); with explicit shrink factors but no
        iterations, 50 per coarse level and 10 at the last. Levels whose grid would be smaller than 16 voxels
        along an axis are dropped.
    n_steps : int, optional
        Time steps of the shooting (semi-Lagrangian, first order in time). Default 2.
    momentum : {"vector", "scalar"}, optional
        Optimise a vector momentum ``m_0`` (EPDiff, default) or the scalar image momentum ``P_0`` with
        ``m_0 = -P_0 ∇M`` (THEORY §4). The vector parametrisation converges in far fewer L-BFGS iterations (its
        gradient is already smoothed by K), hence the default.
    geodesics : {"single", "composed"}, optional
        One geodesic for the whole pyramid (default for 3-D) or a composition of geodesic segments (default
        for 2-D; see ``registration.images.pipeline``).
    segments : int or sequence of int, optional
        ``geodesics="composed"``: the most segments per level (one number for all levels, or one per level).
        A level stops early once a segment improved the similarity by less than 5 %, or once the similarity
        is below 1/1000 of its value at the level's start. Default ``(4, 2, 1, 1)`` for the 2-D pyramid, else 1.
    deformation_shrink : int, optional
        The deformation (momentum, velocity, maps) lives on the image grid shrunk by at least this factor, and is
        upsampled to the image grid for the similarity. Default: one node per kernel width (``sigma_voxels``
        image voxels, or ``sigma`` mm; a small image keeps 16 nodes per axis) and at least the factor that keeps
        the finest deformation grid under 200,000 nodes: 2 for a 2 mm brain, a 4 mm one and a 2-D slice, 4 for a
        1 mm brain (``registration.images.geodesic.deformation_shrink``).
    affine : bool, optional
        Pre-align with an affine map (same metric) before the deformable registration (default False).
    affine_iterations : int, optional
        L-BFGS budget of the affine stage (default 50).
    fixed_mask, moving_mask : optional
        Binary masks (fixed / moving space) that restrict the similarity to their voxels.
    initial_affine : array-like or path, optional
        A fixed -> moving world (RAS) affine ``(d+1, d+1)`` from another tool, or a file: an ITK / ANTs transform
        (``.txt``, ``.tfm``, ``.mat``; LPS inside, converted) or a plain matrix (``.npy`` / text, RAS). The moving
        image is resampled through it before the deformable registration, and the result's transform is the
        composition (the affine after the deformation); with ``affine=True`` the pre-alignment starts from it.
    tol, patience : float, int, optional
        Stopping rule: stop a level when the objective decreased by less than ``tol`` (relative; default 1e-4 in
        3-D, 2e-3 in 2-D) over the last ``patience`` (default 5) iterations.
    dtype : {"float32", "float64"}, optional
    device : str, optional
        Torch device, e.g. ``"cpu"`` (default) or ``"cuda"``.
    initial_momentum : array-like or Image, optional
        ``(*fixed.shape, d)`` vector momentum on the fixed grid to start the optimisation from (a warm start, e.g.
        a previous registration's ``momentum`` in an atlas round); one geodesic only.
    threads : int, "auto", "all" or None
        Torch CPU threads for this call only (restored afterwards). ``"auto"`` (default): the cores other processes
        leave free, measured at the call (``registration.threads``), so that a busy machine does not make torch's
        threads wait for each other; ``"all"``: every available core; None: torch's current setting.
    callback : callable, optional
        Called after every iteration with a dict (level, iteration, objective, similarity); the CLI uses it
        for its progress bar.

    Returns
    -------
    ImageRegistration

    Raises
    ------
    ValueError
        Different dimensions, constant images, NaNs, 4-D images, bad options.
    FileNotFoundError
        A missing file.
    """
    options = dict(metric=metric, window=window, lncc_floor=lncc_floor, noisy_denoise=denoise, sigma=sigma,
                   kernel=kernel, regularization=regularization, shrink_factors=shrink_factors,
                   smoothing_sigmas=smoothing_sigmas,
                   iterations=iterations, n_steps=n_steps, momentum=momentum, geodesics=geodesics, segments=segments,
                   deformation_shrink=deformation_shrink, affine=affine, affine_iterations=affine_iterations, tol=tol,
                   patience=patience, dtype=dtype, device=device)
    with torch_threads(threads):
        t0 = time.perf_counter()
        fixed = load_image(fixed, name="fixed")  # its dimension chooses the defaults, which say how to treat noise
        cfg = RegistrationConfig.for_dim(fixed.ndim, **options)
        pair = prepare_pair(fixed, moving, fixed_mask, moving_mask, initial_affine, noise=cfg.noise_mode())
        pb = _problem(pair, cfg, callback)
        st = _State(P=_initial_momentum(initial_momentum, pb))
        for li, (shrink, smooth, iters, n_seg) in enumerate(zip(pb.cfg.shrink_factors, pb.cfg.smoothing_sigmas,
                                                                 pb.cfg.iterations, pb.cfg.segments)):
            _run_level(pb, st, li, shrink, smooth, iters, n_seg)
        return _assemble(pb, st, t0)
