"""Mamba-3 in chunks, plain PyTorch; ``run_chunked`` is shared with the C++ and Triton backends, which only
replace the intra-chunk step (``IntraChunk``: csrc/mamba3_cpu.cpp, triton.py).

Everything element-wise runs first, with autograd (``prepare``): the phases φ (one float64 cumsum per
document), the rotated and biased B̄ (keys k) and C̄ (queries q), x lifted to the rank (values v), and three
per-token weights. Then the trapezoid is rewritten so the scan is Mamba-2's SSD with two weights: with
S_t = h_t + (1 - λ_{t+1}) Δ_{t+1} x_t B̄_tᵀ (the state plus the left-endpoint term the next step will add),

    S_t = exp(a_t) S_{t-1} + w_t Σ_r v_t^r k_t^{rᵀ},    y_t^r = (exp(a_t) S_{t-1} + g_t Σ_r v_t^r k_t^{rᵀ}) q_t^r

with a_t = Δ_t A_t, g_t = γ_t = λ_t Δ_t and w_t = γ_t + (1 - λ_{t+1}) Δ_{t+1} (0 past a document's last token,
so S there is h). A document's initial state enters as h_0 + (1 - λ_1) Δ_1 x_0 B̄_0ᵀ (its state plus the left
endpoint of its first step). Within a chunk of T tokens (rows (t, r), T·R of them), with cs the chunk-local
cumsum of a, the output is the sum of

1. intra-chunk: y_i = Σ_j Λ_ij (q_i·k_j) v_j with Λ_ij = exp(cs_{t_i} - cs_{t_j}) w_{t_j} for t_j < t_i,
   g_{t_i} for t_j = t_i (every rank of the same token), 0 after;
2. the chunk's own end state U = Σ_j exp(cs_T - cs_{t_j}) w_{t_j} v_j k_jᵀ;
3. the states between chunks (SSD's ``pass_states``: every document starts a chunk, ssd/sequences.py);
4. state to output: y_i += exp(cs_{t_i}) E q_i, E the state entering the chunk.
Steps 2-4 are einsums with autograd here for every backend; step 1 is the backend's.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from einops import rearrange
from torch import Tensor

from ..ssd.chunked import pass_states
from ..ssd.sequences import ChunkLayout, Span
from .inputs import Mamba3Inputs, Mamba3State, compute_dtype
from .reference import TWO_PI, as_rank_form, finish_output
from .rotary import rotate

# intra(q, k, v, cs, g, w, rank) -> y: q, k (K, heads, T·rank, d_state); v (K, heads, T·rank, headdim);
# cs, g, w (K, heads, T). Rows are (token, rank), token-major.
Intra = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int], Tensor]


class Prepared(NamedTuple):
    """The element-wise part, (batch, length, heads, ...) in the compute dtype: q = C̄, k = B̄ (rank, d_state),
    v = x^r and the gate (rank, headdim); a = Δ A, g and w (see the module docstring); phi the phases;
    init the folded initial SSM state (num, heads, headdim, d_state) or None; first/last each sequence's first
    and last token as flat (row · length + t) indices."""

    q: Tensor
    k: Tensor
    v: Tensor
    gate: Tensor | None
    a: Tensor
    g: Tensor
    w: Tensor
    phi: Tensor
    init: Tensor | None
    first: Tensor
    last: Tensor


def _spans(inputs: Mamba3Inputs) -> list:
    if inputs.segments is not None:
        return inputs.segments.spans
    batch, length = inputs.x.shape[:2]
    return [Span(r, 0, length) for r in range(batch)]


def phases(turn: Tensor, inputs: Mamba3Inputs, dtype: torch.dtype) -> Tensor:
    """φ_t = φ_0 + Σ_{s≤t in the document} Δ_s θ_s mod 2π, from turn = Δ θ (batch, length, heads, n_angles). The
    sums run in float64 (a float32 cumsum over thousands of tokens would lose the phase's low digits)."""
    total = torch.cumsum(turn.to(torch.float64), dim=1)
    segments, init = inputs.segments, inputs.initial_state
    batch, length = turn.shape[:2]
    if segments is not None and not segments.unpacked:
        before = total - turn.to(torch.float64)  # the sum before each token; subtract it at the document's start
        start = (torch.arange(length, device=turn.device) - segments.positions)[:, :, None, None]
        total = total - torch.gather(before, 1, start.expand_as(before))
    if init is not None:
        doc = segments.doc if segments is not None else torch.arange(batch, device=turn.device)[:, None].expand(
            batch, length)
        total = total + init.angle.to(torch.float64)[doc]
    return torch.remainder(total, TWO_PI).to(dtype)


def prepare(inputs: Mamba3Inputs) -> Prepared:
    dtype = compute_dtype(inputs.x)
    B, C, v, gate = as_rank_form(inputs, dtype)
    batch, length = B.shape[:2]
    dt, A = inputs.dt.to(dtype), inputs.A.to(dtype)
    lam = torch.sigmoid(inputs.trap.to(dtype))
    gamma, beta = lam * dt, (1 - lam) * dt  # β without its α: α multiplies the whole S_{t-1} + left endpoint
    phi = phases(math.pi * torch.tanh(inputs.angles.to(dtype)) * dt[..., None], inputs, dtype)
    cos, sin = torch.cos(phi)[:, :, :, None], torch.sin(phi)[:, :, :, None]
    k, q = rotate(B, cos, sin, inputs.pairs), rotate(C, cos, sin, inputs.pairs)
    # The next token's left-endpoint weight, where the next token belongs to the same document.
    nxt = torch.cat([beta[:, 1:], torch.zeros_like(beta[:, :1])], dim=1)
    if inputs.segments is not None:
        later = torch.cat([inputs.segments.starts[:, 1:], torch.ones_like(inputs.segments.starts[:, :1])], dim=1)
        nxt = nxt.masked_fill(later[:, :, None], 0.0)
    spans = _spans(inputs)
    first = torch.tensor([s.row * length + s.start for s in spans], dtype=torch.long, device=B.device)
    last = torch.tensor([s.row * length + s.stop - 1 for s in spans], dtype=torch.long, device=B.device)
    init = None
    if inputs.initial_state is not None:
        s = inputs.initial_state
        k0 = s.k.to(dtype) if inputs.mimo else s.k.to(dtype)[:, :, None]
        v0 = s.v.to(dtype)[:, :, None] * inputs.mimo_x.to(dtype) if inputs.mimo else s.v.to(dtype)[:, :, None]
        beta0 = rearrange(beta, "b l h -> (b l) h").index_select(0, first)
        init = s.ssm.to(dtype) + beta0[:, :, None, None] * torch.einsum("shrp,shrn->shpn", v0, k0)
    return Prepared(q, k, v, gate, dt * A, gamma, gamma + nxt, phi, init, first, last)


def intra_torch(q: Tensor, k: Tensor, v: Tensor, cs: Tensor, g: Tensor, w: Tensor, rank: int) -> Tensor:
    """Step 1 with autograd: the (T·R, T·R) matrix Λ ∘ q kᵀ per chunk and head."""
    T = cs.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=cs.device).tril(-1)
    diff = (cs[..., :, None] - cs[..., None, :]).masked_fill(~strict, -math.inf)  # nothing positive exponentiated
    lam = torch.exp(diff) * w[..., None, :] + torch.diag_embed(g)
    if rank > 1:
        lam = lam.repeat_interleave(rank, dim=-1).repeat_interleave(rank, dim=-2)
    return (lam * (q @ k.transpose(-1, -2))) @ v


def chunk_scan(prep: Prepared, inputs: Mamba3Inputs, intra: Intra) -> tuple[Tensor, Tensor]:
    """Steps 1-4: (h C̄ per rank (batch, length, heads, rank, headdim), final SSM states (num, heads, headdim,
    d_state))."""
    batch, length, heads, rank, _ = prep.q.shape
    spans = _spans(inputs)
    chunk = max(1, min(inputs.chunk_size, max(s.stop - s.start for s in spans)))
    layout = ChunkLayout(spans, batch, length, chunk, prep.q.device)

    def rows(t: Tensor) -> Tensor:  # (batch, length, heads, rank, n) -> (chunks, heads, T·rank, n)
        return rearrange(layout.to_chunks(t), "b c t h r n -> (b c) h (t r) n").contiguous()

    def tokens(t: Tensor) -> Tensor:  # (batch, length, heads) -> (chunks, heads, T)
        return rearrange(layout.to_chunks(t), "b c t h -> (b c) h t").contiguous()

    q, k, v = rows(prep.q), rows(prep.k), rows(prep.v)
    cs = torch.cumsum(tokens(prep.a), dim=-1)
    w = tokens(prep.w)
    y = intra(q, k, v, cs, tokens(prep.g), w, rank)
    nchunks = layout.nchunks
    # 2. U = Σ_j exp(cs_T - cs_j) w_j v_j k_jᵀ
    omega = (torch.exp(cs[..., -1:] - cs) * w).repeat_interleave(rank, dim=-1)
    U = torch.einsum("khmp,khmn->khpn", v * omega[..., None], k)
    # 3. between chunks
    S, E = pass_states(rearrange(U, "(b c) h p n -> b c h p n", b=batch),
                       rearrange(cs[..., -1], "(b c) h -> b c h", b=batch), layout.initial_chunks(prep.init),
                       layout.starts)
    # 4. y_i += exp(cs_i) E q_i
    decay = torch.exp(cs).repeat_interleave(rank, dim=-1)
    y = y + decay[..., None] * torch.einsum("khmn,khpn->khmp", q, rearrange(E, "b c h p n -> (b c) h p n"))
    y = layout.from_chunks(rearrange(y, "(b c) h (t r) p -> b c t h r p", b=batch, c=nchunks, r=rank))
    return y, layout.final_states(S, prep.init)


def run_chunked(inputs: Mamba3Inputs, output_final_state: bool, intra: Intra) -> Tensor | tuple[Tensor, Mamba3State]:
    """The whole op around an intra-chunk step; returns what ``mamba3_reference`` returns."""
    prep = prepare(inputs)
    y, ssm = chunk_scan(prep, inputs, intra)
    y = finish_output(y, prep.v, prep.gate, inputs)
    if not output_final_state:
        return y
    flat = "b l h ... -> (b l) h ..."
    angle = rearrange(prep.phi, flat).index_select(0, prep.last)
    k = rearrange(prep.k, flat).index_select(0, prep.last)
    x_last = rearrange(inputs.x, flat).index_select(0, prep.last).to(ssm.dtype)
    return y, Mamba3State(angle, ssm, k if inputs.mimo else k[:, :, 0], x_last)


def mamba3_chunked(inputs: Mamba3Inputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Mamba3State]:
    """Same contract as :func:`~.reference.mamba3_reference`; the intra-chunk step in plain PyTorch."""
    return run_chunked(inputs, output_final_state, intra_torch)
