"""Calibration and evaluation images: folders, preprocessing, the decoded-image cache and quantizer readers.

Needs numpy and Pillow only, so the device side (a Jetson building engines) can use it without torch.
"""

from calibration.images import ImageSet, Preprocess, list_images, load, overlap

__all__ = ["ImageSet", "Preprocess", "list_images", "load", "overlap"]
