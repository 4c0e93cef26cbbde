"""Titans' neural long-term memory: the per-token reference and the chunked form."""

from .chunked import chunk_update, memory_forward, neural_memory_chunked, weighted_memory_gradients
from .reference import neural_memory_recurrent

__all__ = [
    "chunk_update",
    "memory_forward",
    "neural_memory_chunked",
    "neural_memory_recurrent",
    "weighted_memory_gradients",
]
