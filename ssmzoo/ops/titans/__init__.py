"""Titans' neural long-term memory: the per-token reference and the chunked form."""

from .chunked import chunk_update, gradient_factors, memory_forward, neural_memory_chunked
from .reference import neural_memory_recurrent

__all__ = [
    "chunk_update",
    "gradient_factors",
    "memory_forward",
    "neural_memory_chunked",
    "neural_memory_recurrent",
]
