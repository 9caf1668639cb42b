"""The functions that run on the workers: plain functions of small arguments (a spec, a handle, options).

Every task reads its subject itself (from its path, or the cluster's copy of an in-memory subject), sets the
torch threads it was given, writes its large fields into its own folder atomically (a temporary folder renamed
into place, so a task killed half-way leaves nothing that looks finished and a retry simply rewrites it) and
returns small results. A subject that fails for a data reason (unreadable, wrong dimension, constant, no overlap:
the ``ValueError`` family the readers and ``register_images`` raise) comes back as an ``Outcome`` with ``error``
set instead of raising, so that the cluster does not retry what cannot succeed; anything else raises and is
retried (``retries=``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from ..io import output
from ..threads import torch_threads
from ._kinds import MEAN_FILE

__all__ = ["Outcome", "DATA_ERRORS", "probe_task", "prepare_task", "register_task", "reduce_task",
           "atomic_directory", "atomic_file", "available_cores"]

#: exceptions that mean "this subject's data cannot be used" (reported by name, never retried)
DATA_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               EOFError)


@dataclass
class Outcome:
    """What a subject task returns: a momentum and small summaries (large fields are in ``folder``).

    Attributes
    ----------
    name : str
        The subject.
    error : str or None
        ``"ValueError: ..."`` when the subject failed for a data reason; then the other fields are empty.
    momentum : numpy.ndarray or None
        The subject's initial momentum on the template (images: ``(*shape, d)`` float32).
    summary : dict
        Scalars (similarity, energy, NDV, seconds, stop reason, ...).
    folder : str or None
        Where the task wrote its fields.
    seconds : float
        Wall time of the task.
    host : str
        Where it ran.
    """

    name: str
    error: str | None = None
    momentum: np.ndarray | None = None
    summary: dict = field(default_factory=dict)
    folder: str | None = None
    seconds: float = 0.0
    host: str = ""


def available_cores() -> int:
    """Cores this process may use (the CPU affinity mask where the OS has one, e.g. under SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _resolve_threads(threads) -> int | None:
    """``threads`` is an int, ``None`` (leave torch alone) or ``{worker address: int}`` with a ``"*"`` entry for
    workers that joined after it was made (this worker looks itself up)."""
    if not isinstance(threads, dict):
        return threads
    try:
        from distributed import get_worker

        return threads.get(get_worker().address, threads.get("*"))
    except (ImportError, ValueError):
        return threads.get("*")


#: glibc ``mallopt`` parameters (malloc.h) and the values a task runs with where the environment froze glibc's
#: thresholds. Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-
#: environ``), which also fixes the mmap threshold at 128 KiB: every array of a registration was then mapped and
#: faulted in afresh, and a 4 mm MNI152 registration took 5.4 s of CPU on a worker against 2.7 s in a plain process
#: (2.7-3.0 s on the worker with these values). After the task ``malloc_trim(0)`` returns the free memory to the
#: system, which is what Dask's setting is for. The default cluster's workers start without the variable
#: (``_executor.WORKER_ENV_DROP``, faster still); this repairs clusters started elsewhere.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TASK_MALLOC = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 256 << 20}
FROZEN_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _glibc():
    """The process's C library when it is glibc and the environment fixed its malloc thresholds, else None."""
    if not any(name in os.environ for name in FROZEN_MALLOC_ENV):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # glibc only (AttributeError elsewhere)
        return libc
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None


@contextlib.contextmanager
def _task_resources(threads):
    """Run a task with its torch threads and, under frozen malloc thresholds, ``TASK_MALLOC``."""
    n = _resolve_threads(threads)
    libc = _glibc()
    if libc is not None:
        for param, value in TASK_MALLOC.items():
            libc.mallopt(param, value)
    try:
        with torch_threads(None if n is None else int(n)):
            yield
    finally:
        if libc is not None:
            libc.malloc_trim(0)


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (a previous one is removed)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=".stale-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_file(path: str):
    """``registration.io.output.atomic_file`` creating the parent directory: yield a temporary file name beside
    ``path`` (same suffix); on success it is renamed to ``path``."""
    return output.atomic_file(path, make_parent=True)


def _host() -> str:
    return socket.gethostname()


def _failed(name: str, exc: BaseException, t0: float) -> Outcome:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Outcome(name, error=f"{type(exc).__name__}: {message}", seconds=time.perf_counter() - t0, host=_host())


def probe_task(kind, spec, folder: str, threads) -> Outcome:
    """Read a subject and describe it (``kind.probe``: e.g. dimension, grid) without registering it.

    Every subject task takes ``(kind, spec, folder, threads, ...)``: the data kind, the subject's spec (where to
    read it; no voxels), the stage's folder and the torch threads."""
    t0 = time.perf_counter()
    try:
        info = kind.probe(spec.load(kind))
    except DATA_ERRORS as exc:
        return _failed(spec.name, exc, t0)
    return Outcome(spec.name, summary=info, seconds=time.perf_counter() - t0, host=_host())


def prepare_task(kind, spec, folder: str, threads, reference, options: dict, mode: str) -> Outcome:
    """One step of the initial template (``kind.prepare``): e.g. the subject on the reference grid, or affinely
    aligned to the plain mean; its fields go to ``folder/<name>``."""
    t0 = time.perf_counter()
    target = os.path.join(folder, spec.name)
    try:
        with _task_resources(threads), atomic_directory(target) as tmp:
            summary = kind.prepare(reference, spec.load(kind), options, tmp, mode)
    except DATA_ERRORS as exc:
        return _failed(spec.name, exc, t0)
    return Outcome(spec.name, summary=summary, folder=target, seconds=time.perf_counter() - t0, host=_host())


def register_task(kind, spec, folder: str, threads, template, options: dict, write_transform: bool,
                  previous: str | None = None) -> Outcome:
    """Register the subject onto the template (``kind.register``); fields go to ``folder/<name>``, the momentum
    and a summary come back. ``previous``: the previous round's subjects folder, whose ``<name>`` folder the kind
    may start from (a warm start), or None."""
    t0 = time.perf_counter()
    target = os.path.join(folder, spec.name)
    start = os.path.join(previous, spec.name) if previous is not None else None
    try:
        with _task_resources(threads), atomic_directory(target) as tmp:
            momentum, summary = kind.register(template, spec.load(kind), options, tmp, write_transform, start)
    except DATA_ERRORS as exc:
        return _failed(spec.name, exc, t0)
    summary["seconds"] = time.perf_counter() - t0
    return Outcome(spec.name, momentum=momentum, summary=summary, folder=target, seconds=summary["seconds"],
                   host=_host())


def reduce_task(kind, template, folders: list, momenta_path: str, rows, options: dict, threads, update: bool,
                unbias: bool):
    """The per-round reduction (one task). The mean momentum of ``rows`` of the round's momenta array (streamed
    in subject order, so the result does not depend on which task finished first); with ``update``, the new
    template (``kind.update`` from the subjects' fields, read in subject order), and with ``unbias`` that template
    shot along the mean momentum (``kind.unbias``). The momenta are those of the geodesics from the template to
    the subjects, so the centre of the population lies along their mean (THEORY §9's "minus the mean" is the same
    step written with the registrations' subject -> template momenta).

    Returns
    -------
    template, stats : the new template (``None`` without ``update``) and a dict of scalars (``mean_momentum_norm``:
        RMS over the grid of the mean momentum; ``mean_momentum_ratio``: that over the mean of the subjects' RMS
        momenta, 0 for an unbiased template and 1 when every subject has the same momentum; and what
        ``kind.unbias`` reports, e.g. how far the template moved)
    """
    with _task_resources(threads):
        momenta = np.load(momenta_path, mmap_mode="r")
        mean, norms = None, []
        for i in rows:  # one momentum in memory at a time
            m = np.asarray(momenta[i], dtype=np.float64)
            mean = m.copy() if mean is None else mean + m
            norms.append(float(np.sqrt(np.mean(m * m))))
        mean /= len(rows)
        rms = float(np.sqrt(np.mean(mean * mean)))
        stats = {"mean_momentum_norm": rms, "mean_momentum_ratio": rms / max(float(np.mean(norms)), 1e-30)}
        new = kind.update(template, folders, options) if update else None
        # the shot along the mean momentum measures the bias (how far the template sits from the population's
        # centre, in the data's units) every round, and moves the new template there in an unbiasing round
        t_shot = time.perf_counter()
        shifted, bias = kind.unbias(new if update else template, mean.astype(np.float32), options)
        stats.update(bias, shot_seconds=time.perf_counter() - t_shot)
        if update and unbias:
            new = shifted
            np.save(os.path.join(os.path.dirname(momenta_path), MEAN_FILE), mean.astype(np.float32))
    return new, stats
