"""User-facing registration built on the lddmm_nets engine: images (physical space) and matched landmarks."""

from .images import ImageRegistration, register_images
from .io import Image, load_image, save_image
from .landmarks import LandmarkRegistration, register_landmarks

__all__ = ["register_images", "ImageRegistration", "load_image", "save_image", "Image", "register_landmarks",
           "LandmarkRegistration"]
