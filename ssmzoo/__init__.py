"""ssmzoo: long-sequence models under one layer contract."""

from . import layers, models, optim
from .layers import (
    S4,
    S4D,
    ClosedLoopCompanionSSM,
    CompanionSSM,
    Differencing,
    MovingAverageResidual,
    SequenceLayer,
    ShiftSSM,
)
from .models import SpaceTime

__version__ = "0.1.0"

__all__ = [
    "layers",
    "models",
    "optim",
    "S4",
    "S4D",
    "ClosedLoopCompanionSSM",
    "CompanionSSM",
    "Differencing",
    "MovingAverageResidual",
    "SequenceLayer",
    "ShiftSSM",
    "SpaceTime",
    "__version__",
]
