"""Demo section: image registration by geodesic shooting on bundled data (circle -> C, a T1 slice, the MNI152)."""

from __future__ import annotations

import os

import numpy as np

from ...data import load_circle_c, load_mni152, load_t1_slice, warped_pair
from ...images import overview_figure, register_images
from ...io import Image
from ...transforms import ndv_percent, sdlogj
from ...evaluation import dice, map_error
from ._report import Check, Section

__all__ = ["image_sections"]


def _callback(progress, name):
    return lambda info: progress(f"{name}: level {info['level']} iteration {info['iteration']} "
                                 f"loss {info['objective']:.4g}")


def _common_numbers(res, jac: np.ndarray) -> dict:
    """Numbers every image section reports; ``jac`` is ``res.jacobian_determinant()`` (computed once)."""
    return {"NDV %": ndv_percent(jac), "SDlogJ": sdlogj(jac), "min det Jacobian": float(jac.min()),
            "similarity before": res.similarity_before, "similarity after": res.similarity_after,
            "L-BFGS iterations per level": str([lv.iterations for lv in res.levels]),
            "seconds": res.seconds}


def _circle_c(out: str, quick: bool, progress) -> Section:
    circle, c = load_circle_c()
    quick_options = dict(shrink_factors=(8, 4, 2), iterations=(30, 20, 10), segments=(4, 2, 1))
    res = register_images(c, circle, callback=_callback(progress, "circle -> C"), threads=1,
                          **(quick_options if quick else {}))
    shape_dice = dice(res.apply(Image((circle.data > 0.5).astype(np.uint8), circle.affine), interp="nearest").data,
                      c.data > 0.5)
    jac = res.jacobian_determinant()
    overview_figure(res, os.path.join(out, "circle_c.png"), title="circle -> C (dipy's reg_o onto reg_c)",
                    grid_step=8, jacobian=jac)
    numbers = {"Dice (shape)": shape_dice, "Dice before": dice(circle.data > 0.5, c.data > 0.5),
               **_common_numbers(res, jac)}
    return Section(
        key="circle_c", title="Images: circle onto a C (2-D, large deformation)",
        caption="The classic large-deformation pair bundled with dipy, registered with the default options of "
                "lddmm register for 2-D images: SSD, a pyramid (8, 4, 2, 1) and at each level a short chain of "
                "geodesic segments (each shot from a vector initial momentum, the map is their composition, checked "
                "fold-free). The shape label is warped with the registration's own transform (nearest neighbour) "
                "and compared with the C." + (" Quick run: the pyramid stops at shrink 2." if quick else ""),
        pictures=["circle_c.png"], numbers=numbers,
        checks=[Check("Dice circle -> C", shape_dice, ">=", 0.98 if quick else 0.99),
                Check("NDV %", numbers["NDV %"], "<=", 0.0)])


def _t1_slice(out: str, quick: bool, progress) -> Section:
    t1 = load_t1_slice()
    pair = warped_pair(t1, max_displacement=6.0, smoothness=12.0, seed=1)
    # an arbitrary intensity range: the defaults normalise robustly inside
    moving = Image(pair.moving.data * 1000.0 + 50.0, pair.moving.affine)
    res = register_images(pair.fixed, moving, callback=_callback(progress, "T1 slice"), threads=1)
    roi = t1.data > 0.1
    err = map_error(res.displacement, pair.true_map(), res.fixed, roi)
    before = float(np.linalg.norm(pair.warp.inverse_displacement, axis=0)[roi].mean())
    jac = res.jacobian_determinant()
    overview_figure(res, os.path.join(out, "t1_slice.png"),
                    title="T1 slice warped by a random diffeomorphism (6 mm)", grid_step=8, jacobian=jac)
    numbers = {"mean error vs true map (mm)": err, "mean true displacement (mm)": before,
               **_common_numbers(res, jac)}
    return Section(
        key="t1_slice", title="Images: a 2-D T1 slice and a known random warp",
        caption="dipy's bundled coronal T1 slice warped by a random smooth diffeomorphism (known ground truth, "
                "up to 6 mm) and rescaled to an arbitrary intensity range; registered with the defaults. "
                "The error is the distance between the registration's map and the true one inside the head.",
        pictures=["t1_slice.png"], numbers=numbers,
        checks=[Check("error / true displacement", err / before, "<", 0.25),
                Check("NDV %", numbers["NDV %"], "<=", 0.0)])


def _mni(out: str, quick: bool, progress) -> Section:
    mni = load_mni152(2)
    pair = warped_pair(mni.t1, {"gm": mni.gm, "wm": mni.wm}, max_displacement=8.0, smoothness=12.0, seed=0)
    options = {"iterations": (20, 5), "shrink_factors": (4, 2)} if quick else {}
    res = register_images(pair.fixed, pair.moving, callback=_callback(progress, "MNI152 3-D"), threads=1,
                          **options)
    dice_after = {k: dice(res.apply(Image(pair.labels_moving[k], pair.moving.affine), interp="nearest").data,
                          pair.labels_fixed[k]) for k in ("gm", "wm")}
    dice_before = {k: dice(pair.labels_moving[k], pair.labels_fixed[k]) for k in ("gm", "wm")}
    roi = mni.t1.data > 0.1 * mni.t1.data.max()
    err = map_error(res.displacement, pair.true_map(), res.fixed, roi)
    jac = res.jacobian_determinant()
    overview_figure(res, os.path.join(out, "mni152.png"),
                    title="MNI152 T1 2 mm warped by a random diffeomorphism (8 mm), axial middle slice", grid_step=6,
                    jacobian=jac)
    numbers = {"Dice GM": dice_after["gm"], "Dice WM": dice_after["wm"], "Dice GM before": dice_before["gm"],
               "Dice WM before": dice_before["wm"], "mean error vs true map (mm)": err,
               "grid": "x".join(map(str, mni.t1.shape)), **_common_numbers(res, jac)}
    if quick:
        numbers["options (quick)"] = str(options)
    return Section(
        key="mni152", title="Images: MNI152 T1 (3-D, 2 mm) and a known random warp",
        caption="nilearn's bundled MNI152 template warped by a random smooth diffeomorphism of up to 8 mm; the grey "
                "and white matter masks are warped with the registration's own transform and compared with the "
                "template's. Physical space throughout (the NIfTI affine).",
        pictures=["mni152.png"], numbers=numbers,
        checks=[Check("Dice GM", dice_after["gm"], ">=", 0.9 if quick else 0.95),
                Check("Dice WM", dice_after["wm"], ">=", 0.9 if quick else 0.95),
                Check("NDV %", numbers["NDV %"], "<=", 0.0)])


def image_sections():
    """The image sections in display order: ``(name, function(out, quick, progress) -> Section)``."""
    return [("circle_c", _circle_c), ("t1_slice", _t1_slice), ("mni152", _mni)]
