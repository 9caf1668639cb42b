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
                 "--no-overview", "--metric", "ssd"] + FAST) == 0
    assert sorted(os.listdir(tmp_path / "o")) == sorted(f for f in FILES if f != "overview.png")
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["similarity_after"] < 0.3 * report["similarity_before"]


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
