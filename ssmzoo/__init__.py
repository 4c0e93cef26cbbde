"""ssmzoo: long-sequence models under one layer contract."""

from . import layers, models, modules, optim
from .layers import (
    S4,
    S4D,
    ClosedLoopCompanionSSM,
    CompanionSSM,
    Differencing,
    Mamba,
    Mamba2,
    MovingAverageResidual,
    NeuralMemory,
    SequenceLayer,
    ShiftSSM,
)
from .models import MAC, MAG, MAL, LanguageModel, SequenceModel, SpaceTime

__version__ = "0.1.0"

__all__ = [
    "layers",
    "models",
    "modules",
    "optim",
    "S4",
    "S4D",
    "ClosedLoopCompanionSSM",
    "CompanionSSM",
    "Differencing",
    "Mamba",
    "Mamba2",
    "MovingAverageResidual",
    "NeuralMemory",
    "SequenceLayer",
    "ShiftSSM",
    "LanguageModel",
    "MAC",
    "MAG",
    "MAL",
    "SequenceModel",
    "SpaceTime",
    "__version__",
]
