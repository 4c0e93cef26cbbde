"""ssmzoo: long-sequence models under one layer contract.

The names below are imported on first use (PEP 562), so the ``ssmzoo`` command can answer ``--help`` without
loading torch; ``from ssmzoo import S4D`` and ``ssmzoo.layers.available()`` work as with eager imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

_SUBMODULES = ("layers", "models", "modules", "optim")
_FROM_LAYERS = ("S4", "S4D", "ClosedLoopCompanionSSM", "CompanionSSM", "Differencing", "FullAttention", "HSA",
                "Mamba", "Mamba2", "Mamba3", "MemoryAsContext", "MemoryAsGate", "MovingAverageResidual", "NeuralMemory",
                "Parallel", "SequenceLayer", "ShiftSSM", "SWA", "S5", "LRU")
_FROM_MODELS = ("LanguageModel", "MAC", "MAG", "MAL", "RAMba", "SequenceModel", "SpaceTime")
_FROM_OPS = {"Segments": ".ops.segments"}

__all__ = [*_SUBMODULES, *_FROM_LAYERS, *_FROM_MODELS, *_FROM_OPS, "__version__"]

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ below imports on first use
    from . import layers, models, modules, optim  # noqa: F401
    from .layers import (HSA, S4, S4D, SWA, ClosedLoopCompanionSSM, CompanionSSM, Differencing,  # noqa: F401
                         FullAttention, Mamba, Mamba2, Mamba3, MemoryAsContext, MemoryAsGate, MovingAverageResidual,
                         NeuralMemory, Parallel,
                         SequenceLayer, ShiftSSM, S5, LRU)
    from .models import MAC, MAG, MAL, LanguageModel, RAMba, SequenceModel, SpaceTime  # noqa: F401
    from .ops.segments import Segments  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _FROM_LAYERS:
        value = getattr(importlib.import_module(".layers", __name__), name)
    elif name in _FROM_MODELS:
        value = getattr(importlib.import_module(".models", __name__), name)
    elif name in _FROM_OPS:
        value = getattr(importlib.import_module(_FROM_OPS[name], __name__), name)
    else:
        raise AttributeError(f"module 'ssmzoo' has no attribute {name!r}")
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
