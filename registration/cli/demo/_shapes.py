"""Demo section: a cortical surface without correspondence — fsaverage5's left white surface registered onto its
pial surface (642 vertices) by geodesic shooting with the unoriented varifold. About 10 s with ``--quick`` (12
iterations), about 40 s in the full demo (coarse-to-fine until convergence) on one core of this CPU. The full demo
adds a curve: the head outline of dipy's T1 slice (910 segments) moved by a known random diffeomorphism and
registered back without correspondence (about 40 s)."""

from __future__ import annotations

import math
import os
import warnings

from lddmm_nets.optim import ConvergenceWarning

from ...shapes import chamfer, hausdorff, register_shapes, vertex_error
from ...shapes.data import load_contours, load_fsaverage, random_warp
from ...shapes.plot import plot_registration
from ._report import Check, Section

__all__ = ["shape_section"]

#: iteration budgets per level (coarse, fine) of the quick demo; the full demo uses register_shapes' defaults
QUICK_ITERATIONS = (4, 8)


def shape_section(out: str, quick: bool, progress) -> Section:
    """White → pial of fsaverage5's left hemisphere decimated to 642 vertices; picture ``shapes_cortex.png``."""
    n = 642
    white, pial = load_fsaverage("white", "left", n), load_fsaverage("pial", "left", n)

    def report(info):
        progress(f"shapes: level {info['level'] + 1}, iteration {info['iteration']}, distance {info['distance']:.3g}")

    with warnings.catch_warnings():  # the quick budget stops before convergence on purpose
        if quick:
            warnings.simplefilter("ignore", ConvergenceWarning)
        cortex = register_shapes(white, pial, sigma=10 / math.sqrt(2), data_sigma=5 / math.sqrt(2),
                                 callback=report, max_iter=list(QUICK_ITERATIONS) if quick else None)
    plot_registration(cortex, os.path.join(out, "shapes_cortex.png"),
                      title=f"fsaverage5 white -> pial, {n} vertices: vertex error "
                            f"{vertex_error(white, pial):.2f} -> {vertex_error(cortex.warped, pial):.2f} mm")
    numbers = {
        "vertices": n,
        "vertex error before (mm)": vertex_error(white, pial),
        "vertex error after (mm)": vertex_error(cortex.warped, pial),
        "Chamfer before (mm)": chamfer(white, pial),
        "Chamfer after (mm)": chamfer(cortex.warped, pial),
        "Hausdorff before (mm)": hausdorff(white, pial),
        "Hausdorff after (mm)": hausdorff(cortex.warped, pial),
        "flipped triangles": cortex.flipped,
        "iterations": cortex.n_iter,
        "seconds": cortex.seconds,
    }
    checks = [Check("vertex error ratio", numbers["vertex error after (mm)"] / numbers["vertex error before (mm)"],
                    "<", 0.3),
              Check("flipped triangles", float(cortex.flipped), "<=", 0)]
    pictures = ["shapes_cortex.png"]
    if not quick:
        curve_numbers, curve_check = _curve(out, report)
        numbers.update(curve_numbers)
        checks.append(curve_check)
        pictures.append("shapes_curve.png")
    return Section(
        key="shapes", title="Shapes: a cortical surface without correspondence",
        caption="fsaverage5's left white surface registered onto its pial surface (642 vertices) without point "
                "correspondence: the data term is the unoriented varifold distance (Gaussian x Cauchy-Binet, "
                "5/sqrt(2) mm), momenta live on the source vertices (10/sqrt(2) mm Gaussian deformation kernel) "
                "and the vertices follow the geodesic flow, coarse to fine over the data width; a step that would "
                "flip a triangle is refused. The vertex error uses fsaverage's indexing, which the registration "
                "never sees. Colour: displacement. The full demo adds a curve: the head outline of dipy's T1 "
                "slice moved by a known random diffeomorphism and registered back the same way (segments).",
        pictures=pictures, numbers=numbers, checks=checks)


def _curve(out: str, report) -> tuple[dict, Check]:
    """The head outline of dipy's T1 slice (pixels) and its image by a known random diffeomorphism (8 px, 30 px
    smooth): registered back without correspondence; picture ``shapes_curve.png``."""
    outline = load_contours("t1_slice")
    moved, _ = random_warp(outline, max_displacement=8.0, smoothness=30.0, seed=0)
    with warnings.catch_warnings():  # a level that ends on its line search has still converged in distance
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = register_shapes(outline, moved, callback=report)
    before, after = vertex_error(outline, moved), vertex_error(res.warped, moved)
    plot_registration(res, os.path.join(out, "shapes_curve.png"),
                      title=f"T1 slice head outline -> known random warp, {outline.n_cells} segments: vertex error "
                            f"{before:.2f} -> {after:.2f} px")
    numbers = {"curve segments": outline.n_cells, "curve vertex error before (px)": before,
               "curve vertex error after (px)": after, "curve seconds": res.seconds}
    return numbers, Check("curve vertex error ratio", after / before, "<", 0.3)
