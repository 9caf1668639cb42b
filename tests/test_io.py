"""I/O in physical space: round trips keep data and affine, ITK's LPS frame is converted, bad files fail clearly."""

import numpy as np
import pytest

from registration.io import (Image, load_displacement, load_image, resample_image, save_displacement, save_image)


def _oblique_affine():
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.5, 2.0, 2.5])
    aff[:3, 3] = [-10.0, 20.0, 5.0]
    return aff


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_round_trip_keeps_data_and_affine(tmp_path, ext):
    rng = np.random.default_rng(0)
    img = Image(rng.random((6, 5, 4)).astype(np.float32), _oblique_affine())
    path = tmp_path / f"img{ext}"
    save_image(path, img)
    back = load_image(path)
    np.testing.assert_allclose(back.data, img.data, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-4)
    np.testing.assert_allclose(back.spacing, (1.5, 2.0, 2.5), atol=1e-5)


def test_nifti_read_by_simpleitk_has_the_same_world_frame(tmp_path):
    import SimpleITK as sitk

    img = Image(np.zeros((4, 3, 2), np.float32), _oblique_affine())
    save_image(tmp_path / "a.nii.gz", img)
    s = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    # ITK reports LPS: the voxel (1, 2, 1) must be the RAS point of our affine with x, y negated
    p_lps = np.array(s.TransformContinuousIndexToPhysicalPoint((1.0, 2.0, 1.0)))
    p_ras = (img.affine @ [1, 2, 1, 1])[:3]
    np.testing.assert_allclose(p_lps * [-1, -1, 1], p_ras, atol=1e-4)


def test_npy_and_2d_images(tmp_path):
    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    np.save(tmp_path / "a.npy", a)
    img = load_image(tmp_path / "a.npy")
    assert img.ndim == 2 and np.array_equal(img.affine, np.eye(4)) and img.spacing == (1.0, 1.0)
    import nibabel as nib

    nib.save(nib.Nifti1Image(a[:, :, None], np.diag([0.5, 0.7, 1.0, 1.0])), tmp_path / "b.nii.gz")
    b = load_image(tmp_path / "b.nii.gz")
    assert b.shape == (4, 5) and b.spacing == pytest.approx((0.5, 0.7), abs=1e-6)
    save_image(tmp_path / "b.mha", b)
    c = load_image(tmp_path / "b.mha")
    np.testing.assert_allclose(c.affine[:2, :2], b.affine[:2, :2], atol=1e-6)
    np.testing.assert_array_equal(c.data, b.data)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "missing.nii.gz", name="fixed")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="fixed: cannot read"):
        load_image(tmp_path / "junk.nii.gz", name="fixed")
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / "four.nii.gz")
    with pytest.raises(ValueError, match="4-D"):
        load_image(tmp_path / "four.nii.gz", name="moving")


def test_resample_through_affines():
    rng = np.random.default_rng(1)
    data = rng.random((8, 9, 7)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    img = Image(data, aff)
    same = resample_image(img, aff, data.shape)
    np.testing.assert_allclose(same.data, data, atol=1e-6)
    shifted = aff.copy()
    shifted[:3, 3] = [2.0, 0.0, 0.0]  # target voxel i sits on source voxel i + 1
    out = resample_image(img, shifted, data.shape)
    np.testing.assert_allclose(out.data[:-1], data[1:], atol=1e-6)
    assert np.all(out.data[-1] == 0)
    labels = Image((data > 0.5).astype(np.uint8), aff)
    lab = resample_image(labels, shifted, data.shape, interp="nearest")
    assert lab.data.dtype == np.uint8 and np.array_equal(lab.data[:-1], labels.data[1:])


def test_displacement_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    u = rng.standard_normal((3, 5, 4, 3))
    aff = _oblique_affine()
    save_displacement(tmp_path / "d.nii.gz", u, aff)
    back, aff2 = load_displacement(tmp_path / "d.nii.gz")
    np.testing.assert_allclose(back, u, atol=1e-5)
    np.testing.assert_allclose(aff2, aff, atol=1e-4)
    assert Image(np.zeros((2, 2, 2)), aff2).spacing == pytest.approx((1.5, 2.0, 2.5), abs=1e-5)
