"""Titans architectures (Behrouz, Zhong, Mirrokni, "Titans: Learning to Memorize at Test Time", arXiv 2501.00663,
section 4) as language models: configurations of :class:`~ssmzoo.models.LanguageModel`, each block a layer of
the zoo followed by a SiLU MLP (4 · d_model, with biases, not gated). Every block has its own neural memory
(``ssmzoo.layers.NeuralMemory``) and learned persistent tokens that every query may attend to (eq. 19); the
memory is always read *before* it is updated with the current chunk, so nothing looks ahead.

- MAC, memory as context (section 4.1): blocks of :class:`~ssmzoo.layers.MemoryAsContext`.
- MAG, memory as a gate (section 4.2): blocks of :class:`~ssmzoo.layers.MemoryAsGate` (it normalises each of its
  two branches itself, so the block has no pre-norm).
- MAL, memory as a layer (section 4.3): a block of the neural memory (no MLP), then a block of sliding-window
  attention with persistent tokens (``SWA``).

Generation steps every layer exactly (the memory buffers its unfinished chunk; MAG/MAL keep the attention's last
window − 1 keys and values, MAC the current segment's), so per token, constant memory.

Checkpoints written before the LM stack was one class name their parameters ``embed``, ``blocks.*``, ``norm``,
``head``; ``ssmzoo.models.legacy.upgrade_state_dict`` renames them.
"""

from __future__ import annotations

from typing import Any

from ..modules.checks import check_int
from .lm import LanguageModel

# nn.RMSNorm's default eps (None) is the dtype's machine epsilon; a fixed one keeps float64 and
# float32 models the same function.
NORM_EPS = 1e-6


def _mlp(d_model: int) -> dict[str, Any]:
    return {"mlp": 4 * d_model, "mlp_gated": False, "mlp_activation": "silu", "mlp_bias": True}


def titans_pattern(variant: str, d_model: int, n_layers: int, heads: int, segment_len: int, window: int,
                   persistent_tokens: int, memory_heads: int, memory_depth: int, memory_chunk: int) -> list[dict]:
    """The LanguageModel pattern of a Titans variant ("mac", "mag" or "mal")."""
    memory = {"memory_heads": memory_heads, "memory_depth": memory_depth}
    if variant == "mac":
        block = [{"layer": "memory_as_context", **_mlp(d_model),
                  "args": {"heads": heads, "segment_len": segment_len, "persistent_tokens": persistent_tokens, **memory}}]
    elif variant == "mag":
        block = [{"layer": "memory_as_gate", "norm": False, **_mlp(d_model),
                  "args": {"heads": heads, "window": window, "persistent_tokens": persistent_tokens,
                           "memory_chunk": memory_chunk, "norm_eps": NORM_EPS, **memory}}]
    elif variant == "mal":
        block = [{"layer": "neural_memory", "mlp": 0,
                  "args": {"heads": memory_heads, "memory_depth": memory_depth, "chunk_size": memory_chunk}},
                 {"layer": "swa", **_mlp(d_model),
                  "args": {"heads": heads, "window": window, "persistent_tokens": persistent_tokens}}]
    else:
        raise ValueError(f"TitansLM: variant must be 'mac', 'mag' or 'mal', got {variant!r}")
    return block * n_layers


class TitansLM(LanguageModel):
    """A Titans language model: embedding, ``n_layers`` blocks of one variant, norm, an untied LM head.

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
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers),
                            ("heads", heads), ("segment_len", segment_len), ("window", window),
                            ("persistent_tokens", persistent_tokens), ("memory_heads", memory_heads),
                            ("memory_depth", memory_depth), ("memory_chunk", memory_chunk)):
            check_int("TitansLM", name, value)
        if d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"TitansLM: d_model={d_model} must split into heads={heads} heads of even width")
        pattern = titans_pattern(variant, d_model, n_layers, heads, segment_len, window, persistent_tokens,
                                 memory_heads, memory_depth, memory_chunk)
        try:
            # nn.Embedding's own N(0, 1) init and no rescaling: the Titans models as they were first written.
            super().__init__(vocab_size, d_model, pattern=pattern, norm_eps=NORM_EPS, tie_embeddings=False,
                             initializer_range=None, rescale_prenorm_residual=False)
        except ValueError as e:
            raise ValueError(f"TitansLM ({variant}): {e}") from e
        self.variant = variant


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
