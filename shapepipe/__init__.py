"""ShapePipe-py: a weak-lensing shape-measurement pipeline for imaging surveys."""

__version__ = "0.1.0"
