"""The shared memories a language model's pattern may hold, and the blocks that read them, by name:
``{"memory": "chunks", "args": {...}}`` and ``{"read": "hsa", "args": {...}}`` (RAMba's chunk memory and
its HSA reads; ``ssmzoo.models.lm``)."""

from __future__ import annotations

from typing import Any

from .base import MemoryReader, SharedMemory
from .hsa import HSARead, SharedChunkMemory, check_hsa_args

MEMORIES: dict[str, type[SharedMemory]] = {"chunks": SharedChunkMemory}
READERS = ("hsa",)

# The memory arguments a read takes over (a read must agree with the memory it reads).
_INHERITED = ("head_dim", "chunk_size", "qk_norm", "norm_eps", "kv_heads", "retrieval_heads", "retrieval_dim")


def build_memory(name: str, d_model: int, **args: Any) -> SharedMemory:
    if name not in MEMORIES:
        raise ValueError(f"unknown shared memory {name!r}; available: {', '.join(MEMORIES)}")
    return MEMORIES[name](d_model, **args)


def build_reader(name: str, memory_args: dict[str, Any], d_model: int, heads: int | None = None, top_k: int = 8,
                 combine: str = "stick_breaking", hsa_backend: str | None = None) -> MemoryReader:
    """An HSA read of the chunk memory built with ``memory_args``: its own queries (``heads``, by default the
    memory's) and output projection, the memory's chunk size, head width and norms."""
    if name not in READERS:
        raise ValueError(f"unknown memory read {name!r}; available: {', '.join(READERS)}")
    m = {k: memory_args[k] for k in _INHERITED if k in memory_args}
    heads = memory_args.get("heads", 4) if heads is None else heads
    args = check_hsa_args("HSARead", d_model, heads, m.get("kv_heads", 1), m.get("head_dim"), m.get("chunk_size", 64),
                          top_k, combine, m.get("retrieval_heads"), m.get("retrieval_dim"), 0, None, 1, False,
                          m.get("qk_norm", False), None, hsa_backend, m.get("norm_eps", 1e-5))
    return HSARead(d_model, heads, args["head_dim"], m.get("chunk_size", 64), top_k, combine, m.get("qk_norm", False),
                   hsa_backend, m.get("norm_eps", 1e-5))
