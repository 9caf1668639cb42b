"""Reading and writing in world space: images (NIfTI, ITK formats, ``.npy``) and, beside them, meshes."""

from .images import (Image, load_displacement, load_image, resample_image, save_displacement, save_image,
                     sitk_geometry)

__all__ = ["Image", "load_image", "save_image", "save_displacement", "load_displacement", "resample_image",
           "sitk_geometry"]
