"""weightsurgeon: measure, transplant and destroy modules of LLM checkpoints, streaming.

Light on purpose: importing the package imports neither numba, torch nor matplotlib.
"""
from weightsurgeon._version import __version__

__all__ = ["__version__"]
