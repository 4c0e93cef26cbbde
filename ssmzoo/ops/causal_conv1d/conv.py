"""The fast path of the causal conv on every device: one grouped F.conv1d over the padded input.

(A C++ kernel did not pay off: for Mamba's widths (W = 4) the depthwise conv is memory bound, and
PyTorch's own depthwise conv1d, forward and backward, is already a single vectorised pass.)

Packed documents: each document gets W-1 slots before it (its initial state, or zeros) in a row
widened by (W-1) · (documents in the row), so one plain convolution reads no tap across a document
start; a document's final state is the W-1 widened inputs ending at its last token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..segments import Segments
from .inputs import ConvInputs
from .reference import apply_activation, final_state, padded_input


def causal_conv1d_conv(x: ConvInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`causal_conv1d_reference`, by one grouped F.conv1d."""
    u, weight, bias, activation, initial_state, segments = x
    if segments is not None:
        return _documents(u, weight, bias, activation, initial_state, segments, output_final_state)
    width = weight.shape[-1]
    xp = padded_input(u, width, initial_state)
    y = apply_activation(F.conv1d(xp, weight[:, None, :], bias, groups=u.shape[1]), activation)
    return (y, final_state(xp, width)) if output_final_state else y


def _documents(u: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None, initial_state: Tensor | None,
               segments: Segments, output_final_state: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Packed documents (see the module docstring); u (batch, D, L), states (num_docs, D, W-1)."""
    w = weight.shape[-1] - 1
    batch, channels, length = u.shape
    conv = lambda t: apply_activation(F.conv1d(F.pad(t, (w, 0)), weight[:, None, :], bias, groups=channels),  # noqa: E731
                                      activation)
    if w == 0:  # a width-1 convolution mixes no positions
        y = conv(u)
        return (y, u.new_zeros(segments.num_docs, channels, 0)) if output_final_state else y
    device = u.device
    local = segments.starts.long().cumsum(dim=1)  # (batch, length): each token's 1-based document in its row
    widened = length + w * local[:, -1]
    total = int(widened.max())
    row_base = torch.arange(batch, device=device) * total + (total - widened)  # rows end together
    where = (row_base[:, None] + torch.arange(length, device=device) + w * local).flatten()
    flat = u.new_zeros(batch * total, channels).index_copy(0, where, rearrange(u, "b d l -> (b l) d"))
    # Widened position of each document's first slot: row start + document start + w · (its index in the row).
    rows = torch.tensor([s.row for s in segments.spans], device=device)
    starts = torch.tensor([s.start for s in segments.spans], device=device)
    first_slot = row_base[rows] + starts + w * (local[rows, starts] - 1)
    slots = first_slot[:, None] + torch.arange(w, device=device)  # (num_docs, w)
    if initial_state is not None:
        flat = flat.index_copy(0, slots.flatten(), rearrange(initial_state.to(u.dtype), "k d w -> (k w) d"))
    y = conv(rearrange(flat, "(b l) d -> b d l", b=batch))
    y = rearrange(rearrange(y, "b d l -> (b l) d").index_select(0, where), "(b l) d -> b d l", b=batch)
    if not output_final_state:
        return y
    ends = slots + segments.doc_lengths[:, None]  # the w widened inputs ending at each document's last token
    return y, rearrange(flat.index_select(0, ends.flatten()), "(k w) d -> k d w", w=w)
