"""``lddmm apply DIR IMAGE --out FILE``: warp any moving-space image (labels with ``--interp nearest``) into the
fixed space with a result saved by ``lddmm register``. The output is written beside its final name and moved into
place, so a failed run leaves nothing that looks complete."""

from __future__ import annotations

import os

from .register import check_out_path
from .register_shapes import is_shape_path, run_apply_shapes

__all__ = ["add_parsers", "run_apply"]


def add_parsers(subparsers) -> None:
    """Add the ``apply`` sub-command to an ``argparse`` subparsers object."""
    a = subparsers.add_parser(
        "apply", help="warp an image or label map with a saved registration",
        description="Warp IMAGE (moving space) into the fixed space with the registration saved in DIR; with a "
                    "shape registration, move a mesh, curve or point set (written in the format --out names).")
    a.add_argument("result", metavar="DIR", help="output directory of `lddmm register`")
    a.add_argument("image", help="image or label map in the moving space")
    a.add_argument("--out", required=True, help="output file (.nii.gz, .mha, .nrrd, .npy)")
    a.add_argument("--interp", default="linear", choices=["linear", "nearest"],
                   help="interpolation (nearest for labels)")
    a.set_defaults(func=run_apply)


def run_apply(args) -> int:
    """Run ``lddmm apply``; returns the exit code (0 on success)."""
    if is_shape_path(args.image) or os.path.exists(os.path.join(args.result, "momenta.npz")):
        return run_apply_shapes(args)
    from ..io import load_image, save_image
    from ..transforms import DisplacementTransform

    if not os.path.exists(args.image):
        raise FileNotFoundError(f"image: no such file: {args.image}")
    check_out_path(args.out, "--out")
    transform = DisplacementTransform.load(args.result)
    img = load_image(args.image, name="image")
    warped = transform.apply(img, interp=args.interp)
    base = os.path.basename(args.out)
    tmp = os.path.join(os.path.dirname(os.path.abspath(args.out)), f".partial-{os.getpid()}-{base}")
    try:
        save_image(tmp, warped)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return 0
