"""Right-padded batches: which positions are real, and reversing each sequence within its length."""

from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(lengths: Tensor, length: int) -> Tensor:
    """(batch, length) bool mask, True at real (non-padded) positions; lengths (batch,)."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of x (batch, length, ...) within its own length; padding stays at the end.

    A bidirectional layer runs its backward direction on this, so that the backward pass over a
    padded sequence starts at the last real token rather than at the padding."""
    if lengths is None:
        return x.flip(1)
    length = x.shape[1]
    pos = torch.arange(length, device=x.device)[None, :]
    idx = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, idx)
