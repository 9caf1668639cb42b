"""Idea-registration estimators: scikit-learn conventions, bad input, the ridge readout's maths, the two modes."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_blobs, make_moons
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from lddmm_nets import GaussianKernel as WideGaussianKernel
from lddmm_nets.nets import (KernelWarpingClassifier, KernelWarpingRegressor, LayerTrajectory,
                             discrete_hamiltonian_residuals, loo_select, make_spirals, one_standard_error_choice,
                             ridge_loss, ridge_solve)
from lddmm_nets.optim import ConvergenceWarning


@pytest.fixture(scope="module")
def moons():
    X, y = make_moons(120, noise=0.2, random_state=0)
    return StandardScaler().fit_transform(X), y


# ------------------------------------------------------------------------------------------------ sklearn conventions
@pytest.mark.parametrize("est", [KernelWarpingClassifier(max_iter=5), KernelWarpingRegressor(max_iter=5)],
                         ids=lambda e: type(e).__name__)
def test_check_estimator(est):
    # With nu="auto" the inner cross-validation may choose no warp (nu_ = inf): then no optimisation runs and n_iter_
    # is 0, below scikit-learn's convention of at least 1 (it does on iris, three classes).
    expected = {"check_non_transformer_estimators_n_iter": "n_iter_ is 0 when nu='auto' chooses no warp"}
    results = check_estimator(est, on_fail=None, expected_failed_checks=expected)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed


def test_clone_cv_and_grid_search(moons):
    X, y = moons
    clf = KernelWarpingClassifier(n_layers=3, max_iter=10, nu=0.05)
    c = clone(clf)
    assert c.get_params() == clf.get_params()
    c.set_params(nu=0.2)
    assert c.nu == 0.2 and clf.nu == 0.05
    scores = cross_val_score(clf, X, y, cv=3)
    assert scores.mean() > 0.85
    gs = GridSearchCV(clf, {"nu": [0.05, 0.5]}, cv=2).fit(X, y)
    # set_params reaches the fit: the refitted model carries the chosen ν, and the two ν give different warps
    assert gs.best_estimator_.nu_ == gs.best_params_["nu"]
    energies = [clone(clf).set_params(nu=nu).fit(X, y).kinetic_energy_ for nu in (0.05, 0.5)]
    assert energies[0] > 1.5 * energies[1]  # a weaker kinetic penalty buys a more energetic warp
    np.testing.assert_array_equal(gs.predict(X), gs.best_estimator_.predict(X))


def test_pipeline_beats_chance_and_warps(moons):
    X, y = moons
    pipe = make_pipeline(StandardScaler(), KernelWarpingClassifier(nu=0.1)).fit(X, y)
    clf = pipe[-1]
    assert pipe.score(X, y) > 0.9
    assert clf.nu_ == 0.1 and clf.nu_validation_ is None
    # The warp lowers the objective below the data term of the identity map (p = 0).
    assert clf.objective_ < clf.initial_data_term_
    assert clf.displacement_ > 0
    assert clf.mode == "layers" and clf.energy_.shape == (clf.n_layers_,) == (5,)
    assert clf.momentum_.shape == X.shape
    row = np.linalg.norm(clf.momentum_, axis=1)
    assert clf.momentum_sparsity_ == pytest.approx(np.mean(row <= 1e-3 * row.max()), abs=1e-12)
    s = clf.decision_function(X)
    assert s.shape == (len(y),)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[(s > 0).astype(int)])


def test_nu_auto_follows_its_rule_and_no_warp_is_kernel_ridge(moons):
    X, y = moons
    clf = KernelWarpingClassifier(random_state=0).fit(X, y)
    table = clf.nu_validation_
    assert [r[0] for r in table] == [np.inf, 0.1, 0.01]  # simplest first
    # The rule: the first candidate whose mean loss (two classes: squared error) is within its paired standard
    # error of the smallest.
    assert all(r[3] == r[2] for r in table)
    best = min(r[3] for r in table)
    assert clf.nu_ == next(r[0] for r in table if r[3] <= best + r[4] + 1e-12)
    assert all(0.5 < r[1] <= 1 and r[2] > 0 for r in table)
    # ν = ∞ (chosen on the inner folds, or given) is kernel ridge regression with the selected width and λ:
    # identity trajectory, zero displacement, the closed-form ridge predictions.
    ref = clf if clf.nu_ == np.inf else KernelWarpingClassifier(random_state=0, nu=np.inf).fit(X, y)
    assert ref.nu_ == np.inf and ref.displacement_ == 0.0 and ref.n_iter_ == 0 and ref.stop_reason_ == "identity"
    assert ref.objective_ == pytest.approx(ref.initial_data_term_)
    k = ref.readout_kernel_
    Y = torch.eye(2, dtype=torch.float64)[torch.as_tensor(y)]
    q = torch.tensor(X)
    alpha = ridge_solve(k, q, Y - Y.mean(0), ref.lam_)
    s = (k.gram(q, q) @ alpha + Y.mean(0)).numpy()
    np.testing.assert_allclose(ref.decision_function(X), s[:, 1] - s[:, 0], rtol=1e-9, atol=1e-9)


def test_optimiser_report_reaches_the_attributes():
    X, y = make_moons(40, noise=0.1, random_state=3)
    kw = dict(n_layers=4, nu=0.05, lam=0.1, readout_sigma=0.5, warp_sigma=1.0, dtype="float64")
    # two iterations cannot meet the gradient rule: converged_ is False and the reason is the budget (a deliberate
    # one: reported, not warned)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        short = KernelWarpingClassifier(max_iter=2, **kw).fit(X, y)
    assert not short.converged_ and short.stop_reason_ in ("max_iter", "max_eval") and short.n_iter_ <= 2
    assert short.loss_curve_.shape == (short.n_iter_ + 1,)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        full = KernelWarpingClassifier(max_iter=500, tol=1e-3, **kw).fit(X, y)  # about 150 iterations
    assert full.converged_ and full.stop_reason_ in ("gradient", "objective") and full.n_iter_ > 2
    # the curve decreases and its last value is the reported objective (float64 throughout)
    assert np.all(np.diff(full.loss_curve_) <= 1e-12)
    assert full.loss_curve_[-1] == pytest.approx(full.objective_, rel=1e-9)
    assert full.objective_ < short.objective_ < short.initial_data_term_


def test_fit_and_predict_on_the_device(device, moons):
    X, y = moons
    clf = KernelWarpingClassifier(nu=0.1, max_iter=10, device=device, random_state=0).fit(X, y)
    assert clf.trajectory_.q.device.type == device.type and clf.readout_.alpha.device.type == device.type
    assert isinstance(clf.momentum_, np.ndarray) and isinstance(clf.predict(X), np.ndarray)
    assert clf.score(X, y) > 0.9
    if device.type != "cpu":  # the same fit on the CPU, to float32 round-off of the optimisation
        ref = KernelWarpingClassifier(nu=0.1, max_iter=10, random_state=0).fit(X, y)
        np.testing.assert_allclose(clf.decision_function(X), ref.decision_function(X), atol=1e-3)


def _smoothed_loo_accuracy(table, sigmas, lams):
    """Mean LOO accuracy over each candidate's 3 x 3 neighbourhood in the (σ, λ) grid, from loo_select's table."""
    acc = {(sigmas.index(s), lams.index(lam)): a for s, lam, a in table}
    return {(sigmas[i], lams[j]): np.mean([acc[i + a, j + b] for a in (-1, 0, 1) for b in (-1, 0, 1)
                                          if (i + a, j + b) in acc]) for i, j in acc}


def test_loo_selection_with_more_than_two_classes_maximises_the_smoothed_loo_accuracy():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:300] / 16.0, y[:300]
    q = torch.tensor(X)
    Y = torch.eye(10, dtype=torch.float64)[torch.as_tensor(y)]
    Yc = Y - Y.mean(0)
    sigmas, lams = [1.0, 2.0, 4.0, 8.0], [1e-3, 1e-2, 1e-1]
    make = lambda s: WideGaussianKernel(sigma=s)  # noqa: E731
    sel = loo_select(make, q, Yc, sigmas, lams, classification=True)
    smooth = _smoothed_loo_accuracy(sel.table, sigmas, lams)
    by_acc = loo_select(make, q, Yc, sigmas, lams, classification=True, select_by="accuracy")
    assert (sel.sigma, sel.lam) == (by_acc.sigma, by_acc.lam)  # "auto" reads accuracy above two classes
    assert smooth[sel.sigma, sel.lam] == max(smooth.values())
    assert sel.score == dict(((s, lam), a) for s, lam, a in sel.table)[sel.sigma, sel.lam]
    # Two classes keep the one-standard-error rule on the squared error (the same data, labels 0-4 vs 5-9).
    Y2 = torch.stack([torch.as_tensor(y < 5), torch.as_tensor(y >= 5)], 1).double()
    two = loo_select(make, q, Y2 - Y2.mean(0), sigmas, lams, classification=True)
    a = max(r[2] for r in two.table)
    ok = [(s, lam) for s, lam, acc in two.table if acc >= a - np.sqrt(a * (1 - a) / 300) - 1e-12]
    mse = {(s, lam): -m for s, lam, m in loo_select(make, q, Y2 - Y2.mean(0), sigmas, lams,
                                                    classification=False).table}
    assert (two.sigma, two.lam) == min(ok, key=mse.get)


def test_one_standard_error_rule_with_paired_errors():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    # A flexible candidate better by a constant 0.01 on every point: the paired differences have no spread, so
    # the gain is certain and the simplest candidate (index 0) loses.
    assert one_standard_error_choice([base + 0.01, base])[0] == 1
    # The same mean gain buried in noise of standard deviation 1 (standard error 0.05): the simplest is kept.
    noise = rng.standard_normal(400)
    noise = (noise - noise.mean()) / noise.std(ddof=1)
    chosen, means, ses = one_standard_error_choice([base + 0.01 + noise, base])
    assert chosen == 0 and ses[0] == pytest.approx(0.05) and ses[1] == 0.0
    assert means == pytest.approx([base.mean() + 0.01, base.mean()])
    # Among several within the error, the first (simplest) one; ties go to the first.
    assert one_standard_error_choice([base, base, base - 0.001 + noise])[0] == 0
    assert one_standard_error_choice([base + 1.0, base + noise, base])[0] == 1


def test_nu_auto_with_more_than_two_classes_reads_the_0_1_error():
    X, y = make_blobs(240, centers=3, cluster_std=2.5, random_state=0)
    clf = KernelWarpingClassifier(random_state=0, max_iter=5).fit(X, y)
    table = clf.nu_validation_
    assert all(r[3] == pytest.approx(1 - r[1]) for r in table)
    best = min(r[3] for r in table)
    assert clf.nu_ == next(r[0] for r in table if r[3] <= best + r[4] + 1e-12)


def test_nu_auto_keeps_no_warp_below_thirty_points():
    X, y = make_moons(20, noise=0.1, random_state=0)
    clf = KernelWarpingClassifier().fit(X, y)
    assert clf.nu_ == np.inf and clf.nu_validation_ == [] and clf.displacement_ == 0.0


def test_multiclass_and_string_labels():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 0.3, size=(20, 2)) for c in ([0, 0], [2, 0], [0, 2])])
    y = np.repeat(np.array(["a", "b", "c"]), 20)
    clf = KernelWarpingClassifier(max_iter=5).fit(X, y)
    assert list(clf.classes_) == ["a", "b", "c"]
    assert clf.decision_function(X).shape == (60, 3)
    assert clf.score(X, y) > 0.95


def test_regressor_fits_a_curve_and_multioutput():
    rng = np.random.default_rng(1)
    X = rng.uniform(-3, 3, size=(80, 1))
    y = np.sin(2 * X[:, 0]) + 0.05 * rng.normal(size=80)
    reg = KernelWarpingRegressor(max_iter=10).fit(X, y)
    assert reg.score(X, y) > 0.95
    Y2 = np.stack([y, 3 * y + 1], 1)
    reg2 = KernelWarpingRegressor(max_iter=5, mode="layers").fit(X, Y2)
    P = reg2.predict(X)
    # the readout is linear in the targets and the offset and scale are undone per column: whatever the shared
    # warp, the second column's prediction is 3 times the first's plus 1
    assert P.shape == (80, 2)
    np.testing.assert_allclose(P[:, 1], 3 * P[:, 0] + 1, rtol=1e-9, atol=1e-9)


def test_augment_lifts_the_warp(moons):
    X, y = moons
    clf = KernelWarpingClassifier(augment=2, nu=0.05, max_iter=5).fit(X, y)
    Z = clf.warp(X)
    assert Z.shape == (len(X), 4)
    assert clf.momentum_.shape == (len(X), 4)
    path = clf.warp(X, return_path=True)
    assert path.shape == (clf.n_layers_ + 1, len(X), 4)
    np.testing.assert_array_equal(path[0][:, 2:], 0.0)  # the lifted start
    np.testing.assert_allclose(path[-1], Z, atol=1e-12)
    # Zero padding is a symmetry of the objective (z -> -z): the gradient in the extra coordinates vanishes on the
    # plane z = 0, so a flow started at p = 0 stays there exactly; the seeded start of their momenta breaks it.
    assert np.abs(Z[:, 2:]).max() > 1e-3 and np.abs(Z[:, :2] - X).max() > 1e-3
    from lddmm_nets.nets._momenta import WarpProblem, fit_momenta

    q0 = torch.tensor(np.c_[X, np.zeros((len(X), 2))])
    Y = torch.eye(2, dtype=torch.float64)[torch.as_tensor(y)]
    problem = WarpProblem(warp_kernel=clf.warp_kernel_, readout_kernel=clf.readout_kernel_, lam=clf.lam_,
                          max_iter=5, n_augment=2, augment_init=0.0)
    p = fit_momenta(problem, q0, Y - Y.mean(0), 0.05).p
    assert float(p[..., 2:].abs().max()) == 0.0 and float(p[..., :2].abs().max()) > 0


def test_engine_kernel_objects_are_accepted(moons):
    from lddmm_nets import GaussianKernel, LaplaceKernel

    X, y = moons
    clf = KernelWarpingClassifier(warp_kernel=LaplaceKernel(sigma=1.0, nugget=1e-3),
                                  readout_kernel=GaussianKernel(sigma=0.5), max_iter=5).fit(X, y)
    assert clf.warp_kernel_.sigma == 1.0 and clf.warp_sigma_ == 1.0
    assert clf.readout_sigma_ is None and clf.lam_ > 0
    assert clf.score(X, y) > 0.9
    with pytest.raises(ValueError, match="warp_kernel"):
        KernelWarpingClassifier(warp_kernel=object()).fit(X, y)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("Est", [KernelWarpingClassifier, KernelWarpingRegressor])
def test_bad_input_errors(Est, moons):
    X, y = moons
    est = Est(max_iter=2)
    with pytest.raises(NotFittedError):
        est.predict(X)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.fit(Xn, y)
    Xi = X.copy()
    Xi[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        est.fit(Xi, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        est.fit(X, y[:-1])
    est.fit(X, y)
    with pytest.raises(ValueError, match="3 features, but .* is expecting 2 features"):
        est.predict(np.zeros((4, 3)))


def test_one_class_is_an_error(moons):
    X, _ = moons
    with pytest.raises(ValueError, match="only one class"):
        KernelWarpingClassifier().fit(X, np.zeros(len(X)))


@pytest.mark.parametrize("params, name", [
    ({"mode": "flow"}, "mode"), ({"nu": -1.0}, "nu"), ({"n_layers": 0}, "n_layers"), ({"augment": -1}, "augment"),
    ({"lam": "big"}, "lam"), ({"warp_kernel": "rbf"}, "warp_kernel"), ({"dtype": "float16"}, "dtype"),
    ({"integrator": "magic"}, "integrator"), ({"nugget": -1e-3}, "nugget"), ({"readout_sigma": 0.0}, "readout_sigma"),
    ({"nu": float("nan")}, "nu"), ({"lam": float("inf")}, "lam"),
])
def test_bad_parameters_name_the_argument(params, name, moons):
    X, y = moons
    with pytest.raises(ValueError, match=name):
        KernelWarpingClassifier(**params).fit(X, y)


# ------------------------------------------------------------------------------------------------ the two modes
def test_shooting_and_layers_reach_the_same_objective(moons):
    X, y = moons
    kw = dict(n_layers=5, nu=0.05, lam=0.1, readout_sigma=0.5, warp_sigma=1.0, max_iter=200, dtype="float64",
              tol=1e-8)
    a = KernelWarpingClassifier(mode="shooting", **kw).fit(X, y)
    b = KernelWarpingClassifier(mode="layers", **kw).fit(X, y)
    assert a.objective_ < 0.99 * a.initial_data_term_
    assert abs(a.objective_ - b.objective_) <= 0.01 * a.objective_
    # The shooting mode's H is conserved by the Hamiltonian flow (to the integrator's accuracy).
    assert np.ptp(a.energy_) <= 1e-3 * a.energy_.mean()


def test_layers_mode_momenta_solve_the_discrete_hamiltonian_system():
    X, y = make_moons(40, noise=0.1, random_state=3)
    nu, L = 0.05, 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = KernelWarpingClassifier(mode="layers", n_layers=L, nu=nu, lam=0.1, readout_sigma=0.5, warp_sigma=1.0,
                                      max_iter=2000, tol=1e-9, dtype="float64").fit(X, y)
    assert clf.converged_
    traj = clf.trajectory_
    assert isinstance(traj, LayerTrajectory)
    res = discrete_hamiltonian_residuals(traj.kernel, traj.q, traj.p)
    assert float(res.max()) < 1e-3
    # Terminal condition p_{L-1} = -(1/ν) ∇(ℓ/N)(q_L).
    Y = torch.eye(2, dtype=torch.float64)[torch.as_tensor(y)]
    qL = traj.q[-1].clone().requires_grad_(True)
    val, _ = ridge_loss(clf.readout_kernel_, qL, Y - Y.mean(0), clf.lam_)
    (g,) = torch.autograd.grad(val / len(X), qL)
    rel = float((traj.p[-1] + g / nu).norm() / traj.p[-1].norm())
    assert rel < 1e-3
    # An arbitrary set of momenta does not satisfy the system (the check can fail).
    bad = discrete_hamiltonian_residuals(traj.kernel, traj.q, traj.p.flip(0))
    assert float(bad.max()) > 1e-2


# ------------------------------------------------------------------------------------------------ toy data
def test_make_spirals_lies_on_two_reflected_archimedean_arms():
    X, y = make_spirals(101, noise=0.0, turns=1.5, random_state=1)
    assert X.shape == (100, 2) and list(np.bincount(y)) == [50, 50]
    arm = X[:50]
    np.testing.assert_array_equal(X[50:], -arm)  # the second arm is the point reflection of the first
    # r = t / (2π turns) and the angle is t: x = r cos(2π turns r), y = r sin(2π turns r).
    r = np.linalg.norm(arm, axis=1)
    t = 2 * np.pi * 1.5 * r
    np.testing.assert_allclose(arm, np.stack([r * np.cos(t), r * np.sin(t)], 1), atol=1e-12)
    assert r.min() >= np.sqrt(0.05) - 1e-12 and r.max() <= 1.0
    Xn, _ = make_spirals(100, noise=0.3, random_state=1)
    assert 0.05 < np.std(Xn - X) < 0.15  # noise / 3 = 0.1
    np.testing.assert_array_equal(make_spirals(50, random_state=3)[0], make_spirals(50, random_state=3)[0])
    for kw, name in (({"n_samples": 1}, "n_samples"), ({"noise": -0.1}, "noise"), ({"turns": 0}, "turns")):
        with pytest.raises(ValueError, match=name):
            make_spirals(**kw)


@pytest.mark.slow
def test_spirals_demo_recipe():
    # The recipe of the demo: a visible warp (small ν, wide readout) that separates held-out spiral points.
    from sklearn.model_selection import train_test_split

    X, y = make_spirals(400, noise=0.1, random_state=0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    clf = KernelWarpingClassifier(n_layers=8, nu=1e-3, readout_sigma=0.5, lam=1e-2, max_iter=50,
                                  random_state=0).fit(Xtr, ytr)
    assert clf.score(Xte, yte) >= 0.95
    assert clf.displacement_ > 0.1
    grid = np.stack(np.meshgrid(np.linspace(-1.3, 1.3, 9), np.linspace(-1.3, 1.3, 9)), -1).reshape(-1, 2)
    path = clf.trajectory_.flow(torch.tensor(grid), return_path=True).numpy()
    assert path.shape == (9, 81, 2)
    np.testing.assert_allclose(path[-1], clf.warp(grid), atol=1e-12)
    np.testing.assert_array_equal(path[0], grid)


def test_inner_selection_averages_repeated_shuffles_and_is_reproducible(moons):
    from lddmm_nets.nets import _selection as sel
    from lddmm_nets.nets._momenta import WarpProblem

    X, y = moons
    clf = KernelWarpingClassifier(random_state=0).fit(X, y)
    # A fixed random_state gives the same inner splits, hence the same table and choice.
    again = KernelWarpingClassifier(random_state=0).fit(X, y)
    assert again.nu_validation_ == clf.nu_validation_ and again.nu_ == clf.nu_
    n, k = len(X), sel.NU_FOLDS
    q0 = torch.tensor(X, dtype=torch.float32)
    Y = torch.eye(2, dtype=q0.dtype)[torch.as_tensor(y)]
    Yc = Y - Y.mean(0)
    # Small sets: NU_REPEATS shuffles of the folds, each a partition of the points; large sets: one.
    assert sel.inner_repeats(n) == sel.NU_REPEATS > 1 and sel.inner_repeats(sel.NU_REPEAT_MAX_POINTS + 1) == 1
    folds = sel.inner_folds(y, np.random.default_rng(0), classification=True)
    assert len(folds) == k * sel.NU_REPEATS
    for r in range(sel.NU_REPEATS):
        held = np.sort(np.concatenate([va for _, va in folds[r * k:(r + 1) * k]]))
        np.testing.assert_array_equal(held, np.arange(n))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds[:k], folds[k:2 * k]))
    # The table is the mean of the per-repeat tables (accuracy and squared error), and the choice applies the
    # paired one-standard-error rule to the per-point losses averaged over the repeats.
    problem = WarpProblem(warp_kernel=clf.warp_kernel_, readout_kernel=clf.readout_kernel_, lam=clf.lam_,
                          mode=clf.mode, n_layers=clf.n_layers_, integrator=clf.integrator, backend=clf.backend_,
                          max_iter=clf.max_iter_, tol=clf.tol)
    select = lambda f: sel.select_nu(problem, q0, Yc, np.random.default_rng(0), classification=True,  # noqa: E731
                                     folds=f)
    nu, table = select(folds)
    per_repeat = [select(folds[r * k:(r + 1) * k])[1] for r in range(sel.NU_REPEATS)]
    for j, row in enumerate(table):
        assert row[0] == per_repeat[0][j][0]
        assert row[1] == pytest.approx(np.mean([t[j][1] for t in per_repeat]), abs=1e-12)
        assert row[2] == pytest.approx(np.mean([t[j][2] for t in per_repeat]), rel=1e-9)
    best = min(r[3] for r in table)
    assert nu == next(r[0] for r in table if r[3] <= best + r[4] + 1e-12)
