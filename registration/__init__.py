"""User-facing registration built on the lddmm_nets engine: images (physical space) and matched landmarks."""

from .data import load_circle_c, load_mni152, load_t1_slice, random_diffeomorphism
from .images import ImageRegistration, register_images
from .io import Image, load_displacement, load_image, save_displacement, save_image
from .landmarks import LandmarkRegistration, register_landmarks
from .transforms import DisplacementTransform

__all__ = ["register_images", "ImageRegistration", "DisplacementTransform", "load_image", "save_image", "Image",
           "save_displacement", "load_displacement", "load_circle_c", "load_t1_slice", "load_mni152",
           "random_diffeomorphism", "register_landmarks", "LandmarkRegistration"]
