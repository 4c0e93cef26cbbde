"""Selective copying (Gu & Dao 2023, section 3.1 and Figure 2): a few data tokens are scattered at
random positions among noise tokens; after the sequence, one marker token per data token asks the
model to emit the data tokens in order. Solving it needs content-aware (selective) memory, since
the spacing between the tokens varies.

Tokens: 0 = noise, 1 = marker, 2..vocab_size-1 = data. An example is ``seq_len + num_tokens`` long;
its targets are ``ignore_index`` everywhere except at the markers, where the j-th marker's target is
the j-th data token (so a causal model predicts it from what it has read up to the marker).
"""

from __future__ import annotations

import torch
from torch import Tensor

NOISE = 0
MARKER = 1
IGNORE_INDEX = -100


def selective_copying(
    num_samples: int, seq_len: int, num_tokens: int, vocab_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Returns (tokens, targets), both LongTensor (num_samples, seq_len + num_tokens)."""
    if num_samples < 1:
        raise ValueError(f"selective_copying: num_samples must be >= 1, got {num_samples}")
    if num_tokens < 1 or num_tokens > seq_len:
        raise ValueError(f"selective_copying: need 1 <= num_tokens <= seq_len, got num_tokens={num_tokens}, seq_len={seq_len}")
    if vocab_size < 3:
        raise ValueError(f"selective_copying: vocab_size must be >= 3 (noise, marker, >= 1 data token), got {vocab_size}")
    data = torch.randint(MARKER + 1, vocab_size, (num_samples, num_tokens), generator=generator)
    # num_tokens distinct positions per example, in increasing order (the copying order)
    positions = torch.rand(num_samples, seq_len, generator=generator).argsort(-1)[:, :num_tokens].sort(-1).values
    tokens = torch.full((num_samples, seq_len + num_tokens), NOISE, dtype=torch.long)
    tokens.scatter_(1, positions, data)
    tokens[:, seq_len:] = MARKER
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, seq_len:] = data
    return tokens, targets
