"""Toy data sets of idea registration that scikit-learn does not ship."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

__all__ = ["make_spirals"]


def make_spirals(n_samples=400, noise=0.3, turns=1.5, random_state=0):
    """Two interleaved spirals in the plane (the benchmark of ``scripts/ideas_experiments.py``).

    Arm 0 is ``r(t) (cos t, sin t)`` with ``r(t) = t / (2π · turns)`` and ``t = 2π · turns · sqrt(u)``,
    ``u ~ U(0.05, 1)`` (uniform density along the arm's area); arm 1 is its point reflection. Gaussian noise of
    standard deviation ``noise / 3`` is added to both coordinates, so points lie in roughly [-1, 1]².

    Parameters
    ----------
    n_samples : int, default=400
        Total number of points (``n_samples // 2`` per arm; an odd count drops one point).
    noise : float, default=0.3
        Three times the standard deviation of the Gaussian noise (0 gives points on the curves).
    turns : float, default=1.5
        Number of turns of each arm.
    random_state : int, Generator or None, default=0
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    X : ndarray of shape (2 * (n_samples // 2), 2)
    y : ndarray of shape (2 * (n_samples // 2),)
        Labels 0 (first arm, first half of the rows) and 1.

    Examples
    --------
    >>> X, y = make_spirals(200, noise=0.1, random_state=0)
    >>> X.shape, y.mean()
    ((200, 2), 0.5)
    """
    if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2; got {n_samples!r}")
    for name, v, lo in (("noise", noise, 0.0), ("turns", turns, None)):
        if not isinstance(v, Real) or isinstance(v, bool) or not np.isfinite(v) or (v < 0 if lo == 0.0 else v <= 0):
            raise ValueError(f"{name} must be a {'non-negative' if lo == 0.0 else 'positive'} finite number; "
                             f"got {v!r}")
    rng = np.random.default_rng(random_state)
    n = n_samples // 2
    t = np.sqrt(rng.uniform(0.05, 1, n)) * turns * 2 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (turns * 2 * np.pi)
    X = np.concatenate([arm, -arm]) + noise / 3 * rng.normal(size=(2 * n, 2))
    return X, np.repeat([0, 1], n)
