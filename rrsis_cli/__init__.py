"""rrsis: referring remote sensing image segmentation from the command line."""

__version__ = "0.1.0"
