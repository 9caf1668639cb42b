#!/usr/bin/env python
"""Mean-field EPDiff limits (THEORY §6): particle systems against the grid EPDiff continuum, with the goals of
issue 5 checked and printed as a table.

Goals:

1. Monte Carlo: with independent samples, the particle-vs-grid velocity error at t = 1 decays like N^slope with
   the slope within 0.15 of -1/2 (2-D, Gaussian kernel, RMS over independent draws).
2. Time step: with a fine quadrature sample, the error decays like h^slope with the slope within 0.3 of the
   scheme's order (euler 1, rk2 2, rk4 4).
3. Scale: one 2-D comparison with 10^4 particles (KeOps backend) in under a minute.

Also printed (information): quasi-Monte Carlo and lattice (midpoint) slopes, the grid solver's energy drift orders and the
peakon checks. ``--out DIR`` also writes the tidy rows as CSV.

Usage: ``python scripts/meanfield_experiments.py [--quick] [--threads 1] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from lddmm_nets import backends
from lddmm_nets.meanfield import (convergence_in_n, convergence_in_steps, default_problem, energy_convergence,
                                  fitted_slopes, grid_peakon_speed, peakon_convergence, write_csv)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller studies (goal 1 and 2 less precise)")
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenMP threads (default 1)")
    ap.add_argument("--out", default=None, help="directory for the CSV tables")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    quick = args.quick
    problem = default_problem(2, cells=64)
    t_start = time.perf_counter()
    goals, info, all_rows = [], [], []

    # 1. Monte Carlo slope
    t0 = time.perf_counter()
    ns = (64, 256, 1024) if quick else (64, 256, 1024, 4096)
    rows = convergence_in_n(problem, ns, methods=("iid", "qmc", "midpoint"), repeats=4 if quick else 8,
                            n_steps=4, integrator="rk4")
    all_rows += rows
    s = fitted_slopes(rows)
    mc = s["n/iid/velocity_t1"]
    goals.append(("Monte Carlo slope (iid, velocity at t=1)", f"{mc:+.3f}", "-0.50 ± 0.15", abs(mc + 0.5) <= 0.15))
    for label in ("n/iid/velocity_t0", "n/iid/momentum_t1", "n/qmc/velocity_t1", "n/midpoint/velocity_t1"):
        info.append((label, f"{s[label]:+.3f}"))
    info.append(("  (N study seconds)", f"{time.perf_counter() - t0:.1f}"))

    # 2. time-step slopes
    t0 = time.perf_counter()
    rows = convergence_in_steps(problem, (2, 4, 8, 16), integrators=("euler", "rk2", "rk4"),
                                n=2304 if quick else 4096)
    all_rows += rows
    s = fitted_slopes(rows)
    for integ, order in (("euler", 1), ("rk2", 2), ("rk4", 4)):
        v = s[f"steps/{integ}/velocity_t1"]
        goals.append((f"time-step slope {integ} (order {order})", f"{v:+.3f}", f"{order} ± 0.3",
                      abs(v - order) <= 0.3))
    info.append(("  (step study seconds)", f"{time.perf_counter() - t0:.1f}"))

    # 3. 10^4 particles with KeOps
    backend = "keops" if backends.keops_available() else "dense"
    big, p0 = problem.particles(10_000, method="iid", seed=0)
    q0 = big.points
    problem.grid_solution()  # the continuum reference is not part of the particle timing
    t0 = time.perf_counter()
    err = problem.errors(q0, p0, n_steps=5, integrator="rk4", backend=backend)
    secs = time.perf_counter() - t0
    goals.append((f"2-D, 10^4 particles, rk4 x 5 steps ({backend})", f"{secs:.1f} s", "< 60 s", secs < 60))
    info.append(("  its velocity error at t=1", f"{err['velocity_t1']:.2e}"))

    # information: grid energy drift and peakons
    rows = energy_convergence(problem)
    all_rows += rows
    for label, v in sorted(fitted_slopes(rows).items()):
        info.append((label + " (slope in h)", f"{v:+.3f}"))
    rows = peakon_convergence() + grid_peakon_speed()
    all_rows += rows
    for label, v in sorted(fitted_slopes(rows).items()):
        if label.endswith("position") or label.startswith("peakon_grid"):
            info.append((label, f"{v:+.3f}"))
    finest = {r["quantity"]: r["error"] for r in rows if r["study"] == "peakon_grid" and r["n"] == 1024}
    info.append(("grid single peakon: |speed - c|/c, |speed - height|/c",
                 f"{finest['speed_error']:.3f}, {finest['speed_minus_height']:.3f}"))

    w = max(len(g[0]) for g in goals)
    print(f"{'goal':{w}s}  {'measured':>10s}  {'target':>13s}  status")
    for name, val, target, ok in goals:
        print(f"{name:{w}s}  {val:>10s}  {target:>13s}  {'PASS' if ok else 'FAIL'}")
    print()
    w = max(len(i[0]) for i in info)
    for name, val in info:
        print(f"{name:{w}s}  {val}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s, torch threads {torch.get_num_threads()}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_csv(all_rows, os.path.join(args.out, "meanfield_rows.csv"))
    return 0 if all(g[3] for g in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
