"""`lddmm register` / `lddmm apply`: the files are the interface. ITK reads our displacement and reproduces our
warped image; outputs keep the fixed affine; bad input fails before anything is written."""

import argparse
import json
import os

import numpy as np
import pytest

from registration.cli.register import add_parsers as add_register
from registration.cli.apply import add_parsers as add_apply
from registration.io import Image, load_image, save_image
from registration.transforms import DisplacementTransform

FILES = ["warped.nii.gz", "displacement.nii.gz", "inverse_displacement.nii.gz", "jacobian.nii.gz",
         "momentum.nii.gz", "report.json", "overview.png"]
FAST = ["--shrink-factors", "2,1", "--smoothing-sigmas", "1,0", "--iterations", "12,6", "--quiet", "--threads", "1"]


def _run(argv):
    parser = argparse.ArgumentParser(prog="lddmm")
    sub = parser.add_subparsers(dest="command", required=True)
    add_register(sub)
    add_apply(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _oblique(spacing, d):
    c, s = np.cos(0.4), np.sin(0.4)
    aff = np.eye(4)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    aff[:3, :3] = rot @ np.diag(list(spacing) + [1.0] * (3 - d))
    aff[:3, 3] = [12.0, -30.0, 7.0]
    return aff


def _blob_pair(shape, shift):
    d = len(shape)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"))
    rng = np.random.default_rng(0)
    centres = [np.array([rng.uniform(0.3 * n, 0.7 * n) for n in shape]) for _ in range(5)]

    def img(offset):
        out = np.zeros(shape)
        for c in centres:
            c = (c + offset).reshape((d,) + (1,) * d)
            out += np.exp(-((grid - c) ** 2).sum(0) / (2 * (min(shape) / 7) ** 2))
        return (300 * out + 50).astype(np.float32)  # an arbitrary intensity range

    return img(np.zeros(d)), img(np.asarray(shift, float))


@pytest.fixture(scope="module")
def result_3d(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reg3d")
    fixed, moving = _blob_pair((18, 20, 16), (1.5, -1.0, 0.5))
    aff = _oblique((1.5, 1.2, 2.0), 3)
    save_image(tmp / "fixed.nii.gz", Image(fixed, aff))
    save_image(tmp / "moving.nii.gz", Image(moving, aff))
    out = tmp / "out"
    assert _run(["register", str(tmp / "fixed.nii.gz"), str(tmp / "moving.nii.gz"), "--out", str(out)] + FAST) == 0
    return tmp, out, aff


def test_register_writes_every_file_with_the_fixed_affine(result_3d):
    tmp, out, aff = result_3d
    assert sorted(os.listdir(out)) == sorted(FILES)
    for name in ("warped.nii.gz", "jacobian.nii.gz"):
        np.testing.assert_allclose(load_image(out / name).affine, aff, atol=1e-4)
    import nibabel as nib

    mom = nib.load(out / "momentum.nii.gz")  # a NIfTI vector image (x, y, z, 1, 3)
    assert mom.shape == (18, 20, 16, 1, 3)
    np.testing.assert_allclose(mom.affine, aff, atol=1e-4)
    report = json.loads((out / "report.json").read_text())
    for key in ("config", "similarity_before", "similarity_after", "energy", "ndv_percent", "sdlogj", "iterations",
                "seconds", "stop_reason"):
        assert key in report
    assert report["similarity_after"] < report["similarity_before"]
    assert report["ndv_percent"] == 0.0
    assert not [p for p in os.listdir(tmp) if p.startswith(".lddmm-partial")]


def test_simpleitk_displacement_transform_reproduces_our_warped_image(result_3d):
    import SimpleITK as sitk

    tmp, out, _ = result_3d
    fixed = sitk.ReadImage(str(tmp / "fixed.nii.gz"), sitk.sitkFloat64)
    moving = sitk.ReadImage(str(tmp / "moving.nii.gz"), sitk.sitkFloat64)
    field = sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    itk_warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)).transpose()
    ours = load_image(out / "warped.nii.gz").data
    moving_np = load_image(tmp / "moving.nii.gz").data
    inner = (slice(2, -2),) * 3
    diff = np.abs(itk_warped - ours)[inner]
    assert diff.max() < 1e-2 * (moving_np.max() - moving_np.min())
    # and the deformation is not the identity, so the check has teeth
    assert np.abs(ours - moving_np)[inner].max() > 0.05 * (moving_np.max() - moving_np.min())


def test_apply_reproduces_warped_and_warps_labels(result_3d):
    tmp, out, aff = result_3d
    _run(["apply", str(out), str(tmp / "moving.nii.gz"), "--out", str(tmp / "again.nii.gz")])
    np.testing.assert_allclose(load_image(tmp / "again.nii.gz").data, load_image(out / "warped.nii.gz").data,
                               atol=1e-3)
    moving = load_image(tmp / "moving.nii.gz").data
    labels = (moving > np.median(moving)).astype(np.uint8) * 3
    save_image(tmp / "labels.nii.gz", Image(labels, aff))
    _run(["apply", str(out), str(tmp / "labels.nii.gz"), "--out", str(tmp / "labels_w.nii.gz"), "--interp",
          "nearest"])
    lab = load_image(tmp / "labels_w.nii.gz")
    assert set(np.unique(lab.data)) <= {0, 3}
    np.testing.assert_allclose(lab.affine, aff, atol=1e-4)


def test_register_2d_arrays(tmp_path):
    fixed, moving = _blob_pair((32, 28), (2.0, -1.0))
    np.save(tmp_path / "f.npy", fixed)
    np.save(tmp_path / "m.npy", moving)
    assert _run(["register", str(tmp_path / "f.npy"), str(tmp_path / "m.npy"), "--out", str(tmp_path / "o"),
                 "--no-overview", "--metric", "ssd", "--lncc-floor", "0.25"] + FAST) == 0
    assert sorted(os.listdir(tmp_path / "o")) == sorted(f for f in FILES if f != "overview.png")
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["similarity_after"] < 0.3 * report["similarity_before"]
    assert report["config"]["lncc_floor"] == 0.25


@pytest.mark.parametrize("case", ["missing", "four_d", "dims", "constant", "nan", "unreadable"])
def test_bad_input_gives_a_clear_error_and_no_output(tmp_path, case):
    fixed, moving = _blob_pair((16, 16), (1.0, 0.0))
    save_image(tmp_path / "f.nii.gz", Image(fixed, np.eye(4)))
    m = tmp_path / "m.nii.gz"
    expected = ValueError
    if case == "missing":
        m = tmp_path / "absent.nii.gz"
        expected = FileNotFoundError
    elif case == "four_d":
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.random.rand(16, 16, 4, 2).astype(np.float32), np.eye(4)), m)
    elif case == "dims":
        save_image(m, Image(np.random.rand(8, 8, 8).astype(np.float32), np.eye(4)))
    elif case == "constant":
        save_image(m, Image(np.full((16, 16), 7.0, np.float32), np.eye(4)))
    elif case == "nan":
        bad = moving.copy()
        bad[4, 4] = np.nan
        save_image(m, Image(bad, np.eye(4)))
    else:
        m.write_bytes(b"\x00garbage")
    out = tmp_path / "out"
    with pytest.raises(expected) as info:
        _run(["register", str(tmp_path / "f.nii.gz"), str(m), "--out", str(out)] + FAST)
    assert len(str(info.value).splitlines()) == 1 and ("moving" in str(info.value) or "fixed" in str(info.value))
    assert not out.exists() or not os.listdir(out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".lddmm-partial")]


def test_apply_on_a_directory_without_result(tmp_path):
    fixed, _ = _blob_pair((16, 16), (0, 0))
    save_image(tmp_path / "f.nii.gz", Image(fixed, np.eye(4)))
    with pytest.raises(FileNotFoundError, match="displacement"):
        _run(["apply", str(tmp_path), str(tmp_path / "f.nii.gz"), "--out", str(tmp_path / "w.nii.gz")])
    assert not (tmp_path / "w.nii.gz").exists()


def test_apply_goes_both_ways_for_images_and_points(result_3d, tmp_path):
    # fixed -> moving (--inverse) then moving -> fixed brings a smooth image back to itself inside the grid, and
    # points make the same round trip to a fraction of a voxel
    tmp, out, aff = result_3d
    fixed = load_image(tmp / "fixed.nii.gz")
    _run(["apply", str(out), str(tmp / "fixed.nii.gz"), "--out", str(tmp_path / "f_in_m.nii.gz"), "--inverse"])
    in_moving = load_image(tmp_path / "f_in_m.nii.gz")
    assert in_moving.shape == fixed.shape
    np.testing.assert_allclose(in_moving.affine, aff, atol=1e-4)  # the moving grid recorded in report.json
    _run(["apply", str(out), str(tmp_path / "f_in_m.nii.gz"), "--out", str(tmp_path / "back.nii.gz")])
    back = load_image(tmp_path / "back.nii.gz").data
    inner = (slice(3, -3),) * 3
    span = fixed.data.max() - fixed.data.min()
    # two linear interpolations of the blobs (a few voxels wide) on a coarse grid: 2 % of the range on average,
    # while the images before the round trip differ by several times that (the deformation)
    err = np.abs(back - fixed.data)[inner].mean()
    assert err < 0.02 * span
    assert np.abs(in_moving.data - fixed.data)[inner].mean() > 3 * err
    grid = fixed.grid
    pts = grid.voxel_to_world(np.array([[5.0, 6.0, 4.0], [9.0, 10.0, 8.0], [12.0, 8.0, 9.0]]).T).T
    rows = "\n".join(f"{x},{y},{z},p{i}" for i, (x, y, z) in enumerate(pts))
    (tmp_path / "pts.csv").write_text("x,y,z,label\n" + rows + "\n")
    _run(["apply", str(out), str(tmp_path / "pts.csv"), "--out", str(tmp_path / "pts_m.csv"), "--inverse"])
    _run(["apply", str(out), str(tmp_path / "pts_m.csv"), "--out", str(tmp_path / "pts_back.csv")])
    from registration.io.points import load_points_csv

    moved = load_points_csv(tmp_path / "pts_m.csv", 3)
    again = load_points_csv(tmp_path / "pts_back.csv", 3)
    assert [r[3] for r in again.rows] == ["p0", "p1", "p2"]  # other columns are kept
    assert np.abs(moved.points - pts).max() > 0.3  # the points did move (about the 1-2 mm shift)
    assert np.abs(again.points - pts).max() < 0.3  # and came back (a fifth of a 1.2-2 mm voxel)
    # LPS coordinates (ANTs): the same points with x and y negated give the same points, negated
    lps = "\n".join(f"{-x},{-y},{z},p{i}" for i, (x, y, z) in enumerate(pts))
    (tmp_path / "lps.csv").write_text("x,y,z,label\n" + lps + "\n")
    _run(["apply", str(out), str(tmp_path / "lps.csv"), "--out", str(tmp_path / "lps_m.csv"), "--inverse", "--lps"])
    np.testing.assert_allclose(load_points_csv(tmp_path / "lps_m.csv", 3, lps=True).points, moved.points,
                               atol=1e-9)


@pytest.mark.parametrize("content, needle", [("x,y\n1,2\n", "columns x, y, z"), ("x,y,z\n1,2\n", "line 2"),
                                             ("x,y,z\n1,two,3\n", "line 2"), ("", "empty")])
def test_a_malformed_points_csv_is_a_one_line_error(result_3d, tmp_path, content, needle):
    _, out, _ = result_3d
    (tmp_path / "p.csv").write_text(content)
    with pytest.raises(ValueError, match=needle) as info:
        _run(["apply", str(out), str(tmp_path / "p.csv"), "--out", str(tmp_path / "o.csv")])
    assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "o.csv").exists()


def test_initial_affine_from_an_itk_file_is_composed_into_the_result(tmp_path):
    # the moving image is the fixed one seen through a known affine A, written as an ITK transform (LPS inside).
    # With no iterations the result is A itself; with iterations it is A composed with the registration of the
    # moving image resampled through A by hand (the same single interpolation), so the composition is tested exactly
    from registration import register_images
    from registration.io.affine import save_affine

    fixed, _ = _blob_pair((40, 36), (0.0, 0.0))
    aff = np.diag([1.5, 1.0, 1.0, 1.0])
    aff[:2, 3] = (-20.0, 8.0)
    th = np.deg2rad(5.0)
    A = np.eye(3)
    A[:2, :2] = 1.03 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    centre = np.array([-20.0 + 1.5 * 19.5, 8.0 + 17.5])
    A[:2, 2] = centre + np.array([2.0, -1.5]) - A[:2, :2] @ centre
    x = Image(fixed, aff).grid.world().numpy()
    Ainv = np.linalg.inv(A)
    pull = np.tensordot(Ainv[:2, :2], x, axes=1) + Ainv[:2, 2].reshape(2, 1, 1) - x
    # moving(A x) = fixed(x), its background (50) outside the fixed image too
    moving = DisplacementTransform(pull, aff).apply(Image(fixed, aff), fill=float(fixed.min()))
    Ax = np.tensordot(A[:2, :2], x, axes=1) + A[:2, 2].reshape(2, 1, 1)
    save_image(tmp_path / "f.nii.gz", Image(fixed, aff))
    save_image(tmp_path / "m.nii.gz", moving)
    save_affine(tmp_path / "init.txt", A)
    out = tmp_path / "o"
    assert _run(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--out", str(out),
                 "--initial-affine", str(tmp_path / "init.txt"), "--metric", "ssd", "--shrink-factors", "2,1",
                 "--iterations", "0,0", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    np.testing.assert_allclose(report["initial_affine"], A, atol=1e-12)
    np.testing.assert_allclose(DisplacementTransform.load(out).world_map(), Ax, atol=1e-4)  # float32 fields
    # with iterations: the deformable part refines the affine (it is small where the image has content) and the
    # warped image is the moving image through the whole composed transform
    res = register_images(Image(fixed, aff), moving, initial_affine=A, metric="ssd", shrink_factors=(2, 1),
                          iterations=(15, 8), threads=1)
    content = fixed > fixed.min() + 0.2 * (fixed.max() - fixed.min())
    assert np.linalg.norm(Ax - x, axis=0)[content].mean() > 1.5  # the affine moves the content by mm
    assert np.linalg.norm(res.transform.world_map() - Ax, axis=0)[content].mean() < 0.5
    np.testing.assert_allclose(res.warped.data, res.apply(moving).data, atol=1e-3 * (fixed.max() - fixed.min()))
    assert res.similarity_after < res.similarity_before


@pytest.mark.parametrize("content, needle", [(b"\x00\x01garbage", "cannot read"),
                                             (b"1 0 0\n0 0 0\n0 0 1\n", "not invertible"),
                                             (b"1 0 0\n0 1 0\n", r"expected a \(3, 3\)")])
def test_a_bad_initial_affine_is_a_one_line_error_and_no_output(tmp_path, content, needle):
    fixed, moving = _blob_pair((16, 16), (1.0, 0.0))
    save_image(tmp_path / "f.nii.gz", Image(fixed, np.eye(4)))
    save_image(tmp_path / "m.nii.gz", Image(moving, np.eye(4)))
    (tmp_path / "a.txt").write_bytes(content)
    with pytest.raises(ValueError, match=needle) as info:
        _run(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--out", str(tmp_path / "o"),
              "--initial-affine", str(tmp_path / "a.txt")] + FAST)
    assert len(str(info.value).splitlines()) == 1 and "initial_affine" in str(info.value)
    assert not (tmp_path / "o").exists()


def test_same_inputs_give_bit_identical_outputs(tmp_path):
    # determinism without a seed: two runs on the same machine write the same bytes of every field
    fixed, moving = _blob_pair((30, 26), (1.5, -1.0))
    np.save(tmp_path / "f.npy", fixed)
    np.save(tmp_path / "m.npy", moving)
    for name in ("a", "b"):
        assert _run(["register", str(tmp_path / "f.npy"), str(tmp_path / "m.npy"), "--out", str(tmp_path / name),
                     "--no-overview"] + FAST) == 0
    import nibabel as nib

    for f in ("warped.nii.gz", "jacobian.nii.gz", "displacement.nii.gz", "inverse_displacement.nii.gz",
              "momentum.nii.gz"):
        a, b = (np.asanyarray(nib.load(tmp_path / r / f).dataobj) for r in ("a", "b"))
        assert a.shape == b.shape and np.array_equal(a, b), f


def test_outputs_choose_the_files_and_reject_unknown_names(tmp_path):
    fixed, moving = _blob_pair((24, 22), (1.0, -1.0))
    np.save(tmp_path / "f.npy", fixed)
    np.save(tmp_path / "m.npy", moving)
    assert _run(["register", str(tmp_path / "f.npy"), str(tmp_path / "m.npy"), "--out", str(tmp_path / "o"),
                 "--outputs", "displacement,jacobian"] + FAST) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["displacement.nii.gz", "jacobian.nii.gz", "report.json"]
    with pytest.raises(ValueError, match="outputs: expected names among"):
        _run(["register", str(tmp_path / "f.npy"), str(tmp_path / "m.npy"), "--out", str(tmp_path / "p"),
              "--outputs", "displacment"] + FAST)
    assert not (tmp_path / "p").exists()
