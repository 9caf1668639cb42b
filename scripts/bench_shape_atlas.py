"""Shape atlas with a known answer: fsaverage5's left pial surface (decimated along its icosahedral hierarchy) warped
by ``n`` known random diffeomorphisms in pairs of opposite momenta (their mean is the identity to first order), the
template estimated from the first subject; printed: the template's varifold, Chamfer and vertex distances to the
true surface (against the first subject's, the initial template), the unbiasing numbers per round and seconds.

Run (the numbers of docs/guide/atlas.md, "Shapes")::

    python scripts/bench_shape_atlas.py --vertices 642 --subjects 4 --iterations 2 --max-iter 10,20
    python scripts/bench_shape_atlas.py --vertices 642 --subjects 4 --iterations 2 --workers 2   # LocalCluster
"""

from __future__ import annotations

import argparse
import json
import time


def population(n_vertices: int, n: int, displacement: float, smoothness: float, seed: int):
    """The truth and ``n`` subjects (``n`` even): ``random_warp`` momenta ``p`` and ``-p`` in pairs."""
    from registration.shapes import ShapeTransform
    from registration.shapes.data import load_fsaverage, random_warp

    truth = load_fsaverage("pial", "left", n_vertices)
    subjects = []
    for k in range(n // 2):
        warped, tr = random_warp(truth, max_displacement=displacement, smoothness=smoothness, seed=seed + k,
                                 n_steps=20)
        back = ShapeTransform(tr.kernel, tr.control_points, -tr.momenta, tr.n_steps, tr.integrator)
        subjects += [warped, back.apply(truth)]
    return truth, subjects


def scores(shape, truth, data_sigma: float) -> dict:
    from registration.shapes import make_data_term, surface_distances, vertex_error

    term = make_data_term("varifold", data_sigma, shape.kind).attach(truth.cells_geometry())
    chamfer = 0.5 * float(surface_distances(shape, truth).mean() + surface_distances(truth, shape).mean())
    return {"varifold": float(term(shape.cells_geometry())), "chamfer_mm": chamfer,
            "vertex_error_mm": vertex_error(shape, truth)}


def main() -> None:
    from registration.atlas import build_template

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vertices", type=int, default=642, choices=[642, 2562, 10242])
    p.add_argument("--subjects", type=int, default=6)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--displacement", type=float, default=6.0, help="largest vertex move of a warp (mm)")
    p.add_argument("--smoothness", type=float, default=20.0, help="width of the warps' kernel (mm)")
    p.add_argument("--sigma", type=float, default=15.0, help="deformation kernel of the registrations (mm)")
    p.add_argument("--data-sigma", type=float, default=5.0, help="varifold width (mm)")
    p.add_argument("--max-iter", default="20,30", help="registration iterations per level (coarse,fine)")
    p.add_argument("--no-unbias", action="store_true", help="gradient steps only (ablation)")
    p.add_argument("--warm-start", default=None, choices=["on", "off"],
                   help="later rounds start from the previous momenta (default: build_template's, off for shapes)")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: synchronous)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t_pop = time.perf_counter()
    truth, subjects = population(args.vertices, args.subjects, args.displacement, args.smoothness, args.seed)
    t0 = time.perf_counter()
    print(f"population: {time.perf_counter() - t_pop:.1f} s", flush=True)
    res = build_template(subjects, iterations=args.iterations,
                         client="synchronous" if args.workers is None else None, workers=args.workers,
                         threads=None if args.workers else 1, unbias=not args.no_unbias,
                         warm_start=None if args.warm_start is None else args.warm_start == "on",
                         register_options={"sigma": args.sigma, "data_sigma": args.data_sigma,
                                           "max_iter": [int(v) for v in args.max_iter.split(",")]})
    seconds = time.perf_counter() - t0
    out = {"vertices": args.vertices, "subjects": args.subjects, "iterations": args.iterations,
           "unbias": not args.no_unbias, "warm_start": res.options["warm_start"],
           "workers": res.workers, "seconds": round(seconds, 1),
           "initial (first subject)": scores(subjects[0], truth, args.data_sigma)}
    for k, t in enumerate(res.templates[1:], start=1):
        out[f"template {k}"] = scores(t, truth, args.data_sigma)
    out["rounds"] = [{"round": h.round, "similarity": h.similarity, "template_change": h.template_change,
                      "bias_mm": h.bias, "bias_ratio": h.bias_ratio, "seconds": round(h.seconds, 1)}
                     for h in res.history]
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
