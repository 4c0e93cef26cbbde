"""SSD's chunked algorithm in plain PyTorch (Dao & Gu 2024, sec. 6 / Listing 1), gradients by autograd.

The sequence is cut in chunks of T tokens (sequences.py: every sequence starts a chunk). With
cs_i = Σ_{k≤i} Δ_k A the chunk-local cumulative log-decay, the output is the sum of four steps:
1. intra-chunk, the quadratic "attention" form on the diagonal blocks:
       y_i = Σ_{j≤i} exp(cs_i - cs_j) (C_i·B_j) Δ_j x_j;
2. each chunk's end state from its own tokens: U_c = Σ_j exp(cs_T - cs_j) Δ_j x_j B_jᵀ;
3. the recurrence between chunks: S_c = exp(cs_T) E_c + U_c, with the entering state E_c = S_{c-1},
   or the sequence's initial state on the chunk that starts a sequence; solved in one product with
   the (chunks × chunks) matrix exp(segsum) of the chunk decays (masked across sequences);
4. state to output: y_i += exp(cs_i) E_c C_i.
The decay matrices are exp of sums of Δ A over a segment, masked to -inf above the diagonal before
the exp (no exp of positive sums); step 3 sums its segments by a masked cumsum, not by differences
of a long cumsum, so chunk decays keep full precision however long the sequence. Memory is
O(T²) per chunk and head (the decay matrix), never O(L²).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

from .reference import discretize_dt
from .sequences import ChunkLayout, sequence_spans

# core(x, delta, cs, B, C, init, starts) -> (y, chunk end states); shapes in chunk_scan_torch.
ChunkCore = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, "Tensor | None", Tensor], "tuple[Tensor, Tensor]"]


def segsum(v: Tensor) -> Tensor:
    """(..., c) -> (..., c, c): out[i, j] = Σ_{k=j+1..i} v_k for i >= j, -inf above the diagonal.
    A cumsum of the masked row-repeated v: no difference of large partial sums."""
    c = v.shape[-1]
    strict = torch.ones(c, c, dtype=torch.bool, device=v.device).tril(-1)
    out = v[..., :, None].expand(*v.shape, c).masked_fill(~strict, 0).cumsum(dim=-2)
    return out.masked_fill(~torch.ones_like(strict).tril(), -math.inf)


def chunk_scan_torch(x: Tensor, delta: Tensor, cs: Tensor, B: Tensor, C: Tensor, init: Tensor | None,
                     starts: Tensor) -> tuple[Tensor, Tensor]:
    """The four steps on chunked inputs.

    x (b, c, T, h, p); delta, cs (b, c, T, h); B, C (b, c, T, g, n); init (b, c, h, p, n) the initial
    state of the sequence each chunk starts (zero elsewhere) or None; starts (b, c) bool.
    Returns y (b, c, T, h, p) without the D skip and the gate, and the chunk end states (b, c, h, p, n).
    """
    batch, nchunks, T, heads, _ = x.shape
    groups = B.shape[3]
    r = heads // groups
    # Head-major layouts, so every product below is a batched matmul over (b, h, c) or (b, g, c).
    cs_h = rearrange(cs, "b c t h -> b h c t")
    delta_h = rearrange(delta, "b c t h -> b h c t")
    x_h = rearrange(x, "b c t h p -> b h c t p")
    B_g = rearrange(B, "b c t g n -> b g c t n")
    C_g = rearrange(C, "b c t g n -> b g c t n")

    # 1. Diagonal blocks: (decay ∘ C Bᵀ) Δ x, decay = exp(segsum) masked before the exp.
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((cs_h[..., :, None] - cs_h[..., None, :]).masked_fill(~causal, -math.inf))
    scores = C_g @ B_g.transpose(-1, -2)  # (b, g, c, T, T), shared by the group's heads
    M = decay.view(batch, groups, r, nchunks, T, T) * scores[:, :, None] * delta_h.view(
        batch, groups, r, nchunks, 1, T)
    y = M.view(batch, heads, nchunks, T, T) @ x_h  # (b, h, c, T, p)

    # 2. Each chunk's own end state: Σ_j exp(cs_T - cs_j) Δ_j x_j B_jᵀ.
    w = torch.exp(cs_h[..., -1:] - cs_h) * delta_h  # (b, h, c, T)
    xw = (x_h * w[..., None]).view(batch, groups, r, nchunks, T, -1)
    local = torch.einsum("bgrctp,bgctn->bgrcpn", xw, B_g).reshape(batch, heads, nchunks, -1)

    # 3. Between chunks: S_c = Σ_{j≤c, same sequence} exp(Σ_{i=j+1..c} chunk decay_i) (U_j + exp(decay_j) init_j).
    chunk_decay = cs_h[..., -1]  # (b, h, c)
    U = local
    if init is not None:
        init_h = rearrange(init, "b c h p n -> b h c (p n)")
        U = U + torch.exp(chunk_decay)[..., None] * init_h
    seq = torch.cumsum(starts.long(), dim=1)  # chunks of one sequence share this id
    same = (seq[:, :, None] == seq[:, None, :])[:, None]  # (b, 1, c, c)
    S = torch.exp(segsum(chunk_decay).masked_fill(~same, -math.inf)) @ U  # (b, h, c, p n)

    # 4. Entering states E_c (the previous chunk's end state, or the initial state), to the outputs.
    E = torch.cat([torch.zeros_like(S[:, :, :1]), S[:, :, :-1]], dim=2) * (~starts)[:, None, :, None]
    if init is not None:
        E = E + init_h
    E = E.view(batch, groups, r, nchunks, -1, B.shape[-1])
    y_off = torch.einsum("bgctn,bgrcpn->bgrctp", C_g, E).reshape(batch, heads, nchunks, T, -1)
    y = y + y_off * torch.exp(cs_h)[..., None]
    states = rearrange(S, "b h c (p n) -> b c h p n", n=B.shape[-1])
    return rearrange(y, "b h c t p -> b c t h p"), states


def run_chunked(
    core: ChunkCore,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None,
    z: Tensor | None,
    dt_bias: Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
    initial_state: Tensor | None,
    output_final_state: bool,
    seq_idx: Tensor | None,
    cu_seqlens: Tensor | None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Everything around a chunk core: Δ, the chunk layout, D, the gate, final states (shared by the
    chunked and Triton backends). Computes in float32 (float64 for float64 inputs)."""
    in_dtype = x.dtype
    dtype = torch.promote_types(x.dtype, torch.float32)
    batch, length, _, _ = x.shape
    spans = sequence_spans(batch, length, seq_idx, cu_seqlens)
    # A chunk longer than the longest sequence would only add padding.
    chunk = max(1, min(chunk_size, max(s.stop - s.start for s in spans)))
    layout = ChunkLayout(spans, batch, length, chunk, x.device)
    x = x.to(dtype)
    delta = layout.to_chunks(discretize_dt(dt.to(dtype), dt_bias, dt_softplus, dt_limit))
    cs = torch.cumsum(delta * A.to(dtype), dim=2)  # within each chunk
    h0 = initial_state.to(dtype) if initial_state is not None else None
    y, states = core(layout.to_chunks(x), delta, cs, layout.to_chunks(B.to(dtype)), layout.to_chunks(C.to(dtype)),
                     layout.initial_chunks(h0), layout.starts)
    y = layout.from_chunks(y)
    if D is not None:
        y = y + (D.to(dtype)[:, None] if D.dim() == 1 else D.to(dtype)) * x
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(dtype))
    y = y.to(in_dtype)
    return (y, layout.final_states(states, h0)) if output_final_state else y


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    chunk_size: int = 256,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    seq_idx: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`ssd_reference`."""
    return run_chunked(chunk_scan_torch, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit,
                       initial_state, output_final_state, seq_idx, cu_seqlens)
