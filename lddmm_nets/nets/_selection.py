"""Hyper-parameter selection inside the estimators' ``fit``, from the training data only.

The readout width and λ by exact leave-one-out on the unwarped points (``loo_select``); then (``nu="auto"``) the warp
strength among ``NU_GRID`` and "no warp" by 3-fold cross-validation with the paired one-standard-error rule, so that
the default falls back to plain kernel ridge regression when warping does not help. On training sets of at most
``NU_REPEAT_MAX_POINTS`` points the inner cross-validation is repeated over ``NU_REPEATS`` shuffles of the folds and
its held-out losses averaged, so that the choice depends less on one random split.
"""

from __future__ import annotations

import math
import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from ._momenta import WarpProblem, fit_momenta, warp_trajectory
from ._readout import ridge_solve

__all__ = ["SIGMA_FACTORS", "LAM_GRID", "LOO_MAX_POINTS", "NU_GRID", "NU_FOLDS", "NU_REPEATS", "NU_REPEAT_MAX_POINTS",
           "NU_MAX_POINTS", "NU_MIN_POINTS", "one_standard_error_choice", "median_distance", "inner_repeats",
           "inner_folds", "subsample", "select_nu"]

# Candidate readout widths (times the median pairwise distance) and ridge parameters for the "auto" choice.
SIGMA_FACTORS = tuple(2.0 ** (e / 4) for e in range(-18, 13))  # 2^-4.5 ... 8 in steps of 2^(1/4)
LAM_GRID = tuple(10.0 ** (e / 4) for e in range(-16, 3))  # 1e-4 ... 10^0.5 in steps of 10^(1/4)
# Leave-one-out selection runs on a random subsample of at most this many points (one eigh per width; all of
# digits' 1,437 training points per fold: the selection on an 800-point subsample costs 0.1-0.2 point there).
LOO_MAX_POINTS = 2000
# nu="auto": candidate warp strengths, compared with the unwarped readout (ν = ∞) by internal cross-validation.
NU_GRID = (0.01, 0.1)
NU_FOLDS = 3
# The inner cross-validation of ν is repeated with this many different shuffles of the folds when the training set
# has at most NU_REPEAT_MAX_POINTS points; the held-out scores are averaged over the repeats before the
# one-standard-error rule is applied. Larger sets keep one split: their held-out estimates vary less, and the inner
# fits are what the fit time is spent on.
NU_REPEATS = 3
NU_REPEAT_MAX_POINTS = 1000
# Inner fits of the ν selection use at most this many training points per fold (the cost of the selection).
NU_MAX_POINTS = 600
# Below this many points the selection is not attempted: the unwarped readout is kept.
NU_MIN_POINTS = 30


def one_standard_error_choice(losses) -> tuple[int, list[float], list[float]]:
    """The one-standard-error rule with paired errors: the simplest candidate not significantly worse than the best.

    Parameters
    ----------
    losses : sequence of ndarray
        Per-point held-out losses, one (N,) array per candidate, ordered from the simplest candidate to the most
        flexible; every array scores the same N points.

    Returns
    -------
    chosen : int
        Index of the first candidate whose mean loss exceeds the smallest mean loss by at most the standard error
        of the paired differences, ``sd(loss - best loss) / sqrt(N)``.
    means, standard_errors : list of float
        Each candidate's mean loss and that standard error (0 for the best).
    """
    losses = [np.asarray(x, dtype=np.float64) for x in losses]
    n = losses[0].shape[0]
    means = [float(x.mean()) for x in losses]
    best = losses[int(np.argmin(means))]
    ses = [float((x - best).std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0 for x in losses]
    chosen = next(j for j, (m, e) in enumerate(zip(means, ses)) if m <= min(means) + e + 1e-12)
    return chosen, means, ses


def median_distance(X: np.ndarray, rng: np.random.Generator, n_max: int = 500) -> float:
    """Median pairwise distance of the rows of X (N, d) (on a random subsample of ``n_max`` rows; 1 if all equal)."""
    if X.shape[0] > n_max:
        X = X[rng.choice(X.shape[0], n_max, replace=False)]
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    d = np.sqrt(d2[np.triu_indices(X.shape[0], 1)])
    d = d[d > 0]
    return float(np.median(d)) if d.size else 1.0


def subsample(n: int, n_max: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a random subsample of ``n_max`` of ``n`` points (all of them when ``n <= n_max``)."""
    return np.sort(rng.choice(n, n_max, replace=False)) if n > n_max else np.arange(n)


def inner_repeats(n: int) -> int:
    """How many shuffles of the inner folds the selections inside ``fit`` average over (N training points)."""
    return NU_REPEATS if n <= NU_REPEAT_MAX_POINTS else 1


def inner_folds(labels: np.ndarray, rng: np.random.Generator, *, classification: bool) -> list:
    """The inner folds: ``NU_FOLDS`` folds, shuffled anew ``inner_repeats(N)`` times.

    Stratified for classifiers when every class allows it. Every point is held out once per repeat, so held-out
    sums divided by ``N * repeats`` are averages over the repeats.

    Parameters
    ----------
    labels : ndarray
        (N,) class indices (only read when ``classification``).
    """
    n = labels.shape[0]
    folds = []
    for _ in range(inner_repeats(n)):
        seed = int(rng.integers(2**31 - 1))
        if classification and np.bincount(labels).min() >= NU_FOLDS:
            folds += list(StratifiedKFold(NU_FOLDS, shuffle=True, random_state=seed).split(np.zeros(n), labels))
        else:
            folds += list(KFold(NU_FOLDS, shuffle=True, random_state=seed).split(np.zeros(n)))
    return folds


def _held_out_scores(problem: WarpProblem, q0, Yc, nu: float, tr, va, seed: int = 0):
    """Fit the warp on points ``tr`` and return the readout's scores (float64) at the held-out points ``va``."""
    tr_t = torch.as_tensor(tr, device=q0.device)
    qt, Yt = q0[tr_t], Yc[tr_t]
    mean = Yt.double().mean(0)
    Ytc = Yt - mean.to(Yt.dtype)
    fit = fit_momenta(problem, qt, Ytc, nu, seed=seed)
    warp = warp_trajectory(problem, qt.double(), fit.p)
    with torch.no_grad():
        alpha = ridge_solve(problem.readout_kernel, warp.q_final, Ytc.double(), problem.lam, backend=problem.backend)
        x = warp.trajectory.flow(q0[torch.as_tensor(va, device=q0.device)].double())
        return problem.readout_kernel.matvec(x, warp.q_final, alpha, backend=problem.backend) + mean


def select_nu(problem: WarpProblem, q0: torch.Tensor, Yc: torch.Tensor, rng: np.random.Generator, *,
              classification: bool, folds: list | None = None, nu_grid=NU_GRID):
    """Choose ν among ``NU_GRID`` and ∞ (no warp) by internal cross-validation on the training set.

    Every candidate warp is fitted on the inner training folds (at most ``NU_MAX_POINTS`` points each) with the
    readout width and ridge selected before; the held-out points are warped along it and read out. Each training
    point gets a held-out loss per candidate (averaged over the shuffles of ``inner_repeats``): the squared error of
    its scores, or for classifiers of more than two classes its 0-1 error (the criterion of ``loo_select``). The
    choice is the one-standard-error rule with paired errors: the simplest candidate (no warp first, then the
    weakest warp, largest ν) whose mean loss exceeds the smallest mean loss by at most the standard error of the
    per-point differences ``sd(loss - best loss) / sqrt(N)``. A warp is therefore taken only when its gain on the
    held-out points is larger than its noise.

    Parameters
    ----------
    problem : WarpProblem
    q0 : torch.Tensor
        (N, D) lifted training inputs.
    Yc : torch.Tensor
        (N, k) centred targets (one-hot minus class frequencies for classifiers).
    rng : numpy Generator
        Draws the folds and the subsamples of large folds.
    classification : bool
    folds : list of (train, held-out) index arrays, optional
        The inner folds (default ``inner_folds``); every point is held out the same number of times.
    nu_grid : sequence of float
        The candidate warp strengths besides ∞ (default ``NU_GRID``).

    Returns
    -------
    nu : float
        The chosen ν (``math.inf``: no warp).
    table : list of tuple
        ``(nu, accuracy or nan, mean squared error, mean loss, paired standard error to the best)`` for every
        candidate, no warp first (empty below ``NU_MIN_POINTS`` points, where no warp is kept).
    """
    n = q0.shape[0]
    candidates = (math.inf,) + tuple(sorted(nu_grid, reverse=True))  # simplest first
    if n < NU_MIN_POINTS:
        return math.inf, []
    zero_one = classification and Yc.shape[1] > 2
    if folds is None:
        folds = inner_folds(Yc.argmax(1).cpu().numpy(), rng, classification=classification)
    repeats = sum(len(va) for _, va in folds) / n
    sq = {nu: np.zeros(n) for nu in candidates}
    wrong = {nu: np.zeros(n) for nu in candidates}
    for j, (tr, va) in enumerate(folds):
        if len(tr) > NU_MAX_POINTS:
            tr = np.sort(rng.choice(tr, NU_MAX_POINTS, replace=False))
        Yv = Yc[torch.as_tensor(va, device=q0.device)].double()
        for nu in candidates:
            pred = _held_out_scores(problem, q0, Yc, nu, tr, va, seed=j + 1)
            sq[nu][va] += ((pred - Yv) ** 2).sum(1).cpu().numpy() / repeats
            wrong[nu][va] += (pred.argmax(1) != Yv.argmax(1)).double().cpu().numpy() / repeats
    loss = wrong if zero_one else sq
    chosen, means, ses = one_standard_error_choice([loss[nu] for nu in candidates])
    table = [(nu, 1 - float(wrong[nu].mean()) if classification else math.nan, float(sq[nu].mean()), m, e)
             for nu, m, e in zip(candidates, means, ses)]
    return candidates[chosen], table
