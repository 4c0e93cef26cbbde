"""ssmzoo: long-sequence models under one layer contract."""

from . import layers, models, optim
from .layers import S4, S4D, SequenceLayer
from .models import SequenceModel

__version__ = "0.1.0"

__all__ = ["layers", "models", "optim", "S4", "S4D", "SequenceLayer", "SequenceModel", "__version__"]
