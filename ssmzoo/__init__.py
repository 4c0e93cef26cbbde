"""ssmzoo: long-sequence models under one layer contract."""

from . import layers, optim
from .layers import S4D, Mamba, SequenceLayer

__version__ = "0.1.0"

__all__ = ["layers", "optim", "S4D", "Mamba", "SequenceLayer", "__version__"]
