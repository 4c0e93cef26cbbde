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

Generation: ``forward(tokens, return_state=True)`` prefills, then ``step`` runs one token at a time with
exactly ``forward``'s outputs: the memory steps exactly (it buffers its unfinished chunk), MAG/MAL keep
the attention's last window − 1 keys and values, MAC the keys and values of the current segment's tokens
and memory read-outs (emptied when a segment ends); so per token, constant memory besides that cache.

Differences from the paper, kept deliberately simple: MAC writes the segment's input tokens to
the memory (the paper writes the attention output and then gates it with a read from the updated
memory, which inside a segment would let a token see later ones in a causal LM); rotary position
embeddings on attention queries and keys; a SiLU MLP after each mixing sublayer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..layers.base import input_checks, input_checks_enabled
from ..layers.titans import NeuralMemory, NeuralMemoryState
from ..modules.attention import Attention, KVCache
from ..modules.checks import check_int
from ..modules.mlp import MLP
from ..modules.rmsnorm import RMSNorm
from .generation import GenerationMixin

# nn.RMSNorm's default eps (None) is the dtype's machine epsilon; a fixed one keeps float64 and
# float32 models the same function.
NORM_EPS = 1e-6


class TitansState(NamedTuple):
    """One block's stream state: its memory's and its attention's KV cache (MAC: the current segment's)."""

    memory: NeuralMemoryState
    attention: KVCache


class TitansBlock(nn.Module):
    """One block of the chosen variant: "mac", "mag" or "mal"."""

    def __init__(self, variant: str, d_model: int, heads: int, segment_len: int, window: int,
                 persistent_tokens: int, memory_heads: int, memory_depth: int, memory_chunk: int) -> None:
        super().__init__()
        self.variant, self.segment_len, self.window = variant, segment_len, window
        chunk = segment_len if variant == "mac" else memory_chunk  # MAC: memory chunk = segment
        self.memory = NeuralMemory(d_model, heads=memory_heads, memory_depth=memory_depth, chunk_size=chunk)
        # MAC attends within a segment (to its memory read-outs too); MAG/MAL use a sliding window.
        self.attn = Attention(d_model, heads, window=None if variant == "mac" else window,
                              persistent_tokens=persistent_tokens)
        self.mlp = MLP(d_model, 4 * d_model, activation="silu")
        self.norm_attn, self.norm_mlp = RMSNorm(d_model, eps=NORM_EPS), RMSNorm(d_model, eps=NORM_EPS)
        if variant != "mac":  # MAC's memory reads the attention's (normalised) input
            self.norm_mem = RMSNorm(d_model, eps=NORM_EPS)
        if variant == "mag":
            self.gate_norm_attn, self.gate_norm_mem = RMSNorm(d_model, eps=NORM_EPS), RMSNorm(d_model, eps=NORM_EPS)

    def forward(self, x: Tensor, return_state: bool = False) -> tuple[Tensor, TitansState | None]:
        """x (batch, length, d_model) -> (y, the stream's state after x if ``return_state``, else None)."""
        state = None
        if self.variant == "mac":
            y, state = self._memory_as_context(self.norm_attn(x), return_state)
            x = x + y
        elif self.variant == "mag":
            y, cache = self._attend(self.norm_attn(x), return_state)
            m, memory = self._remember(self.norm_mem(x), return_state)
            x = x + self.gate_norm_attn(y) * torch.sigmoid(self.gate_norm_mem(m))
            state = TitansState(memory, cache) if return_state else None
        else:  # mal
            m, memory = self._remember(self.norm_mem(x), return_state)
            x = x + m
            y, cache = self._attend(self.norm_attn(x), return_state)
            x = x + y
            state = TitansState(memory, cache) if return_state else None
        return x + self.mlp(self.norm_mlp(x)), state

    def _attend(self, x: Tensor, return_state: bool) -> tuple[Tensor, KVCache | None]:
        return self.attn(x, return_cache=True) if return_state else (self.attn(x), None)

    def _remember(self, x: Tensor, return_state: bool) -> tuple[Tensor, NeuralMemoryState | None]:
        return self.memory(x, return_state=True) if return_state else (self.memory(x), None)

    def _memory_as_context(self, x: Tensor, return_state: bool) -> tuple[Tensor, TitansState | None]:
        """Segments attend to [persistent ‖ h ‖ segment]; h read from the memory before the segment."""
        batch, length = x.shape[:2]
        s = self.segment_len
        h, memory = self._remember(x, return_state)  # h_t = M*(q_t), weights from before t's segment (chunk = segment)
        pad = (-length) % s
        xs = rearrange(F.pad(x, (0, 0, 0, pad)), "b (n s) d -> (b n) s d", s=s)
        hs = rearrange(F.pad(h, (0, 0, 0, pad)), "b (n s) d -> (b n) s d", s=s)
        # h_i is read with token i's query, so token j may see h_i only for i ≤ j, like x_i: giving h
        # the same (relative, within-segment) positions as x makes the causal rule say exactly that.
        local = torch.arange(s, device=x.device)
        y = self.attn(xs, local, context=hs, context_positions=local)
        y = rearrange(y, "(b n) s d -> b (n s) d", b=batch)[:, :length]
        if not return_state:
            return y, None
        # The cache of the unfinished last segment: its tokens' and read-outs' keys and values, stepped in.
        cache = self.attn.init_cache(batch, x.device, x.dtype)
        for t in range(length - length % s, length):
            _, cache = self.attn.step(x[:, t], cache, context=h[:, t])
        return y, TitansState(memory, cache)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> TitansState:
        return TitansState(self.memory.init_state(batch_size, device, dtype),
                           self.attn.init_cache(batch_size, device, dtype))

    def step(self, x_t: Tensor, state: TitansState, checked: bool = True) -> tuple[Tensor, TitansState]:
        """One token x_t (batch, d_model); ``checked=False`` skips the memory's state checks (generation)."""
        remember = self.memory.step if checked else self.memory._step
        cache = state.attention
        if self.variant == "mac":
            u = self.norm_attn(x_t)
            h_t, memory = remember(u, state.memory)
            if cache.keys.shape[2] == 2 * self.segment_len:  # the segment is complete: the next one starts empty
                cache = self.attn.init_cache(x_t.shape[0], x_t.device, cache.keys.dtype)
            y, cache = self.attn.step(u, cache, context=h_t)
            x_t = x_t + y
        elif self.variant == "mag":
            y, cache = self.attn.step(self.norm_attn(x_t), cache)
            m, memory = remember(self.norm_mem(x_t), state.memory)
            x_t = x_t + self.gate_norm_attn(y) * torch.sigmoid(self.gate_norm_mem(m))
        else:  # mal
            m, memory = remember(self.norm_mem(x_t), state.memory)
            x_t = x_t + m
            y, cache = self.attn.step(self.norm_attn(x_t), cache)
            x_t = x_t + y
        return x_t + self.mlp(self.norm_mlp(x_t)), TitansState(memory, cache)


class TitansLM(GenerationMixin, nn.Module):
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
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers),
                            ("heads", heads), ("segment_len", segment_len), ("window", window),
                            ("persistent_tokens", persistent_tokens), ("memory_heads", memory_heads),
                            ("memory_depth", memory_depth), ("memory_chunk", memory_chunk)):
            check_int("TitansLM", name, value)
        if d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"TitansLM: d_model={d_model} must split into heads={heads} heads of even width")
        self.variant, self.vocab_size, self.n_layers = variant, vocab_size, n_layers
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            TitansBlock(variant, d_model, heads, segment_len, window, persistent_tokens, memory_heads,
                        memory_depth, memory_chunk)
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(d_model, eps=NORM_EPS)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def _check_tokens(self, tokens: Tensor, arg: str = "tokens", rank: int = 2) -> None:
        doc = "(batch >= 1, length >= 1)" if rank == 2 else "(batch >= 1,)"
        if not isinstance(tokens, Tensor) or tokens.dim() != rank or tokens.dtype != torch.long or 0 in tokens.shape:
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"TitansLM: {arg} must be a {doc} int64 tensor, got {got}")
        if tokens.device != self.embed.weight.device:
            raise ValueError(f"TitansLM: {arg} are on {tokens.device} but the model is on {self.embed.weight.device}")
        if input_checks_enabled(tokens.device) and (
            bool((tokens < 0).any()) or bool((tokens >= self.vocab_size).any())
        ):
            raise ValueError(f"TitansLM: {arg} must lie in [0, vocab_size={self.vocab_size})")

    def forward(self, tokens: Tensor, return_state: bool = False) -> Tensor | tuple[Tensor, list[TitansState]]:
        """tokens (batch, length) int64 -> logits (batch, length, vocab_size); with ``return_state`` also the
        blocks' states, which ``step`` continues from."""
        self._check_tokens(tokens)
        if not isinstance(return_state, bool):
            raise ValueError(f"TitansLM: return_state must be True or False, got {return_state!r}")
        x = self.embed(tokens)
        states = []
        with input_checks(False):  # checked once, above
            for block in self.blocks:
                x, state = block(x, return_state)
                states.append(state)
        logits = self.head(self.norm(x))
        return (logits, states) if return_state else logits

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> list[TitansState]:
        """The state of a fresh stream (``step`` from it equals ``forward`` from the first token)."""
        check_int("TitansLM.init_state", "batch_size", batch_size)
        device = torch.device(device) if device is not None else self.embed.weight.device
        dtype = dtype or self.embed.weight.dtype
        return [block.init_state(batch_size, device, dtype) for block in self.blocks]

    def step(self, token: Tensor, state: list[TitansState]) -> tuple[Tensor, list[TitansState]]:
        """token (batch,) -> logits (batch, vocab_size) for the next token, and the next state."""
        self._check_tokens(token, "token", 1)
        if not isinstance(state, (list, tuple)) or len(state) != self.n_layers or \
                not all(isinstance(s, TitansState) for s in state):
            raise ValueError(f"TitansLM.step: state must be a list of {self.n_layers} TitansState, as init_state or "
                             "forward(..., return_state=True) return")
        return self._run_step(token, state, checked=True)

    def _run_step(self, token: Tensor, state: list[TitansState], checked: bool) -> tuple[Tensor, list[TitansState]]:
        x = self.embed(token)
        new_state = []
        with input_checks(False):
            for block, s in zip(self.blocks, state):
                x, s = block.step(x, s, checked)
                new_state.append(s)
        return self.head(self.norm(x)), new_state

    def _prefill(self, input_ids: Tensor) -> tuple[Tensor, list[TitansState]]:
        logits, state = self.forward(input_ids, return_state=True)
        return logits[:, -1], state

    def _decode(self, token: Tensor, state: list[TitansState]) -> tuple[Tensor, list[TitansState]]:
        return self._run_step(token, state, checked=False)


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
