"""Image registration by geodesic shooting (LDDMM), multi-resolution, in physical space.

Rooms: ``config`` (options and per-dimension defaults), ``preprocessing`` (intensities, the pair on the fixed grid),
``similarity`` (the similarity box), ``affine`` (pre-alignment), ``geodesic`` (a level's kernel and shooting),
``pipeline`` (``register_images``), ``result`` (``ImageRegistration``: transform, report, saving), ``picture`` (the
overview figure).
"""

from .config import RegistrationConfig
from .picture import overview_figure
from .pipeline import geodesic_transform, register_images
from .preprocessing import normalize_intensity
from .result import ImageRegistration, LevelReport

__all__ = ["register_images", "geodesic_transform", "ImageRegistration", "LevelReport", "RegistrationConfig", "normalize_intensity",
           "overview_figure"]
