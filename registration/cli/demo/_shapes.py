"""Demo section: shapes without correspondence — a cortical surface (fsaverage5 white → pial) and a 2-D curve
(the contour of dipy's circle image onto the contour of its C), registered by geodesic shooting with the varifold."""

from __future__ import annotations

import math
import os

from ...shapes import chamfer, register_shapes, vertex_error
from ...shapes.data import load_contours, load_fsaverage
from ...shapes.plot import plot_registration
from ._report import Check, Section

__all__ = ["shape_section"]


def shape_section(out: str, quick: bool, progress) -> Section:
    """White → pial of fsaverage5's left hemisphere (642 vertices quick, 2,562 full) and circle → C contours;
    pictures ``shapes_cortex.png`` and ``shapes_curve.png``."""
    n = 642 if quick else 2562
    white, pial = load_fsaverage("white", "left", n), load_fsaverage("pial", "left", n)

    def report(name):
        return lambda info: progress(f"shapes ({name}): level {info['level'] + 1}, iteration {info['iteration']}, "
                                     f"distance {info['distance']:.3g}")

    cortex = register_shapes(white, pial, sigma=10 / math.sqrt(2), data_sigma=5 / math.sqrt(2),
                             callback=report("cortex"))
    plot_registration(cortex, os.path.join(out, "shapes_cortex.png"),
                      title=f"fsaverage5 white -> pial, {n} vertices: vertex error "
                            f"{vertex_error(white, pial):.2f} -> {vertex_error(cortex.warped, pial):.2f} mm")
    circle, c = load_contours("circle"), load_contours("C")
    curve = register_shapes(circle, c, sigma=20.0, data_sigma=4.0, callback=report("curve"))
    plot_registration(curve, os.path.join(out, "shapes_curve.png"),
                      title=f"circle -> C contours: Chamfer {chamfer(circle, c):.2f} -> "
                            f"{chamfer(curve.warped, c):.2f} pixels")
    numbers = {
        "cortex vertices": n,
        "cortex vertex error before (mm)": vertex_error(white, pial),
        "cortex vertex error after (mm)": vertex_error(cortex.warped, pial),
        "cortex Chamfer before (mm)": chamfer(white, pial),
        "cortex Chamfer after (mm)": chamfer(cortex.warped, pial),
        "cortex flipped triangles": cortex.flipped,
        "cortex iterations": cortex.n_iter,
        "cortex seconds": cortex.seconds,
        "curve Chamfer before (px)": chamfer(circle, c),
        "curve Chamfer after (px)": chamfer(curve.warped, c),
        "curve flipped segments": curve.flipped,
        "curve seconds": curve.seconds,
    }
    checks = [Check("cortex vertex error ratio", numbers["cortex vertex error after (mm)"]
                    / numbers["cortex vertex error before (mm)"], "<", 0.3),
              Check("cortex flipped triangles", float(cortex.flipped), "<=", 0),
              Check("curve Chamfer ratio", numbers["curve Chamfer after (px)"] / numbers["curve Chamfer before (px)"],
                    "<", 0.3),
              Check("curve flipped segments", float(curve.flipped), "<=", 0)]
    return Section(
        key="shapes", title="Shapes: cortical surface and curve without correspondence",
        caption="Surfaces and curves are registered without point correspondence: the data term is the unoriented "
                "varifold distance (Gaussian x Cauchy-Binet), momenta live on control points and the vertices are "
                "carried by the geodesic flow, coarse to fine over the data width; a step that would flip a "
                "triangle is refused. Top: fsaverage5 white onto pial (the vertex error is measured with "
                "fsaverage's indexing, never used by the registration). Bottom: the contour of dipy's circle image "
                "onto the contour of its C. Colour: displacement.",
        pictures=["shapes_cortex.png", "shapes_curve.png"], numbers=numbers, checks=checks)
