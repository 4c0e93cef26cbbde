"""Full causal softmax attention (Vaswani et al., 2017, "Attention Is All You Need", arXiv 1706.03762) as a
sequence layer: the attention layers of the hybrid checkpoints (Bamba, Nemotron-H, Falcon-H1, Qwen3.5), built on
:class:`ssmzoo.modules.Attention` (grouped KV heads, rotary positions as each checkpoint has them, or none; Qwen3.5's
q/k norms and output gate).

    query at p sees key at s  iff  s <= p

Decoding keeps every key and value seen (a KV cache that grows by one token per step), so a step costs
O(length) and the state grows with the stream, unlike the recurrent layers' fixed states.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..modules.attention import Attention, attention_mask
from ..modules.checks import check_bool, check_float, check_int
from ..ops.segments import Segments
from .base import SequenceLayer, register


class AttentionState(NamedTuple):
    """keys, values (batch, kv_heads, n, head_dim): the rotated keys and the values of the n tokens seen so far,
    oldest first; n grows by one per step (the next token's position is n)."""

    keys: Tensor
    values: Tensor


@register("attention")
class FullAttention(SequenceLayer):
    """Causal full attention. Input and output (batch, length, d_model).

    Args:
        d_model: model width.
        heads: query heads.
        kv_heads: key/value heads (divides heads; None: heads).
        head_dim: width of each head (None: d_model / heads).
        rotary: rotary position embeddings on queries and keys (False: no position information, as Nemotron-H's
            attention).
        rotary_base: the rotary base frequency θ (a checkpoint's ``rope_theta``).
        rotary_dim: rotate the first rotary_dim channels of each head only (None: all; Bamba rotates half).
        rotary_interleaved: pair channels (2i, 2i + 1) (RoFormer), else (i, i + rotary_dim/2), the pairing of
            transformers' checkpoints.
        scale: the softmax scale (None: 1/sqrt(head_dim)).
        bias: biases in the projections.
        output_gate: gate the heads' output by sigmoid(g), g a fourth part of the input projection (Qwen3.5).
        qk_norm: RMSNorm each query and key head before the rotary (Qwen3.5).
        qk_norm_eps: their epsilon.
        qk_norm_unit_offset: they scale by (1 + weight) (Qwen3.5).

    Parameters are those of ``self.attn`` (an :class:`~ssmzoo.modules.Attention`: ``qkv`` = [q ‖ k ‖ v], ``out``);
    the output projection is also reachable as ``out_proj``, the name models rescale at init.

    State: :class:`AttentionState`. Its length grows with the stream, so a state is checked for its structure,
    batch, heads, width, dtype and device, not for its length; per-document states of packed documents of unequal
    lengths cannot be batched (the base class says so).
    """

    supported_dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    segments_fast_path = True  # one mask of causal ∧ same document, each token at its position in its document
    # Prefill in pieces of about this many (batch x length) rows: each piece's scores are (piece x length so far),
    # and the Mamba-2 layers beside attention in a hybrid stack take their own prefill_rows (4,096).
    prefill_rows = 4096

    def __init__(
        self,
        d_model: int,
        heads: int = 4,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        rotary: bool = True,
        rotary_base: float = 10000.0,
        rotary_dim: int | None = None,
        rotary_interleaved: bool = True,
        scale: float | None = None,
        bias: bool = False,
        output_gate: bool = False,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        qk_norm_unit_offset: bool = False,
    ) -> None:
        super().__init__(d_model, causal=True)
        # Checked here as well as in Attention, so the messages name this layer.
        check_int("FullAttention", "heads", heads)
        if kv_heads is not None:
            check_int("FullAttention", "kv_heads", kv_heads)
            if heads % kv_heads:
                raise ValueError(f"FullAttention: kv_heads={kv_heads} must divide heads={heads}")
        if head_dim is None and d_model % heads:
            raise ValueError(f"FullAttention: heads={heads} must divide d_model={d_model} (or give head_dim)")
        if head_dim is not None:
            check_int("FullAttention", "head_dim", head_dim)
        width = head_dim or d_model // heads
        check_bool("FullAttention", "rotary", rotary)
        check_float("FullAttention", "rotary_base", rotary_base, above=1.0)
        check_bool("FullAttention", "rotary_interleaved", rotary_interleaved)
        if rotary_dim is not None:
            check_int("FullAttention", "rotary_dim", rotary_dim)
            if rotary_dim > width or rotary_dim % 2:
                raise ValueError(f"FullAttention: rotary_dim must be even and at most head_dim={width}, "
                                 f"got {rotary_dim}")
        elif rotary and width % 2:
            raise ValueError(f"FullAttention: rotary embeddings need an even head_dim, got {width}")
        check_float("FullAttention", "scale", scale, above=0.0, optional=True)
        check_bool("FullAttention", "bias", bias)
        check_bool("FullAttention", "output_gate", output_gate)
        check_bool("FullAttention", "qk_norm", qk_norm)
        check_float("FullAttention", "qk_norm_eps", qk_norm_eps, above=0.0)
        check_bool("FullAttention", "qk_norm_unit_offset", qk_norm_unit_offset)
        self.attn = Attention(d_model, heads, kv_heads=kv_heads, head_dim=head_dim, causal=True, rotary=rotary,
                              rotary_base=rotary_base, rotary_dim=rotary_dim, rotary_interleaved=rotary_interleaved,
                              scale=scale, bias=bias, output_gate=output_gate, qk_norm=qk_norm,
                              qk_norm_eps=qk_norm_eps, qk_norm_unit_offset=qk_norm_unit_offset)

    @property
    def out_proj(self) -> nn.Linear:
        """The output projection (``attn.out``), under the name models rescale at init."""
        return self.attn.out

    def _forward(self, x: Tensor, state: AttentionState | None, lengths: Tensor | None,
                 return_state: bool) -> tuple[Tensor, AttentionState | None]:
        # Right padding never reaches a real token through the causal rule, so lengths needs no handling.
        if state is None:
            state = self._init_state(x.shape[0], x.device, x.dtype)
        y, keys, values = self.attn.extend(x, state.keys, state.values)
        return y, (AttentionState(keys, values) if return_state else None)

    def _forward_segments(self, x: Tensor, state: AttentionState | None, segments: Segments,
                          return_state: bool) -> tuple[Tensor, AttentionState | None]:
        """Packed documents in one call: every token at its position in its document (rotary angles depend on it)
        and a mask of causal ∧ same document. Streams with states run each document alone (the base class)."""
        if state is not None or return_state:
            return super()._forward_segments(x, state, segments, return_state)
        a, positions = self.attn, segments.positions  # (batch, n)
        q, k, v, gate = a._project_gated(x)
        q, k = a._rotate(q, positions[:, None]), a._rotate(k, positions[:, None])
        same_document = segments.doc[:, :, None] == segments.doc[:, None, :]
        allowed = attention_mask(positions, positions, True, None) & same_document  # (batch, n, n)
        return a._attend(q, k, v, allowed[:, None], gate=gate), None

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> AttentionState:
        a = self.attn
        empty = torch.zeros(batch_size, a.kv_heads, 0, a.head_dim, device=device, dtype=dtype)
        return AttentionState(empty, empty.clone())

    def _step(self, x_t: Tensor, state: AttentionState) -> tuple[Tensor, AttentionState]:
        y, keys, values = self.attn.extend(x_t[:, None], state.keys, state.values)
        return y[:, 0], AttentionState(keys, values)

    def _expected_state(self, state: AttentionState, batch: int, dtype: torch.dtype) -> AttentionState:
        """init_state's form stretched to the given cache's length: a cache of any length passes, if its keys and
        values are alike in everything else."""
        keys = getattr(state, "keys", None) if isinstance(state, AttentionState) else None
        n = keys.shape[2] if isinstance(keys, Tensor) and keys.dim() == 4 else 0
        return AttentionState(*(f.new_empty(f.shape[0], f.shape[1], n, f.shape[3]) for f in self._state_form(batch, dtype)))
