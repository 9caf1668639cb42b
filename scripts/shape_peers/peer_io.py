"""What the peer runners share: their command line, mesh input, memory measurement, the result file, a watchdog.

Imported by ``run_deformetrica.py`` (Deformetrica's own virtual environment) and ``run_keops_tutorial.py`` (the
main one), so it needs numpy and the standard library only. The contract with ``scripts/bench_shapes.py``:

- input ``--source`` / ``--target``: npz with ``vertices`` (N, 3) float64 in mm and ``faces`` (F, 3) int64;
- output ``--out``: npz with ``warped`` (N, 3) float64 (the source vertices moved by the peer's deformation),
  ``seconds`` (wall time of the registration alone), ``iterations`` (int), ``peak_mb`` (peak resident memory
  growth during the registration), ``status`` (``"ok"``, ``"budget"`` when the time budget stopped it, or an
  error message), written atomically (temporary file, then rename).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for _memory
from _memory import memory_mark, memory_peak_kb  # noqa: E402  (stdlib only; memory_mark is part of this API)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_args(description: str, argv=None, add_options=None) -> argparse.Namespace:
    """The runners' common command line; ``add_options(parser)`` adds a runner's own (optional) flags."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--source", required=True, help="source mesh npz (vertices (N, 3) mm, faces (F, 3))")
    parser.add_argument("--target", required=True, help="target mesh npz (vertices (M, 3) mm, faces (G, 3))")
    parser.add_argument("--out", required=True, help="result npz, written atomically")
    parser.add_argument("--sigma-deformation", type=float, required=True, help="Gaussian deformation kernel width (mm)")
    parser.add_argument("--sigma-varifold", type=float, required=True, help="varifold Gaussian kernel width (mm)")
    parser.add_argument("--budget", type=float, required=True, help="wall-time budget of the registration (s)")
    parser.add_argument("--backend", choices=("keops", "dense"), default="keops",
                        help="kernel sums by KeOps LazyTensors or by dense torch matrices (default: keops)")
    if add_options is not None:
        add_options(parser)
    args = parser.parse_args(argv)
    for name in ("sigma_deformation", "sigma_varifold", "budget"):
        value = getattr(args, name)
        if not np.isfinite(value) or value <= 0:
            parser.error(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    return args


def load_mesh(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices (N, 3) float64 mm, faces (F, 3) int64)`` from an npz; ``ValueError`` naming what is wrong."""
    with np.load(path) as data:
        missing = {"vertices", "faces"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: expected arrays 'vertices' and 'faces', missing {sorted(missing)}")
        vertices = np.asarray(data["vertices"], dtype=np.float64)
        faces = np.asarray(data["faces"])
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.isfinite(vertices).all():
        raise ValueError(f"{path}: vertices: expected finite (N, 3), got shape {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"{path}: faces: expected integer (F, 3), got {faces.dtype} {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"{path}: faces: indices must lie in [0, {len(vertices)}), got "
                         f"[{faces.min()}, {faces.max()}]")
    return vertices, faces.astype(np.int64)


def memory_peak_mb(mark_kb: int) -> float:
    """Peak resident growth (MB) since :func:`memory_mark` returned ``mark_kb``."""
    return max(memory_peak_kb() - mark_kb, 0) / 1024.0


def write_result(path: str, *, warped, seconds: float, iterations: int, peak_mb: float, status: str,
                 **extra) -> None:
    """Write the result npz atomically (a temporary file in the same folder, then ``os.replace``)."""
    warped = np.asarray(warped, dtype=np.float64)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, warped=warped, seconds=np.float64(seconds), iterations=np.int64(iterations),
                     peak_mb=np.float64(peak_mb), status=np.str_(status),
                     **{k: np.asarray(v) for k, v in extra.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_failure(path: str, exc: BaseException, source=None) -> None:
    """Result file of a run that failed: status = the error, ``warped`` = the source (or (0, 3) if unreadable)."""
    warped = np.zeros((0, 3)) if source is None else source
    write_result(path, warped=warped, seconds=float("nan"), iterations=0, peak_mb=float("nan"),
                 status=f"{type(exc).__name__}: {exc}")


class Watchdog:
    """Last resort: at ``deadline`` (``time.perf_counter()`` value) call ``on_expire()`` and end the process.

    The runners stop by themselves at the budget (checked between iterations); this only fires when one
    iteration overruns by the slack, e.g. a line search stuck in expensive evaluations. ``on_expire`` should
    write the best result so far; the process then exits with status 3.
    """

    def __init__(self, deadline: float, on_expire):
        self._deadline = deadline
        self._on_expire = on_expire
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._wait, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()

    def _wait(self):
        if self._done.wait(max(self._deadline - time.perf_counter(), 0.0)):
            return
        try:
            self._on_expire()
        finally:
            os._exit(3)


def slack(budget: float) -> float:
    """Seconds the watchdog grants past the budget for the iteration under way to end by itself."""
    return max(30.0, 0.25 * budget)


def run(args: argparse.Namespace, register, name: str) -> int:
    """A runner's main: read the meshes, register, write the result file (or the failure); the exit code.

    ``register(source, source_faces, target, target_faces, best, on_expire)`` returns the result fields;
    it may keep its best result so far in the dict ``best`` (``warped``, ``iterations``), which the watchdog's
    ``on_expire`` writes with status ``budget`` if the run overruns budget + slack.
    """
    best, source = {}, None

    def on_expire():
        killed = f"killed: no result within budget + {slack(args.budget):.0f} s"
        write_result(args.out, warped=best.get("warped", source), seconds=args.budget + slack(args.budget),
                     iterations=best.get("iterations", 0), peak_mb=float("nan"),
                     status="budget" if "warped" in best else killed)

    try:
        source, source_faces = load_mesh(args.source)
        target, target_faces = load_mesh(args.target)
        fields = register(source, source_faces, target, target_faces, best, on_expire)
    except Exception as exc:  # the benchmark shows the error in its table instead of crashing
        traceback.print_exc()
        write_failure(args.out, exc, source)
        return 1
    write_result(args.out, **fields)
    print(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in fields.items() if k != "warped"))
    return 0
