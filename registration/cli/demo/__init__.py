"""``lddmm demo``: the three jobs of the product on bundled data, written as pictures, a JSON report and a page.

Sections: landmarks (circle onto a C), images (circle -> C, a 2-D T1 slice and the 3-D MNI152 template warped by
known random diffeomorphisms), an atlas of a population of 2-D slices on a 2-worker Dask cluster, ideas (a kernel
warping classifier on two spirals, the weight profile of a ResNetFlow) and the mean-field limit (particles against the grid EPDiff solution). Every section returns a
``Section`` with its pictures, numbers and threshold checks; ``run_demo`` writes them into one directory
atomically.
"""

from __future__ import annotations

import os
import time

from ...io.output import atomic_directory
from ._atlas import atlas_sections
from ._gp import gp_sections
from ._ideas import idea_sections
from ._images import image_sections
from ._landmarks import circle_to_c, landmark_section
from ._meanfield import meanfield_sections
from ._report import Check, Section, write_report

__all__ = ["run_demo", "add_parsers", "circle_to_c", "Section", "Check", "SECTIONS"]


def _sections():
    return [("landmarks", landmark_section), *image_sections(), *atlas_sections(), *idea_sections(),
            *gp_sections(), *meanfield_sections()]


SECTIONS = tuple(name for name, _ in _sections())


def run_demo(out: str, *, quick: bool = False, only=None, progress=None, threads: int | None = 1) -> str:
    """Run the demo and write ``out/index.html``, its pictures and ``out/report.json``.

    Files are written in a temporary directory beside ``out`` and moved into place at the end, so an interrupted
    demo never leaves a report that looks complete.

    Parameters
    ----------
    out : str
        Output directory (created; existing demo files in it are replaced).
    quick : bool
        Smaller problems (under a minute on 2 cores).
    only : sequence of str, optional
        Run only these sections (names in ``SECTIONS``).
    progress : callable, optional
        ``progress(message)``; default: a tqdm progress bar over the sections with a status line.
    threads : int or None
        Torch CPU threads during the demo (restored afterwards; ``None`` keeps torch's setting). One thread is the
        fastest for the demo's small problems: torch's thread pool costs more than it saves on them.

    Returns
    -------
    str
        Path of ``index.html``.
    """
    import torch
    from tqdm import tqdm

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected a positive integer or None, got {threads!r}")
    todo = _sections()
    if only is not None:
        unknown = sorted(set(only) - set(SECTIONS))
        if unknown:
            raise ValueError(f"only: expected names among {list(SECTIONS)}, got {unknown}")
        todo = [(n, f) for n, f in todo if n in set(only)]
    bar = None
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if progress is None:
            bar = tqdm(total=len(todo), desc="lddmm demo", unit="section", leave=True, disable=None,
                       bar_format="{desc}: {n_fmt}/{total_fmt} sections [{elapsed}] {postfix}")
            progress = lambda message: bar.set_postfix_str(message[:70], refresh=True)  # noqa: E731
        with atomic_directory(out, prefix=".lddmm-demo-") as tmp:
            start = time.perf_counter()
            sections = []
            for name, run in todo:
                progress(name)
                t0 = time.perf_counter()
                section = run(tmp, quick, progress)
                section.seconds = time.perf_counter() - t0
                sections.append(section)
                if bar is not None:
                    bar.update(1)
            write_report(tmp, sections, quick=quick, seconds=time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
        if bar is not None:
            bar.close()
    return os.path.join(out, "index.html")


def add_parsers(subparsers) -> None:
    """Add the ``demo`` sub-command to an ``argparse`` subparsers object."""
    demo = subparsers.add_parser("demo", help="run the demonstration on embedded data and write a report",
                          description="The three jobs on data bundled with installed packages: landmarks and "
                                      "images (circle -> C, a T1 slice, the 3-D MNI152 template warped by known "
                                      "random diffeomorphisms), idea registration on two spirals and a ResNetFlow's "
                                      "weight profile, and particles against the mean-field EPDiff solution. "
                                      "Writes index.html, its pictures and report.json into --out.")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument("--quick", action="store_true", help="smaller problems, for a check in under a minute")
    demo.add_argument("--only", default=None, metavar="NAMES",
                      help="comma-separated sections to run, among landmarks, circle_c, t1_slice, mni152, atlas, "
                           "spirals, resnet, gp, meanfield (default: all)")
    demo.add_argument("--threads", type=int, default=1,
                      help="torch CPU threads (default 1: the fastest for the demo's small problems)")
    demo.set_defaults(func=_run)


def _run(args) -> int:
    only = None if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    index = run_demo(args.out, quick=args.quick, only=only, threads=args.threads)
    print(f"demo written to {index}")
    return 0


