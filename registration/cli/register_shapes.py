"""The mesh branch of ``lddmm register`` and ``lddmm apply``: shapes recognised by their file format.

``lddmm register FIXED MOVING --out DIR`` with meshes, curves or point sets (GIFTI, FreeSurfer, VTK / PLY / OBJ /
STL / OFF, ``.npz`` meshes, ``.npy`` point sets: ``registration.io.meshes``) registers MOVING (the source) onto
FIXED (the target) with ``registration.shapes.register_shapes`` and writes into DIR, atomically:
``warped.<MOVING's extension>`` (MOVING's cells on the moved vertices, world coordinates, the file's own metadata),
``momenta.npz`` (control points, momenta, kernel: what ``lddmm apply`` needs), ``report.json`` (data-term distances
before and after, Chamfer and Hausdorff distances, energy, iterations, seconds, flipped triangles, the options)
and ``overview.png`` (source, target, warped coloured by the displacement). The argument order is the image
command's: the second file moves onto the first.

``lddmm apply DIR MESH_OR_POINTS --out FILE`` moves any other mesh, curve or point set (in MOVING's space) with a
saved shape registration; ``--inverse`` moves one from FIXED's space into MOVING's (the inverse flow).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["is_shape_path", "run_register_shapes", "run_apply_shapes", "add_shape_options", "IMAGE_ONLY_OPTIONS"]

#: image options whose default is "not given": an error when given with meshes
IMAGE_ONLY_OPTIONS = ("metric", "window", "lncc_floor", "denoise", "kernel", "shrink_factors", "smoothing_sigmas",
                      "momentum", "geodesics", "segments", "fixed_mask", "moving_mask", "initial_affine")


def is_shape_path(path) -> bool:
    """Whether ``path`` is a mesh, curve or point set rather than an image.

    Mesh formats go by extension (or FreeSurfer's magic number); a ``.npy`` file is a point set when it holds a
    2-D array of shape ``(N, 2)`` or ``(N, 3)`` (an image ``.npy`` has more than 3 columns), an image otherwise.
    """
    from ..io.meshes import is_mesh_path, mesh_extension

    if mesh_extension(path) == ".npy":
        if not os.path.isfile(path):
            return False
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            return False
        return arr.ndim == 2 and arr.shape[1] in (2, 3)
    return is_mesh_path(path)


def add_shape_options(parser) -> None:
    """Options of ``lddmm register`` used for meshes only (``--sigma`` (default for meshes: 5 % of the source's
    bounding-box diagonal), ``--regularization``, ``--iterations``, ``--n-steps``, ``--device``, ``--threads`` are
    shared with images)."""
    from .register import number_list  # here: register imports this module

    g = parser.add_argument_group("meshes, curves and point sets")
    g.add_argument("--data-term", default="auto", choices=["auto", "varifold", "oriented_varifold", "currents",
                                                            "measure"],
                   help="shape data term (default: unoriented varifold; kernel measure for point sets)")
    g.add_argument("--data-sigma", type=float, default=None,
                   help="final width of the data term's Gaussian in mm (default: --sigma / 2)")
    g.add_argument("--levels", type=number_list(float), default=None,
                   help="coarse-to-fine multiples of --data-sigma (default 2,1; 4,2,1 for deformations much larger than "
                        "--data-sigma)")
    g.add_argument("--control-points", default="auto", choices=["auto", "grid", "subsample", "vertices"],
                   help="where the momenta live (default auto: the source vertices up to 1,024, else a grid at "
                        "--spacing near the source)")
    g.add_argument("--spacing", type=float, default=None, help="control point spacing in mm (default: --sigma)")


def _options(args) -> dict:
    for name in IMAGE_ONLY_OPTIONS:
        if getattr(args, name, None) is not None:
            raise ValueError(f"--{name.replace('_', '-')}: an image option, not used to register meshes")
    if getattr(args, "affine", False):
        raise ValueError("--affine: an image option, not used to register meshes")
    if getattr(args, "outputs", "all") != "all":
        raise ValueError("--outputs: an image option; a shape registration writes warped, momenta, report and "
                         "overview (--no-overview skips the picture)")
    kw = dict(sigma=args.sigma, data_term=args.data_term, data_sigma=args.data_sigma, levels=args.levels,
              control_points=args.control_points, spacing=args.spacing, regularization=args.regularization,
              n_steps=args.n_steps, device=args.device)
    if args.iterations is not None:
        kw["max_iter"] = args.iterations[0] if len(args.iterations) == 1 else list(args.iterations)
    return {k: v for k, v in kw.items() if v is not None}


def _progress(bar):
    state = {"level": None}

    def update(info):
        if info["level"] != state["level"]:
            state["level"] = info["level"]
            bar.set_description(f"level {info['level'] + 1}/{info['n_levels']}")
        bar.set_postfix(loss=f"{info['objective']:.4f}", distance=f"{info['distance']:.4f}")
        bar.update(1)

    return update


def run_register_shapes(args) -> int:
    """Run ``lddmm register`` on meshes, curves or point sets; returns the exit code (0 on success)."""
    import torch

    from ..io.meshes import load_mesh, mesh_extension
    from ..shapes import register_shapes
    from ..threads import resolve_threads
    from .register import check_out_path, with_progress

    kwargs = _options(args)
    for name, path in (("fixed", args.fixed), ("moving", args.moving)):
        if not is_shape_path(path):
            raise ValueError(f"{name}: expected a mesh, curve or point set like the other input, got {path}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out: expected a directory, got an existing file {args.out}")
    check_out_path(args.out.rstrip("/") or args.out, "--out")
    target, source = load_mesh(args.fixed, name="fixed"), load_mesh(args.moving, name="moving")
    if args.threads is not None:
        torch.set_num_threads(resolve_threads(args.threads))
    res = with_progress(lambda cb: register_shapes(source, target, callback=cb, **kwargs), _progress, args.quiet)
    ext = mesh_extension(args.moving) or ".surf"  # no extension: a FreeSurfer file recognised by its magic number
    res.save(args.out, extension=ext, overview=not args.no_overview)
    if not args.quiet:
        before, after = res.distance_before[0], res.distance_after[0]
        print(f"data term {before:.5g} -> {after:.5g}   {res.flipped} flipped cells   {res.n_iter} iterations   "
              f"{res.seconds:.1f} s   -> {args.out}")
    return 0


def run_apply_shapes(args) -> int:
    """Run ``lddmm apply`` with a saved shape registration; returns the exit code (0 on success)."""
    from ..io.meshes import load_mesh, save_mesh
    from ..shapes import ShapeTransform

    if not is_shape_path(args.image):
        raise ValueError(f"image: {args.result} holds a shape registration; expected a mesh, curve or point set, "
                         f"got {args.image}")
    if not is_shape_path(args.out) and not args.out.lower().endswith(".npy"):
        raise ValueError(f"--out: expected a mesh or point-set file name (.gii, .vtk, .ply, .obj, .stl, .off, .npz, "
                         f".npy, FreeSurfer), got {args.out}")
    from .register import check_out_path

    check_out_path(args.out, "--out")
    for name in ("reference", "lps"):
        if getattr(args, name, None):
            raise ValueError(f"--{name}: an option of image and CSV results, not of shape registrations")
    transform = ShapeTransform.load(args.result)
    shape = load_mesh(args.image, name="image")
    save_mesh(args.out, transform.inverse(shape) if getattr(args, "inverse", False) else transform.apply(shape))
    return 0
