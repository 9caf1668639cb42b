"""User-facing registration built on the lddmm_nets engine: landmarks (and images, see ``registration.images``)."""

from .landmarks import LandmarkRegistration, register_landmarks

__all__ = ["register_landmarks", "LandmarkRegistration"]
