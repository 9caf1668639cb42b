"""``lddmm register``: image registration from the command line.

``lddmm register FIXED MOVING --out DIR [options]`` writes into DIR ``warped.nii.gz``, ``displacement.nii.gz``
(ITK / ANTs displacement field, LPS vector components, fixed -> moving), ``inverse_displacement.nii.gz``,
``jacobian.nii.gz``, ``momentum.nii.gz``, ``report.json`` and ``overview.png``; files are written to a
temporary directory and moved into place at the end, so a failed run leaves nothing that looks complete.

Errors in user input raise ``ValueError`` / ``FileNotFoundError`` with a one-line message; the top-level
``lddmm`` command prints it and exits non-zero.
"""

from __future__ import annotations

import argparse
import os

from .register_shapes import add_shape_options, is_shape_path, run_register_shapes

__all__ = ["add_parsers", "run_register", "check_out_path", "number_list", "with_progress"]


def number_list(cast):
    """argparse type: comma- (or x-) separated numbers such as ``4,2,1``, each converted by ``cast`` (int or float)."""
    example = "integers such as 4,2,1" if cast is int else "numbers such as 2,1,0"

    def parse(text: str) -> tuple:
        try:
            return tuple(cast(v) for v in text.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {example}, got {text!r}") from None

    return parse


def _threads(text: str):
    if text in ("auto", "all"):
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, 'auto' or 'all', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, 'auto' or 'all', got {n}")
    return n


def add_parsers(subparsers) -> None:
    """Add the ``register`` sub-command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "register", help="register a moving image onto a fixed one (geodesic shooting)",
        description="Diffeomorphic registration of MOVING onto FIXED by geodesic shooting (LDDMM). Images: "
                    "NIfTI, .mha/.mhd/.nrrd, or .npy (unit spacing); 2-D or 3-D; any intensity range. Meshes, "
                    "curves and point sets (GIFTI, FreeSurfer, .vtk/.ply/.obj/.stl/.off, .npz, .npy of shape "
                    "(N, 2|3)) are registered without correspondence (varifold data term).")
    p.add_argument("fixed", help="fixed (reference) image")
    p.add_argument("moving", help="moving image, warped onto the fixed grid")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--metric", default=None, choices=["auto", "lncc", "ncc", "ssd"],
                   help="similarity (default auto: lncc, or ssd for a piecewise-constant fixed image)")
    p.add_argument("--window", type=int, default=None,
                   help="LNCC window in voxels (odd; default 5 in 3-D, 7 in 2-D, 9 for noisy 2-D images)")
    p.add_argument("--lncc-floor", type=float, default=None,
                   help="floor of the fixed image's LNCC local variance, a fraction of its median (default 0.05 in "
                        "2-D, 0 in 3-D: plain LNCC): plateaus weigh less than edges")
    p.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                   help="register noisy images after an edge-preserving diffusion (default: on in 2-D, off in 3-D)")
    p.add_argument("--sigma", type=float, default=None, help="kernel width in mm (default: 2 voxels)")
    p.add_argument("--kernel", default=None, choices=["sum", "gaussian", "matern"],
                   help="kernel: multi-scale Gaussian sum (default), Gaussian, Matern 5/2")
    p.add_argument("--regularization", type=float, default=None, help="weight of the kernel norm (mm^-2)")
    p.add_argument("--shrink-factors", type=number_list(int), default=None, help="pyramid shrink factors, e.g. 4,2,1")
    p.add_argument("--smoothing-sigmas", type=number_list(float), default=None,
                   help="pyramid smoothing in voxels, e.g. 2,1,0")
    p.add_argument("--iterations", type=number_list(int), default=None, help="iterations per level, e.g. 50,10")
    p.add_argument("--n-steps", type=int, default=None, help="time steps of the shooting")
    p.add_argument("--momentum", default=None, choices=["vector", "scalar"],
                   help="vector momentum (EPDiff, default) or scalar image momentum")
    p.add_argument("--geodesics", default=None, choices=["single", "composed"],
                   help="composed geodesic segments (default) or one geodesic over the whole pyramid")
    p.add_argument("--segments", type=number_list(int), default=None,
                   help="composed geodesics: most segments per level, e.g. 4,2,1,1")
    p.add_argument("--affine", action="store_true", help="affine pre-alignment with the same metric")
    p.add_argument("--fixed-mask", default=None, help="mask of the fixed image (restricts the similarity)")
    p.add_argument("--moving-mask", default=None, help="mask of the moving image")
    p.add_argument("--initial-affine", default=None, metavar="FILE",
                   help="fixed -> moving affine from another tool to start from: an ITK / ANTs transform (.txt, .tfm, "
                        ".mat) or a (d+1)x(d+1) RAS matrix (.npy or text); the result is the composition")
    p.add_argument("--device", default=None, help="torch device (cpu, cuda, ...; default cpu)")
    p.add_argument("--threads", type=_threads, default="auto",
                   help="torch CPU threads: a number, 'auto' (default: the cores other processes leave free) or "
                        "'all'")
    p.add_argument("--no-overview", action="store_true", help="skip overview.png")
    p.add_argument("--outputs", default="all", metavar="NAMES",
                   help="comma-separated files to write among warped, displacement, inverse, jacobian, momentum, "
                        "overview (default all; report.json is always written)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_shape_options(p)
    p.set_defaults(func=run_register)


def check_out_path(path: str, name: str) -> None:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{name}: the parent directory of {path} does not exist")


def with_progress(call, updater, quiet: bool):
    """``call(callback)`` with a tqdm bar that ``updater(bar)`` turns into the callback (None if ``quiet``); the bar
    is closed whatever happens."""
    if quiet:
        return call(None)
    from tqdm.auto import tqdm

    bar = tqdm(desc="register", unit="it", leave=False, disable=None)
    try:
        return call(updater(bar))
    finally:
        bar.close()


def _progress(bar):
    """A ``register_images`` callback that drives a tqdm bar (level name, loss, similarity)."""
    state = {"level": None}

    def update(info):
        if info["level"] != state["level"]:
            state["level"] = info["level"]
            bar.set_description("affine" if info["level"] < 0 else f"level {info['level'] + 1}")
        bar.set_postfix(loss=f"{info['objective']:.4f}", sim=f"{info['similarity']:.4f}")
        bar.update(1)

    return update


def run_register(args) -> int:
    """Run ``lddmm register``; returns the exit code (0 on success)."""
    if is_shape_path(args.fixed) or is_shape_path(args.moving):
        return run_register_shapes(args)
    from ..images import register_images
    from ..io import load_image
    from ..io.affine import load_affine

    for name, path in (("fixed", args.fixed), ("moving", args.moving)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{name}: no such file: {path}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out: expected a directory, got an existing file {args.out}")
    check_out_path(args.out.rstrip("/") or args.out, "--out")
    kwargs = {k: v for k, v in dict(
        metric=args.metric, window=args.window, lncc_floor=args.lncc_floor, denoise=args.denoise, sigma=args.sigma,
        kernel=args.kernel, regularization=args.regularization, shrink_factors=args.shrink_factors,
        smoothing_sigmas=args.smoothing_sigmas, iterations=args.iterations, n_steps=args.n_steps,
        momentum=args.momentum, geodesics=args.geodesics,
        segments=None if args.segments is None else (args.segments[0] if len(args.segments) == 1 else args.segments),
        affine=args.affine or None, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
        device=args.device, threads=args.threads).items() if v is not None}
    outputs = None if args.outputs == "all" else [n.strip() for n in args.outputs.split(",") if n.strip()]
    if outputs is not None:
        from ..images.result import check_outputs

        check_outputs(outputs)  # before the work: a typo is an error now, not after the registration
    # read every input before the progress bar starts, so that a bad file is one clean error line
    fixed, moving = load_image(args.fixed, name="fixed"), load_image(args.moving, name="moving")
    if args.initial_affine is not None:
        kwargs["initial_affine"] = load_affine(args.initial_affine, fixed.ndim)
    res = with_progress(lambda cb: register_images(fixed, moving, callback=cb, **kwargs), _progress, args.quiet)
    res.save(args.out, overview=not args.no_overview, outputs=outputs)
    if not args.quiet:
        print(f"{res.config.metric}: {res.similarity_before:.4f} -> {res.similarity_after:.4f}   "
              f"NDV {res.ndv_percent:.3f} %   SDlogJ {res.sdlogj:.3f}   {res.seconds:.1f} s   -> {args.out}")
    return 0
