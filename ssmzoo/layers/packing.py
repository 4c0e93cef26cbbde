"""The exact fallback for packed documents: every document run alone through the layer's own forward.

Any layer is correct on packed input with no code of its own: its documents are gathered into
batches, run through ``_forward`` (which the layer contract already makes exact for one document per
row), and their outputs scattered back. Documents of one length share a batch; without states,
a document may also share one with longer documents, right-padded (``lengths``), since padding never
changes real tokens (the contract's padded == truncated), which keeps the number of calls about
log2(length). Layers with a faster exact form override ``SequenceLayer._forward_segments``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..ops.segments import Segments

State = Any


def map_state(fn: Callable[..., Tensor], *states: State) -> State:
    """Apply ``fn`` leaf by leaf to states of one structure (tensors in tuples, NamedTuples, lists, dicts)."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(*states)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(map_state(fn, *parts) for parts in zip(*states)))
    if isinstance(first, (tuple, list)):
        return type(first)(map_state(fn, *parts) for parts in zip(*states))
    if isinstance(first, dict):
        return {k: map_state(fn, *(s[k] for s in states)) for k in first}
    return first  # a non-tensor leaf (None, a number) is the same in every state


def _bucket(n: int) -> int:
    """The padded length a document of length n shares a batch at: the next power of two."""
    return 1 << (n - 1).bit_length()


def forward_each_document(
    forward: Callable[[Tensor, State | None, Tensor | None, bool], tuple[Tensor, State | None]],
    x: Tensor,
    state: State | None,
    segments: Segments,
    return_state: bool,
    owner: str,
) -> tuple[Tensor, State | None]:
    """``forward`` (a layer's ``_forward(x, state, lengths, return_state)``) on every document of ``segments``
    alone. x (batch, length, d_model); ``state``: per-document initial states (leading size num_docs) or None.
    Returns y (batch, length, d_model) and, with ``return_state``, the per-document final states."""
    if torch.compiler.is_compiling():
        # Gathering each document's tokens depends on the data (their lengths): no static graph exists.
        raise ValueError(f"{owner}: packed documents that this layer runs one document at a time (no one-pass form "
                         "for this call) cannot be compiled with fullgraph=True or exported; compile without "
                         "fullgraph (this part then runs eagerly), or pass documents one per row")
    spans = segments.spans
    batch, length, width = x.shape
    exact = return_state or state is not None  # states: documents of one length per call, no padding
    groups: dict[int, list[int]] = {}
    for k, s in enumerate(spans):
        n = s.stop - s.start
        groups.setdefault(n if exact else min(_bucket(n), length), []).append(k)

    pad_row = batch * length  # the index of an all-zero row appended to the flattened input
    flat = torch.cat([x.reshape(batch * length, width), x.new_zeros(1, width)])
    targets, outputs, finals, order = [], [], [], []
    for n, docs in groups.items():
        lens = torch.tensor([spans[k].stop - spans[k].start for k in docs])
        base = torch.tensor([spans[k].row * length + spans[k].start for k in docs])
        t = torch.arange(n)
        real = t[None, :] < lens[:, None]  # (docs, n)
        index = torch.where(real, base[:, None] + t[None, :], torch.full_like(real, pad_row, dtype=torch.long))
        index, real = index.to(x.device), real.to(x.device)
        padded = not bool(real.all())
        doc_index = torch.tensor(docs, device=x.device)
        group_state = None if state is None else map_state(lambda s, i=doc_index: s.index_select(0, i), state)
        y, final = forward(flat[index], group_state, lens.to(x.device) if padded else None, return_state)
        targets.append(index[real])
        outputs.append(y[real])
        if return_state:
            finals.append(final)
            order.append(doc_index)
    y = x.new_zeros(batch * length, width).index_copy(0, torch.cat(targets), torch.cat(outputs).to(x.dtype))
    y = y.reshape(batch, length, width)
    if not return_state:
        return y, None
    inverse = torch.empty(segments.num_docs, dtype=torch.long, device=x.device)
    inverse[torch.cat(order)] = torch.arange(segments.num_docs, device=x.device)

    def stack(*parts: Tensor) -> Tensor:
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"{owner}: the per-document final states differ in shape ({sorted(shapes)}): this "
                             "layer's state grows with the sequence, so documents of different lengths cannot share "
                             "one batched state; ask for states only with documents of equal length")
        return torch.cat(parts).index_select(0, inverse)

    return y, map_state(stack, *finals)
