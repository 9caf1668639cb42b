"""``lddmm meanfield``: mean-field EPDiff studies written as CSV tables and log-log PNG plots.

``lddmm meanfield [--case NAME] --out DIR [--quick]`` runs one preset study of ``lddmm_nets.meanfield.studies`` (or
all) and writes, per case, ``<case>.csv`` (tidy rows, the columns of ``lddmm_nets.meanfield.ROW_COLUMNS``),
``<case>.png`` (log-log error curves, fitted slopes in the legend) and ``<case>_slopes.json``. Files are written to
a temporary directory beside DIR and moved into place at the end, so a failed run leaves nothing that looks
complete. This room holds the argument parsing and the output directory; the studies and the report are the
engine's.
"""

from __future__ import annotations

import json
import os
import time

from ..io.output import atomic_directory

__all__ = ["add_parsers", "run_meanfield", "CASES"]

CASES = ("particles", "steps", "energy", "peakons", "resnet")


def _write_case(tmp: str, case: str, quick: bool) -> None:
    from lddmm_nets.meanfield import plot_convergence, run_study, write_csv

    t0 = time.perf_counter()
    res = run_study(case, quick=quick)
    write_csv(res.rows, os.path.join(tmp, f"{case}.csv"))
    with open(os.path.join(tmp, f"{case}_slopes.json"), "w") as fh:
        json.dump(res.slopes, fh, indent=2, sort_keys=True)
    plot_convergence(res.rows, res.slopes, os.path.join(tmp, f"{case}.png"), title=f"meanfield: {case}",
                     xlabel=res.xlabel)
    print(f"{case}: {len(res.rows)} rows in {time.perf_counter() - t0:.1f} s")
    for label, s in sorted(res.slopes.items()):
        print(f"  {label:45s} slope {s:+.3f}")


def run_meanfield(args) -> int:
    """``lddmm meanfield``: run the requested case(s) and write ``<case>.csv``, ``<case>.png``,
    ``<case>_slopes.json`` into ``args.out``."""
    cases = list(CASES) if args.case == "all" else [args.case]
    for c in cases:
        if c not in CASES:
            raise ValueError(f"--case: expected one of {list(CASES) + ['all']}, got {c!r}")
    out = os.path.abspath(args.out)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
    import torch

    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        with atomic_directory(out, prefix=".meanfield-") as tmp:
            for case in cases:
                _write_case(tmp, case, args.quick)
    finally:
        torch.set_num_threads(threads)
    print(f"meanfield results written to {out}")
    return 0


def add_parsers(subparsers) -> None:
    """Add the ``meanfield`` sub-command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "meanfield", help="mean-field EPDiff studies: particles vs grid, time steps, energy, peakons, ResNet weights",
        description="Compare finite particle systems with their mean-field EPDiff limit and write CSV tables and "
                    "log-log convergence plots (fitted slopes in the legend) into --out. Cases: particles "
                    "(errors against N, 2-D), steps (against the time step), energy (grid solver's energy drift), "
                    "peakons (closed-form Camassa-Holm solutions), resnet (ResNet weights against N and L).")
    p.add_argument("--case", default="all", choices=list(CASES) + ["all"], help="which study (default all)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quick", action="store_true", help="smaller studies (about a minute in all)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run_meanfield)
