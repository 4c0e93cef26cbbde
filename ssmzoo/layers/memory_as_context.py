"""Titans' memory as context (Behrouz, Zhong, Mirrokni, "Titans: Learning to Memorize at Test Time", arXiv
2501.00663, section 4.1) as one sequence layer. The sequence is cut into segments of ``segment_len`` tokens;
a segment's attention sees [persistent tokens ‖ memory read-outs h ‖ segment], where h_t = M*_{t−1}(q_t) is read
from the neural memory as it was before the segment (the memory's chunk is the segment), and the memory then
writes the segment.

Where we differ from the paper, kept deliberately simple: the memory writes the segment's input tokens (the paper
writes the attention output and gates it with a read from the updated memory, which inside a segment would let a
token see later ones in a causal model); rotary positions inside each segment.

State (:class:`MemoryAsContextState`): the memory's, and the keys and values of the current segment's tokens and
read-outs (fixed-size buffers of 2 · segment_len slots, the first ``2 · (position mod segment_len)`` in use), so
``step`` costs the same at every position.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..modules.attention import Attention
from ..modules.checks import check_int
from .base import SequenceLayer, register
from .titans import NeuralMemory, NeuralMemoryState


class MemoryAsContextState(NamedTuple):
    """memory: the neural memory's state; keys, values (batch, kv_heads, 2 · segment_len, head_dim): the current
    segment's read-out and token keys, interleaved (h_0, x_0, h_1, x_1, ...), rotated at their positions in the
    segment; position (batch,) int64: the tokens seen."""

    memory: NeuralMemoryState
    keys: Tensor
    values: Tensor
    position: Tensor


@register("memory_as_context")
class MemoryAsContext(SequenceLayer):
    """Titans MAC's mixer. Input and output (batch, length, d_model).

    Args:
        d_model: model width.
        heads: attention heads.
        segment_len: the attention's segment and the memory's chunk.
        persistent_tokens: learned tokens every query attends to (eq. 19).
        memory_heads, memory_depth: the neural memory's heads and MLP depth.
    """

    compiles_with_state = False  # a stream may resume inside a segment (a branch on the state's position)

    def __init__(self, d_model: int, heads: int = 4, segment_len: int = 16, persistent_tokens: int = 4,
                 memory_heads: int = 2, memory_depth: int = 2) -> None:
        super().__init__(d_model, causal=True)
        for arg, value in (("heads", heads), ("segment_len", segment_len), ("memory_heads", memory_heads),
                           ("memory_depth", memory_depth)):
            check_int("MemoryAsContext", arg, value)
        check_int("MemoryAsContext", "persistent_tokens", persistent_tokens, minimum=0)
        if d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"MemoryAsContext: heads={heads} must split d_model={d_model} into heads of even width")
        self.segment_len = segment_len
        self.memory = NeuralMemory(d_model, heads=memory_heads, memory_depth=memory_depth, chunk_size=segment_len)
        # Within a segment, every query sees the segment's earlier tokens and read-outs: causal, no window.
        self.attn = Attention(d_model, heads, window=None, persistent_tokens=persistent_tokens)

    @property
    def out_proj(self):
        """The attention's output projection, under the name models rescale at init."""
        return self.attn.out

    # -- whole sequences ------------------------------------------------------------------------
    def _forward(self, x: Tensor, state: MemoryAsContextState | None, lengths: Tensor | None,
                 return_state: bool) -> tuple[Tensor, MemoryAsContextState | None]:
        # Causal within each segment and across them (the memory is read before its chunk): right padding never
        # reaches a real token.
        if state is not None and bool((state.position % self.segment_len != 0).any()):
            return self._forward_by_steps(x, state)  # a stream resumed inside a segment
        h, memory = self.memory(x, state=None if state is None else state.memory, return_state=True)
        batch, length = x.shape[:2]
        s = self.segment_len
        pad = (-length) % s
        xs = rearrange(F.pad(x, (0, 0, 0, pad)), "b (n s) d -> (b n) s d", s=s)
        hs = rearrange(F.pad(h, (0, 0, 0, pad)), "b (n s) d -> (b n) s d", s=s)
        # h_i is read with token i's query, so token j may see h_i only for i <= j, like x_i: giving h the same
        # (relative, within-segment) positions as x makes the causal rule say exactly that.
        local = torch.arange(s, device=x.device)
        y = self.attn(xs, local, context=hs, context_positions=local)
        y = rearrange(y, "(b n) s d -> b (n s) d", b=batch)[:, :length]
        if not return_state:
            return y, None
        start = length - length % s  # the unfinished last segment's tokens fill the cache
        keys, values = self._segment_cache(x[:, start:], h[:, start:])
        position = (torch.zeros(batch, dtype=torch.long, device=x.device) if state is None else state.position) + length
        return y, MemoryAsContextState(memory, keys, values, position)

    def _segment_cache(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """The cache after the first r < segment_len tokens x (batch, r, d_model) of a segment and their read-outs h."""
        r = x.shape[1]
        positions = torch.arange(r, device=x.device)
        _, k, v = self.attn._project(x)
        _, hk, hv = self.attn._project(h)
        k, hk = self.attn._rotate(k, positions), self.attn._rotate(hk, positions)
        keys = rearrange(torch.stack([hk, k], 3), "b g r two e -> b g (r two) e")
        values = rearrange(torch.stack([hv, v], 3), "b g r two e -> b g (r two) e")
        slots = 2 * (self.segment_len - r)
        return F.pad(keys, (0, 0, 0, slots)), F.pad(values, (0, 0, 0, slots))

    def _forward_by_steps(self, x: Tensor, state: MemoryAsContextState) -> tuple[Tensor, MemoryAsContextState]:
        ys = []
        for t in range(x.shape[1]):
            y_t, state = self._step(x[:, t], state)
            ys.append(y_t)
        return torch.stack(ys, 1), state

    # -- one token at a time --------------------------------------------------------------------
    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MemoryAsContextState:
        a = self.attn
        empty = torch.zeros(batch_size, a.kv_heads, 2 * self.segment_len, a.head_dim, device=device, dtype=dtype)
        return MemoryAsContextState(self.memory.init_state(batch_size, device, dtype), empty, empty.clone(),
                                    torch.zeros(batch_size, dtype=torch.long, device=device))

    def _step(self, x_t: Tensor, state: MemoryAsContextState) -> tuple[Tensor, MemoryAsContextState]:
        a, s = self.attn, self.segment_len
        h_t, memory = self.memory.step(x_t, state.memory, check_state=False)
        local = state.position % s  # (batch,): the token's position in its segment; 0 starts an empty cache
        q, k, v = a._project(x_t[:, None])
        _, hk, hv = a._project(h_t[:, None])
        where = local[:, None, None, None]
        q, k, hk = (a._rotate(t, where[:, :, :, 0]) for t in (q, k, hk))
        slot = torch.arange(2 * s, device=x_t.device)[None, None, :, None]
        keys = torch.where(slot == 2 * where, hk, torch.where(slot == 2 * where + 1, k, state.keys.to(k.dtype)))
        values = torch.where(slot == 2 * where, hv, torch.where(slot == 2 * where + 1, v, state.values.to(v.dtype)))
        allowed = slot[:, :, :, 0] <= 2 * local[:, None, None] + 1  # (batch, 1, 2s): this segment's slots so far
        y = a._attend(q, keys, values, allowed[:, :, None, :])
        # The cache holds only the unfinished segment (zeros elsewhere, as forward leaves it): empty once it ends.
        keep = (allowed & ((local + 1) % s != 0)[:, None, None])[:, :, :, None]
        return y[:, 0], MemoryAsContextState(memory, keys * keep, values * keep, state.position + 1)
