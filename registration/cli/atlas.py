"""``lddmm atlas``: an unbiased template of a population of images or shapes (meshes, curves), on Dask.

``lddmm atlas SUBJECT... --out DIR [--iterations N] [--workers N | --scheduler ADDRESS] [--resume]`` writes into
DIR the template (``template.nii.gz``), the template of every iteration (``templates/``), the subjects' initial
momenta as one array (``momenta.npy``, subjects × grid × d, rows in the order of ``report.json``'s ``names``),
each subject's displacement, inverse displacement, warped image and Jacobian (``subjects/<name>/``) and
``report.json`` (options, history, per-subject numbers, excluded subjects). The run's own files (checkpoint,
rounds) live in the same directory, which is what ``--resume`` continues from.

Mesh subjects (``.vtk``, ``.gii``, FreeSurfer surfaces, ...: ``registration.io``'s mesh formats) make a shape atlas:
the template is ``template.vtk`` (the first subject's cells), ``momenta.npy`` is subjects × control vertices × d and
each subject's folder holds its warped template (``warped.vtk``) and transform (``momenta.npz``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .register import number_list

__all__ = ["add_parsers", "run_atlas"]


def add_parsers(subparsers) -> None:
    """Add the ``atlas`` sub-command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "atlas", help="build an unbiased template of a population of images or meshes (Dask, resumable)",
        description="Estimate a template of the SUBJECT images (or meshes / curves) and one geodesic per subject: "
                    "rounds of registration of every subject onto the template (one Dask task each), template update "
                    "(images: Jacobian-weighted mean; shapes: gradient step on the template's vertices) and unbiasing along the mean of the subjects' initial momenta at the template, "
                    "then a final round of registrations onto the final template. Runs on a local cluster of worker "
                    "processes sized to this machine, or on a running Dask scheduler (--scheduler).")
    p.add_argument("subjects", nargs="+", metavar="SUBJECT", help="subject images (NIfTI, .mha/.nrrd, .npy) or meshes / curves (.vtk, .gii, .ply, "
                                                        ".obj, FreeSurfer surfaces, .npz)")
    p.add_argument("--out", required=True, metavar="DIR", help="output (and run) directory")
    p.add_argument("--iterations", type=int, default=4, help="template updates (default 4)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None,
                       help="worker processes of the local cluster (default: one per core, as memory allows)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="address of a running Dask scheduler (e.g. tcp://10.0.0.1:8786), or 'synchronous' to "
                            "run every task in this process")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished round")
    p.add_argument("--template", default=None,
                   help="initial template image or mesh (default: images: mean of the aligned subjects; shapes: the "
                        "first subject)")
    p.add_argument("--initial", default=None, choices=["affine", "mean", "first"],
                   help="initial template without --template: images: mean of the affinely aligned subjects (affine, "
                        "default) or the plain mean; shapes: the first subject (first, default)")
    p.add_argument("--on-error", default="exclude", choices=["exclude", "raise"],
                   help="a subject whose data fail: leave it out (default) or stop")
    p.add_argument("--retries", type=int, default=2, help="times a failed task is retried (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per task (default: cores / workers)")
    p.add_argument("--no-unbias", action="store_true", help="skip the unbiasing shot")
    p.add_argument("--warm-start", default=None, choices=["on", "off"],
                   help="start each round's registrations from the previous round's momenta, refined by 3 "
                        "finest-level iterations while the template settles (default: on for images, off for "
                        "shapes)")
    p.add_argument("--tol", type=float, default=None, help="stop updating once the template changes less than this")
    p.add_argument("--metric", default=None, choices=["lncc", "ncc", "ssd"],
                   help="similarity of the registrations (default: lncc for 3-D, ssd for 2-D)")
    p.add_argument("--regularization", type=float, default=None, help="registration regularisation weight")
    p.add_argument("--sigma", type=float, default=None,
                   help="kernel width in mm (default: images: 2 voxels; shapes: 5%% of the template's size)")
    p.add_argument("--data-sigma", type=float, default=None,
                   help="shapes: width of the data term (default: half of --sigma)")
    p.add_argument("--data-term", default=None, choices=["varifold", "oriented_varifold", "currents", "measure"],
                   help="shapes: data term (default: varifold; measure for point clouds)")
    p.add_argument("--shrink-factors", type=number_list(int), default=None, help="registration pyramid, e.g. 2,1")
    p.add_argument("--level-iterations", type=number_list(int), default=None,
                   help="registration iterations per pyramid level, e.g. 50,10 (shapes: per data width)")
    p.add_argument("--n-steps", type=int, default=None, help="time steps of the shooting")
    p.add_argument("--affine", action="store_true", help="affine pre-alignment in every registration")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run_atlas)


def _one_or_all(values):
    return values[0] if values is not None and len(values) == 1 else values


def _register_options(args) -> dict:
    from ..atlas import is_shape_source

    if is_shape_source(args.subjects[0]):
        images_only = [f for f, v in (("--metric", args.metric), ("--shrink-factors", args.shrink_factors),
                                      ("--affine", args.affine or None)) if v is not None]
        if images_only:
            raise ValueError(f"{images_only[0]}: an option of image atlases; the subjects are meshes")
        return {k: v for k, v in dict(regularization=args.regularization, sigma=args.sigma,
                                      data_sigma=args.data_sigma, data_term=args.data_term,
                                      max_iter=_one_or_all(args.level_iterations), n_steps=args.n_steps).items() if v is not None}
    if args.data_sigma is not None or args.data_term is not None:
        raise ValueError("--data-sigma, --data-term: options of shape atlases; the subjects are images")
    return {k: v for k, v in dict(metric=args.metric, regularization=args.regularization, sigma=args.sigma,
                                  shrink_factors=args.shrink_factors, iterations=args.level_iterations,
                                  n_steps=args.n_steps, affine=args.affine or None).items() if v is not None}


class _Progress:
    """The progress bar of ``lddmm atlas`` over subjects × rounds (a ``build_template`` callback)."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if self.quiet:
            return
        if kind == "start":
            from tqdm.auto import tqdm

            print(f"atlas: {event['subjects']} subjects, {event['workers']}", file=sys.stderr)
            if event["dashboard"]:
                print(f"atlas: Dask dashboard at {event['dashboard']}", file=sys.stderr)
            self.bar = tqdm(total=event["subjects"] * event["rounds"], desc="atlas", unit="registration",
                            disable=None, dynamic_ncols=True)
        elif kind == "task" and event["stage"].startswith("round") and self.bar is not None:
            self.bar.set_postfix_str(f"{event['stage']} {event['name']}", refresh=False)
            self.bar.update(1)
        elif kind == "excluded":
            self._write(f"atlas: subject {event['name']} excluded ({event['stage']}): {event['reason']}")
        elif kind == "round":
            r = event["record"]
            change = "" if r.template_change is None else f", template change {r.template_change:.4f}"
            self._write(f"atlas: round {r.round}: similarity {r.similarity:.4g}, bias {r.bias:.3g} "
                        f"({r.bias_ratio:.3f} of the mean deformation){change}, {r.seconds:.1f} s")
        elif kind == "end":
            self.close()

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_atlas(args) -> int:
    """Run ``lddmm atlas``; returns the exit code (0 on success)."""
    from ..atlas import SubjectExcludedWarning, build_template

    for name, value in (("--iterations", args.iterations), ("--retries", args.retries)):
        if value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value}")
    for name, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value}")
    missing = [s for s in args.subjects if not os.path.exists(s)]
    if missing and args.on_error == "raise":
        raise FileNotFoundError(f"subject: no such file: {missing[0]}")
    if args.template is not None and not os.path.exists(args.template):
        raise FileNotFoundError(f"--template: no such file: {args.template}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out: expected a directory, got an existing file {args.out}")
    if not getattr(args, "verbose", False):  # Dask logs every worker start and stop at INFO
        logging.getLogger("distributed").setLevel(logging.ERROR)
    progress = _Progress(args.quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SubjectExcludedWarning)  # the progress callback names them, once
            res = build_template(args.subjects, iterations=args.iterations, out=args.out, resume=args.resume,
                                 initial=args.template if args.template is not None else args.initial,
                                 client=args.scheduler, workers=args.workers, threads=args.threads,
                                 retries=args.retries, on_error=args.on_error, unbias=not args.no_unbias,
                                 tol=args.tol, register_options=_register_options(args), callback=progress,
                                 warm_start=None if args.warm_start is None else args.warm_start == "on")
    except KeyboardInterrupt:
        progress.close()
        print(f"atlas: interrupted; continue with: lddmm atlas ... --out {args.out} --resume", file=sys.stderr)
        raise
    finally:
        progress.close()
    res.save(args.out)
    if not args.quiet:
        last = res.history[-1]
        print(f"atlas: {len(res.names)} subjects ({len(res.excluded)} excluded), {len(res.history) - 1} iterations, "
              f"bias {last.bias:.3g} ({last.bias_ratio:.3f} of the mean deformation), {res.seconds:.1f} s "
              f"-> {args.out}")
    return 0
