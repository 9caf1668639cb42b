"""Data terms between shapes without correspondence (THEORY §8): cells of curves, surfaces and point clouds, and the
currents, varifold and measure distances between them, written once for the dense and KeOps backends."""

from .geometry import KINDS, Cells, cell_geometry
from .terms import DIRECTIONS, Currents, Measure, ShapeDistance, TargetDistance, Varifold, as_cells

__all__ = ["Cells", "cell_geometry", "KINDS", "ShapeDistance", "Currents", "Varifold", "Measure", "TargetDistance",
           "DIRECTIONS", "as_cells"]
