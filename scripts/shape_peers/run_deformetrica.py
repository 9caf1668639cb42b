"""Peer runner: Deformetrica 4.3 registers one surface mesh onto another (run with Deformetrica's own venv).

Deformetrica (Bône, Louis, Martin, Durrleman: "Deformetrica 4: an open-source software for statistical shape
analysis", ShapeMI 2018; https://gitlab.com/icm-institute/aramislab/deformetrica) through its Python API,
``Deformetrica(...).estimate_registration(...)``: a deterministic atlas with the template frozen to the source.

Set up once (``.peers/deformetrica``, Python 3.11, torch 2.13 CPU, Deformetrica 4.3.0 unmodified)::

    bash scripts/shape_peers/setup_deformetrica.sh

then::

    .peers/deformetrica/bin/python scripts/shape_peers/run_deformetrica.py --source SRC.npz --target TGT.npz \\
        --out RESULT.npz --sigma-deformation 10 --sigma-varifold 5 --budget 240 [--backend keops|dense]

Settings (all Deformetrica's defaults except the kernels, the data term and the noise std):

- deformation: Gaussian kernel ``exp(-|x-y|^2 / sigma^2)`` of width ``--sigma-deformation``; control points on
  a regular grid over the source's bounding box at the default spacing (= the kernel width), momenta from zero,
  11 time points, explicit Euler shooting and flow, float32;
- data term: Deformetrica's ``Varifold`` attachment (unoriented: Gaussian of width ``--sigma-varifold`` times
  the squared cosine of the face normals, weighted by the face areas);
- cost: ``varifold / noise_std^2 + <p, K p>`` (varifold in mm^4, ``<p, K p>`` in mm^2); noise std 3 mm by
  default (``--noise-std``), the value at which the two terms end equal on fsaverage5 white -> pial at ico3
  (7398 vs 7451; 1 mm leaves the data term 8 times the regularity); a negative value gives Deformetrica's own
  automatic choice, ``sqrt(0.01 * initial varifold)`` (147 mm there: almost no deformation, 2.41 mm error);
- optimiser: ``ScipyLBFGS`` (scipy's L-BFGS-B, Deformetrica's default estimator), its defaults: 100 iterations,
  ftol 1e-4, memory 10, 10 line-search steps;
- ``--backend keops`` uses Deformetrica's ``keops`` kernels (its default), ``--backend dense`` its ``torch`` ones.

The budget is checked at every cost evaluation (Deformetrica's estimator callback): past it, the optimisation
stops at the end of that iteration and the status is ``budget``. A watchdog ends the process at budget + slack.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

import peer_io


def _options(parser):
    parser.add_argument("--noise-std", type=float, default=3.0,
                        help="Deformetrica's noise std (mm): the cost is varifold / noise_std^2 + <p, K p>; "
                             "default 3, where the two terms balance on fsaverage white -> pial (README); "
                             "negative: Deformetrica's automatic choice, sqrt(1%% of the initial varifold)")
    parser.add_argument("--max-iterations", type=peer_io.positive_int, default=100,
                        help="L-BFGS iterations (Deformetrica's default: 100)")


def write_vtk_polydata(path: str, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Legacy ASCII VTK PolyData, the surface format Deformetrica reads (via ``vtkPolyDataReader``)."""
    with open(path, "w") as fh:
        fh.write(f"# vtk DataFile Version 3.0\nmesh\nASCII\nDATASET POLYDATA\nPOINTS {len(vertices)} double\n")
        np.savetxt(fh, vertices, fmt="%.17g")
        fh.write(f"POLYGONS {len(faces)} {4 * len(faces)}\n")
        np.savetxt(fh, np.column_stack([np.full(len(faces), 3), faces]), fmt="%d")


def _specifications(args, source_vtk, target_vtk):
    kernel = {"keops": "keops", "dense": "torch"}[args.backend]
    template = {"mesh": {"deformable_object_type": "SurfaceMesh", "filename": source_vtk,
                         "attachment_type": "Varifold", "kernel_type": kernel,
                         "kernel_width": args.sigma_varifold, "noise_std": args.noise_std}}
    dataset = {"dataset_filenames": [[{"mesh": target_vtk}]], "subject_ids": ["target"]}
    model = {"dimension": 3, "deformation_kernel_type": kernel, "deformation_kernel_width": args.sigma_deformation}
    return template, dataset, model


def _deformed_vertices(model, torch):
    """The source vertices at time 1 of the estimated geodesic (the model's own exponential, as in its cost)."""
    dtype = model.tensor_scalar_type
    exp = model.exponential
    exp.set_initial_template_points({k: torch.as_tensor(v).type(dtype) for k, v in model.template.get_points().items()})
    exp.set_initial_control_points(torch.as_tensor(model.get_control_points()).type(dtype))
    exp.set_initial_momenta(torch.as_tensor(model.get_momenta()[0]).type(dtype))
    with torch.no_grad():
        exp.update()
        return exp.get_template_points()["landmark_points"].detach().cpu().numpy().astype(np.float64)


def _warm_up_keops(deformetrica, torch):
    """Compile (or load from ~/.cache/keops) the KeOps formulas Deformetrica will use, outside the timing.

    KeOps compiles each formula once per machine, forward and gradient apart; its kernels take the width as a
    parameter, so a tiny problem with any width builds the same binaries the registration calls.
    """
    kernel = deformetrica.kernels.factory("keops", kernel_width=1.0)
    dtype = deformetrica.default.tensor_scalar_type
    x, y, p, n = (torch.randn(4, 3).type(dtype).requires_grad_(True) for _ in range(4))
    w = torch.rand(4, 1).type(dtype).requires_grad_(True)
    total = (kernel.convolve(x, y, p).sum() + kernel.convolve((x, n), (y, n), w, mode="varifold").sum()
             + kernel.convolve_gradient(p, x).sum())
    total.backward()


def register(args, workdir, source_mesh, target_mesh, on_expire):
    """Run the registration in ``workdir``; returns the result fields of the contract (``warped``, ...).

    ``on_expire`` is the watchdog's last word, called if the run overruns the budget by the slack (Deformetrica's
    state cannot be read mid-iteration, so it reports the kill without a result).
    """
    import torch

    from deformetrica_compat import load

    deformetrica = load()
    (source, source_faces), (target, target_faces) = source_mesh, target_mesh
    source_vtk, target_vtk = os.path.join(workdir, "source.vtk"), os.path.join(workdir, "target.vtk")
    write_vtk_polydata(source_vtk, source, source_faces)
    write_vtk_polydata(target_vtk, target, target_faces)
    template, dataset, model_options = _specifications(args, source_vtk, target_vtk)
    api = deformetrica.Deformetrica(output_dir=os.path.join(workdir, "output"), verbosity="WARNING")

    t0 = None
    stopped = []
    last = {}

    def within_budget(data):
        last.update(attachment=data["current_attachment"], regularity=data["current_regularity"])
        if time.perf_counter() - t0 > args.budget:
            stopped.append(True)
            return False
        return True

    estimator = {"optimization_method_type": "ScipyLBFGS", "max_iterations": args.max_iterations,
                 "callback": within_budget}
    if args.backend == "keops":
        _warm_up_keops(deformetrica, torch)
    mark = peer_io.memory_mark()
    t0, c0 = time.perf_counter(), time.process_time()
    with peer_io.Watchdog(t0 + args.budget + peer_io.slack(args.budget), on_expire):
        model = api.estimate_registration(template, dataset, model_options=model_options,
                                          estimator_options=estimator, write_output=False)
        warped = _deformed_vertices(model, torch)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak_mb = peer_io.memory_peak_mb(mark)
    from deformetrica.core.estimators import scipy_optimize

    result = scipy_optimize.minimize.last_result
    if warped.shape != source.shape:
        raise RuntimeError(f"Deformetrica returned {warped.shape} points for a source of {source.shape}")
    status = "budget" if stopped else "ok"
    if not np.isfinite(warped).all():
        status = f"diverged: non-finite warped vertices after {int(result.nit)} iterations"
    return dict(warped=warped, seconds=seconds, iterations=int(result.nit), peak_mb=peak_mb,
                status=status, evaluations=int(result.nfev), cpu_seconds=cpu_seconds,
                noise_std=float(np.sqrt(model.objects_noise_variance[0])),
                n_control_points=len(model.get_control_points()), message=result.message.decode(),
                attachment=-last.get("attachment", np.nan), regularity=-last.get("regularity", np.nan))


def main(argv=None) -> int:
    args = peer_io.parse_args(__doc__.split("\n")[0], argv, _options)

    def register_in_tmp(source, source_faces, target, target_faces, best, on_expire):
        with tempfile.TemporaryDirectory(prefix="deformetrica_") as workdir:
            return register(args, workdir, (source, source_faces), (target, target_faces), on_expire)

    return peer_io.run(args, register_in_tmp, "deformetrica")


if __name__ == "__main__":
    sys.exit(main())
