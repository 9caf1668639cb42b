"""Mean-field limits of particle systems (THEORY §6): particles vs the grid EPDiff continuum, and peakons.

- ``.particles``: samples of a density (independent, quasi-Monte Carlo, quadrature) and ``p_i = w_i P_0(y_i)``;
- ``.compare``: particle-vs-grid errors against N and the step count, with fitted log-log slopes;
- ``.peakons``: exact Camassa–Holm peakon solutions (1-D, Laplace kernel).
"""

from . import compare, particles, peakons
from .compare import (MeanFieldProblem, convergence_in_n, convergence_in_steps, curves, default_problem,
                      demo_comparison, energy_convergence, fit_loglog_slope, fitted_slopes)
from .particles import SAMPLING_METHODS, GaussianDensity, sample_particles
from .peakons import (grid_peakon_speed, peakon_antipeakon, peakon_convergence, peakon_velocity, single_peakon,
                      two_peakon)

__all__ = [*particles.__all__, *compare.__all__, *peakons.__all__]
