"""The ``lddmm`` command: ``demo``, ``register``, ``apply``.

User errors (a missing file, a bad option value, bad data) print one line ``lddmm: error: ...`` on stderr and exit
with status 2; ``--verbose`` shows the traceback instead. The progress bars live here, never in the engine.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import cli_images

__all__ = ["main", "build_parser"]

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               OSError, RuntimeError)


def _run_demo(args) -> int:
    from .demo import run_demo

    index = run_demo(args.out, quick=args.quick)
    print(f"demo written to {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lddmm", description="LDDMM geodesic shooting for landmarks, images and "
                                                               "ideas (ResNets as flows of diffeomorphisms).")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the demonstration on embedded data and write a report",
                          description="Landmark registration by geodesic shooting (circle -> C): writes the "
                                      "deformed grid and trajectories as a picture and a JSON report into --out.")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument("--quick", action="store_true", help="smaller problems, for a check in under a minute")
    demo.set_defaults(func=_run_demo)
    cli_images.add_parsers(sub)
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
