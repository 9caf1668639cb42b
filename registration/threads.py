"""How many CPU threads a registration uses: a policy that survives a loaded machine.

Torch's default is one thread per core. When another process holds a core, torch's threads wait for each other at
every parallel region and a registration can run several times slower than on one thread (measured here: dipy's
T1 slice 83 s with two threads against 11.5 s with one, on a 2-core machine with one core busy). ``"auto"`` therefore
counts the cores that are actually free: it samples the machine's CPU time over a short window (``/proc/stat``),
subtracts this process's own share, and uses the cores the others leave idle (at least one, at most the cores this
process may run on). Elsewhere than on Linux it falls back to one thread.

Measured by ``scripts/bench_images.py --suite --threads 1,2,default`` on four cases (circle, a T1 slice, an MNI
coronal slice, MNI 2 mm) on the 2-core machine at a load average of 3.6-4.8 (other jobs running): two threads took
9-48x dipy SyN's time (MNI 2 mm 94.6 s against 8.3 s with one thread), ``"auto"`` 0.74-1.46x (8.9 s), one thread
0.67-1.22x (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import contextlib
import os
import time

__all__ = ["THREAD_POLICIES", "available_cores", "free_cores", "resolve_threads", "torch_threads"]

THREAD_POLICIES = ("auto", "all")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _machine_ticks() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def _own_ticks() -> int | None:
    try:
        with open("/proc/self/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])  # utime + stime of this process
    except (OSError, ValueError, IndexError):
        return None


def free_cores(window: float = 0.1) -> float | None:
    """Cores left idle by other processes over the last ``window`` seconds, or None where it cannot be measured."""
    a, own_a = _machine_ticks(), _own_ticks()
    if a is None or own_a is None:
        return None
    time.sleep(window)
    b, own_b = _machine_ticks(), _own_ticks()
    total, idle = b[0] - a[0], b[1] - a[1]
    if total <= 0:
        return None
    ncpu = os.cpu_count() or 1
    busy_others = (total - idle - (own_b - own_a)) / total * ncpu
    return max(0.0, min(available_cores(), ncpu - busy_others))


def resolve_threads(threads) -> int:
    """The number of torch threads for ``threads``: an integer as given, ``"all"`` the available cores, ``"auto"`` the
    free cores (``free_cores``, rounded, at least 1; 1 where they cannot be measured).

    Raises
    ------
    ValueError
        Anything else (the message names ``threads`` and the valid values).
    """
    if isinstance(threads, str):
        if threads == "all":
            return available_cores()
        if threads == "auto":
            free = free_cores()
            return 1 if free is None else max(1, min(available_cores(), int(free + 0.5)))
    elif isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        return threads
    raise ValueError(f"threads: expected a positive integer, 'auto' or 'all', got {threads!r}")


@contextlib.contextmanager
def torch_threads(threads):
    """Run a block with ``resolve_threads(threads)`` torch threads, restored afterwards (None: torch's setting)."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
