"""textseg: open-vocabulary and referring segmentation learned from image-caption pairs."""

__version__ = "0.1.0"
