"""Demo section: particles against the grid EPDiff solution (the mean-field limit)."""

from __future__ import annotations

import os

from ._report import Check, Section

__all__ = ["meanfield_sections"]


def _meanfield_section(out: str, quick: bool, progress) -> Section:
    from lddmm_nets.meanfield import demo_comparison, plot_convergence, write_csv

    progress("mean field: particles against the grid solution")
    res = demo_comparison(quick)
    rows, slopes = res.rows, res.slopes
    by_n = [r for r in rows if r["study"] == "n"]
    by_h = [r for r in rows if r["study"] == "steps"]
    plot_convergence(by_n, slopes, os.path.join(out, "meanfield_n.png"), xlabel="number of particles N",
                     title="particles vs grid EPDiff (2-D): error against N")
    plot_convergence(by_h, slopes, os.path.join(out, "meanfield_steps.png"), xlabel="time step h",
                     title="particles vs grid EPDiff (2-D): error against the time step (RK2)")
    write_csv(rows, os.path.join(out, "meanfield.csv"))
    iid = slopes["n/iid/velocity_t1"]
    quad = slopes["n/midpoint/velocity_t1"]
    order = slopes["steps/rk2/velocity_t1"]
    numbers = {f"slope {k}": v for k, v in sorted(slopes.items())}
    numbers["largest N"] = max(r["n"] for r in by_n)
    numbers["table"] = "meanfield.csv"
    return Section(
        key="meanfield", title="Mean-field limit: particles against the grid EPDiff solution",
        caption="N particles drawn from a Gaussian density μ (independent samples, or a midpoint lattice) carry "
                "momenta p_i = P_0(y_i)/N and are shot with the engine's shoot; the grid solver integrates EPDiff "
                "with m_0 = P_0 μ. Relative errors of the velocity field at t = 1 (and of the momentum measure "
                "smoothed by a Gaussian of half the kernel's width) fall like N^(-1/2) for independent samples "
                "(Monte Carlo), much faster for lattice samples, and like h^2 in the time step for RK2.",
        pictures=["meanfield_n.png", "meanfield_steps.png"], numbers=numbers,
        checks=[Check("Monte Carlo slope (theory -0.5)", iid, "<=", -0.3),
                Check("Monte Carlo slope (theory -0.5), lower bound", iid, ">=", -0.7),
                Check("midpoint-lattice slope minus Monte Carlo slope", quad - iid, "<=", 0.0),
                Check("RK2 time-step slope (theory 2)", order, ">=", 1.7)])


def meanfield_sections():
    """The mean-field section: ``(name, function(out, quick, progress) -> Section)``."""
    return [("meanfield", _meanfield_section)]
