"""Right-padded batches and packed documents: which positions are real, and reversing each sequence within
its length (or each document within its span)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.segments import Segments


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


def reverse_documents(x: Tensor, segments: Segments) -> Tensor:
    """Reverse each document of x (batch, length, ...) within its own span: the packed form of
    :func:`reverse_padded` (its own inverse), so a bidirectional layer's backward direction runs on packed
    documents with the same ``segments``."""
    lengths = segments.doc_lengths[segments.doc]  # (batch, length): the length of each token's document
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = t + lengths - 1 - 2 * segments.positions  # start + (length - 1 - position)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, idx)
