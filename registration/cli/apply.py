"""``lddmm apply DIR INPUT --out FILE``: move an image, a label map or a point set with a saved registration.

Both directions, for images and points alike:

- default: from the moving space into the fixed space (images are resampled on the fixed grid; points given in the
  moving space are mapped to their fixed-space positions);
- ``--inverse``: from the fixed space into the moving space (images are resampled on the moving grid recorded in
  ``report.json``, or on ``--reference``; points go from fixed to moving positions).

Points are CSV files of world coordinates (columns ``x,y[,z]``; other columns are kept), RAS by default or LPS with
``--lps`` (ANTs' ``antsApplyTransformsToPoints`` convention). The output is written beside its final name and moved
into place, so a failed run leaves nothing that looks complete.
"""

from __future__ import annotations

import json
import os

__all__ = ["add_parsers", "run_apply"]


def add_parsers(subparsers) -> None:
    """Add the ``apply`` sub-command to an ``argparse`` subparsers object."""
    a = subparsers.add_parser(
        "apply", help="move an image, label map or point set with a saved registration",
        description="Move INPUT with the registration saved in DIR: an image or label map (moving space -> fixed "
                    "grid; --inverse: fixed space -> moving grid) or a CSV of world points (same directions).")
    a.add_argument("result", metavar="DIR", help="output directory of `lddmm register`")
    a.add_argument("image", metavar="INPUT", help="image, label map, or points CSV (.csv)")
    a.add_argument("--out", required=True, help="output file (.nii.gz, .mha, .nrrd, .npy; .csv for points)")
    a.add_argument("--interp", default="linear", choices=["linear", "nearest"],
                   help="interpolation (nearest for labels)")
    a.add_argument("--inverse", action="store_true",
                   help="the other direction: fixed space -> moving space")
    a.add_argument("--reference", default=None, metavar="IMAGE",
                   help="--inverse on images: the moving-space grid to resample onto (default: the registration's "
                        "moving grid, from report.json)")
    a.add_argument("--lps", action="store_true", help="points: coordinates in LPS (ITK / ANTs) instead of RAS")
    a.set_defaults(func=run_apply)


def _moving_grid(result_dir: str):
    path = os.path.join(result_dir, "report.json")
    try:
        with open(path) as fh:
            grid = json.load(fh)["moving_grid"]
        return grid["affine"], tuple(grid["shape"])
    except (OSError, KeyError, TypeError, ValueError):
        raise ValueError(f"--reference: {path} does not record the moving grid (a result of an older version?); "
                         f"give the moving image with --reference") from None


def _apply_points(args, transform) -> None:
    from ..io.output import atomic_file
    from ..io.points import load_points_csv, save_points_csv

    table = load_points_csv(args.image, transform.ndim, lps=args.lps)
    pts = transform.transform_points(table.points) if args.inverse else \
        transform.inverse_transform_points(table.points)
    with atomic_file(args.out) as tmp:
        save_points_csv(tmp, table.with_points(pts), lps=args.lps)


def run_apply(args) -> int:
    """Run ``lddmm apply``; returns the exit code (0 on success)."""
    from ..io import load_image, save_image
    from ..io.output import atomic_file
    from ..transforms import DisplacementTransform

    if not os.path.exists(args.image):
        raise FileNotFoundError(f"image: no such file: {args.image}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise FileNotFoundError(f"--out: the parent directory of {args.out} does not exist")
    if args.reference is not None and not args.inverse:
        raise ValueError("--reference: only with --inverse (the forward direction resamples on the fixed grid)")
    transform = DisplacementTransform.load(args.result)
    if args.image.lower().endswith(".csv"):
        _apply_points(args, transform)
        return 0
    img = load_image(args.image, name="image")
    if args.inverse:
        reference = args.reference if args.reference is not None else _moving_grid(args.result)
        warped = transform.apply_inverse(img, reference, interp=args.interp)
    else:
        warped = transform.apply(img, interp=args.interp)
    with atomic_file(args.out) as tmp:
        save_image(tmp, warped)
    return 0
