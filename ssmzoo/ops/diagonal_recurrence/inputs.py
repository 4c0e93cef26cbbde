"""The inputs of one ``diagonal_recurrence`` call, and every check of them (the only place they live).

A bad argument gives a ``ValueError`` naming the op, the argument and what was expected; backends never
re-validate. :func:`reset_layout` turns ``segments`` and the direction into the two (batch, length) tensors
the fast backends read: where the recurrence restarts (in processing order) and each token's document.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..segments import Segments

OP = "diagonal_recurrence"
DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


class RecurrenceInputs(NamedTuple):
    """One call's tensors and options, as every backend receives them (checked by :func:`check_diagonal_recurrence`).

    x: (batch, length, dim), the input u_t of every step, real or complex.
    decay: λ, (dim,) for every step, or (batch, length, dim) per step; x's dtype.
    reverse: run from the last token to the first (h_t = λ_t h_{t+1} + x_t).
    initial_state: (batch, dim), or (num_docs, dim) with segments; x's dtype. None: zeros.
    segments: packed documents; the state restarts at every document (from its initial state).
    """

    x: Tensor
    decay: Tensor
    reverse: bool = False
    initial_state: Tensor | None = None
    segments: Segments | None = None


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_diagonal_recurrence(inputs: RecurrenceInputs) -> None:
    x, decay, reverse, initial_state, segments = inputs
    if not isinstance(x, Tensor):
        raise ValueError(f"{OP}: x must be a tensor (batch, length, dim), got {type(x).__name__}")
    if x.dim() != 3 or 0 in x.shape:
        raise ValueError(f"{OP}: x must be (batch, length, dim) with every size >= 1, got shape {_shape(x)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{OP}: x must be float32, float64, complex64 or complex128, got {_dtype(x.dtype)}")
    batch, length, dim = x.shape
    if not isinstance(decay, Tensor):
        raise ValueError(f"{OP}: decay must be a tensor (dim,) or (batch, length, dim), got {type(decay).__name__}")
    if decay.shape not in ((dim,), (batch, length, dim)):
        raise ValueError(f"{OP}: decay must be (dim={dim},) or (batch={batch}, length={length}, dim={dim}), "
                         f"got shape {_shape(decay)}")
    if decay.dtype != x.dtype:
        raise ValueError(f"{OP}: decay must have x's dtype {_dtype(x.dtype)}, got {_dtype(decay.dtype)}")
    if not isinstance(reverse, bool):
        raise ValueError(f"{OP}: reverse must be True or False, got {reverse!r}")
    if segments is not None and not isinstance(segments, Segments):
        raise ValueError(f"{OP}: segments must be a ssmzoo.Segments or None, got {type(segments).__name__}")
    if segments is not None:
        if (segments.batch, segments.length) != (batch, length):
            raise ValueError(f"{OP}: segments describe a (batch, length) = {(segments.batch, segments.length)} "
                             f"input, but x is {(batch, length)}")
        if segments.device != x.device:
            raise ValueError(f"{OP}: segments are on {segments.device} but x is on {x.device}")
    states = batch if segments is None else segments.num_docs
    if initial_state is not None:
        if not isinstance(initial_state, Tensor):
            raise ValueError(f"{OP}: initial_state must be a tensor or None, got {type(initial_state).__name__}")
        what = "batch" if segments is None else "num_docs"
        if initial_state.shape != (states, dim):
            raise ValueError(f"{OP}: initial_state must be ({what}={states}, dim={dim}), "
                             f"got shape {_shape(initial_state)}")
        if initial_state.dtype != x.dtype:
            raise ValueError(f"{OP}: initial_state must have x's dtype {_dtype(x.dtype)}, "
                             f"got {_dtype(initial_state.dtype)}")
    devices = {t.device for t in (x, decay, initial_state) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{OP}: x, decay and initial_state must be on one device, got {sorted(map(str, devices))}")


def num_states(inputs: RecurrenceInputs) -> int:
    """The leading size of the initial and final states: batch, or the number of documents."""
    return inputs.x.shape[0] if inputs.segments is None else inputs.segments.num_docs


def reset_layout(inputs: RecurrenceInputs) -> tuple[Tensor, Tensor]:
    """(resets, doc), both (batch, length) on x's device: ``resets`` is True where the recurrence starts
    afresh in processing order (document starts, or document ends when ``reverse``), ``doc`` (int64) the
    document of every token, which indexes the initial and final states."""
    x, segments = inputs.x, inputs.segments
    batch, length, _ = x.shape
    if segments is None:
        starts = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
        starts[:, 0] = True
        doc = torch.arange(batch, device=x.device)[:, None].expand(batch, length).contiguous()
    else:
        starts, doc = segments.starts, segments.doc
    if not inputs.reverse:
        return starts.contiguous(), doc.contiguous()
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]  # a token ends its document when the next one starts another
    return ends, doc.contiguous()


def fake_diagonal_recurrence(inputs: RecurrenceInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    x = inputs.x
    h = x.new_empty(x.shape)
    if not output_final_state:
        return h
    states = x.shape[0] if inputs.segments is None else inputs.segments.num_docs
    return h, x.new_empty(states, x.shape[-1])
