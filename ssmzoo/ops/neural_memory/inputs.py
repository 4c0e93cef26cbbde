"""One neural-memory call's inputs (:class:`MemoryInputs`) and every check of them (:func:`check_neural_memory`)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..checks import boolean, positive_int

OP = "neural_memory"
Weights = tuple[Tensor, ...]


class MemoryInputs(NamedTuple):
    """One call's inputs, as every backend receives them.

    q, k (batch, heads, length, d_in); v (batch, heads, length, d_out); theta, eta, alpha
    (batch, heads, length); initial_state = (weights, momentum), per MLP layer (batch or 1, heads,
    out, in); chunk_size: tokens per chunk; update_last_partial: also write a last, shorter chunk."""

    q: Tensor
    k: Tensor
    v: Tensor
    theta: Tensor
    eta: Tensor
    alpha: Tensor
    initial_state: tuple[Weights, Weights]
    chunk_size: int
    update_last_partial: bool = True


def check_neural_memory(x: MemoryInputs) -> None:
    q, k, v, theta, eta, alpha, initial_state, chunk_size, update_last_partial = x
    fn = OP
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(f"{fn}: {name} must be a floating tensor (batch, heads, length, d), "
                             f"got {getattr(t, 'shape', type(t).__name__)}")
    if q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{fn}: q and k must share one shape and v its (batch, heads, length); got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    for name, t in (("theta", theta), ("eta", eta), ("alpha", alpha)):
        if not isinstance(t, Tensor) or t.shape != q.shape[:3]:
            raise ValueError(f"{fn}: {name} must have shape (batch, heads, length) = {tuple(q.shape[:3])}, "
                             f"got {getattr(t, 'shape', type(t).__name__)}")
    positive_int(fn, "chunk_size", chunk_size)
    boolean(fn, "update_last_partial", update_last_partial)
    if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
        raise ValueError(f"{fn}: initial_state must be (weights, momentum), tuples of per-layer tensors")
    weights, momentum = initial_state
    if len(weights) < 1 or len(weights) != len(momentum):
        raise ValueError(f"{fn}: initial_state weights and momentum must list the same >= 1 layers, got "
                         f"{len(weights)} and {len(momentum)}")
    d_in = q.shape[-1]
    for i, (w, s) in enumerate(zip(weights, momentum)):
        if not isinstance(w, Tensor) or w.dim() != 4 or w.shape[1] != q.shape[1] or w.shape[-1] != d_in:
            raise ValueError(f"{fn}: initial_state weights[{i}] must be (batch or 1, heads={q.shape[1]}, out, "
                             f"in={d_in}), got {getattr(w, 'shape', type(w).__name__)}")
        if not isinstance(s, Tensor) or s.shape[-2:] != w.shape[-2:]:
            raise ValueError(f"{fn}: initial_state momentum[{i}] must have the shape of weights[{i}] "
                             f"{tuple(w.shape)}, got {getattr(s, 'shape', type(s).__name__)}")
        d_in = w.shape[-2]
    if d_in != v.shape[-1]:
        raise ValueError(f"{fn}: the memory's last layer outputs {d_in} features but v has {v.shape[-1]}")


def fake_neural_memory(x: MemoryInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, tuple[Weights, Weights]]:
    """Empty outputs shaped and typed like the backends' (the custom operator's fake implementation): y (batch,
    heads, length, d_out), and the final weights and momentum per layer, (batch, heads, out, in)."""
    q, v, (weights, momentum) = x.q, x.v, x.initial_state
    dtype = torch.promote_types(q.dtype, v.dtype)
    y = q.new_empty(*q.shape[:3], v.shape[-1], dtype=dtype)
    if not output_final_state:
        return y
    batch, heads = q.shape[:2]
    final = tuple(tuple(q.new_empty(batch, heads, *t.shape[-2:], dtype=torch.promote_types(t.dtype, dtype))
                        for t in ts) for ts in (weights, momentum))
    return y, final
