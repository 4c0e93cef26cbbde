"""Titans' memory as a gate (Behrouz, Zhong, Mirrokni, "Titans: Learning to Memorize at Test Time", arXiv
2501.00663, section 4.2) as one sequence layer: sliding-window attention and the neural memory read the same
input side by side, and the memory's branch gates the attention's:

    y = RMSNorm_a(SWA(RMSNorm(x))) ⊙ σ(RMSNorm_m(M(RMSNorm'(x))))

Each branch normalises its own input, so a language model holds this layer in a block without a pre-norm
(``{"layer": "memory_as_gate", "norm": False}``; ``ssmzoo.models.MAG``). The memory is read before it is
updated with the current chunk, the attention sees the last ``window`` tokens and ``persistent_tokens`` learned
ones: nothing looks ahead. State: (the memory's state, the attention's state).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..modules.checks import check_float, check_int
from ..modules.rmsnorm import RMSNorm
from ..ops.segments import Segments
from .base import SequenceLayer, register
from .swa import SWA, SWAState
from .titans import NeuralMemory, NeuralMemoryState


class MemoryAsGateState(NamedTuple):
    memory: NeuralMemoryState
    attention: SWAState


@register("memory_as_gate")
class MemoryAsGate(SequenceLayer):
    """Titans MAG's mixer. Input and output (batch, length, d_model).

    Args:
        d_model: model width.
        heads: attention heads.
        window: the attention's span (a query sees itself and the window − 1 tokens before it).
        persistent_tokens: learned tokens every query attends to (eq. 19).
        memory_heads, memory_depth, memory_chunk: the neural memory's heads, MLP depth and chunk length.
        norm_eps: epsilon of the four RMSNorms.
    """

    segments_fast_path = True  # both branches honour segments in one pass each
    compiles_with_state = False  # a stream may resume inside a segment (a branch on the state's position)

    def __init__(self, d_model: int, heads: int = 4, window: int = 16, persistent_tokens: int = 4,
                 memory_heads: int = 2, memory_depth: int = 2, memory_chunk: int = 8, norm_eps: float = 1e-6) -> None:
        super().__init__(d_model, causal=True)
        for arg, value in (("heads", heads), ("window", window), ("memory_heads", memory_heads),
                           ("memory_depth", memory_depth), ("memory_chunk", memory_chunk)):
            check_int("MemoryAsGate", arg, value)
        check_int("MemoryAsGate", "persistent_tokens", persistent_tokens, minimum=0)
        check_float("MemoryAsGate", "norm_eps", norm_eps, above=0.0)
        self.memory = NeuralMemory(d_model, heads=memory_heads, memory_depth=memory_depth, chunk_size=memory_chunk)
        self.attn = SWA(d_model, heads=heads, window=window, persistent_tokens=persistent_tokens)
        self.norm_attn, self.norm_mem = RMSNorm(d_model, eps=norm_eps), RMSNorm(d_model, eps=norm_eps)
        self.gate_norm_attn, self.gate_norm_mem = RMSNorm(d_model, eps=norm_eps), RMSNorm(d_model, eps=norm_eps)

    @property
    def out_proj(self):
        """The attention's output projection, under the name models rescale at init."""
        return self.attn.out_proj

    def _gate(self, y: Tensor, m: Tensor) -> Tensor:
        return self.gate_norm_attn(y) * torch.sigmoid(self.gate_norm_mem(m))

    def _branches(self, x: Tensor, state: MemoryAsGateState | None, return_state: bool,
                  segments: Segments | None) -> tuple[Tensor, MemoryAsGateState | None]:
        s_mem, s_attn = (None, None) if state is None else state
        y, s_attn = self.attn(self.norm_attn(x), state=s_attn, return_state=True, segments=segments)
        m, s_mem = self.memory(self.norm_mem(x), state=s_mem, return_state=True, segments=segments)
        return self._gate(y, m), (MemoryAsGateState(s_mem, s_attn) if return_state else None)

    def _forward(self, x: Tensor, state: MemoryAsGateState | None, lengths: Tensor | None,
                 return_state: bool) -> tuple[Tensor, MemoryAsGateState | None]:
        # Both branches are causal: right padding never reaches a real token.
        return self._branches(x, state, return_state, None)

    def _forward_segments(self, x: Tensor, state: MemoryAsGateState | None, segments: Segments,
                          return_state: bool) -> tuple[Tensor, MemoryAsGateState | None]:
        return self._branches(x, state, return_state, segments)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MemoryAsGateState:
        return MemoryAsGateState(self.memory.init_state(batch_size, device, dtype),
                                 self.attn.init_state(batch_size, device, dtype))

    def _step(self, x_t: Tensor, state: MemoryAsGateState) -> tuple[Tensor, MemoryAsGateState]:
        y, s_attn = self.attn.step(self.norm_attn(x_t), state.attention, check_state=False)
        m, s_mem = self.memory.step(self.norm_mem(x_t), state.memory, check_state=False)
        return self._gate(y, m), MemoryAsGateState(s_mem, s_attn)
