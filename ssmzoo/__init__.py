"""ssmzoo: long-sequence models under one layer contract."""

from . import layers, optim
from .layers import S4D, Mamba, NeuralMemory, SequenceLayer
from .models import MAC, MAG, MAL, LanguageModel

__version__ = "0.1.0"

__all__ = ["layers", "optim", "S4D", "Mamba", "NeuralMemory", "SequenceLayer", "LanguageModel", "MAC", "MAG", "MAL",
           "__version__"]
