"""The ``lddmm`` command: one room per sub-command (``demo``, ``register``, ``apply``, ``atlas``,
``meanfield``).

User errors (a missing file, a bad option value, bad data) print one line ``lddmm: error: ...`` on stderr and exit
with status 2; ``--verbose`` shows the traceback instead. The progress bars live here, never in the engine.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import apply, atlas, demo, meanfield, register

__all__ = ["main", "build_parser"]

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               OSError, RuntimeError)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``lddmm register: error: ...``), status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lddmm", description="LDDMM geodesic shooting for landmarks, images and ideas "
                                               "(ResNets as flows of diffeomorphisms), and their mean-field limits.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parsers(sub)
    register.add_parsers(sub)
    apply.add_parsers(sub)
    atlas.add_parsers(sub)
    meanfield.add_parsers(sub)
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
