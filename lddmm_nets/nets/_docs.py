"""Docstrings of the idea-registration estimators (parameters and attributes shared by both)."""

PARAM_DOC = """
    Parameters
    ----------
    readout : {"kernel", "linear"}, default="kernel"
        "kernel": kernel ridge regression on the warped points (the warp may stay faint: the readout is flexible).
        "linear": ridge regression on the warped coordinates with an intercept (the kernel ``z·z' + 1``), as a
        ResNet's last layer: the flow must then carry the classes apart until a hyperplane separates them. Its
        defaults differ (see ``n_layers``, ``augment``, ``nu``, ``warp_sigma``): 10 layers (5-layer warps that
        strong fold the plane), one extra dimension, ν among ∞, 0.01 and 0.001, and a warp width of half the
        median distance.
    mode : {"layers", "shooting"}, default="layers"
        "layers" optimises one momentum per layer of ``n_layers`` explicit-Euler steps (a ResNet trained by
        backpropagation; its optimum satisfies the discrete Hamiltonian system); "shooting" optimises the initial
        momentum only and warps by the continuous Hamiltonian flow (geodesic). Both reach the same objective
        within 1e-3 on moons; "layers" is the default because it is 3-4 times cheaper per iteration with equal or
        better 5-fold accuracy on the benchmark (scripts/ideas_experiments.py).
    n_layers : int or "auto", default="auto"
        Time steps of the flow over [0, 1] (layers of the network); "auto": 5 (kernel readout), 10 (linear).
    integrator : str, default="rk2"
        Engine integrator of the shooting mode (``lddmm_nets.integrators.available()``).
    warp_kernel, readout_kernel : {"gaussian", "laplace", "matern", "cauchy"} or engine kernel, default="gaussian"
        Warping kernel Γ and readout kernel K; names are built with the widths below.
    warp_sigma : float or "auto", default="auto"
        Width of Γ in input units; "auto" is twice the readout width (kernel readout) or half the median pairwise
        distance (linear readout).
    readout_sigma : float or "auto", default="auto"
        Width of K; "auto" is selected with ``lam`` by exact leave-one-out on the unwarped data (at most 2,000
        points) among 2^-4.5 ... 8 (steps of 2^(1/4)) times the median pairwise distance (``loo_select``):
        regressors take the smallest LOO squared error; two-class classifiers a one-standard-error rule on LOO
        accuracy, then the smallest LOO squared error; classifiers of more than two classes the largest LOO
        accuracy averaged over each candidate's neighbours in the (width, λ) grid.
    nu : float or "auto", default="auto"
        Weight of the kinetic energy relative to the data term ``ℓ / N`` (``math.inf``: no warp, plain kernel ridge
        regression). "auto" chooses among no warp at all
        (ν = ∞: plain kernel ridge regression with the selected width and λ), 0.1 and 0.01 (linear readout: 0.01 and
        0.001) by 3-fold
        cross-validation inside ``fit`` (warps fitted on at most 600 points per inner fold; when N ≤ 1,000 the
        cross-validation is repeated over 3 shuffles of the folds and each point's held-out loss averaged). The loss
        is the squared error, or the 0-1 error for more than two classes; the choice is the simplest candidate whose
        mean loss is within one paired standard error of the smallest, so a warp is taken only when its held-out
        gain exceeds its noise, and the default falls back to the tuned kernel ridge readout otherwise. The choice
        is ``nu_``.
    lam : float or "auto", default="auto"
        Ridge parameter λ of the readout ("auto": leave-one-out among 1e-4 ... √10, steps of 10^(1/4), on the
        unwarped points). Regressors with both ``readout_sigma`` and ``lam`` "auto" (and at most 4,000 training
        points) then average the readouts of that grid instead of keeping one: weights proportional to the
        exponential of each candidate's leave-one-out log predictive density (pseudo-BMA), on the warped points
        when a warp was fitted, at most 16 candidates (``readout_weights_``); fix either parameter for one readout.
    nugget : float, default=1e-3
        Nugget r added to Γ(q, q) (kernel regularisation, R2's alternative to dropout).
    augment : int or "auto", default="auto"
        Extra zero input dimensions (augmented flows can untangle what a homeomorphism of R^d cannot: a line cannot
        separate nested circles after any diffeomorphism of the plane, a plane can after one of R^3); "auto": 0
        (kernel readout), 1 (linear). The kernels are invariant under reflections of the extra coordinates, so a flow
        started at p = 0 would never leave the plane; their momenta start at small seeded random values instead.
    max_iter : int or "auto", default="auto"
        L-BFGS iterations ("auto": 30) (``lddmm_nets.optim.minimize``, strong Wolfe line search; at most
        1.25 max_iter + 1 objective evaluations).
    tol : float, default=1e-5
        L-BFGS stops when the largest gradient entry of the normalised objective is below tol (or its relative
        decrease in one iteration below 1e-4 tol).
    refit_lam : bool, default=False
        With ``lam="auto"``, select λ again by leave-one-out on the warped training points before the final solve.
    backend : {"auto", "dense", "keops"}, default="auto"
        Kernel backend for the kernel sums; "auto" is dense up to 2^24 pairs (N ≤ 4096) and the engine's choice
        (KeOps) beyond. The chosen value is ``backend_``.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the optimisation; the leave-one-out selection and the fitted model (final trajectory,
        readout, predictions) are always float64.
    device : str, default="cpu"
    random_state : int, Generator or None
        Seeds the subsamples (median distance, leave-one-out, inner folds of the ν and readout selections): an int
        makes ``fit`` reproducible; None draws fresh splits on every fit (scikit-learn's convention).
"""

ATTR_DOC = """
    Attributes
    ----------
    trajectory_ : Trajectory or LayerTrajectory
        The warp of the training points; ``trajectory_.flow(x)`` warps new (lifted) points.
    energy_ : ndarray
        H along the trajectory ((n_layers + 1,) for shooting, (n_layers,) for layers).
    momentum_ : ndarray of shape (N, d + augment)
        Initial momentum p_0 of the data points.
    n_layers_, augment_, max_iter_ : int
        The values used (the "auto" defaults resolved).
    coef_, intercept_ : ndarray
        With ``readout="linear"``: the readout ``f(z) = coef_ z + intercept_`` on warped points z, shapes (k, D) and
        (k,) (classifiers: one row per class score; regressors: (D,) and a float for a 1-D target).
    momentum_sparsity_ : float
        Fraction of points whose momentum is below 1e-3 of the largest (the "support vectors" are the rest).
    readout_ : RidgeReadout
        Closed-form ridge readout on the warped training points.
    readout_sigma_, warp_sigma_, lam_ : float
        The widths and ridge parameter used.
    nu_ : float
        The warp strength used (``math.inf``: no warp, the trajectory is the identity).
    nu_validation_ : list of tuple or None
        With ``nu="auto"``: ``(nu, held-out accuracy or nan, held-out mean squared error, mean loss, paired
        standard error of the loss to the best candidate's)`` per candidate, no warp first (empty below 30
        training points, where no warp is kept).
    objective_, kinetic_energy_, data_term_, initial_data_term_ : float
        Final objective ``ν E + ℓ/N``, its parts, and ℓ/N before warping.
    displacement_ : float
        Mean displacement of the training points.
    n_iter_, converged_, stop_reason_ :
        L-BFGS iterations of the final fit, whether it met its stopping rule, and why it stopped (a key of
        ``lddmm_nets.optim.STOP_REASONS``, or "identity" when nothing was optimised: ν = ∞ or the identity warp
        already optimal). ``max_iter`` is a budget (the defaults stop there on most data, early stopping being part
        of their regularisation): "max_iter" and "max_eval" are reported here only; a final fit whose line search
        fails warns with ``lddmm_nets.optim.ConvergenceWarning``.
    loss_curve_ : ndarray
        Objective at the start and after every L-BFGS iteration of the final fit.
    fit_time_ : float
        Seconds.
"""

REGRESSOR_ATTR_DOC = """    readout_weights_ : list of (sigma, lam, weight) or None
        The averaged readouts (largest weight first; see ``lam``), or None for one readout (``readout_sigma_``,
        ``lam_``). The warp is fitted with ``readout_sigma_`` and ``lam_``, the candidate of smallest LOO squared
        error.
    signal_variance_, noise_variance_ : ndarray of shape (k,)
        Scales of the warped GP (``predict(return_std=True)``, ``sample_y``; lddmm_nets.nets.gp), in squared units
        of y (with averaged readouts, the weighted means of the components'). With ``readout="linear"`` the GP's kernel is ``z·z' + 1`` on the warped points z: Bayesian linear
        regression of y on ``[z, 1]`` with the prior ``N(0, signal_variance_ I)`` on ``(coef_, intercept_ - mean y)``
        and the noise variance ``noise_variance_``, whose posterior mean is the ridge readout.
"""

CLASSIFIER_ATTR_DOC = """    classes_ : ndarray
        Class labels.
    temperature_ : float
        ``predict_proba`` is ``softmax(temperature_ * scores)``, the temperature fitted on exact leave-one-out scores
        (lddmm_nets.nets.gp; the same for both readouts).
"""
