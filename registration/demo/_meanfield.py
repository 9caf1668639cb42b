"""Demo section: particles against the grid EPDiff solution (the mean-field limit)."""

from __future__ import annotations

__all__ = ["meanfield_sections"]


def meanfield_sections():
    return []
