"""Tidy rows of the mean-field studies, their error curves and fitted slopes, and the CSV / PNG report.

Every study of ``lddmm_nets.meanfield`` (particles against the grid, time steps, energy drift, peakons, ResNet
weights) returns rows with exactly the columns of ``ROW_COLUMNS`` (one dict per measurement, made by ``make_row``),
ready for ``csv.DictWriter`` or ``pandas.DataFrame``. A row's curve is named ``study/<keys>/quantity`` with the keys
of ``CURVE_KEYS`` (``n/iid/velocity_t1``, ``steps/rk2/velocity_t1``, ``resnet_samples/shot/weight_change``...) and
its abscissa is the column named in its ``axis``. ``write_csv`` and ``plot_convergence`` write files (atomically:
a temporary file beside the target, then a rename); the rest computes.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..checks import check_choice

__all__ = ["ROW_COLUMNS", "CURVE_KEYS", "StudyResult", "make_row", "curves", "fitted_slopes", "fit_loglog_slope", "write_csv",
           "plot_convergence"]

#: The columns of every row (in CSV order) and what they hold.
ROW_COLUMNS = {
    "study": "the experiment: 'n' (particles vs grid against N), 'steps' (against the time step), 'energy' (grid "
             "energy drift), 'peakons' (closed forms), 'peakon_grid' (grid solver's peakon), 'resnet_samples' and "
             "'resnet_depth' (ResNet weights against N and against L)",
    "method": "how the particles or the case were made: a method of `sample` ('iid', 'qmc', 'midpoint', "
              "'gauss_hermite'), 'grid', a peakon case ('overtaking', 'head_on', 'smoothed'), or for ResNet weights "
              "'shot' (regenerated from a momentum density) or 'trained' (trained by L-BFGS)",
    "integrator": "time scheme ('euler' for the explicit layers of a ResNet)",
    "n": "particles, samples or quadrature nodes (grid nodes for 'energy', cells for 'peakon_grid')",
    "n_steps": "time steps over [0, t1] (the depth L of a ResNet)",
    "h": "time step t1 / n_steps (the smoothing width of the peakon for 'peakon_grid')",
    "seed": "seed of the draw (the first of the replicates)",
    "quantity": "what is measured ('velocity_t1', 'momentum_t1', 'energy_drift', 'position', 'weight_change', ...)",
    "error": "the measurement, a relative error unless the quantity says otherwise (RMS over the n_reps replicates)",
    "error_std": "standard deviation of the error over the replicates (0 for one)",
    "n_reps": "replicates aggregated in the row",
    "axis": "the column that is the abscissa of the row's curve: 'n', 'h' or 'n_steps'",
    "seconds": "wall time of the measurement (nan when not timed separately)",
}
AXES = ("n", "h", "n_steps")
#: study -> the columns that, with the study and the quantity, name a curve (default: the method)
CURVE_KEYS = {
    "n": ("method",),
    "steps": ("integrator",),
    "energy": ("integrator",),
    "peakons": ("method", "integrator"),
    "peakon_grid": ("method",),
}


@dataclass
class StudyResult:
    """Outcome of a study.

    Attributes
    ----------
    rows : list of dict
        Tidy rows (``ROW_COLUMNS``).
    slopes : dict
        ``fitted_slopes(rows)``: curve label -> log-log slope.
    xlabel : str
        What the curves' abscissae are, in words (for plots).
    """

    rows: list = field(default_factory=list)
    slopes: dict = field(default_factory=dict)
    xlabel: str = ""


def make_row(study: str, quantity: str, error: float, *, axis: str, method: str = "", integrator: str = "",
             n: int = 0, n_steps: int = 0, h: float = math.nan, seed: int = 0, error_std: float = 0.0,
             n_reps: int = 1, seconds: float = math.nan) -> dict:
    """One measurement as a dict with the columns of ``ROW_COLUMNS``."""
    check_choice("axis", axis, AXES)
    return dict(study=str(study), method=str(method), integrator=str(integrator), n=int(n), n_steps=int(n_steps),
                h=float(h), seed=int(seed), quantity=str(quantity), error=float(error), error_std=float(error_std),
                n_reps=int(n_reps), axis=axis, seconds=float(seconds))


def _label(row: dict) -> str:
    keys = CURVE_KEYS.get(row["study"], ("method",))
    return "/".join([row["study"]] + [str(row[k]) for k in keys] + [row["quantity"]])


def curves(rows: Sequence[dict]) -> dict[str, tuple[list, list]]:
    """The error curves of tidy rows: ``{label: (xs, errors)}`` with xs sorted, errors the root mean square over
    rows at the same abscissa (independent draws).

    Labels are ``study/<CURVE_KEYS>/quantity``; the abscissa of a row is ``row[row["axis"]]``. The velocity at
    t = 0 does not depend on the time step, so its rows only make curves against N.
    """
    acc: dict = {}
    for r in rows:
        if r["quantity"] == "velocity_t0" and r["axis"] != "n":
            continue
        acc.setdefault(_label(r), {}).setdefault(r[r["axis"]], []).append(r["error"])
    out = {}
    for label, by_x in acc.items():
        xs = sorted(by_x)
        out[label] = (xs, [math.sqrt(sum(e * e for e in by_x[x]) / len(by_x[x])) for x in xs])
    return out


def fit_loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN with fewer than two distinct positive points)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.unique(x[ok]).size < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def fitted_slopes(rows: Sequence[dict]) -> dict[str, float]:
    """Log-log slopes of the error curves of ``curves``.

    Returns
    -------
    dict
        ``label -> slope``: in N for ``n/...`` (about -0.5 for ``iid``) and ``resnet_samples/...``, in the step
        size for ``steps/...``, ``energy/...`` and ``peakons/...`` (about the scheme's order), in the depth L for
        ``resnet_depth/...`` (about -1).
    """
    return {label: fit_loglog_slope(xs, ys) for label, (xs, ys) in curves(rows).items()}


def _atomic_path(path: str, suffix: str):
    """A temporary file beside ``path`` (closed), to be renamed onto it."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)) or ".")
    os.close(fd)
    return tmp


def write_csv(rows: Sequence[dict], path: str) -> None:
    """Write tidy rows as CSV with the columns of ``ROW_COLUMNS``, atomically.

    Raises
    ------
    ValueError
        A row whose keys are not the columns of ``ROW_COLUMNS`` (named with the differences).
    """
    cols = list(ROW_COLUMNS)
    for i, r in enumerate(rows):
        if set(r) != set(cols):
            raise ValueError(f"rows[{i}]: expected the columns of ROW_COLUMNS, got extra {sorted(set(r) - set(cols))} "
                             f"and missing {sorted(set(cols) - set(r))}")
    tmp = _atomic_path(path, ".csv")
    try:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plot_convergence(rows: Sequence[dict], slopes: dict, path: str, *, title: str = "", xlabel: str = "") -> None:
    """Log-log plot of every error curve in ``rows`` with its fitted slope in the legend, saved as PNG (atomically).

    Parameters
    ----------
    rows : list of dict
        Tidy rows of any study.
    slopes : dict
        ``label -> slope`` (``fitted_slopes(rows)``).
    path : str
        Output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    drawn = 0
    for label, (xs, ys) in sorted(curves(rows).items()):
        pts = [(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0]
        if len(pts) < 2:
            continue
        s = slopes.get(label, float("nan"))
        style = ("o-", "s--", "^:")[(drawn // 10) % 3]  # the default cycle has 10 colours
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], style, ms=4, label=f"{label} (slope {s:.2f})")
        drawn += 1
    ax.set_xlabel(xlabel or "x")
    ax.set_ylabel("relative error")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = _atomic_path(path, ".png")
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
