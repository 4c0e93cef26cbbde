"""Induction heads (Olsson et al. 2022; Gu & Dao 2023, section 4.1.2): somewhere in a random sequence
a trigger token is followed by an answer token; the sequence ends with the trigger again, and the
model must output the answer there. Recall by content, at any distance.

Tokens: 0 = trigger, 1..vocab_size-1 = ordinary tokens (the trigger appears exactly twice). Targets
are ``ignore_index`` except at the last position, whose target is the answer.
"""

from __future__ import annotations

import torch
from torch import Tensor

TRIGGER = 0
IGNORE_INDEX = -100


def induction_heads(
    num_samples: int, seq_len: int, vocab_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Returns (tokens, targets), both LongTensor (num_samples, seq_len)."""
    if num_samples < 1:
        raise ValueError(f"induction_heads: num_samples must be >= 1, got {num_samples}")
    if seq_len < 3:
        raise ValueError(f"induction_heads: seq_len must be >= 3 (trigger, answer, trigger), got {seq_len}")
    if vocab_size < 2:
        raise ValueError(f"induction_heads: vocab_size must be >= 2 (trigger and >= 1 token), got {vocab_size}")
    tokens = torch.randint(TRIGGER + 1, vocab_size, (num_samples, seq_len), generator=generator)
    # the first trigger sits anywhere that leaves room for its answer before the final trigger
    first = torch.randint(0, seq_len - 2, (num_samples,), generator=generator)
    rows = torch.arange(num_samples)
    answer = tokens[rows, first + 1].clone()
    tokens[rows, first] = TRIGGER
    tokens[:, -1] = TRIGGER
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, -1] = answer
    return tokens, targets
