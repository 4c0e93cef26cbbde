"""Mamba-2's state space dual (SSD) layer, sequentially: the oracle. Dao & Gu, "Transformers are SSMs:
Generalized Models and Efficient Algorithms Through Structured State Space Duality" (arXiv:2405.21060).

Per sequence and head h (scalar decay per head, state S_t of size headdim p × d_state n):
    Δ_t = clamp(softplus?(dt_t + dt_bias), dt_limit)         (mamba-ssm's order of the three)
    a_t = exp(Δ_t A_h)
    S_t = a_t S_{t-1} + Δ_t x_t B_tᵀ                           (SSD paper, eq. of the SSM with A = a_t I)
    y_t = S_t C_t + D_h x_t,  then y_t *= silu(z_t) when z is given
with B_t, C_t of group g shared by heads g·(H/G) .. (g+1)·(H/G)-1, and S_{-1} the sequence's initial
state (zero by default). With packed documents (``segments``) every document runs alone, from its
own initial state. Every fast backend is tested against this function.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from einops import einsum, repeat
from torch import Tensor

from ..chunks import sequence_spans
from .inputs import SSDInputs


def discretize_dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float]) -> Tensor:
    """Δ (batch, length, heads) from the raw dt: + dt_bias, softplus if asked, then clamped to dt_limit
    (always: mamba-ssm clamps to its default (0, inf) too, so a negative raw Δ without softplus is 0)."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)  # threshold 20, as mamba-ssm's kernels
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def ssd_reference(inputs: SSDInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """y (batch, length, heads, headdim) [, final states (batch or num_docs, heads, headdim, d_state)]; shapes
    as in :func:`ssmzoo.ops.ssd.ssd`. The recurrence has no chunks: ``chunk_size`` is unused.

    Computes in float32 (float64 for float64 inputs); y in x's dtype, final states in the compute dtype."""
    x, dt, A, B, C, _, D, z, dt_bias, dt_softplus, dt_limit, initial_state, segments = inputs
    in_dtype = x.dtype
    dtype = torch.promote_types(x.dtype, torch.float32)
    batch, length, heads, headdim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    x, A = x.to(dtype), A.to(dtype)
    delta = discretize_dt(dt.to(dtype), dt_bias, dt_softplus, dt_limit)
    B = repeat(B.to(dtype), "b l g n -> b l (g r) n", r=heads // groups)
    C = repeat(C.to(dtype), "b l g n -> b l (g r) n", r=heads // groups)

    rows: list[list[Tensor]] = [[] for _ in range(batch)]
    finals = []
    for k, span in enumerate(sequence_spans(batch, length, segments)):
        S = initial_state[k].to(dtype) if initial_state is not None else x.new_zeros(heads, headdim, d_state)
        for t in range(span.start, span.stop):
            d = delta[span.row, t]  # (heads,)
            a = torch.exp(d * A)
            S = a[:, None, None] * S + einsum(d[:, None] * x[span.row, t], B[span.row, t], "h p, h n -> h p n")
            rows[span.row].append(einsum(S, C[span.row, t], "h p n, h n -> h p"))
        finals.append(S)
    y = torch.stack([torch.stack(r) for r in rows])
    if D is not None:
        y = y + (D.to(dtype)[:, None] if D.dim() == 1 else D.to(dtype)) * x
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(in_dtype)
    return (y, torch.stack(finals)) if output_final_state else y
