"""``lddmm apply DIR IMAGE --out FILE``: warp any moving-space image (labels with ``--interp nearest``) into the
fixed space with a result saved by ``lddmm register``. The output is written beside its final name and moved into
place, so a failed run leaves nothing that looks complete."""

from __future__ import annotations

import os

from .register import check_out_path

__all__ = ["add_parsers", "run_apply"]


def add_parsers(subparsers) -> None:
    """Add the ``apply`` sub-command to an ``argparse`` subparsers object."""
    a = subparsers.add_parser(
        "apply", help="warp an image or label map with a saved registration",
        description="Warp IMAGE (moving space) into the fixed space with the registration saved in DIR.")
    a.add_argument("result", metavar="DIR", help="output directory of `lddmm register`")
    a.add_argument("image", help="image or label map in the moving space")
    a.add_argument("--out", required=True, help="output file (.nii.gz, .mha, .nrrd, .npy)")
    a.add_argument("--interp", default="linear", choices=["linear", "nearest"],
                   help="interpolation (nearest for labels)")
    a.set_defaults(func=run_apply)


def run_apply(args) -> int:
    """Run ``lddmm apply``; returns the exit code (0 on success)."""
    from ..io import load_image, save_image
    from ..io.output import atomic_file
    from ..transforms import DisplacementTransform

    if not os.path.exists(args.image):
        raise FileNotFoundError(f"image: no such file: {args.image}")
    check_out_path(args.out, "--out")
    transform = DisplacementTransform.load(args.result)
    img = load_image(args.image, name="image")
    warped = transform.apply(img, interp=args.interp)
    with atomic_file(args.out) as tmp:
        save_image(tmp, warped)
    return 0
