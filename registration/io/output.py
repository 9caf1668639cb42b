"""Atomic outputs: a result directory is either complete or absent, never half-written.

``atomic_directory(path)`` yields a temporary directory beside ``path``; when the block succeeds its files are moved
into ``path`` (created if needed), ``report.json`` last, after any older ``report.json`` there was removed first (so
an interrupted replacement never pairs old and new files under a valid report). On an exception, Ctrl-C included,
the temporary directory is removed and ``path`` is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import tempfile

__all__ = ["atomic_directory", "atomic_file"]

#: the file written last: its presence marks a complete result
REPORT = "report.json"


@contextlib.contextmanager
def atomic_directory(path, *, prefix: str = ".lddmm-partial-"):
    """Context manager: write into the yielded temporary directory; on success its files land in ``path``.

    Yields
    ------
    str
        The temporary directory (same file system as ``path``, so the final moves are renames).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"--out: expected a directory, got the existing file {path}")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        os.makedirs(path, exist_ok=True)
        stale = os.path.join(path, REPORT)
        if os.path.exists(stale):  # an older result is being replaced: invalidate it first
            os.remove(stale)
        names = sorted(os.listdir(tmp), key=lambda n: n == REPORT)
        for name in names:
            target = os.path.join(path, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(tmp, name), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path, *, make_parent: bool = False):
    """Context manager: write the yielded temporary path (same directory, same extension, a unique name); on
    success it replaces ``path``; on failure it is removed. The parent directory must exist, unless
    ``make_parent``."""
    path = os.path.abspath(os.fspath(path))
    parent, base = os.path.split(path)
    if make_parent:
        os.makedirs(parent, exist_ok=True)
    elif not os.path.isdir(parent):
        raise FileNotFoundError(f"--out: the parent directory of {path} does not exist")
    # a unique name, not created here: the writer creates the file with the user's umask (mkstemp's would be 0600)
    tmp = os.path.join(parent, f".partial-{os.getpid()}-{uuid.uuid4().hex[:12]}-{base}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
