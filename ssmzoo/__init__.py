"""ssmzoo: long-sequence models under one layer contract."""

from . import layers, optim
from .layers import S4D, Mamba, SequenceLayer
from .models import LanguageModel

__version__ = "0.1.0"

__all__ = ["layers", "optim", "S4D", "Mamba", "SequenceLayer", "LanguageModel", "__version__"]
