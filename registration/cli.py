"""The ``lddmm`` command: ``demo``, ``register``, ``apply``, ``meanfield``.

User errors (a missing file, a bad option value, bad data) print one line ``lddmm: error: ...`` on stderr and exit
with status 2; ``--verbose`` shows the traceback instead. The progress bars live here, never in the engine.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import cli_images, cli_meanfield

__all__ = ["main", "build_parser"]

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               OSError, RuntimeError)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``lddmm register: error: ...``), status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _run_demo(args) -> int:
    from .demo import run_demo

    only = None if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    index = run_demo(args.out, quick=args.quick, only=only, threads=args.threads)
    print(f"demo written to {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lddmm", description="LDDMM geodesic shooting for landmarks, images and ideas "
                                               "(ResNets as flows of diffeomorphisms), and their mean-field limits.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the demonstration on embedded data and write a report",
                          description="The three jobs on data bundled with installed packages: landmarks and "
                                      "images (circle -> C, a T1 slice, the 3-D MNI152 template warped by known "
                                      "random diffeomorphisms), idea registration on two spirals and a ResNetFlow's "
                                      "weight profile, and particles against the mean-field EPDiff solution. "
                                      "Writes index.html, its pictures and report.json into --out.")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument("--quick", action="store_true", help="smaller problems, for a check in under a minute")
    demo.add_argument("--only", default=None, metavar="NAMES",
                      help="comma-separated sections to run, among landmarks, circle_c, t1_slice, mni152, spirals, "
                           "resnet, meanfield (default: all)")
    demo.add_argument("--threads", type=int, default=1,
                      help="torch CPU threads (default 1: the fastest for the demo's small problems)")
    demo.set_defaults(func=_run_demo)
    cli_images.add_parsers(sub)
    cli_meanfield.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lddmm: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.verbose:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"lddmm: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
