"""The options of ``register_images`` and their defaults by dimension.

``RegistrationConfig()`` holds the 3-D defaults (T1 MRI at 1-2 mm) in its field defaults; ``for_dim(2)`` applies
the 2-D defaults (slices and shapes of any contrast, often with large deformations). Options a user sets override
them, and options implied by a default follow the user's choice instead of colliding with it: explicit shrink
factors get 50 iterations per coarse level and 10 at the last, one segment per level, and smoothing ``shrink / 2``;
``geodesics="single"`` gets one segment per level.

Evidence for the defaults (registration on MNI152 at 2 mm with random warps of 8 mm, three seeds): 2 time steps
instead of 3 change Dice GM / WM by at most 0.0003 and the error against the true map by < 0.005 mm, for 20-30 %
less time (with a 12 mm warp, WM Dice -0.001); 4 steps instead of 3 changed Dice by < 0.001 for 15 % more time.
3-D, the suite's 9 ``mni2`` cases (MNI152 at 2 mm; random-displacement, stationary-velocity and B-spline warps;
bias, noise and gamma perturbations), CPU time at one thread against dipy SyN's: one geodesic (the old default)
took 0.50x dipy's time but lost to dipy on the hardest case (``svf-1/bias-noise``: Dice GM / WM 0.962 / 0.932
against 0.975 / 0.951, map error 2.59 mm against 1.26 mm; the single geodesic's barrier stops it); composed
geodesics with segments (2, 1) and 2 time steps win or tie every case (there 0.976 / 0.955 and 1.29 mm) at 0.7x
dipy's CPU time; with 4 time steps the same accuracy at 0.93x. Iterations (30, 9) instead of (50, 9): the same
maps (the coarse level stops on its tolerance first); (50, 5): 0.51x dipy's CPU time, but ``svf-1/bias-noise`` falls
to 0.970 / 0.944 and 1.72 mm, below dipy.
On dipy's circle -> C one geodesic stalls against the fold barrier at Dice 0.84; a few composed segments per
level reach 0.998 with no fold, hence composed geodesics in 2-D as in 3-D.

2-D, measured by ``scripts/bench_images.py --suite`` on its 19 cases ``circle``, ``t1slice/*`` and ``mni_cor/*``
(three warp families, perturbations; CPU time at one thread against dipy SyN's; Dice and map error against the
best peer, median (worst)):

- metric ``ssd`` (the old 2-D default), 10 steps: Dice -0.098 (-0.308) on the T1 slices, map error +0.86 mm: SSD
  fails under a contrast change or a bias field; ``lncc`` (``"auto"``): -0.006 (-0.015), +0.05 mm.
- 4 time steps instead of 10: the same Dice and error (within 0.001 and 0.01 mm), 2.2 times less CPU (1.40x dipy's
  against 3.13x).
- finest-level iterations: 5 -> -0.006 (-0.010) and +0.04 mm at 1.18x dipy's CPU; 10 -> -0.006 (-0.015),
  +0.05 mm; 20 -> -0.012 (-0.022), +0.09 mm (more iterations at full resolution fit the noise); 0 -> -0.029, +0.20 mm.
- window 9 instead of 5, λ 3e-4 or 3e-3: within the noise of these numbers (no change of the default).
- with the moving image interpolated by cubic convolution instead of bilinearly (``similarity.INTERP``) and the
  deformation grid one kernel width apart (``geodesic.deformation_shrink``: 128² at the finest level of a 256²
  slice), on the 37 2-D cases (``circle`` and the four slices × nine; in-process, one thread), Dice − dipy's median
  (worst) / map error − dipy's median (worst) over the 36 slice cases, by LNCC window: 5 → −0.0018 (−0.0118) /
  −0.015 (+0.067) mm; 7 → −0.0012 (−0.0083) / −0.014 (+0.047) mm; 9 → −0.0012 (−0.0069) / −0.012 (+0.071) mm.
  Window 7 is the only one within dipy's map error + 0.05 mm on every case. (Before the cubic interpolation, with
  window 5 and the image grid as deformation grid: −0.0028 (−0.0097) / +0.037 (+0.093) mm on ``t1slice`` and
  ``mni_cor``; 15 finest iterations instead of 5 then made Dice worse on every ``t1slice`` case but one, with or
  without noise: the bilinear objective's kinks.) A cubic B-spline (prefiltered, four bilinear fetches) instead
  of torch's bicubic: Dice median −0.0006, the same worst case, 35 % more time: not taken.
- 2 time steps instead of 4 (as in 3-D), on all 37 2-D cases (``circle`` and the four slices × nine; one thread,
  each case in its own process, against the suite's peers of the release before): Dice − best peer median −0.001
  (worst −0.008, 15 cases more than 0.002 below against 14, the differences within ±0.001 but for a few noisy
  cases, where they go both ways), map error the same (worst +0.050 against +0.053 mm), no folds, 0.62× the time:
  median 0.47× dipy SyN's over the suite's 49 cases (was 0.66×), worst 0.82× (was 1.22×).
- the finest level against noise (2 time steps; the 36 slice cases in-process, one thread, against the best peer
  of the suite's run: Dice median (worst), cases more than 0.002 below; worst map error): 5 iterations −0.0012
  (−0.0081), 15, +0.050 mm; 10 iterations −0.0000 (−0.0146), 10, +0.072 mm: every case without noise better
  (``t1slice/svf-2/none`` +0.050 → −0.004 mm), every noisy one worse (the finest level fits the noise); 3
  iterations −0.0024 (−0.0142), 21; smoothing the finest level (0.7, 1 voxel) worse on the noisy cases; a kernel
  3 voxels wide at the finest level with 10 iterations −0.0011 (−0.0074), 13, +0.040 mm; 3 voxels on every level
  +0.80 mm (large warps); λ 2e-3 −0.0015 (−0.0086), 16. Hence a budget that follows the images' noise
  (``preprocessing.noise_level``, Immerkær's estimator: the suite's noise-free slices read 0.002-0.006 of their
  range, its 2 % noise 0.020-0.023; threshold ``preprocessing.NOISE_LEVEL`` 0.01): 10 iterations, 5 for noisy
  images; with 20 iterations instead of 30 at the coarse levels: 8 cases more than 0.002 below the best peer,
  every map error within +0.03 mm, time median 0.44× dipy's (in-process). For the noisy images, on their 12
  cases (Dice median (worst), cases below, map error median): window 7 −0.0030 (−0.0084), 8, −0.030 mm; window 9 −0.0020
  (−0.0067), 6, −0.061 mm (a wider window averages more of the noise; 11 of 12 as good or better, the exception
  ``t1slice/svf-1/bias-noise`` −0.0034 → −0.0047); 3 or 8 iterations, or 30 at the level before, no better.
  Registering the noisy image after an edge-preserving diffusion (``preprocessing.denoise``, Perona-Malik, 5
  steps, conductance 1 relative to the mean gradient; before the normalisation, which would clip the noise of the
  dark background to a positive haze): −0.0006 (−0.0034), 2, −0.058 mm (after the normalisation: −0.0001
  (−0.0097), 3; SimpleITK's curvature-limited diffusion, conductance 2: −0.0012 (−0.0046), 4; the diffusion with
  10 iterations and window 7: −0.0059 (−0.0111), 9: the shorter finest level and the wider window still matter).
  The diffusion's strength, on these 12 and 12 unseen noisy cases (seeds 3-5; against dipy there): 5 steps at
  conductance 1 −0.0010 (−0.0042), 6 of 24; 3 steps −0.0003 (−0.0041), 6; conductance 0.5 −0.0006 (−0.0049), 6;
  10 steps or conductance 2 −0.0034 / −0.0040, 18 of 24 (the edges blur).
  The suite with all three (each case in its own process): 2 of 37 cases more than 0.002 below the best peer's
  Dice, both noisy (−0.0034, −0.0029; 14 in the release before), map error within the best peer's + 0.05 mm
  everywhere, time median 0.42× dipy SyN's over the 49 cases, worst 0.68×. Unseen cases (seeds 3, 4 and 5 of the
  three families on the four slices, 36 cases, against dipy SyN, in-process; the release before → this one): Dice
  median −0.0004 → +0.0004, worst −0.0066 → −0.0042, cases more than 0.002 below 9 → 5; map error median −0.015 →
  −0.028 mm, one case above + 0.05 mm in both (``mni_ax/rd-4/bias-noise``, +0.135 → +0.123 mm); time median 0.80×
  → 0.49×, worst 1.23× → 0.75×.
  Tried afterwards on the 24 noisy slice cases (the suite's 12 and 12 of seeds 3-5; in-process, one thread), Dice
  change against these defaults, median (worst): a symmetric data term ``½ (D(M ∘ ψ, F) / D_0 + D(F ∘ φ, M) /
  D_0')`` (the second term's gradient goes through the clean fixed image, as in dipy's SyN) −0.0014 (−0.0209) in
  1.2× the time (on the finest level only, worse on the T1 slices); non-local means (dipy's ``nlmeans``, σ from
  ``noise_level``, ×1 or ×1.5) instead of the diffusion −0.0029 / −0.0027 (−0.017); the diffusion applied to both
  images when one is noisy +0.0004 (−0.0045), the same count of cases below dipy; a floor of 1e-4 / 4e-4 on the
  LNCC's local variances −0.0009 / −0.0029 (6 MNI cases); a finest kernel of 3 voxels −0.0004 (−0.0031), with 10
  iterations −0.0001 (−0.0066), 4 voxels and 10 iterations +0.0001 (−0.0050); λ 2e-3 / 4e-3 0.0000 / −0.0003;
  window 11 / 13 −0.0003 / −0.0009; 4 / 6 finest iterations −0.0003 / −0.0001 (worst −0.0043 / −0.0072); a 0.5-voxel
  smoothing of the finest level +0.0001 (−0.0018). None changes the cases below dipy for the better. What the noise
  costs (Dice of the noise-free twin case minus the noisy one, median over the 24): 0.0058 for ours against 0.0041
  for dipy; on six noisy MNI slices the WM Dice falls steadily with the finest level's iterations (on
  ``mni_ax/bspline-1/noise`` 0.9857, 0.9859, 0.9848, 0.9791, 0.9746 after 0, 2, 5, 10, 20) while GM Dice and the
  map error hardly move, with or without the diffusion and with a variance floor: the finest level roughens thin
  white-matter strands; what would stop that is not found yet.
- the stopping tolerance (a level, or a segment, stops once ``patience`` iterations gained less than ``tol`` of the
  objective), on the 73 slice cases in-process (the suite's 36 and 36 unseen ones of seeds 3-5; one thread, against
  dipy SyN): Dice − dipy's worst (suite / unseen), cases more than 0.002 below (of 72), worst map error − dipy's,
  and the optimiser's work (evaluations weighted by level, median ratio to 1e-4): 1e-4 (the 3-D default) −0.0035 /
  −0.0043, 9, +0.119 mm, 1; 5e-4 −0.0034 / −0.0043, 7, +0.119 mm, 0.99; 1e-3 −0.0034 / −0.0042, 6, +0.111 mm,
  0.87; **2e-3** −0.0031 / −0.0030, 7, +0.034 mm, 0.76; 3e-3 −0.0034 / −0.0037, 8, +0.029 mm, 0.70; 4e-3
  −0.0033 / −0.0038, 7, +0.028 mm, 0.66; 2e-3 with patience 3 −0.0061 / −0.0061 (``t1slice/svf-2/none``, a
  small-scale warp, stops too early), 6, 0.63; with patience 8 −0.0046 / −0.0038, 5, +0.121 mm, 0.90. Hence 2e-3
  in 2-D: the best worst case on both sets, every map error within dipy's + 0.05 mm (``mni_ax/rd-4/bias-noise``
  +0.119 → +0.034 mm), Dice median +0.0007 / +0.0008 (was +0.0007 / +0.0005), the noisy cases' median −0.0010 /
  −0.0016 → +0.0001 / −0.0004, and 0.75× the time (in-process median 0.36× / 0.38× dipy's, was 0.44× / 0.47×). The
  coarse levels stop early on most cases (the second segment of the shrink-4 level gained 0.4 % in 20 iterations
  on ``mni_ax/rd-0/none``); stopping there also fits less of the noise. Segments (2, 1, 1, 1) or (4, 1, 1, 1)
  instead, or a segment gain of 0.1: no better (4 and 5 cases below, worst −0.0042). Tried with 2e-3, against the
  noisy cases (cases below of 72, worst suite / unseen): 8 or 3 finest iterations for noisy images 8, −0.0053 /
  −0.0050, and 9, −0.0042 / −0.0054; a noisy window of 11 5, −0.0052 / −0.0029, but a map error of +0.396 mm
  (``mni_sag/svf-1/bias-noise``); 15 finest iterations without noise 9, −0.0031 / −0.0030; smoothing (4, 2, 1.5, 0)
  or (6, 3, 1.5, 0) voxels instead of (4, 2, 1, 0) 8, −0.0066 / −0.0053, and 8, −0.0079 / −0.0059. A noisy LNCC
  window per level, on the 24 noisy cases (cases below dipy, worst; the defaults 6, −0.0031): 9 at the finest level
  only and 7 above 4, −0.0052; 9 at the last two 6, −0.0038; 11 at the finest 3, −0.0041, but on 24 further noisy
  cases (seeds 6 and 7) 4, −0.0047 against the defaults' 4, −0.0042 (Dice median −0.0001, map error never above
  dipy's, time median 0.36× dipy's there): no gain on unseen cases; 11 at the last two 2, −0.0064; 13 at the finest
  4, −0.0039; 11 at the finest with 8 / 3 / 10 finest iterations 7 / 10 / 15 cases below.
- what limits the noisy cases (the 24 noisy slice cases and their noise-free twins, in-process, Dice − dipy's on the
  noisy case, median): the coarse levels lose nothing to the noise (with no finest-level iterations a noisy case and
  its twin run with the noisy options both end −0.0054 / −0.0053); the noisy options cost the twins 0.0015 (window
  9, 5 finest iterations and the diffusion each a part); the finest level then gains 0.008 on the twins, 0.005 on
  the noisy images. Neither the image gradient's noise nor the interpolation explains the rest: the data term's
  force through the noise-free fixed image's gradient (half or all of it, as in ESM) −0.0008 / −0.0015; registering
  the other way round (the fixed image onto the moving one, then the inverse) −0.0047, worse on the twins too;
  the noise variance that cubic convolution loses between nodes (55 % kept at a half-voxel offset in 2-D, which LNCC
  rewards) added back into the local variance −0.0001 (4 cases below instead of 6; on the 24 further noisy cases 3
  instead of 4, worst −0.0045 against −0.0042: within the count's spread, not kept); bilinear interpolation
  −0.0031. Nor the denoiser: total variation (Chambolle, weight 0.8 / 1.2 × the noise), closer to the noise-free
  image at the edges (RMS 0.017 of the range against the diffusion's 0.021), −0.0002 / −0.0016. Also no gain: the
  finest level averaged over windows 7, 9 and 11 −0.0004 (worst −0.0032); λ 5e-4 / 2.5e-4 −0.0002 / −0.0003; a
  full-resolution deformation grid −0.0004 (worst −0.0062); kernels of 1.5 voxels −0.0026; a full-resolution level
  smoothed by 1 voxel before the finest −0.0024 (the defaults −0.0003, worst −0.0031, 6 cases below). dipy SyN
  without its finest level (``level_iters`` [100, 50, 0]): its finest level gains 0.0034 of mean Dice on the noisy
  images and 0.0054 on the twins, ours 0.0045 and 0.0056; dipy's coarser levels lose 0.0018 to the noise, ours
  nothing. Over 48 noisy slice cases (these and seeds 6-7) our Dice − dipy's has median −0.0001 and standard
  deviation 0.0020 (48 noise-free ones: +0.0009, 0.0015): no case below −0.002 would take a median near +0.004.
  Variants that moved the count of cases below on one set of 24 noisy cases but not on the other (seeds 6-7; the
  defaults 6 and 4 below, worst −0.0031 and −0.0042): a Gaussian kernel of 4 voxels at the finest level of noisy
  images 1 and 3, worst −0.0021 and −0.0060 (3 or 5 voxels: 5 and 5 below on the first set; on every image
  ``t1slice/svf-2/none`` −0.0071); the coarser levels stopping at ``tol`` 5e-3 (the finest at 2e-3) 4 of 72 below
  instead of 7 in 0.8× the time, but 6 on seeds 6-7 (1e-2: 5 of 72, 7, map error +0.090 mm; 3e-3: 6 of 72; 1e-4
  or 5e-4: 8 of 72, noisy median −0.0010 to −0.0016, map error +0.119 mm); edge-enhancing diffusion (Weickert:
  also smoothing along the edges) instead of, or after, the diffusion −0.0004 / −0.0008, 6 below.
- the finest level of noisy images averaged over its iterates (Polyak-Ruppert; ``noisy_average``): on the 24 noisy
  cases Dice − dipy's after 0, 1, 2, 3, 4, 5, 6, 8, 10 finest iterations has median −0.0054, −0.0046, −0.0018,
  −0.0011, +0.0000, −0.0003, −0.0005, −0.0007, −0.0030 and 20, 20, 11, 8, 5, 6, 5, 7, 18 cases below; single cases
  jump by up to 0.005 from one iteration to the next (``mni_sag/svf-1/bias-noise`` −0.0026 after 5, −0.0076 after
  6), and even the best count per case leaves 2 below. The mean of the iterates 2 to 8 is better than every single
  one: median +0.0005 / +0.0006 on the two sets of 24 noisy cases (these and seeds 6-7), 3 + 2 cases below instead
  of 6 + 4, worst −0.0035 instead of −0.0042, no case more than 0.0005 worse than before, map error within dipy's
  + 0.031 mm. Iterates 3-6: 1 + 3 below, worst −0.0045; 3-8: 2 + 2, −0.0035, median +0.0004; 2-10: 4 + 3, +0.0005.
  Hence 8 iterations averaged from the 2nd. Noise-free images keep their last iterate: on the 48 noise-free slice
  cases the mean of iterates 4-10 / 2-10 of 10 gave worst −0.0055 / −0.0065 against −0.0025 (2 / 3 cases below,
  1). The suite per process: 1 of 37 below (``mni_sag/svf-1/bias-noise``, WM −0.0027; 2 before), time median 0.38×
  dipy's (worst 0.70×); unseen seeds 3-5 in-process: 3 of 36 below (5).
- the floor of LNCC's fixed local variance (``lncc_floor``, a fraction of its median over the foreground): on 45
  slices off the middle (``mni_ax±20``, ``mni_cor±20``, ``mni_sag+25``; seeds 3-5 of the three families) the
  worst case was ``mni_sag+25/rd-4/bias-noise``, Dice −0.0050 and map error +0.355 mm against dipy SyN's: a blob
  of 4 mm error in the white matter's plateau, as large (smaller) with the bias field alone and absent without it.
  Plain LNCC normalises the plateau's faint texture to full weight and the bias ramp correlates with it. With a
  bias field alone (the true map the identity) on five MNI slices × three fields, the floor 0.1 / 0.05 left
  0.39-0.71 / 0.43-0.77 of how far the map moved (mean over the brain; the maximum, up to 1.5 mm, fell too). On
  141 slice cases (the suite's 36, 36 unseen of seeds 3-5, 24 noisy of seeds 6-7 and those 45; in-process, against
  dipy SyN; cases more than 0.002 below, suite / unseen / seeds 6-7 / off the middle, Dice − dipy's median and
  worst, worst map error − dipy's): floor 0 1 / 3 / 2 / 1, +0.0007, −0.0050, +0.355 mm; **0.05** 0 / 0 / 1 / 1,
  +0.0010, −0.0025, +0.102 mm; 0.1 0 / 0 / 3 / 1, +0.0009, −0.0025, +0.092 mm; 0.2 2 / 1 / 3 / 0, +0.0009,
  −0.0027, +0.101 mm (0.03 on the 45 off the middle: worst −0.0028, +0.154 mm). Hence 0.05 in 2-D. In 3-D (the 18
  ``mni2`` cases of seeds 0-5, against dipy SyN) the floor made the maps worse: 0.1 took ``svf-1/bias-noise`` from
  Dice −0.0007 to −0.0149 against dipy's and its map error from 1.29 to 2.19 mm (the coarse level stopped after
  one segment), and raised the map error of 16 of 18 cases; 0.02 raised the worst map error against dipy's from
  +0.024 to +0.214 mm. Hence plain LNCC (0) in 3-D.
- segments (2, 1, 1, 1) instead of (4, 2, 1, 1): 10 % less CPU, circle -> C Dice 0.994 instead of 0.997: kept (4, 2,
  1, 1) for large deformations (a level stops shooting segments as soon as one gains less than 5 %).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from lddmm_nets.checks import check_int, check_positive

from ..metrics import get_metric

__all__ = ["RegistrationConfig", "KERNELS", "GEODESICS", "MOMENTA", "DTYPES"]

KERNELS = ("sum", "gaussian", "matern")
GEODESICS = ("single", "composed")
MOMENTA = ("vector", "scalar")
DTYPES = ("float32", "float64")

#: the 2-D defaults, applied by ``RegistrationConfig.for_dim(2)`` over the (3-D) field defaults
DEFAULTS_2D = dict(window=7, lncc_floor=0.05, regularization=1e-3, n_steps=2, geodesics="composed",
                   shrink_factors=(8, 4, 2, 1), iterations=(20, 20, 20, 10), noisy_iterations=8, noisy_average=2,
                   noisy_window=9, noisy_denoise=True, segments=(4, 2, 1, 1), tol=2e-3)


@dataclass(frozen=True)
class RegistrationConfig:
    """Options of ``register_images`` (see its docstring); the field defaults are the 3-D defaults.

    Attributes
    ----------
    metric : {"auto", "lncc", "ncc", "ssd"}
        ``"auto"``: LNCC, but SSD for a piecewise-constant fixed image (shapes, masks: LNCC has no signal inside
        uniform regions), decided by ``registration.images.preprocessing.piecewise_constant``.
    window : int
        LNCC box width in voxels of each level (odd).
    lncc_floor : float
        LNCC's fixed local variance gets a floor of this fraction of its median over the foreground
        (``registration.metrics.fixed_statistics``): windows of far less contrast than the image's typical one
        (plateaus) count less instead of fully, so a bias field or noise there does not push the map. 0 (the 3-D
        default): plain LNCC; 2-D: 0.05.
    sigma : float or None
        Kernel width in mm (None: ``sigma_voxels`` voxels, see ``register_images``).
    kernel : {"sum", "gaussian", "matern"}
    regularization : float
        λ, the weight of the kinetic energy against the relative data term.
    shrink_factors : tuple of int
    smoothing_sigmas : tuple of float
        Gaussian smoothing of both images per level, in fine voxels.
    iterations : tuple of int
        L-BFGS budget per level (per segment for composed geodesics).
    noisy_iterations : int or None
        The finest level's budget instead, where either image is noisy (its noise above
        ``preprocessing.NOISE_LEVEL`` of its intensity range): fewer full-resolution iterations fit less of the
        noise (2-D: 8, averaged from the 2nd on, ``noisy_average``). None: ``iterations`` always; explicit
        ``iterations`` or ``shrink_factors`` set it to None unless it is given too.
    noisy_average : int or None
        For noisy images, the finest level's momentum is the mean of its L-BFGS iterates from this iteration on
        (Polyak-Ruppert averaging: the iterates' fits to the noise partly cancel). None: its last iterate; explicit
        ``iterations`` or ``shrink_factors`` set it to None unless it is given too.
    noisy_window : int or None
        The LNCC window instead, for noisy images (as ``noisy_iterations``): a wider window averages more of the
        noise. None: ``window`` always; an explicit ``window`` sets it to None unless it is given too.
    noisy_denoise : bool
        Register each noisy image after an edge-preserving diffusion (``preprocessing.denoise``); the outputs
        warp the image as given.
    n_steps : int
        Time steps of the shooting.
    momentum : {"vector", "scalar"}
    geodesics : {"single", "composed"}
    segments : tuple of int
        Composed geodesics: the most segments per level.
    deformation_shrink : int or None
        The deformation grid's shrink factor (None: the smallest keeping it under ``max_deformation_nodes``).
    affine : bool
    affine_iterations : int
    tol, patience :
        A level stops when the objective decreased by less than ``tol`` (relative) over ``patience`` iterations
        (each segment of a composed level on its own).
    dtype : {"float32", "float64"}
    device : str
    sigma_voxels : float
        Default kernel width in voxels (of the image grid for one geodesic, of each level for composed ones).
    max_deformation_nodes : int
        Largest finest deformation grid chosen automatically.
    segment_gain : float
        Composed geodesics: a level shoots no further segment once one improved the similarity by less than this
        fraction, or once the similarity is below 1/1000 of its value at the level's start.
    """

    metric: str = "auto"
    window: int = 5
    lncc_floor: float = 0.0
    sigma: float | None = None
    kernel: str = "sum"
    regularization: float = 0.01
    shrink_factors: tuple = (4, 1)
    smoothing_sigmas: tuple = (2.0, 0.0)
    iterations: tuple = (50, 9)
    noisy_iterations: int | None = None
    noisy_average: int | None = None
    noisy_window: int | None = None
    noisy_denoise: bool = False
    n_steps: int = 2
    momentum: str = "vector"
    geodesics: str = "composed"
    segments: tuple = (2, 1)
    deformation_shrink: int | None = None
    affine: bool = False
    affine_iterations: int = 50
    tol: float = 1e-4
    patience: int = 5
    dtype: str = "float32"
    device: str = "cpu"
    sigma_voxels: float = 2.0
    max_deformation_nodes: int = 200_000
    segment_gain: float = 0.05

    @classmethod
    def for_dim(cls, d: int, **options) -> "RegistrationConfig":
        """The defaults for ``d``-D images with ``options`` (None values ignored) applied over them, validated.

        Raises
        ------
        ValueError
            An unknown option name, or an invalid value (the message names it).
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"options: unknown {unknown}; expected among {sorted(names)}")
        given = {k: v for k, v in options.items() if v is not None}
        base = cls() if d >= 3 else replace(cls(), **DEFAULTS_2D)
        if "iterations" in given or "shrink_factors" in given:
            base = replace(base, noisy_iterations=None, noisy_average=None)
        if "window" in given:
            base = replace(base, noisy_window=None)
        if "shrink_factors" in given:
            n = len(tuple(given["shrink_factors"]))
            base = replace(base, shrink_factors=tuple(given["shrink_factors"]), iterations=(50,) * (n - 1) + (10,),
                           segments=(1,) * n)
        if given.get("geodesics") == "single":
            base = replace(base, segments=(1,) * len(base.shrink_factors))
        if "smoothing_sigmas" not in given:
            given["smoothing_sigmas"] = tuple(f / 2.0 if f > 1 else 0.0 for f in given.get(
                "shrink_factors", base.shrink_factors))
        n_levels = len(tuple(given.get("shrink_factors", base.shrink_factors)))
        if isinstance(given.get("segments"), (int, np.integer)) and not isinstance(given["segments"], bool):
            given["segments"] = (int(given["segments"]),) * n_levels
        return replace(base, **_normalised(given)).validated()

    def noise_mode(self) -> str:
        """``prepare_pair``'s ``noise`` for these options: whether the images' noise must be measured, and whether
        the noisy ones are denoised."""
        if self.noisy_denoise:
            return "denoise"
        noisy_options = (self.noisy_iterations, self.noisy_average, self.noisy_window)
        return "ignore" if noisy_options == (None, None, None) else "measure"

    def validated(self) -> "RegistrationConfig":
        """This config, checked (every error names the option and shows expected vs actual)."""
        floor = check_positive("lncc_floor", self.lncc_floor, allow_zero=True)
        get_metric("lncc" if self.metric == "auto" else self.metric, window=self.window, floor=floor)
        if not isinstance(self.noisy_denoise, (bool, np.bool_)):
            raise ValueError(f"noisy_denoise: expected True or False, got {self.noisy_denoise!r}")
        if self.noisy_average is not None:
            check_int("noisy_average", self.noisy_average)
        w = self.noisy_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 3 or w % 2 == 0):
            raise ValueError(f"noisy_window: expected None or an odd integer >= 3 (voxels), got {w!r}")
        for name, value, choices in (("kernel", self.kernel, KERNELS), ("geodesics", self.geodesics, GEODESICS),
                                     ("momentum", self.momentum, MOMENTA), ("dtype", self.dtype, DTYPES)):
            if value not in choices:
                raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError(f"sigma: expected a positive kernel width in mm, got {self.sigma!r}")
        for name in ("regularization", "sigma_voxels", "tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)!r}")
        n = len(self.shrink_factors)
        if n == 0 or len(self.smoothing_sigmas) != n or len(self.iterations) != n:
            raise ValueError(f"shrink_factors, smoothing_sigmas, iterations: expected equal non-empty lengths, got "
                             f"{len(self.shrink_factors)}, {len(self.smoothing_sigmas)}, {len(self.iterations)}")
        if any(f < 1 for f in self.shrink_factors):
            raise ValueError(f"shrink_factors: expected integers >= 1, got {self.shrink_factors}")
        if any(s < 0 for s in self.smoothing_sigmas):
            raise ValueError(f"smoothing_sigmas: expected values >= 0 (voxels), got {self.smoothing_sigmas}")
        if any(i < 0 for i in self.iterations):
            raise ValueError(f"iterations: expected integers >= 0, got {self.iterations}")
        _positive_int("n_steps", self.n_steps)
        _positive_int("patience", self.patience)
        _positive_int("max_deformation_nodes", self.max_deformation_nodes)
        if self.deformation_shrink is not None:
            _positive_int("deformation_shrink", self.deformation_shrink)
        if self.noisy_iterations is not None and (isinstance(self.noisy_iterations, bool) or not isinstance(
                self.noisy_iterations, (int, np.integer)) or self.noisy_iterations < 0):
            raise ValueError(f"noisy_iterations: expected None or an integer >= 0, got {self.noisy_iterations!r}")
        if len(self.segments) != n or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                                          for k in self.segments):
            raise ValueError(f"segments: expected a positive integer or one per level ({n}), got {self.segments!r}")
        if self.geodesics == "single" and any(k > 1 for k in self.segments):
            raise ValueError(f"segments: expected 1 per level with geodesics='single' (one geodesic), got "
                             f"{self.segments}; use geodesics='composed' for several segments")
        return self


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def _normalised(given: dict) -> dict:
    """Sequences as tuples of the right element type; scalars as Python numbers."""
    out = dict(given)
    casts = {"shrink_factors": int, "iterations": int, "smoothing_sigmas": float, "segments": int}
    for name, cast in casts.items():
        if name in out:
            try:
                out[name] = tuple(cast(v) for v in out[name])
            except (TypeError, ValueError):
                raise ValueError(f"{name}: expected a sequence of numbers, got {out[name]!r}") from None
    for name in ("regularization", "tol", "sigma", "sigma_voxels", "segment_gain"):
        if name in out:
            out[name] = float(out[name])
    if "device" in out:
        out["device"] = str(out["device"])
    if "affine" in out:
        out["affine"] = bool(out["affine"])
    return out
