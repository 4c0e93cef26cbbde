"""SSD's chunked algorithm in plain PyTorch (Dao & Gu, "Transformers are SSMs", arXiv:2405.21060, sec. 6 /
Listing 1).

The sequence is cut in chunks of T tokens (``ops/chunks.py``'s ChunkLayout: every sequence, a row or a
packed document, starts a chunk). With
cs_i = Σ_{k≤i} Δ_k A the chunk-local cumulative log-decay, the output is the sum of four steps:
1. intra-chunk, the quadratic "attention" form on the diagonal blocks:
       y_i = Σ_{j≤i} exp(cs_i - cs_j) (C_i·B_j) Δ_j x_j;
2. each chunk's end state from its own tokens: U_c = Σ_j exp(cs_T - cs_j) Δ_j x_j B_jᵀ;
3. the recurrence between chunks: S_c = exp(cs_T) E_c + U_c, with the entering state E_c = S_{c-1},
   or the sequence's initial state on the chunk that starts a sequence; solved in one product with
   the (chunks × chunks) matrix exp(segsum) of the chunk decays (masked across sequences; chunks.py);
4. state to output: y_i += exp(cs_i) E_c C_i.
Within a chunk the decay exponent is cs_i - cs_j, a sum over at most T steps (no precision lost to
differences of long sums); the upper triangle is pushed far negative before the exp and zeroed after
(no exp of positive sums); decays are floored at exp(FLOOR) (see FLOOR). Step 3 sums its segments
by a masked cumsum, so chunk decays keep full precision however long the sequence.

Chunks are processed in blocks with a hand-written backward that recomputes each block's (T, T)
matrices (IntraChunk): memory is O(T²) per chunk and head for one block at a time, never O(L²),
and the allocator reuses one block's buffers instead of touching fresh pages for every chunk.
Steps 3-4 and everything around the chunks (Δ, layout, D, gate) take autograd's backward.
``run_chunked`` (Δ, layout, D, gate, final states) is shared with the C++ and Triton backends, which
replace ``chunk_scan_torch``.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

from ..chunks import FLOOR, ChunkLayout, decay_exp, pass_states, sequence_spans
from .inputs import SSDInputs
from .reference import discretize_dt

# core(x, delta, cs, B, C, init, starts) -> (y, chunk end states); shapes in chunk_scan_torch.
ChunkCore = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, "Tensor | None", Tensor], "tuple[Tensor, Tensor]"]


def _decay_and_scores(cs: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """For a block of chunks, cs (R, h, T), B, C (R, g, T, n): the decay matrices exp(segsum)
    (R, g, h/g, T, T) and the scores C Bᵀ (R, g, T, T).

    segsum_ij = cs_i - cs_j (a sum over one chunk: no precision lost) comes from one rank-2 product
    [cs, 1] [1, -cs]ᵀ added to a mask that sends the upper triangle far below FLOOR, so nothing
    positive is exponentiated there; floor, exp and tril (exact zeros) then work in place."""
    R, heads, T = cs.shape
    groups = B.shape[1]
    ones = torch.ones_like(cs)
    left = torch.stack([cs, ones], dim=-1).view(R * heads, T, 2)
    right = torch.stack([ones, -cs], dim=-2).view(R * heads, 2, T)
    upper = torch.full((T, T), -1e30, dtype=cs.dtype, device=cs.device).triu_(1)
    decay = torch.baddbmm(upper, left, right).clamp_min_(FLOOR[cs.dtype]).exp_().tril_()
    return decay.view(R, groups, heads // groups, T, T), C @ B.transpose(-1, -2)


def _blocks(rows: int, heads: int, T: int) -> list[slice]:
    """Blocks of chunks whose (h, T, T) temporaries take about BLOCK_ELEMENTS entries: small enough to stay
    in cache and be reused by the allocator, large enough for few Python iterations."""
    per_block = max(1, BLOCK_ELEMENTS // (heads * T * T))
    return [slice(i, min(i + per_block, rows)) for i in range(0, rows, per_block)]


BLOCK_ELEMENTS = 1 << 21


class IntraChunk(torch.autograd.Function):
    """Steps 1 and 2 for every chunk: y_i = Σ_{j≤i} M_ij xd_j with M = exp(segsum) ∘ C Bᵀ and xd = Δ x, and
    the chunk's own end state U = Σ_j w_j xd_j B_jᵀ with w_j = exp(cs_T - cs_j). Chunks go in blocks;
    the backward recomputes each block's (T, T) matrices instead of saving them, so memory is the
    inputs plus one block.

    x (R, h, T, p); delta, cs (R, h, T); B, C (R, g, T, n) -> y (R, h, T, p), U (R, h, p, n)."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, cs: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        rows, heads, T, headdim = x.shape
        groups, d_state = B.shape[1], B.shape[3]
        y = torch.empty_like(x)
        U = x.new_empty(rows, heads, headdim, d_state)
        for blk in _blocks(rows, heads, T):
            xd = x[blk] * delta[blk, ..., None]
            decay, scores = _decay_and_scores(cs[blk], B[blk], C[blk])
            M = decay.mul_(scores[:, :, None]).view(-1, heads, T, T)
            torch.matmul(M, xd, out=y[blk])
            w = decay_exp(cs[blk, :, -1:] - cs[blk])  # decay from each token to the chunk's end
            xdw = (xd * w[..., None]).view(-1, groups, heads // groups, T, headdim)
            U[blk] = torch.einsum("kgrtp,kgtn->kgrpn", xdw, B[blk]).reshape(-1, heads, headdim, d_state)
        ctx.save_for_backward(x, delta, cs, B, C, y)
        return y, U

    @staticmethod
    def backward(ctx, dy: Tensor, dU: Tensor) -> tuple[Tensor, ...]:
        x, delta, cs, B, C, y = ctx.saved_tensors
        rows, heads, T, headdim = x.shape
        groups = B.shape[1]
        r = heads // groups
        dy = dy.contiguous()
        dx, ddelta, dcs = torch.empty_like(x), torch.empty_like(delta), torch.empty_like(cs)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        for blk in _blocks(rows, heads, T):
            xd = x[blk] * delta[blk, ..., None]
            Bb, Cb, csb, dyb, dUb = B[blk], C[blk], cs[blk], dy[blk], dU[blk]
            n = xd.shape[0]
            decay, scores = _decay_and_scores(csb, Bb, Cb)
            # ∂/∂(C Bᵀ) of y = (decay ∘ C Bᵀ) xd, summed over the group's heads; then M = decay ∘ C Bᵀ in place.
            dscores = (dyb @ xd.transpose(-1, -2)).view(n, groups, r, T, T).mul_(decay).sum(2)
            M = decay.mul_(scores[:, :, None]).view(n, heads, T, T)
            dxd = M.transpose(-1, -2) @ dyb
            dCb = dscores @ Bb
            dBb = dscores.transpose(-1, -2) @ Cb
            # M_ij ∝ exp(cs_i - cs_j): ∂cs_i = Σ_j dM_ij M_ij = <dy_i, y_i> and ∂cs_j -= Σ_i dM_ij M_ij = <xd_j, dxd_j>,
            # with dM = dy xdᵀ: no (T, T) pass needed.
            dcsb = (dyb * y[blk]).sum(-1) - (xd * dxd).sum(-1)
            # U = Σ_j w_j xd_j B_jᵀ with w_j = exp(cs_T - cs_j)
            w = decay_exp(csb[..., -1:] - csb)
            BdU = torch.einsum("kgtn,kgrpn->kgrtp", Bb, dUb.view(n, groups, r, headdim, -1)).reshape(n, heads, T, headdim)
            dxd += w[..., None] * BdU
            dw = (xd * BdU).sum(-1) * w
            dcsb -= dw
            dcsb[..., -1] += dw.sum(-1)
            dBb += torch.einsum("kgrtp,kgrpn->kgtn", (xd * w[..., None]).view(n, groups, r, T, headdim),
                                dUb.view(n, groups, r, headdim, -1))
            dx[blk] = dxd * delta[blk, ..., None]
            ddelta[blk] = (dxd * x[blk]).sum(-1)
            dcs[blk], dB[blk], dC[blk] = dcsb, dBb, dCb
        return dx, ddelta, dcs, dB, dC


def chunk_scan_torch(x: Tensor, delta: Tensor, cs: Tensor, B: Tensor, C: Tensor, init: Tensor | None,
                     starts: Tensor) -> tuple[Tensor, Tensor]:
    """The four steps on chunked inputs.

    x (b, c, T, h, p); delta, cs (b, c, T, h); B, C (b, c, T, g, n); init (b, c, h, p, n) the initial
    state of the sequence each chunk starts (zero elsewhere) or None; starts (b, c) bool.
    Returns y (b, c, T, h, p) without the D skip and the gate, and the chunk end states (b, c, h, p, n).
    """
    batch, nchunks, T, heads, headdim = x.shape
    r = heads // B.shape[3]
    # Chunk-major, head-major layouts: every product below is a batched matmul over chunks and heads.
    cs_k = rearrange(cs, "b c t h -> (b c) h t").contiguous()
    C_k = rearrange(C, "b c t g n -> (b c) g t n").contiguous()
    y, U = IntraChunk.apply(rearrange(x, "b c t h p -> (b c) h t p").contiguous(),
                            rearrange(delta, "b c t h -> (b c) h t").contiguous(), cs_k,
                            rearrange(B, "b c t g n -> (b c) g t n").contiguous(), C_k)
    S, E = pass_states(rearrange(U, "(b c) h p n -> b c h p n", b=batch), cs[:, :, -1], init, starts)
    # 4. State to output: y_i += exp(cs_i) E_c C_i.
    E = rearrange(E, "b c (g r) p n -> (b c) g r p n", r=r)
    y_off = torch.einsum("kgtn,kgrpn->kgrtp", C_k, E).reshape(batch * nchunks, heads, T, headdim)
    y = y + y_off * decay_exp(cs_k)[..., None]
    return rearrange(y, "(b c) h t p -> b c t h p", b=batch), S


def run_chunked(core: ChunkCore, inputs: SSDInputs, output_final_state: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Everything around a chunk core: Δ, the chunk layout, D, the gate, final states (shared by the
    chunked, C++ and Triton backends). Computes in float32 (float64 for float64 inputs)."""
    x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, segments = inputs
    in_dtype = x.dtype
    dtype = torch.promote_types(x.dtype, torch.float32)
    batch, length, _, _ = x.shape
    spans = sequence_spans(batch, length, segments)
    # A chunk longer than the longest sequence would only add padding.
    chunk = max(1, min(chunk_size, max(s.stop - s.start for s in spans)))
    layout = ChunkLayout(spans, batch, length, chunk, x.device)
    x = x.to(dtype)
    # Padding has Δ = 0: decay 1 and input 0, so a chunk's end state is its sequence's after its last token.
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
    return (y, layout.final_states(states)) if output_final_state else y


def ssd_chunked(inputs: SSDInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`ssd_reference`."""
    return run_chunked(chunk_scan_torch, inputs, output_final_state)
