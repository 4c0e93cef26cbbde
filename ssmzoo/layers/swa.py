"""Sliding-window attention (SWA): causal softmax attention over the last ``window`` tokens, the local
context of HSA-UltraLong (Hu et al. 2025, "Every Token Counts", arXiv 2511.23319) and of the authors' SWA+HSA
models, built on :class:`ssmzoo.modules.Attention` (grouped KV heads, rotary positions).

    query at p sees key at s  iff  p − window < s <= p

Decoding keeps a fixed-size cache of the last window − 1 keys and values, so memory per token is
constant whatever the length.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.attention import Attention, attention_mask
from ..modules.checks import check_bool, check_float, check_int
from ..ops.segments import Segments
from .base import SequenceLayer, register


class SWAState(NamedTuple):
    """keys, values (batch, kv_heads, window − 1, head_dim): the rotated keys and values of the window − 1
    tokens before ``position``, oldest first; slots before position 0 are empty (zero, never attended).
    position (batch,) int64: the tokens each sequence has seen so far (packed documents continue from states
    of different positions)."""

    keys: Tensor
    values: Tensor
    position: Tensor


@register("swa")
class SWA(SequenceLayer):
    """Causal sliding-window attention. Input and output (batch, length, d_model).

    Args:
        d_model: model width.
        heads: query heads.
        window: the span: a query sees itself and the window − 1 tokens before it.
        kv_heads: key/value heads (divides heads; None: heads).
        head_dim: width of each head (None: d_model / heads).
        rotary: rotary position embeddings on queries and keys.
        rotary_base: the rotary base frequency.
        persistent_tokens: learned tokens every query attends to besides its window (Titans' persistent memory,
            eq. 19; 0: none).
        bias: biases in the projections.

    Parameters are those of ``self.attn`` (an :class:`~ssmzoo.modules.Attention`); its output projection
    is also reachable as ``out_proj`` so models rescale it at init like every layer's.

    State: :class:`SWAState` (keys, values, position); its shapes never change, so memory per decoded
    token is constant (2 · kv_heads · head_dim · (window − 1) numbers per sequence).
    """

    supported_dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    segments_fast_path = True  # one band mask for packed documents (without states, up to block_size tokens)
    block_size = 256  # queries per attention call on long inputs (at least the window)

    def __init__(
        self,
        d_model: int,
        heads: int = 4,
        window: int = 512,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        rotary: bool = True,
        rotary_base: float = 10000.0,
        persistent_tokens: int = 0,
        bias: bool = False,
    ) -> None:
        super().__init__(d_model, causal=True)
        # Checked here as well as in Attention, so the messages name this layer.
        check_int("SWA", "heads", heads)
        check_int("SWA", "window", window)
        if kv_heads is not None:
            check_int("SWA", "kv_heads", kv_heads)
            if heads % kv_heads:
                raise ValueError(f"SWA: kv_heads={kv_heads} must divide heads={heads}")
        if head_dim is None and d_model % heads:
            raise ValueError(f"SWA: heads={heads} must divide d_model={d_model} (or give head_dim)")
        if head_dim is not None:
            check_int("SWA", "head_dim", head_dim)
        check_bool("SWA", "rotary", rotary)
        check_float("SWA", "rotary_base", rotary_base, above=1.0)
        check_bool("SWA", "bias", bias)
        check_int("SWA", "persistent_tokens", persistent_tokens, minimum=0)
        if rotary and (head_dim or d_model // heads) % 2:
            raise ValueError(f"SWA: rotary embeddings need an even head_dim, got {head_dim or d_model // heads}")
        self.window = window
        self.attn = Attention(d_model, heads, kv_heads=kv_heads, head_dim=head_dim, causal=True, window=window,
                              rotary=rotary, rotary_base=rotary_base, persistent_tokens=persistent_tokens, bias=bias)

    @property
    def out_proj(self) -> nn.Linear:
        """The output projection (``attn.out``), under the name models rescale at init."""
        return self.attn.out

    def _forward(self, x: Tensor, state: SWAState | None, lengths: Tensor | None,
                 return_state: bool) -> tuple[Tensor, SWAState | None]:
        # Right padding never reaches a real token through a causal rule, so lengths needs no handling.
        block = max(self.block_size, self.window)
        if state is None and not return_state and x.shape[1] <= block:
            return self.attn(x), None
        # Long inputs go in blocks of queries, each after the cache the previous block left: O(n · window)
        # time and memory instead of the (n × n) mask and scores of one call.
        if state is None:
            state = self._init_state(x.shape[0], x.device, x.dtype)
        if torch.compiler.is_compiling():
            return self._attend_blocks(x, state, block)
        ys = []
        for i in range(0, x.shape[1], block):
            y, state = self._attend_cached(x[:, i:i + block], state)
            ys.append(y)
        return torch.cat(ys, 1), state

    def _attend_blocks(self, x: Tensor, state: SWAState, block: int) -> tuple[Tensor, SWAState]:
        """The blocks of the loop in ``_forward`` as one batched call, for torch.compile: a loop over the blocks has
        the length in its trip count and would be unrolled, fixing the length in the graph. Each block of queries
        attends over the window − 1 keys before it and its own, as in the loop; the input is padded to whole
        blocks, and the padding, after every real token, is never seen by one (causal). One graph serves every
        length of several blocks (Dynamo gives one block a graph of its own: a dimension of size 1). Eager keeps
        the loop, which frees each block's scores at inference (long inputs)."""
        n, w, batch = x.shape[1], self.window - 1, x.shape[0]
        blocks = (n + block - 1) // block
        q, keys, values, positions, key_positions = self._after_cache(F.pad(x, (0, 0, 0, blocks * block - n)), state)
        # block j's keys: the w before it and its own, [j · block, j · block + w + block) of [cache ‖ keys]
        kb, vb = (t.unfold(2, w + block, block).permute(0, 2, 1, 4, 3).contiguous().flatten(0, 1)
                  for t in (keys, values))  # (batch · blocks, kv_heads, w + block, hd)
        kp = key_positions.unfold(1, w + block, block)  # (batch, blocks, w + block)
        qp = positions.view(batch, blocks, block)
        qb = q.unflatten(2, (blocks, block)).transpose(1, 2).contiguous().flatten(0, 1)  # (batch · blocks, heads, block, hd)
        allowed = self._allowed(qp, kp).flatten(0, 1)[:, None]  # (batch · blocks, 1, block, w + block)
        y = self.attn._attend(qb, kb, vb, allowed)  # (batch · blocks, block, d_model)
        y = y.unflatten(0, (batch, blocks)).flatten(1, 2)[:, :n]
        return y, SWAState(keys[:, :, n:n + w], values[:, :, n:n + w], state.position + n)

    def _forward_segments(self, x: Tensor, state: SWAState | None, segments: Segments,
                          return_state: bool) -> tuple[Tensor, SWAState | None]:
        """Packed documents in one call: every token at its position in its document (rotary angles, and the
        persistent tokens' scores, depend on it), and a band mask that also requires the same document. Streams with
        states and inputs longer than a block run each document alone (the base class)."""
        if state is not None or return_state or x.shape[1] > max(self.block_size, self.window):
            return super()._forward_segments(x, state, segments, return_state)
        a, positions = self.attn, segments.positions  # (batch, n)
        q, k, v = a._project(x)
        q, k = a._rotate(q, positions[:, None]), a._rotate(k, positions[:, None])
        same_document = segments.doc[:, :, None] == segments.doc[:, None, :]
        allowed = attention_mask(positions, positions, True, self.window) & same_document  # (batch, n, n)
        return a._attend(q, k, v, allowed[:, None]), None

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> SWAState:
        a = self.attn
        empty = torch.zeros(batch_size, a.kv_heads, self.window - 1, a.head_dim, device=device, dtype=dtype)
        return SWAState(empty, empty.clone(), torch.zeros(batch_size, dtype=torch.long, device=device))

    def _step(self, x_t: Tensor, state: SWAState) -> tuple[Tensor, SWAState]:
        y, state = self._attend_cached(x_t[:, None], state)
        return y[:, 0], state

    def _attend_cached(self, x: Tensor, state: SWAState) -> tuple[Tensor, SWAState]:
        """x (batch, n, d_model) after the tokens the cache holds: the same projections, rotary angles and
        mask as ``self.attn(whole sequence)``, with [cache ‖ new] as the keys."""
        n, w = x.shape[1], self.window - 1
        q, keys, values, positions, key_positions = self._after_cache(x, state)
        y = self.attn._attend(q, keys, values, self._allowed(positions, key_positions)[:, None])
        # The next cache: the last window − 1 keys (empty slots keep init_state's zeros).
        return y, SWAState(keys[:, :, keys.shape[2] - w:], values[:, :, values.shape[2] - w:], state.position + n)

    def _after_cache(self, x: Tensor, state: SWAState) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x (batch, n, d_model) after the tokens the cache holds: q (batch, heads, n, hd) at the tokens' positions,
        the keys and values [cache ‖ new] (batch, kv_heads, w + n, hd), the query positions (batch, n) and the key
        positions (batch, w + n); every sequence at its own position (no device sync)."""
        a, n, w = self.attn, x.shape[1], self.window - 1
        start = state.position[:, None]  # (batch, 1)
        positions = start + torch.arange(n, device=x.device)
        q, k, v = a._project(x)
        q, k = a._rotate(q, positions[:, None]), a._rotate(k, positions[:, None])
        keys = torch.cat([state.keys.to(k.dtype), k], 2)
        values = torch.cat([state.values.to(v.dtype), v], 2)
        key_positions = torch.cat([start - w + torch.arange(w, device=x.device), positions], 1)
        return q, keys, values, positions, key_positions

    def _allowed(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """(..., n, m): the window rule, and no cache slot before the stream's start (negative positions)."""
        return attention_mask(query_positions, key_positions, True, self.window) & (key_positions >= 0)[..., None, :]
