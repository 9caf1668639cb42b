"""``lddmm meanfield``: mean-field EPDiff studies written as CSV tables and log-log PNG plots.

``lddmm meanfield [--case NAME] --out DIR [--quick]`` runs one study (or all) of ``lddmm_nets.meanfield`` and
writes, per case, ``<case>.csv`` (tidy rows: one measurement per line), ``<case>.png`` (log-log error curves,
fitted slopes in the legend) and ``<case>_slopes.json``. Files are written to a temporary directory beside DIR and
moved into place at the end, so a failed run leaves nothing that looks complete.

Cases:

- ``particles``: particle-vs-grid errors against N in 2-D (independent, quasi-Monte Carlo, quadrature samples);
- ``steps``: particle-vs-grid errors against the step size in 2-D (euler, rk2, rk4);
- ``energy``: energy drift of the grid EPDiff solver against the step size;
- ``peakons``: particle solver against the closed-form two-peakon solutions, and the grid solver's single peakon;
- ``resnet``: ResNet weights against the number of samples and the depth (``lddmm_nets.nets.mean_field``);
- ``all``: every case above.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
import time

__all__ = ["add_parsers", "run_meanfield", "run_case", "plot_convergence", "write_csv", "CASES"]

log = logging.getLogger(__name__)

CASES = ("particles", "steps", "energy", "peakons", "resnet")


def _run_particles(quick: bool):
    from lddmm_nets.meanfield import convergence_in_n, default_problem, fitted_slopes

    problem = default_problem(2, cells=48 if quick else 64)
    ns = (64, 256, 1024) if quick else (64, 256, 1024, 4096)
    rows = convergence_in_n(problem, ns, repeats=3 if quick else 6, n_steps=4, integrator="rk4")
    return rows, fitted_slopes(rows), "number of particles N"


def _run_steps(quick: bool):
    from lddmm_nets.meanfield import convergence_in_steps, default_problem, fitted_slopes

    problem = default_problem(2, cells=48 if quick else 64)
    rows = convergence_in_steps(problem, (2, 4, 8) if quick else (2, 4, 8, 16), integrators=("euler", "rk2", "rk4"),
                                n=2304 if quick else 4096)
    return rows, fitted_slopes(rows), "time step h"


def _run_energy(quick: bool):
    from lddmm_nets.meanfield import default_problem, energy_convergence, fitted_slopes

    rows = energy_convergence(default_problem(2, cells=32 if quick else 64),
                              (8, 16, 32) if quick else (8, 16, 32, 64))
    return rows, fitted_slopes(rows), "time step h"


def _run_peakons(quick: bool):
    from lddmm_nets.meanfield import fitted_slopes, grid_peakon_speed, peakon_convergence

    rows = peakon_convergence((25, 50, 100) if quick else (25, 50, 100, 200))
    rows += grid_peakon_speed((256, 512) if quick else (256, 512, 1024))
    return rows, fitted_slopes(rows), "time step h (peakons) or peakon width (peakon_grid)"


def _run_resnet(quick: bool):
    from lddmm_nets.nets.mean_field import resnet_weight_convergence  # lazy: scikit-learn and the nets

    rows, slopes = resnet_weight_convergence(quick=quick, seed=0)
    return rows, slopes, "N (samples) or L (depth)"


_RUNNERS = {"particles": _run_particles, "steps": _run_steps, "energy": _run_energy, "peakons": _run_peakons,
            "resnet": _run_resnet}


def run_case(case: str, *, quick: bool = False) -> tuple[list[dict], dict, str]:
    """Run one study: ``(rows, slopes, abscissa label)``."""
    if case not in _RUNNERS:
        raise ValueError(f"case: expected one of {list(CASES) + ['all']}, got {case!r}")
    return _RUNNERS[case](quick)


def write_csv(rows: list[dict], path: str) -> None:
    """Tidy rows as CSV (columns: the union of the rows' keys, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _curves(rows: list[dict]) -> dict:
    """Error curves ``{label: (xs, ys)}``: the meanfield studies' own grouping, or the ResNet study's
    (``study`` with abscissa ``row[row["axis"]]``)."""
    from lddmm_nets.meanfield import curves

    out = dict(curves(rows))
    for r in rows:
        if r.get("study") in ("n", "steps", "energy", "peakons", "peakon_grid") or "axis" not in r:
            continue
        label = str(r["study"])
        xs, ys = out.setdefault(label, ([], []))
        xs.append(float(r[r["axis"]]))
        ys.append(float(r["error"]))
    return out


def plot_convergence(rows: list[dict], slopes: dict, path: str, *, title: str = "", xlabel: str = "") -> None:
    """Log-log plot of every error curve in ``rows`` with its fitted slope in the legend, saved as PNG.

    Parameters
    ----------
    rows : list of dict
        Tidy rows of a meanfield study (or of ``resnet_weight_convergence``).
    slopes : dict
        ``label -> slope`` (labels as in ``lddmm_nets.meanfield.curves``, or the ResNet study names).
    path : str
        Output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    drawn = 0
    for label, (xs, ys) in sorted(_curves(rows).items()):
        pts = [(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0]
        if len(pts) < 2:
            continue
        pts.sort()
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_meanfield(args) -> int:
    """``lddmm meanfield``: run the requested case(s) and write ``<case>.csv``, ``<case>.png``,
    ``<case>_slopes.json`` into ``args.out``."""
    cases = list(CASES) if args.case == "all" else [args.case]
    for c in cases:
        if c not in _RUNNERS:
            raise ValueError(f"--case: expected one of {list(CASES) + ['all']}, got {c!r}")
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f"--out: expected a directory, got the file {out}")
    parent = os.path.dirname(out) or "."
    os.makedirs(parent, exist_ok=True)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
    import torch

    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix=".meanfield-", dir=parent)
    try:
        for case in cases:
            t0 = time.perf_counter()
            rows, slopes, xlabel = run_case(case, quick=args.quick)
            write_csv(rows, os.path.join(tmp, f"{case}.csv"))
            with open(os.path.join(tmp, f"{case}_slopes.json"), "w") as fh:
                json.dump(slopes, fh, indent=2, sort_keys=True)
            plot_convergence(rows, slopes, os.path.join(tmp, f"{case}.png"), title=f"meanfield: {case}",
                             xlabel=xlabel)
            print(f"{case}: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
            for label, s in sorted(slopes.items()):
                print(f"  {label:45s} slope {s:+.3f}")
        os.makedirs(out, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, name), os.path.join(out, name))
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"meanfield results written to {out}")
    return 0


def add_parsers(subparsers) -> None:
    """Add the ``meanfield`` sub-command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "meanfield", help="mean-field EPDiff studies: particles vs grid, time steps, energy, peakons, ResNet weights",
        description="Compare finite particle systems with their mean-field EPDiff limit and write CSV tables and "
                    "log-log convergence plots (fitted slopes in the legend) into --out.")
    p.add_argument("--case", default="all", choices=list(CASES) + ["all"], help="which study (default all)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quick", action="store_true", help="smaller studies (about a minute in all)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run_meanfield)
