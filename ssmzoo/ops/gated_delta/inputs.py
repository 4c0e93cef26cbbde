"""The inputs of one gated delta rule call, and every check of them (the only place checks live).

Shapes (the convention of fla's ``chunk_gated_delta_rule`` and transformers' Qwen3-Next):
    q, k          (batch, length, heads_k, d_k)
    v             (batch, length, heads_v, d_v)    heads_v a multiple of heads_k
    g, beta       (batch, length, heads_v)         g = log α (≤ 0), beta = β in [0, 1]
    initial_state (num_seqs, heads_v, d_k, d_v)    num_seqs = batch, or segments.num_docs
Value head h reads query/key head h // (heads_v / heads_k): consecutive value heads share a key head
(grouped value attention, as transformers' ``repeat_interleave``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..segments import Segments

OP = "gated_delta_rule"


class GatedDeltaInputs(NamedTuple):
    """One call's tensors and options, as every backend receives them (checked by :func:`check_gated_delta`).

    ``scale`` multiplies q (None: d_k ** -0.5); ``chunk_size``: the chunk length of the chunked backends
    (results do not depend on it beyond rounding); ``segments``: packed documents (state reset at every
    document start; initial and final states per document)."""

    q: Tensor
    k: Tensor
    v: Tensor
    g: Tensor
    beta: Tensor
    scale: float | None = None
    chunk_size: int = 64
    initial_state: Tensor | None = None
    segments: Segments | None = None

    @property
    def num_seqs(self) -> int:
        """The leading size of initial and final states: the documents, or the rows."""
        return self.segments.num_docs if self.segments is not None else self.q.shape[0]

    @property
    def resolved_scale(self) -> float:
        return self.scale if self.scale is not None else self.q.shape[-1] ** -0.5


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _real(name: str, t: object, rank: int, doc: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{OP}: {name} must be a tensor {doc}, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{OP}: {name} must be a real floating tensor, got {t.dtype}")
    if t.dim() != rank:
        raise ValueError(f"{OP}: {name} must have shape {doc}, got {_shape(t)}")
    return t


def check_gated_delta(x: GatedDeltaInputs, output_final_state: bool = False) -> None:
    """Raise a ValueError naming the op and the argument unless ``x`` is a valid call."""
    q = _real("q", x.q, 4, "(batch, length, heads_k, d_k)")
    batch, length, heads_k, d_k = q.shape
    if min(batch, length, heads_k, d_k) < 1:
        raise ValueError(f"{OP}: q must have batch, length, heads_k, d_k >= 1, got shape {_shape(q)}")
    if _real("k", x.k, 4, "(batch, length, heads_k, d_k)").shape != q.shape:
        raise ValueError(f"{OP}: k must have q's shape {_shape(q)} (batch, length, heads_k, d_k), got {_shape(x.k)}")
    v = _real("v", x.v, 4, "(batch, length, heads_v, d_v)")
    if v.shape[:2] != (batch, length) or v.shape[2] < 1 or v.shape[2] % heads_k or v.shape[3] < 1:
        raise ValueError(f"{OP}: v must be (batch={batch}, length={length}, heads_v, d_v) with heads_v a multiple "
                         f"of heads_k={heads_k}, got shape {_shape(v)}")
    heads_v, d_v = v.shape[2], v.shape[3]
    if q.dtype != x.k.dtype or q.dtype != v.dtype:
        raise ValueError(f"{OP}: q, k and v must share one dtype, got q {q.dtype}, k {x.k.dtype}, v {v.dtype}")
    for name in ("g", "beta"):
        # the sizes go into the message only when raising: formatting a traced (symbolic) length fixes it
        t = _real(name, getattr(x, name), 3, "(batch, length, heads_v)")
        if t.shape != (batch, length, heads_v):
            raise ValueError(f"{OP}: {name} must be (batch={batch}, length={length}, heads_v={heads_v}), "
                             f"got shape {_shape(t)}")
    if x.scale is not None and (isinstance(x.scale, bool) or not isinstance(x.scale, (int, float))
                                or not math.isfinite(x.scale) or x.scale <= 0):
        raise ValueError(f"{OP}: scale must be None (d_k ** -0.5) or a positive finite number, got {x.scale!r}")
    if isinstance(x.chunk_size, bool) or not isinstance(x.chunk_size, int) or x.chunk_size < 1:
        raise ValueError(f"{OP}: chunk_size must be a positive int, got {x.chunk_size!r}")
    if not isinstance(output_final_state, bool):
        raise ValueError(f"{OP}: output_final_state must be True or False, got {output_final_state!r}")
    if x.segments is not None:
        s = x.segments
        if not isinstance(s, Segments):
            raise ValueError(f"{OP}: segments must be a ssmzoo Segments (Segments.from_seq_idx / from_cu_seqlens / "
                             f"from_lengths) or None, got {type(s).__name__}")
        if (s.batch, s.length) != (batch, length):
            raise ValueError(f"{OP}: segments describe a (batch, length) = {(s.batch, s.length)} input, but q has "
                             f"{(batch, length)}")
        if s.device != q.device:
            raise ValueError(f"{OP}: segments must be on q's device {q.device}, got {s.device}")
    if x.initial_state is not None:
        h0 = _real("initial_state", x.initial_state, 4, "(num_seqs, heads_v, d_k, d_v)")
        want = (x.num_seqs, heads_v, d_k, d_v)
        if h0.shape != want:
            per = "document (segments.num_docs)" if x.segments is not None else "row (batch)"
            raise ValueError(f"{OP}: initial_state must be (num_seqs={want[0]}, heads_v={heads_v}, d_k={d_k}, "
                             f"d_v={d_v}), one state per {per}, got shape {_shape(h0)}")
    for name in ("k", "v", "g", "beta", "initial_state"):
        t = getattr(x, name)
        if t is not None and t.device != q.device:
            raise ValueError(f"{OP}: {name} must be on q's device {q.device}, got {t.device}")


def check_gated_delta_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                           scale: float | None) -> None:
    """The checks of one token (``gated_delta_step``): the shapes of one position of the sequence call."""
    fn = "gated_delta_step"
    q = _real("q", q, 3, "(batch, heads_k, d_k)")
    batch, heads_k, d_k = q.shape
    if _real("k", k, 3, "(batch, heads_k, d_k)").shape != q.shape:
        raise ValueError(f"{fn}: k must have q's shape {_shape(q)} (batch, heads_k, d_k), got {_shape(k)}")
    v = _real("v", v, 3, "(batch, heads_v, d_v)")
    if v.shape[0] != batch or v.shape[1] < 1 or v.shape[1] % heads_k or v.shape[2] < 1:
        raise ValueError(f"{fn}: v must be (batch={batch}, heads_v, d_v) with heads_v a multiple of heads_k={heads_k}, "
                         f"got shape {_shape(v)}")
    heads_v, d_v = v.shape[1:]
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"{fn}: q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    for name, t in (("g", g), ("beta", beta)):
        if _real(name, t, 2, f"(batch={batch}, heads_v={heads_v})").shape != (batch, heads_v):
            raise ValueError(f"{fn}: {name} must be (batch={batch}, heads_v={heads_v}), got shape {_shape(t)}")
    if _real("state", state, 4, "(batch, heads_v, d_k, d_v)").shape != (batch, heads_v, d_k, d_v):
        raise ValueError(f"{fn}: state must be (batch={batch}, heads_v={heads_v}, d_k={d_k}, d_v={d_v}), "
                         f"got shape {_shape(state)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"{fn}: scale must be None (d_k ** -0.5) or a positive finite number, got {scale!r}")
    for name, t in (("k", k), ("v", v), ("g", g), ("beta", beta), ("state", state)):
        if t.device != q.device:
            raise ValueError(f"{fn}: {name} must be on q's device {q.device}, got {t.device}")


def fake_gated_delta(x: GatedDeltaInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    b, length, hv, dv = x.v.shape
    o = x.q.new_empty(b, length, hv, dv)
    if not output_final_state:
        return o
    seqs = b if x.segments is None else x.segments.num_docs
    dtype = torch.float64 if x.q.dtype == torch.float64 else torch.float32
    return o, x.q.new_empty(seqs, hv, x.k.shape[-1], dv, dtype=dtype)
