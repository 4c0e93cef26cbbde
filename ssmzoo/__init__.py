"""ssmzoo: long-sequence models under one layer contract."""

from . import layers, models, modules, optim
from .layers import (
    S4,
    S4D,
    ClosedLoopCompanionSSM,
    CompanionSSM,
    Differencing,
    FullAttention,
    HSA,
    Mamba,
    Mamba2,
    MemoryAsContext,
    MemoryAsGate,
    MovingAverageResidual,
    NeuralMemory,
    Parallel,
    SequenceLayer,
    ShiftSSM,
    SWA,
)
from .models import MAC, MAG, MAL, LanguageModel, RAMba, SequenceModel, SpaceTime
from .ops.segments import Segments

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
    "FullAttention",
    "HSA",
    "Mamba",
    "Mamba2",
    "MemoryAsContext",
    "MemoryAsGate",
    "MovingAverageResidual",
    "NeuralMemory",
    "Parallel",
    "SequenceLayer",
    "ShiftSSM",
    "SWA",
    "LanguageModel",
    "MAC",
    "MAG",
    "MAL",
    "RAMba",
    "Segments",
    "SequenceModel",
    "SpaceTime",
    "__version__",
]
