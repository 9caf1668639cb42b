"""Demo section: idea registration (a kernel warping classifier on two spirals) and a ResNetFlow's weight profile."""

from __future__ import annotations

__all__ = ["idea_sections"]


def idea_sections():
    return []
