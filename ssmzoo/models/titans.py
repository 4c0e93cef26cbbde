"""Titans architectures (Behrouz, Zhong, Mirrokni, 2025, section 4) as causal language models.

Each takes token ids (batch, length) and returns logits (batch, length, vocab_size). Every block
has its own neural memory (ssmzoo.layers.NeuralMemory) and learned persistent tokens that every
query may attend to (eq. 19). The memory is always read *before* it is updated with the current
segment (its chunk), so nothing here looks ahead.

- MAC, memory as context (section 4.1): the sequence is cut into segments; each segment's
  attention sees [persistent tokens ‖ memory read-outs h ‖ segment], where h_t = M*_{t−1}(q_t)
  is read from the memory as it was before the segment (the memory's chunk = the segment).
- MAG, memory as a gate (section 4.2): sliding-window attention and the memory branch run side by
  side on the same input, combined as o = norm(y_attn) ⊙ σ(norm(y_mem)).
- MAL, memory as a layer (section 4.3): the memory layer, then sliding-window attention.

Differences from the paper, kept deliberately simple: MAC writes the segment's input tokens to
the memory (the paper writes the attention output and then gates it with a read from the updated
memory, which inside a segment would let a token see later ones in a causal LM); rotary position
embeddings on attention queries and keys; a SiLU MLP after each mixing sublayer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..layers.titans import NeuralMemory


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of x (..., n, d) (d even) at integer positions (n,)."""
    d = x.shape[-1]
    freqs = base ** (-torch.arange(0, d, 2, device=x.device, dtype=x.dtype) / d)
    angles = positions.to(x.dtype)[:, None] * freqs[None, :]  # (n, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class Attention(nn.Module):
    """Multi-head attention with persistent tokens, extra context tokens and an explicit mask.

    Queries come from ``x`` (batch, n, d); keys and values from [persistent ‖ context ‖ x].
    ``mask`` (n, n_context + n) is True where a query may look (persistent tokens are always seen).
    """

    def __init__(self, d_model: int, heads: int, persistent_tokens: int) -> None:
        super().__init__()
        if d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"Attention: d_model={d_model} must split into {heads} heads of even width")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.persistent = nn.Parameter(torch.randn(persistent_tokens, d_model) / math.sqrt(d_model))

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor, context: Tensor | None = None,
                context_positions: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        q, k, v = rearrange(self.qkv(x), "b n (t h d) -> t b h n d", t=3, h=self.heads)
        q, k = rotary(q, positions), rotary(k, positions)
        if context is not None:
            _, ck, cv = rearrange(self.qkv(context), "b n (t h d) -> t b h n d", t=3, h=self.heads)
            k, v = torch.cat([rotary(ck, context_positions), k], 2), torch.cat([cv, v], 2)
        _, pk, pv = rearrange(self.qkv(self.persistent), "n (t h d) -> t h n d", t=3, h=self.heads)
        k = torch.cat([pk.expand(batch, -1, -1, -1), k], 2)
        v = torch.cat([pv.expand(batch, -1, -1, -1), v], 2)
        full = torch.cat([mask.new_ones(mask.shape[0], pk.shape[1]), mask], 1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=full)
        return self.out(rearrange(y, "b h n d -> b n (h d)"))


def sliding_window_mask(length: int, window: int, device: torch.device) -> Tensor:
    """(length, length) bool: query t sees keys t − window < s ≤ t."""
    t = torch.arange(length, device=device)
    diff = t[:, None] - t[None, :]
    return (diff >= 0) & (diff < window)


class MLP(nn.Module):
    def __init__(self, d_model: int, expansion: int = 4) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d_model, expansion * d_model), nn.Linear(expansion * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.up(x)))


class TitansBlock(nn.Module):
    """One block of the chosen variant: "mac", "mag" or "mal"."""

    def __init__(self, variant: str, d_model: int, heads: int, segment_len: int, window: int,
                 persistent_tokens: int, memory_heads: int, memory_depth: int, memory_chunk: int) -> None:
        super().__init__()
        self.variant, self.segment_len, self.window = variant, segment_len, window
        chunk = segment_len if variant == "mac" else memory_chunk  # MAC: memory chunk = segment
        self.memory = NeuralMemory(d_model, heads=memory_heads, memory_depth=memory_depth, chunk_size=chunk)
        self.attn = Attention(d_model, heads, persistent_tokens)
        self.mlp = MLP(d_model)
        self.norm_attn, self.norm_mlp = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        if variant != "mac":  # MAC's memory reads the attention's (normalised) input
            self.norm_mem = nn.RMSNorm(d_model)
        if variant == "mag":
            self.gate_norm_attn, self.gate_norm_mem = nn.RMSNorm(d_model), nn.RMSNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        positions = torch.arange(length, device=x.device)
        if self.variant == "mac":
            x = x + self._memory_as_context(self.norm_attn(x))
        elif self.variant == "mag":
            h = self.norm_attn(x)
            y = self.attn(h, positions, sliding_window_mask(length, self.window, x.device))
            m = self.memory(self.norm_mem(x))
            x = x + self.gate_norm_attn(y) * torch.sigmoid(self.gate_norm_mem(m))
        else:  # mal
            x = x + self.memory(self.norm_mem(x))
            x = x + self.attn(self.norm_attn(x), positions, sliding_window_mask(length, self.window, x.device))
        return x + self.mlp(self.norm_mlp(x))

    def _memory_as_context(self, x: Tensor) -> Tensor:
        """Segments attend to [persistent ‖ h ‖ segment]; h read from the memory before the segment."""
        batch, length = x.shape[:2]
        s = self.segment_len
        h = self.memory(x)  # h_t = M*(q_t) with the weights from before t's segment (chunk = segment)
        pad = (-length) % s
        xs = rearrange(F.pad(x, (0, 0, 0, pad)), "b (n s) d -> (b n) s d", s=s)
        hs = rearrange(F.pad(h, (0, 0, 0, pad)), "b (n s) d -> (b n) s d", s=s)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        # h_i is read with token i's query, so token j may see h_i only for i ≤ j, like x_i.
        mask = torch.cat([causal, causal], 1)
        local = torch.arange(s, device=x.device)  # positions within the segment (relative)
        y = self.attn(xs, local, mask, context=hs, context_positions=local)
        return rearrange(y, "(b n) s d -> b (n s) d", b=batch)[:, :length]


class TitansLM(nn.Module):
    """A Titans language model: embedding, ``n_layers`` blocks of one variant, norm, LM head.

    Args:
        variant: "mac" (memory as context), "mag" (memory as gate) or "mal" (memory as layer).
        vocab_size, d_model, n_layers, heads: the usual.
        segment_len: MAC's segment length (its attention span and memory chunk).
        window: MAG/MAL sliding-window attention span.
        persistent_tokens: learned tokens every query attends to.
        memory_heads, memory_depth, memory_chunk: the neural memory (memory_chunk for MAG/MAL).
    """

    def __init__(self, variant: str, vocab_size: int, d_model: int = 64, n_layers: int = 2, heads: int = 4,
                 segment_len: int = 16, window: int = 16, persistent_tokens: int = 4, memory_heads: int = 2,
                 memory_depth: int = 2, memory_chunk: int = 8) -> None:
        super().__init__()
        if variant not in ("mac", "mag", "mal"):
            raise ValueError(f"TitansLM: variant must be 'mac', 'mag' or 'mal', got {variant!r}")
        for name, value in (("vocab_size", vocab_size), ("n_layers", n_layers), ("segment_len", segment_len),
                            ("window", window), ("persistent_tokens", persistent_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TitansLM: {name} must be a positive int, got {value!r}")
        self.variant = variant
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            TitansBlock(variant, d_model, heads, segment_len, window, persistent_tokens, memory_heads,
                        memory_depth, memory_chunk)
            for _ in range(n_layers)
        )
        self.norm = nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (batch, length) int64 -> logits (batch, length, vocab_size)."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"TitansLM: tokens must be a (batch, length) int64 tensor, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class MAC(TitansLM):
    """Titans, memory as context (section 4.1)."""

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, heads: int = 4, segment_len: int = 16,
                 persistent_tokens: int = 4, memory_heads: int = 2, memory_depth: int = 2) -> None:
        super().__init__("mac", vocab_size, d_model, n_layers, heads, segment_len=segment_len, window=segment_len,
                         persistent_tokens=persistent_tokens, memory_heads=memory_heads, memory_depth=memory_depth,
                         memory_chunk=segment_len)


class MAG(TitansLM):
    """Titans, memory as a gate (section 4.2)."""

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, heads: int = 4, window: int = 16,
                 persistent_tokens: int = 4, memory_heads: int = 2, memory_depth: int = 2,
                 memory_chunk: int = 8) -> None:
        super().__init__("mag", vocab_size, d_model, n_layers, heads, segment_len=window, window=window,
                         persistent_tokens=persistent_tokens, memory_heads=memory_heads, memory_depth=memory_depth,
                         memory_chunk=memory_chunk)


class MAL(TitansLM):
    """Titans, memory as a layer (section 4.3)."""

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, heads: int = 4, window: int = 16,
                 persistent_tokens: int = 4, memory_heads: int = 2, memory_depth: int = 2,
                 memory_chunk: int = 8) -> None:
        super().__init__("mal", vocab_size, d_model, n_layers, heads, segment_len=window, window=window,
                         persistent_tokens=persistent_tokens, memory_heads=memory_heads, memory_depth=memory_depth,
                         memory_chunk=memory_chunk)
