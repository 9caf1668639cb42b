"""Peak resident memory of a block of code, measured from a clean mark (Linux; ``ru_maxrss`` elsewhere).

Shared by ``bench_images.py``, ``bench_shapes.py`` and the shape peers' runners (``shape_peers/peer_io.py``); the
standard library only, since the peers run in their own virtual environments.
"""

from __future__ import annotations

import ctypes
import gc
import resource

__all__ = ["memory_mark", "memory_peak_kb"]


def _status_kb(field: str):
    """``VmRSS`` / ``VmHWM`` of this process in kB (Linux), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_mark() -> int:
    """Start a peak-memory measurement; returns the resident size (kB) it is measured from.

    Free heap memory is returned to the system (glibc ``malloc_trim``) and the kernel's peak counter reset to the
    current size (``/proc/self/clear_refs``), then the peak is measured from there (a process otherwise keeps
    free but resident heap, and the same registration read 44-283 MB). Elsewhere, ``ru_maxrss``.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    rss = _status_kb("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_peak_kb() -> int:
    """Peak resident size (kB) since the last :func:`memory_mark`."""
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
