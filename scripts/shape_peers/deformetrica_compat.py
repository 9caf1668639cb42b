"""The small shim that lets Deformetrica 4.3.0 (written for torch 1.6, scipy 1.5, pykeops 1.4) run on torch 2.13.

Deformetrica itself is installed unmodified (``setup_deformetrica.sh``); :func:`load` imports it after the
patches below, each one line of behaviour, each listed with its reason in ``scripts/shape_peers/README.md``:

1. ``deformetrica.gui`` is replaced by an empty module before the import. ``deformetrica/__init__.py`` imports
   its Qt GUI (``from . import gui``), whose ``gui_window.py`` imports PyQt5 and ``pkg_resources`` (gone from
   setuptools >= 81); the GUI is never used here.
2. ``deformetrica.core.estimators.scipy_optimize.minimize`` is wrapped so the scipy result's ``message`` is
   bytes again: ``ScipyOptimize.update`` calls ``result.message.decode("utf-8")``, and scipy >= 1.5 returns a
   str there, so every run would end in ``AttributeError`` after the optimisation. Nothing else changes: same
   function, same arguments, same result; the wrapper also keeps the last result (``last_result``) so the
   runner can report scipy's iteration and evaluation counts.

pykeops 2.3 still accepts the 1.4 calls Deformetrica makes (``Genred(..., cuda_type=...)``, ``device_id=``), so
its KeOps kernels run unpatched.
"""

from __future__ import annotations

import sys
import types


def _bytes_message(minimize):
    def wrapped(*args, **kwargs):
        result = minimize(*args, **kwargs)
        if isinstance(result.message, str):
            result.message = result.message.encode("utf-8")
        wrapped.last_result = result  # read by the runner: iterations and evaluations (nit, nfev)
        return result

    wrapped.__wrapped__ = minimize
    return wrapped


def load():
    """Import and return the ``deformetrica`` package with the two patches applied (idempotent)."""
    if "deformetrica" not in sys.modules:
        sys.modules.setdefault("deformetrica.gui", types.ModuleType("deformetrica.gui"))  # patch 1
    import deformetrica
    from deformetrica.core.estimators import scipy_optimize

    if not hasattr(scipy_optimize.minimize, "__wrapped__"):
        scipy_optimize.minimize = _bytes_message(scipy_optimize.minimize)  # patch 2
    return deformetrica
