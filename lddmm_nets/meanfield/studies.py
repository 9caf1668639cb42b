"""The preset studies of ``lddmm meanfield`` and of the demo: which problem, sizes and methods each one runs.

``run_study(name, quick=...)`` returns a ``StudyResult`` (tidy rows, fitted slopes, the abscissa in words) for the
names of ``STUDIES``; ``demo_comparison`` is the small 2-D particle-vs-grid study of the demo.
"""

from __future__ import annotations

from ..checks import check_choice
from .compare import convergence_in_n, convergence_in_steps, default_problem, energy_convergence
from .peakons import grid_peakon_speed, peakon_convergence
from .report import StudyResult, fitted_slopes

__all__ = ["STUDIES", "run_study", "demo_comparison"]


def _particles(quick: bool) -> StudyResult:
    problem = default_problem(2, cells=48 if quick else 64)
    ns = (64, 256, 1024) if quick else (64, 256, 1024, 4096)
    rows = convergence_in_n(problem, ns, repeats=3 if quick else 6, n_steps=4, integrator="rk4")
    return StudyResult(rows, fitted_slopes(rows), "number of particles N")


def _steps(quick: bool) -> StudyResult:
    problem = default_problem(2, cells=48 if quick else 64)
    rows = convergence_in_steps(problem, (2, 4, 8) if quick else (2, 4, 8, 16), integrators=("euler", "rk2", "rk4"),
                                n=2304 if quick else 4096)
    return StudyResult(rows, fitted_slopes(rows), "time step h")


def _energy(quick: bool) -> StudyResult:
    rows = energy_convergence(default_problem(2, cells=32 if quick else 64), (8, 16, 32) if quick else (8, 16, 32, 64))
    return StudyResult(rows, fitted_slopes(rows), "time step h")


def _peakons(quick: bool) -> StudyResult:
    rows = peakon_convergence((25, 50, 100) if quick else (25, 50, 100, 200))
    rows += grid_peakon_speed((256, 512) if quick else (256, 512, 1024))
    return StudyResult(rows, fitted_slopes(rows), "time step h (peakons) or peakon width (peakon_grid)")


def _resnet(quick: bool) -> StudyResult:
    from .resnet_weights import resnet_weight_convergence

    return resnet_weight_convergence(quick=quick, seed=0)


#: name -> what it measures
STUDIES = {
    "particles": "particle-vs-grid errors against N in 2-D (iid, quasi-Monte Carlo, midpoint samples)",
    "steps": "particle-vs-grid errors against the step size in 2-D (euler, rk2, rk4)",
    "energy": "energy drift of the grid EPDiff solver against the step size",
    "peakons": "particle solver against the closed-form two-peakon solutions, and the grid solver's single peakon",
    "resnet": "ResNet weights against the number of samples and the depth, and to their mean-field limit",
}
_RUNNERS = {"particles": _particles, "steps": _steps, "energy": _energy, "peakons": _peakons, "resnet": _resnet}


def run_study(name: str, *, quick: bool = False) -> StudyResult:
    """Run one preset study (``quick``: smaller sizes, about a minute for all of them on one core).

    Parameters
    ----------
    name : str
        A key of ``STUDIES``.
    quick : bool
    """
    check_choice("name", name, tuple(STUDIES))
    return _RUNNERS[name](bool(quick))


def demo_comparison(quick: bool = False, *, backend: str = "auto") -> StudyResult:
    """A small 2-D particle-vs-grid study for demonstrations (under 20 s; ``quick`` under 8 s on one CPU thread).

    Independent and midpoint samples against N, and RK2 against the step count.
    """
    problem = default_problem(2, cells=48 if quick else 64)
    ns = (64, 256, 1024) if quick else (64, 128, 256, 512, 1024)
    rows = convergence_in_n(problem, ns, methods=("iid", "midpoint"), repeats=2 if quick else 4,
                            n_steps=6, integrator="rk4", backend=backend)
    rows += convergence_in_steps(problem, (2, 4, 8) if quick else (2, 4, 8, 16), integrators=("rk2",),
                                 n=1024 if quick else 2304, backend=backend)
    return StudyResult(rows, fitted_slopes(rows), "number of particles N or time step h")
