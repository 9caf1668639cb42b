"""Shape atlases on the synchronous executor: the template gradient against finite differences, a population of a
known curve warped by known deformations whose mean is about the identity (the template moves to the truth and is
unbiased), the control vertices, exclusion of a subject of the wrong dimension by name, the saved files."""

import json
import os

import numpy as np
import pytest
import torch

from lddmm_nets import GaussianKernel
from registration.atlas import SubjectExcludedWarning, build_template
from registration.atlas._images import ImageKind
from registration.atlas._kinds import kind_for
from registration.atlas._shapes import ShapeKind, _warm_start, control_indices, subject_gradient
from registration.io import Image, load_mesh, save_mesh
from registration.shapes import (Shape, ShapeTransform, control_points, make_data_term, register_shapes,
                                 vertex_error)

#: fast registrations of a 64-vertex curve (two levels, few iterations: one level alone leaves some registrations of
#: this population in a local minimum): a population round in about a second
FAST = {"sigma": 10.0, "data_sigma": 3.0, "levels": [2.0, 1.0], "max_iter": 30, "n_steps": 5, "regularization": 1e-3}
SYNC = {"client": "synchronous", "threads": 1}


def flower(n: int = 64, r: float = 20.0) -> Shape:
    """A closed three-lobed curve (2-D segments)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = r * (1 + 0.25 * np.cos(3 * t))
    cells = np.stack([np.arange(n), (np.arange(n) + 1) % n], 1)
    return Shape(torch.tensor(np.stack([rad * np.cos(t), rad * np.sin(t)], 1)), torch.tensor(cells))


def distance(a: Shape, b: Shape) -> float:
    term = make_data_term("varifold", 3.0, a.kind).attach(b.cells_geometry())
    return float(term(a.cells_geometry()))


@pytest.fixture(scope="module")
def population():
    """The truth and 4 subjects: pairs of geodesics of opposite momenta from it (their mean is the identity to first
    order), largest displacements 10-11 (a quarter of the curve's size)."""
    truth = flower()
    q0 = control_points(truth.vertices, "grid", 10.0, reach=1.5)
    gen = torch.Generator().manual_seed(0)
    subjects = []
    for _ in range(2):
        p = 3.0 * torch.randn(q0.shape, generator=gen, dtype=torch.float64)
        subjects += [ShapeTransform(GaussianKernel(sigma=10.0), q0, s * p, 20, "rk4").apply(truth) for s in (1, -1)]
    return truth, subjects


@pytest.fixture(scope="module")
def atlas(population):
    _, subjects = population
    return build_template(subjects, iterations=2, register_options=FAST, **SYNC)


def test_template_gradient_matches_finite_differences():
    """``∇_T D(φ(T), S)`` with ``φ`` fixed (autograd through the flow) against central differences, float64."""
    template = flower(16)
    gen = torch.Generator().manual_seed(1)
    subject = template.with_vertices(template.vertices + torch.randn(16, 2, generator=gen, dtype=torch.float64))
    transform = ShapeTransform(GaussianKernel(sigma=10.0), template.vertices[::2].clone(),
                               torch.randn(8, 2, generator=gen, dtype=torch.float64), 5, "euler")
    reg = {"data_term": "varifold"}
    value, grad, _ = subject_gradient(template, subject, transform, reg, 3.0)
    assert grad.shape == (16, 2) and value > 0
    for _ in range(3):
        d = torch.randn(16, 2, generator=gen, dtype=torch.float64)
        h = 1e-5
        plus = subject_gradient(template.with_vertices(template.vertices + h * d), subject, transform, reg, 3.0)[0]
        minus = subject_gradient(template.with_vertices(template.vertices - h * d), subject, transform, reg, 3.0)[0]
        np.testing.assert_allclose((plus - minus) / (2 * h), float((torch.as_tensor(grad) * d).sum()), rtol=1e-6)


def test_the_template_moves_to_the_truth(population, atlas):
    """From the first subject, the estimated template is several times closer to the true shape (varifold) and its
    vertices nearer to the truth's; the final template is unbiased: its shot along the mean momentum is small
    against the subjects' deformations, and so is the mean velocity ``K p̄`` at the control vertices."""
    truth, subjects = population
    first, estimate = distance(subjects[0], truth), distance(atlas.template, truth)
    assert estimate < 0.35 * first
    assert vertex_error(atlas.template, truth) < 0.75 * vertex_error(subjects[0], truth)
    last = atlas.history[-1]
    assert not last.updated and last.bias_ratio < 0.2
    assert atlas.momenta.shape == (4, 64, 2)
    q = atlas.template.vertices
    gram = GaussianKernel(sigma=FAST["sigma"]).gram(q).numpy()
    velocities = np.einsum("ij,sjd->sid", gram, np.asarray(atlas.momenta, np.float64))
    ratio = np.linalg.norm(velocities.mean(0)) / np.mean([np.linalg.norm(v) for v in velocities])
    assert ratio < 0.25
    for h in atlas.history:  # every round registered every subject well
        assert h.n_subjects == 4 and np.isfinite(h.similarity)
    assert all(s.similarity_after < 0.05 * s.similarity_before for s in atlas.subjects)


def test_the_momenta_shoot_the_template_to_the_subjects(population, atlas):
    """A subject's row of ``momenta`` shot from the template gives its warped template, which is near the subject."""
    _, subjects = population
    warped = atlas.shoot(atlas.momenta[1])
    np.testing.assert_allclose(warped.vertices.numpy(),
                               atlas.transform(1).apply(atlas.template).vertices.numpy(), atol=0.05)
    assert distance(warped, subjects[1]) < 0.1 * distance(atlas.template, subjects[1])


def test_save_writes_meshes_momenta_and_report(atlas, tmp_path):
    atlas.save(tmp_path)
    template = load_mesh(tmp_path / "template.vtk")
    np.testing.assert_allclose(template.vertices.numpy(), atlas.template.vertices.numpy(), atol=1e-6)
    assert template.kind == "segments" and template.dim == 2
    assert np.load(tmp_path / "momenta.npy").shape == (4, 64, 2)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["kind"] == "shapes" and report["names"] == atlas.names
    for name in atlas.names:
        assert (tmp_path / "subjects" / name / "warped.vtk").is_file()
        assert (tmp_path / "subjects" / name / "momenta.npz").is_file()
    assert len(os.listdir(tmp_path / "templates")) == 3


def test_a_subject_of_the_wrong_dimension_is_excluded_by_name(population, tmp_path):
    truth, subjects = population
    paths = []
    for k, s in enumerate(subjects[:3]):
        paths.append(save_mesh(tmp_path / f"s{k}.vtk", s))
    bad = Shape(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]), torch.tensor([[0, 1, 2], [0, 1, 3]]))
    paths.insert(1, save_mesh(tmp_path / "bad.vtk", bad))
    with pytest.warns(SubjectExcludedWarning, match="'bad'"):
        res = build_template(paths, iterations=0, register_options=FAST, **SYNC)
    assert list(res.excluded) == ["bad"] and "2-D shape of segments" in res.excluded["bad"]
    assert res.names == ["s0", "s1", "s2"]
    with pytest.raises(ValueError, match="'bad'"):
        build_template(paths, iterations=0, register_options=FAST, on_error="raise", **SYNC)


def test_control_vertices_depend_on_the_cells_only():
    """Above the limit, the control vertices are a subset chosen from the connectivity: the same after the vertices
    move, spread over the curve (no gap of more than twice the hop radius)."""
    curve = flower(200)
    idx = control_indices(curve, limit=50)
    assert 25 <= len(idx) <= 50 and idx[0] == 0
    moved = curve.with_vertices(curve.vertices * 1.3 + 2.0)
    np.testing.assert_array_equal(control_indices(moved, limit=50), idx)
    assert np.diff(np.append(idx, 200)).max() <= 2 * (200 // len(idx)) + 1
    np.testing.assert_array_equal(control_indices(curve), np.arange(200))
    assert ShapeKind().momentum_shape(curve) == (200, 2)


def test_kind_for_recognises_shapes(tmp_path):
    curve = flower(8)
    assert isinstance(kind_for([curve, curve], None), ShapeKind)
    assert isinstance(kind_for([(curve.vertices, curve.cells)] * 2, None), ShapeKind)
    assert isinstance(kind_for(["a.vtk", "b.gii"], None), ShapeKind)
    assert isinstance(kind_for(["a.nii.gz", "b.nii.gz"], None), ImageKind)
    assert isinstance(kind_for(["a.npy", "b.npy"], "affine"), ImageKind)
    assert isinstance(kind_for([Image(np.zeros((4, 4), np.float32), np.eye(4))] * 2, None), ImageKind)


def test_shape_options_are_checked(population):
    _, subjects = population
    with pytest.raises(ValueError, match="unknown options"):
        build_template(subjects, iterations=0, register_options={"shrink_factors": (2, 1)}, **SYNC)
    with pytest.raises(ValueError, match="initial"):
        build_template(subjects, iterations=0, initial="affine", register_options=FAST, **SYNC)
    with pytest.raises(ValueError, match="max_iter"):
        build_template(subjects, iterations=0, register_options=dict(FAST, max_iter=[10, 20, 30]), **SYNC)


def test_atlas_command_on_meshes(population, tmp_path, capsys):
    """``lddmm atlas`` on curve files: the template mesh, each subject's warped template and transform, the momenta
    and the report; image-only options are refused in one line."""
    from registration.cli import main

    _, subjects = population
    paths = [save_mesh(tmp_path / f"s{k}.vtk", s) for k, s in enumerate(subjects[:3])]
    out = tmp_path / "atlas"
    fast = ["--sigma", "10", "--data-sigma", "3", "--level-iterations", "30", "--n-steps", "5"]
    assert main(["atlas", *paths, "--out", str(out), "--iterations", "1", "--scheduler", "synchronous", *fast]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "shapes" and report["names"] == ["s0", "s1", "s2"] and len(report["history"]) == 2
    assert np.load(out / "momenta.npy").shape == (3, 64, 2)
    assert load_mesh(out / "template.vtk").n_vertices == 64
    assert sorted(os.listdir(out / "subjects" / "s1")) == ["momenta.npz", "warped.vtk"]
    code = main(["atlas", *paths, "--out", str(tmp_path / "b"), "--scheduler", "synchronous", "--metric", "ssd"])
    assert code == 2 and "--metric" in capsys.readouterr().err


def test_a_shape_run_resumes(population, atlas, tmp_path):
    """The templates go through ``.vtk`` files in the run directory: a run interrupted after its first round and
    resumed gives the uninterrupted run's template (to the files' precision)."""
    _, subjects = population

    def interrupt(event):
        if event["event"] == "round":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_template(subjects, iterations=2, out=tmp_path, callback=interrupt, register_options=FAST, **SYNC)
    resumed = build_template(subjects, iterations=2, out=tmp_path, resume=True, register_options=FAST, **SYNC)
    assert [h.round for h in resumed.history] == [0, 1, 2]
    np.testing.assert_allclose(resumed.template.vertices.numpy(), atlas.template.vertices.numpy(), atol=1e-3)


def test_a_round_starts_from_the_previous_rounds_momenta(population, atlas, tmp_path):
    """``register_shapes(initial_momenta=...)`` with no iterations returns its start (to float32 round-off of the
    whitened variables); the shape kind starts from the previous folder's momenta; the atlas's later rounds did."""
    truth, subjects = population
    kind = ShapeKind()
    first, frozen = tmp_path / "first", tmp_path / "frozen"
    first.mkdir(), frozen.mkdir()
    kind.register(truth, subjects[0], {"register": FAST}, str(first), False)
    p0 = np.load(first / "start_momentum.npy")
    assert np.abs(p0).max() > 0
    _, summary = kind.register(truth, subjects[0], {"register": dict(FAST, max_iter=0)}, str(frozen), False,
                               str(first))
    assert summary["warm_start"]
    np.testing.assert_allclose(np.load(frozen / "start_momentum.npy"), p0, rtol=1e-4, atol=1e-3 * np.abs(p0).max())
    with pytest.raises(ValueError, match="initial_momenta: expected finite momenta of shape"):
        register_shapes(truth, subjects[0], control_points="vertices", initial_momenta=np.zeros((3, 2)))
    flags = json.load(open(os.path.join(atlas.directory, "checkpoint.json")))["summaries"]
    assert flags and not any(s["warm_start"] for s in flags.values())  # shapes start from zero by default
    # opted in: the previous momenta minus the mean the template was shot along (the round folder's MEAN_FILE)
    round_dir = tmp_path / "round"
    (round_dir / "subjects" / "s").mkdir(parents=True)
    np.save(round_dir / "subjects" / "s" / "start_momentum.npy", p0)
    assert np.array_equal(_warm_start(str(round_dir / "subjects" / "s"), p0.shape), p0)
    np.save(round_dir / "mean_momentum.npy", np.ones_like(p0))
    np.testing.assert_array_equal(_warm_start(str(round_dir / "subjects" / "s"), p0.shape), p0 - 1)
    assert _warm_start(str(round_dir / "subjects" / "s"), (3, 2)) is None
    assert _warm_start(str(round_dir / "subjects" / "other"), p0.shape) is None
