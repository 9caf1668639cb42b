"""Mean-field limits of particle systems (THEORY §6): particles vs the grid EPDiff continuum, peakons, ResNet weights.

- ``.particles``: the one sampler ``sample(density, n, method="iid" | "qmc" | "midpoint" | "gauss_hermite")`` and the
  momenta ``p_i = w_i P_0(y_i)``;
- ``.compare``: particle-vs-grid errors against N and the step count;
- ``.peakons``: exact Camassa–Holm peakon solutions (1-D, Laplace kernel);
- ``.resnet_weights``: ResNet weights against N and L and their mean-field limit;
- ``.report``: the one row schema of every study (``ROW_COLUMNS``), error curves, fitted slopes, CSV and PNG;
- ``.studies``: the preset studies of ``lddmm meanfield`` and of the demo.
"""

from . import compare, particles, peakons, report, resnet_weights, studies
from .compare import MeanFieldProblem, convergence_in_n, convergence_in_steps, default_problem, energy_convergence
from .particles import SAMPLING_METHODS, GaussianDensity, Sample, initial_momenta, sample
from .peakons import (grid_peakon_speed, peakon_antipeakon, peakon_convergence, peakon_velocity, single_peakon,
                      two_peakon)
from .report import (CURVE_KEYS, ROW_COLUMNS, StudyResult, curves, fit_loglog_slope, fitted_slopes, make_row,
                     plot_convergence, write_csv)
from .resnet_weights import mean_field_weights, network_weights, resnet_weight_convergence
from .studies import STUDIES, demo_comparison, run_study

__all__ = [*particles.__all__, *compare.__all__, *peakons.__all__, *report.__all__, *resnet_weights.__all__,
           *studies.__all__]
