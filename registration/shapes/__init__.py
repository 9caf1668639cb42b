"""Shape registration without correspondence: curves, surfaces and point clouds moved by geodesic shooting with
currents, varifold and measure data terms (THEORY §8), on the engine's kernels, integrators and optimiser."""

from .control import CONTROL_POINTS, control_points
from .measures import (chamfer, flipped_cells, hausdorff, normal_ratios, point_segment_distances,
                       point_triangle_distances, surface_distances, vertex_error)
from .pyramid import Pyramid, decimate, mean_edge_length
from .register import DATA_TERMS, make_data_term, register_shapes
from .result import LevelRecord, ShapeRegistration
from .shape import Shape, as_shape
from .transform import ShapeTransform

__all__ = ["Shape", "as_shape", "register_shapes", "ShapeRegistration", "LevelRecord", "ShapeTransform",
           "DATA_TERMS", "make_data_term", "CONTROL_POINTS", "control_points", "normal_ratios", "flipped_cells",
           "surface_distances", "chamfer", "hausdorff", "vertex_error", "point_triangle_distances",
           "point_segment_distances", "Pyramid", "decimate", "mean_edge_length"]
