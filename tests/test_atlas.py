"""Atlas maths on the synchronous executor: the template update, the momentum transport, the unbiasing shot, known
templates (a translated population, a warped MNI152 slice), exclusion of bad subjects, checkpoints and resume."""

import json
import os
import types
import warnings

import numpy as np
import pytest

from registration import register_images
from registration.atlas import SubjectExcludedWarning, build_template
from registration.atlas._images import WARM_ITERATIONS, ImageKind, spline_resample, template_momentum
from registration.atlas.population import (correlation, label_dice, mni152_slice, synthetic_population,
                                           translated)
from registration.io import Image, save_image
from registration.transforms import DisplacementTransform

#: registrations of a 6 mm slice in a few hundredths of a second: enough for the bookkeeping tests
FAST = {"n_steps": 4, "shrink_factors": (1,), "iterations": (10,)}
SYNC = {"client": "synchronous", "threads": 1}


def _best_translation(template: Image, truth: Image) -> np.ndarray:
    """World translation ``s`` (mm) with ``template ≈ truth(x - s)`` (cubic splines, Nelder-Mead): where the
    template's content sits relative to the truth's."""
    from scipy.optimize import minimize

    from registration.evaluation import world_coordinates

    a = np.asarray(template.data, np.float64)
    a = a / np.percentile(a, 99.5)
    ref = Image(truth.data / np.percentile(truth.data, 99.5), truth.affine)
    world = world_coordinates(truth)

    def loss(s):
        return np.mean((spline_resample(ref, world - s.reshape(2, 1, 1), fill=0.0) - a) ** 2)

    return minimize(loss, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-12}).x


def test_update_is_the_jacobian_weighted_mean(tmp_path):
    """``I = Σ_s |Dψ_s| J_s∘ψ_s / Σ_s |Dψ_s|`` (THEORY §9), exactly, from the files the tasks write."""
    rng = np.random.default_rng(0)
    aff = np.diag([2.0, 3.0, 1.0, 1.0])
    warped, jac, folders = rng.random((3, 5, 6)), 0.5 + rng.random((3, 5, 6)), []
    for s in range(3):
        folder = tmp_path / f"s{s}"
        folder.mkdir()
        save_image(folder / "warped.nii.gz", Image(warped[s].astype(np.float32), aff))
        save_image(folder / "jacobian.nii.gz", Image(jac[s].astype(np.float32), aff))
        folders.append(str(folder))
    new = ImageKind().update(Image(np.zeros((5, 6), np.float32), aff), folders, {})
    w, j = jac.astype(np.float32).astype(np.float64), warped.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(new.data, (w * j).sum(0) / w.sum(0), rtol=1e-6)
    np.testing.assert_array_equal(new.affine, aff)


def test_a_refined_warm_start_runs_a_short_finest_level_unless_the_pyramid_is_given(tmp_path):
    """With the pair's pyramid (no ``iterations`` / ``shrink_factors`` / ``smoothing_sigmas`` given) a refined warm
    start runs ``WARM_ITERATIONS`` at the finest level only; a cold start, or a warm one not refined, the pair's
    pyramid; given options are kept. Rounds before the last write their fields uncompressed, the last one the
    delivered ``.nii.gz``, and the update reads either."""
    t1, _ = mni152_slice(4)
    subject = synthetic_population(t1, n=2, seed=1).subjects[0]
    kind, folders = ImageKind(), {k: tmp_path / k for k in ("cold", "warm", "refined", "given", "last")}
    for f in folders.values():
        f.mkdir()
    _, cold = kind.register(t1, subject, {"register": {}}, str(folders["cold"]), False)
    assert len(cold["iterations"]) > 1 and sum(cold["iterations"]) > WARM_ITERATIONS  # the 2-D pyramid
    start = str(folders["cold"])
    _, warm = kind.register(t1, subject, {"register": {}}, str(folders["warm"]), False, start)
    assert warm["warm_start"] and not warm["refined"] and len(warm["iterations"]) == len(cold["iterations"])
    refine = {"register": {}, "refine": True}
    _, short = kind.register(t1, subject, refine, str(folders["refined"]), False, start)
    assert short["refined"] and len(short["iterations"]) == 1 and 0 < short["iterations"][0] <= WARM_ITERATIONS
    assert short["similarity_after"] <= cold["similarity_after"] * 1.01  # it goes on from where the first ended
    _, cold_refine = kind.register(t1, subject, refine, str(folders["given"]), False)  # nothing to refine
    assert not cold_refine["refined"] and cold_refine["iterations"] == cold["iterations"]
    given = {"register": {"shrink_factors": (2, 1), "iterations": (4, 4)}, "refine": True}
    _, kept = kind.register(t1, subject, given, str(folders["given"]), False, start)
    assert kept["refined"] and len(kept["iterations"]) == 2
    kind.register(t1, subject, refine, str(folders["last"]), True, start)
    assert sorted(os.listdir(folders["refined"])) == ["jacobian.nii", "start_momentum.npy", "warped.nii"]
    assert {"jacobian.nii.gz", "warped.nii.gz", "displacement.nii.gz"} <= set(os.listdir(folders["last"]))
    new = kind.update(t1, [str(folders["refined"]), str(folders["last"])], {})
    assert new.shape == t1.shape and np.isfinite(new.data).all()


@pytest.mark.parametrize("threshold", [0.0, np.inf])
def test_rounds_that_feed_an_update_are_refined_and_the_final_one_when_the_template_settled(threshold, monkeypatch,
                                                                                            tmp_path):
    """``build_template`` refines every warm start of a round followed by an update; the final round's only when
    the last update changed the template by less than ``REFINE_CHANGE`` (0: never; inf: always)."""
    from registration.atlas import _run

    monkeypatch.setattr(_run, "REFINE_CHANGE", threshold)
    seen, register = [], ImageKind.register

    def spy(self, template, subject, options, folder, write_transform, start=None):
        seen.append((write_transform, start is not None, options["refine"]))
        return register(self, template, subject, options, folder, write_transform, start)

    monkeypatch.setattr(ImageKind, "register", spy)
    t1, _ = mni152_slice(6)
    build_template(synthetic_population(t1, n=2, seed=2).subjects, iterations=2, register_options=FAST, **SYNC)
    assert len(seen) == 6
    assert [r for w, s, r in seen if not s] == [False, False]  # the first round: cold
    assert [r for w, s, r in seen if s and not w] == [True, True]  # round 1, before the second update
    assert [r for w, s, r in seen if w] == [bool(threshold)] * 2


@pytest.mark.parametrize("A", [np.eye(2), np.array([[1.1, 0.2], [-0.1, 0.9]])])
def test_template_momentum_is_the_coadjoint_transport(A):
    """For an affine map ``ψ(y) = A y + t`` and a linear field ``m_0`` (both exact under linear interpolation and
    finite differences): ``m_1(y) = det A · A^T m_0(ψ(y))``, and the template momentum is ``-m_1``."""
    shape, t = (24, 20), np.array([1.0, 2.0])
    aff = np.eye(4)
    y = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"))
    disp = np.einsum("ij,j...->i...", A - np.eye(2), y) + t.reshape(2, 1, 1)
    B = np.array([[0.3, -0.2], [0.1, 0.4]])

    def m0(x):  # a linear momentum field, (d, *shape) -> components along the voxel axes
        return np.einsum("ij,j...->i...", B, x) + np.array([1.0, -2.0]).reshape(2, 1, 1)

    res = types.SimpleNamespace(fixed=Image(np.zeros(shape, np.float32), aff),
                                transform=DisplacementTransform(disp, aff),
                                momentum=Image(np.moveaxis(m0(y), 0, -1).astype(np.float32), aff))
    p = np.moveaxis(template_momentum(res), -1, 0)
    expected = -np.linalg.det(A) * np.einsum("ji,j...->i...", A, m0(y + disp))
    inside = (slice(2, -6), slice(2, -6))  # ψ(y) inside the grid, away from one-sided differences at the border
    np.testing.assert_allclose(p[(slice(None),) + inside], expected[(slice(None),) + inside], rtol=1e-5, atol=1e-5)


def test_unbiasing_shot_has_the_registrations_metric():
    """The unbiasing shot (a zero-iteration registration of the template onto itself, then ``.shoot``) is the
    geodesic of the subjects' registrations: shooting a subject's own ``m_0`` through it reproduces that subject's
    pull-back of the template."""
    t1, _ = mni152_slice(6)
    subject = synthetic_population(t1, n=2, seed=3).subjects[0]
    res = register_images(t1, subject, geodesics="single", **FAST)
    shot, bias = ImageKind().unbias(t1, res.momentum.data, {"register": FAST})
    expected = spline_resample(t1, res.transform.world_map(), fill=None)
    assert np.abs(shot.data - expected).max() <= 1e-4 * np.abs(expected).max()  # float32 shooting, same grid
    assert bias["bias_mean"] > 0.5  # the shot did move the template (mm)


def test_translated_population_template_moves_to_the_centre():
    """Subjects = the truth translated by ``t_s``; started from the truth itself, the template must move to the
    population's centre, the truth translated by ``-mean(t_s)`` (without unbiasing it stays near the truth: the
    registrations match every subject to it, measured -0.04 mm)."""
    t1, _ = mni152_slice(4)
    shifts = np.array([[4.0, 0.0], [2.0, 3.0]])
    res = build_template(translated(t1, shifts), iterations=1, initial=t1, normalize=False, **SYNC)
    found = _best_translation(res.template, t1)
    np.testing.assert_allclose(found, -shifts.mean(0), atol=0.35)  # 10 % of the 3.4 mm the template has to move
    assert res.history[0].bias > 1.0 and res.history[0].updated and not res.history[1].updated


@pytest.fixture(scope="module")
def mni_atlas(tmp_path_factory):
    """4 subjects: an MNI152 slice (4 mm) warped by 2 random diffeomorphisms and their inverses; 1 iteration."""
    t1, labels = mni152_slice(4)
    pop = synthetic_population(t1, labels, n=4, max_displacement=6.0, smoothness=12.0, seed=0)
    out = tmp_path_factory.mktemp("atlas") / "run"
    return pop, build_template(pop.subjects, iterations=1, out=out, **SYNC)


def test_mni_population_template_is_the_true_one(mni_atlas):
    """The true template is the unwarped slice: the estimate correlates with it better than the mean of the subjects
    does, and grey / white matter carried back by the atlas's own transforms recover the true masks."""
    pop, res = mni_atlas
    plain = Image(np.mean([s.data for s in pop.subjects], axis=0), pop.truth.affine)
    assert correlation(res.template, pop.truth) >= correlation(plain, pop.truth) + 0.02  # measured 0.962 vs 0.929
    scores = label_dice([res.transform(n) for n in res.names], pop.labels, pop.truth_labels)
    assert scores["gm"] >= 0.97 and scores["wm"] >= 0.98  # measured 0.99 and 0.997
    assert res.history[0].template_change > 0 and res.history[-1].template_change is None
    assert res.momenta.shape == (4, 50, 59, 2) and res.momenta.dtype == np.float32
    assert res.converged is None and not res.excluded


def test_principal_modes_and_shooting_a_subjects_momentum(mni_atlas):
    """The modes are orthonormal and, with all ``n - 1`` of them, the centred momenta are exactly their span (PCA);
    shooting the template along a subject's momentum gives that subject back (closer than the template is)."""
    pop, res = mni_atlas
    modes, std = res.principal_modes(10)
    n = len(res.names)
    assert modes.shape == (n - 1,) + res.momenta.shape[1:] and np.all(np.diff(std) <= 0)
    flat = modes.reshape(n - 1, -1).astype(np.float64)
    np.testing.assert_allclose(flat @ flat.T, np.eye(n - 1), atol=1e-4)
    centred = np.asarray(res.momenta, np.float64).reshape(n, -1) - res.mean_momentum().reshape(1, -1)
    coords = centred @ flat.T
    np.testing.assert_allclose(coords @ flat, centred, atol=1e-4 * np.abs(centred).max())
    np.testing.assert_allclose(coords.std(axis=0, ddof=1), std, rtol=1e-4)
    for s, subject in enumerate(pop.subjects[:2]):
        shot = correlation(res.shoot(res.momenta[s]), subject)  # measured 0.99 against 0.92 for the template
        assert shot >= 0.98 and shot > correlation(res.template, subject) + 0.05


def test_save_writes_the_deliverables(mni_atlas, tmp_path):
    pop, res = mni_atlas
    written = res.save(tmp_path / "atlas")
    assert {os.path.basename(p) for p in written} == {"template.nii.gz", "templates", "momenta.npy", "subjects",
                                                        "report.json"}
    np.testing.assert_array_equal(np.load(tmp_path / "atlas" / "momenta.npy"), res.momenta)
    report = json.loads((tmp_path / "atlas" / "report.json").read_text())
    assert report["names"] == res.names and len(report["history"]) == 2
    assert len(os.listdir(tmp_path / "atlas" / "templates")) == 2
    tr = DisplacementTransform.load(tmp_path / "atlas" / "subjects" / res.names[0])
    np.testing.assert_allclose(tr.displacement, res.transform(0).displacement, atol=1e-5)
    assert not [f for f in os.listdir(tmp_path / "atlas") if f.startswith(".")]  # no partial files left


def test_failing_subjects_are_excluded_by_name(tmp_path):
    """Unreadable, missing, wrong-dimension and NaN subjects are named and left out (never averaged in), or stop
    the run with ``on_error="raise"``."""
    t1, _ = mni152_slice(6)
    good = synthetic_population(t1, n=2, seed=1).subjects
    (tmp_path / "bad.nii.gz").write_text("not an image")
    save_image(tmp_path / "vol.nii.gz", Image(np.ones((4, 4, 4), np.float32)))
    nan = Image(np.where(t1.data > 0.5, np.nan, t1.data).astype(np.float32), t1.affine)
    subjects = [good[0], str(tmp_path / "bad.nii.gz"), good[1], str(tmp_path / "vol.nii.gz"),
                str(tmp_path / "missing.nii.gz"), nan]
    with pytest.warns(SubjectExcludedWarning):
        res = build_template(subjects, iterations=0, register_options=FAST, **SYNC)
    assert res.names == ["subject_0000", "subject_0002"] and res.momenta.shape[0] == 2
    assert set(res.excluded) == {"bad", "vol", "missing", "subject_0005"}
    assert "2-D" in res.excluded["vol"] and "NaN" in res.excluded["subject_0005"]
    assert "FileNotFoundError" in res.excluded["missing"]
    with pytest.raises(ValueError, match="'bad'"):
        build_template(subjects, iterations=0, register_options=FAST, on_error="raise", **SYNC)


class _Interrupt:
    """A callback that interrupts the run (like Ctrl-C) after the first finished round."""

    def __call__(self, event):
        if event["event"] == "round":
            raise KeyboardInterrupt


def test_resume_after_an_interruption_gives_the_same_template(tmp_path):
    t1, _ = mni152_slice(6)
    subjects = synthetic_population(t1, n=2, seed=2).subjects
    kw = dict(iterations=2, register_options=FAST, **SYNC)
    ref = build_template(subjects, **kw)
    with pytest.raises(KeyboardInterrupt):
        build_template(subjects, out=tmp_path / "run", callback=_Interrupt(), **kw)
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert state["rounds_done"] == 1 and not state["finished"]
    with pytest.raises(ValueError, match="resume=True"):
        build_template(subjects, out=tmp_path / "run", **kw)
    with pytest.raises(ValueError, match="register"):
        build_template(subjects, out=tmp_path / "run", resume=True, iterations=2, register_options={"n_steps": 3},
                       **SYNC)
    res = build_template(subjects, out=tmp_path / "run", resume=True, **kw)
    np.testing.assert_array_equal(res.template.data, ref.template.data)
    np.testing.assert_array_equal(res.momenta, ref.momenta)
    assert [h.round for h in res.history] == [0, 1, 2]
    again = build_template(subjects, out=tmp_path / "run", resume=True, **kw)  # finished: nothing left to run
    np.testing.assert_array_equal(again.template.data, ref.template.data)
    assert again.history == res.history


def test_tol_stops_the_updates_or_warns():
    """A template change below ``tol`` ends the updates (then the final round); a ``tol`` not reached warns."""
    from lddmm_nets.optim import ConvergenceWarning

    t1, _ = mni152_slice(6)
    subjects = synthetic_population(t1, n=2, seed=6).subjects
    res = build_template(subjects, iterations=5, tol=0.5, register_options=FAST, **SYNC)
    assert [h.updated for h in res.history] == [True, False] and res.converged is True
    assert res.history[0].template_change < 0.5
    with pytest.warns(ConvergenceWarning, match="tol"):
        res = build_template(subjects, iterations=1, tol=1e-12, register_options=FAST, **SYNC)
    assert res.converged is False and len(res.history) == 2


@pytest.mark.parametrize("kwargs, error, match", [
    ({"iterations": -1}, ValueError, "iterations"),
    ({"on_error": "skip"}, ValueError, "on_error"),
    ({"retries": 1.5}, ValueError, "retries"),
    ({"register_options": {"geodesics": "composed"}}, ValueError, "single"),
    ({"register_options": {"momentum": "scalar"}}, ValueError, "vector"),
    ({"register_options": {"level": 3}}, ValueError, "unknown options"),
    ({"initial": "median"}, FileNotFoundError, "median"),
    ({"client": 3}, TypeError, "client"),
    ({"workers": 0, "client": None}, ValueError, "workers"),
])
def test_bad_options_are_named(kwargs, error, match):
    t1, _ = mni152_slice(6)
    args = dict(SYNC, **kwargs) if "client" not in kwargs else kwargs
    with pytest.raises(error, match=match):
        build_template([t1, t1], **args)


def test_subjects_are_checked():
    t1, _ = mni152_slice(6)
    with pytest.raises(ValueError, match="at least 2"):
        build_template([t1], **SYNC)
    with pytest.raises(TypeError, match="list or tuple"):
        build_template("a.nii.gz", **SYNC)
    with pytest.raises(ValueError, match="both named"):
        build_template([t1, t1], names=["a", "a"], **SYNC)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = build_template([t1, t1], names=["a", "b"], iterations=0, register_options=FAST, **SYNC)
    assert res.names == ["a", "b"]


def test_a_round_starts_from_the_previous_rounds_momentum(tmp_path):
    """The kind saves its registration's own momentum and starts from it when given the previous folder: with no
    iterations left the warm start comes back to float32 round-off of its restriction to the deformation grid (a cold
    start gives zero); ``build_template`` hands every later round the previous round's folder, and
    ``warm_start=False`` none."""
    t1, _ = mni152_slice(6)
    subject = synthetic_population(t1, n=2, seed=1).subjects[0]
    kind = ImageKind()
    first, frozen = tmp_path / "first", tmp_path / "frozen"
    first.mkdir(), frozen.mkdir()
    kind.register(t1, subject, {"register": FAST}, str(first), False)
    m0 = np.load(first / "start_momentum.npy")
    assert np.abs(m0).max() > 0
    still = dict(FAST, iterations=(0,))
    _, summary = kind.register(t1, subject, {"register": still}, str(frozen), False, str(first))
    assert summary["warm_start"]
    np.testing.assert_allclose(np.load(frozen / "start_momentum.npy"), m0, rtol=0, atol=1e-5 * np.abs(m0).max())
    _, summary = kind.register(t1, subject, {"register": still}, str(frozen), False, None)
    assert not summary["warm_start"] and not np.load(frozen / "start_momentum.npy").any()

    pop = synthetic_population(t1, n=2, seed=2).subjects
    for warm in (True, False):
        res = build_template(pop, iterations=1, register_options=FAST, warm_start=warm, out=tmp_path / f"w{warm}",
                             **SYNC)
        flags = json.load(open(tmp_path / f"w{warm}" / "checkpoint.json"))["summaries"]
        assert all(s["warm_start"] is warm for s in flags.values()) and len(flags) == 2
        assert res.options["warm_start"] is warm
