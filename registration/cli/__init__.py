"""The ``lddmm`` command: one room per sub-command (``demo``, ``register``, ``apply``, ``atlas``,
``meanfield``).

Errors, by kind (``--verbose`` shows the traceback of any of them instead):

- user errors (a missing or unreadable file, a bad option value, bad data, a numerical method that fails for the
  options given, an unusable KeOps): one line ``lddmm: error: ...`` on stderr, status 2;
- running out of memory: one line ``lddmm: out of memory: ...`` with what to try, status 3;
- anything else is a bug and is not dressed up as a user error: ``lddmm: internal error (a bug): ...`` with where it
  happened, status 1.

Ctrl-C prints ``lddmm: interrupted`` (status 130); every command writes its outputs atomically, so nothing partial is
left. The progress bars live here, never in the engine.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import apply, atlas, demo, meanfield, register

__all__ = ["main", "build_parser"]

def _user_errors() -> tuple:
    from lddmm_nets.backends import KeOpsUnavailableError
    from lddmm_nets.epdiff import EPDiffInstabilityError
    from lddmm_nets.integrators import ImplicitSolveError
    from lddmm_nets.shooting import InverseFlowError

    # OSError covers the file system (missing, unreadable, not a directory, no space left): the user's environment
    return (ValueError, OSError, KeOpsUnavailableError, EPDiffInstabilityError, ImplicitSolveError, InverseFlowError)


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(err).lower()


def _where(err: BaseException) -> str:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "" if tb is None else f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


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
    except Exception as err:  # noqa: BLE001 - sorted into user errors, memory, and bugs below
        if args.verbose:
            raise
        if _is_out_of_memory(err):
            print(f"lddmm: out of memory: {_first_line(err)} (try --threads 1, a smaller image, or another "
                  f"--device; --verbose shows the traceback)", file=sys.stderr)
            return 3
        if isinstance(err, _user_errors()):
            print(f"lddmm: error: {_first_line(err)}", file=sys.stderr)
            return 2
        print(f"lddmm: internal error (a bug, please report it): {type(err).__name__}: {_first_line(err)}"
              f"{_where(err)}; run with --verbose for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
