"""Sequence layers under one contract (see base.py); importing this registers every layer."""

from . import shared_memories
from .base import (
    MemoryReader,
    SequenceLayer,
    SharedMemory,
    available,
    build,
    get,
    input_checks,
    input_checks_enabled,
    register,
    set_input_checks,
    tag_param,
)
from ..ops.segments import Segments
from .attention import AttentionState, FullAttention
from .hsa import HSA
from .lru import LRU
from .mamba import Mamba
from .mamba2 import Mamba2
from .mamba3 import Mamba3
from .memory_as_context import MemoryAsContext
from .memory_as_gate import MemoryAsGate
from .parallel import Parallel
from .s4 import S4
from .s4d import S4D
from .s5 import S5
from .swa import SWA
from .spacetime import (
    ClosedLoopCompanionSSM,
    CompanionSSM,
    Differencing,
    MovingAverageResidual,
    ShiftSSM,
)
from .titans import NeuralMemory

__all__ = [
    "MemoryReader",
    "SequenceLayer",
    "SharedMemory",
    "shared_memories",
    "Segments",
    "available",
    "build",
    "get",
    "input_checks",
    "input_checks_enabled",
    "register",
    "set_input_checks",
    "tag_param",
    "S4",
    "S4D",
    "S5",
    "LRU",
    "ClosedLoopCompanionSSM",
    "CompanionSSM",
    "Differencing",
    "MovingAverageResidual",
    "ShiftSSM",
    "NeuralMemory",
    "AttentionState",
    "FullAttention",
    "HSA",
    "Mamba",
    "SWA",
    "Mamba2",
    "Mamba3",
    "MemoryAsContext",
    "MemoryAsGate",
    "Parallel",
]
