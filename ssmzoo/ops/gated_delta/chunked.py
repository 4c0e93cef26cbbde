"""The gated delta rule in chunks (the WY / UT-transform form of Yang et al., arXiv 2412.06464, section 3.3),
in plain PyTorch, with autograd's backward.

Within a chunk of T tokens entered with state E (d_k × d_v), let γ_i = Σ_{j≤i} g_j (chunk-local cumulative
log-decay) and Γ_ij = exp(γ_i − γ_j) for j ≤ i (0 above the diagonal). Writing every step as
S_i = α_i S_{i-1} + k_i δ_iᵀ, the corrections δ_i = β_i (v_i − α_i S_{i-1}ᵀ k_i) solve one unit lower
triangular system (the UT transform):

    (I + M) δ = diag(β) V − diag(β eᵞ) K E,       M_ij = β_i (k_i·k_j) Γ_ij for j < i,

so with U = (I + M)⁻¹ diag(β) V and W = (I + M)⁻¹ diag(β eᵞ) K (the WY factors, independent of E):

    δ   = U − W E
    o_i = scale · (eᵞⁱ Eᵀ q_i + Σ_{j≤i} Γ_ij (q_i·k_j) δ_j)
    S_T = eᵞᵀ E + Σ_j exp(γ_T − γ_j) k_j δ_jᵀ                  (the state entering the next chunk).

Every exponent is a difference γ_i − γ_j with j ≤ i, or γ_i, or γ_T − γ_j: a sum of at most T gates (no
precision lost to long sums), never positive for gates ≤ 0; the upper triangle is masked before the exp.
All chunks' factors come from batched products; only the pass from chunk to chunk (a few (d_k, d_v)
products per chunk) is sequential. Packed documents use ssd's chunk layout (every document starts a chunk;
padding has g = 0, β = 0, k = 0: a step that leaves the state unchanged). ``run_chunked`` (dtypes, layout,
scale, final states) is shared with the C++ and Triton backends, which replace ``chunk_core_torch``.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange, repeat
from torch import Tensor

# ssd's packed-sequence chunk layout (to be factored into a shared module by the ops refactor).
from ..chunks import ChunkLayout, sequence_spans
from .inputs import GatedDeltaInputs

# core(q, k, v, g, beta, init, starts, scale) -> (o, chunk end states); shapes in chunk_core_torch.
ChunkCore = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, "Tensor | None", Tensor, float], "tuple[Tensor, Tensor]"]


def unit_lower_inverse(M: Tensor) -> Tensor:
    """(I + M)⁻¹ for strictly lower triangular M (..., T, T), by recursive doubling of diagonal blocks:
    [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹ C A⁻¹, D⁻¹]], from blocks of 1 up to T (padded to a power of two with an
    identity). Batched matmuls only, stable as substitution (a power series in M is not: its terms grow like
    binomial coefficients when keys repeat); torch's batched solve_triangular is ~10x slower at these sizes."""
    T = M.shape[-1]
    size = 1 << (T - 1).bit_length()
    if size != T:
        M = torch.nn.functional.pad(M, (0, size - T, 0, size - T))
    lead = M.shape[:-2]
    blocks = M.new_ones(*lead, size, 1, 1)  # the inverse's diagonal blocks, of side s
    s = 1
    while s < size:
        n = size // s
        grid = M.reshape(*lead, n, s, n, s)
        # C of each pair of blocks (2p, 2p + 1): rows of block 2p + 1, columns of block 2p.
        lower = torch.diagonal(grid[..., 1::2, :, 0::2, :], dim1=-4, dim2=-2).movedim(-1, -3)
        upper_inv, lower_inv = blocks[..., 0::2, :, :], blocks[..., 1::2, :, :]
        corner = -(lower_inv @ lower @ upper_inv)
        top = torch.cat([upper_inv, torch.zeros_like(upper_inv)], dim=-1)
        blocks = torch.cat([top, torch.cat([corner, lower_inv], dim=-1)], dim=-2)
        s *= 2
    return blocks[..., 0, :T, :T]


def chunk_core_torch(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, init: Tensor | None,
                     starts: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The chunked form on inputs in the chunk layout.

    q, k (b, c, T, heads_k, d_k); v (b, c, T, heads_v, d_v); g, beta (b, c, T, heads_v); init (b, c, heads_v,
    d_k, d_v) the initial state of the document each chunk starts (zero elsewhere) or None; starts (b, c) bool.
    Returns o (b, c, T, heads_v, d_v) and every chunk's end state (b, c, heads_v, d_k, d_v)."""
    batch, nchunks, T, heads_k, d_k = q.shape
    heads_v, d_v = v.shape[3:]
    group = heads_v // heads_k
    q, k = (repeat(t, "b c t h d -> b (h r) c t d", r=group) for t in (q * scale, k))
    v = rearrange(v, "b c t h d -> b h c t d")
    g, beta = (rearrange(t, "b c t h -> b h c t") for t in (g, beta))
    gamma = g.cumsum(-1)
    lower = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    Gamma = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~lower, -torch.inf).exp()
    M = (beta[..., :, None] * (k @ k.mT) * Gamma).tril(-1)
    P = unit_lower_inverse(M)  # the UT transform
    U, W = P @ (beta[..., None] * v), P @ ((beta * gamma.exp())[..., None] * k)
    G = (q @ k.mT) * Gamma  # Γ is zero above the diagonal
    q_decayed = q * gamma.exp()[..., None]
    k_to_end = k * (gamma[..., -1:] - gamma).exp()[..., None]
    chunk_decay = gamma[..., -1].exp()[..., None, None]
    E = q.new_zeros(batch, heads_v, d_k, d_v)
    outputs, states = [], []
    # Per-chunk views by unbind: autograd then stacks their gradients once (indexing chunk c of a tensor would cost
    # a zero-filled copy of the whole tensor per chunk in the backward, quadratic in the length).
    inits = init.unbind(1) if init is not None else [None] * nchunks
    per_chunk = zip(U.unbind(2), W.unbind(2), q_decayed.unbind(2), G.unbind(2), k_to_end.unbind(2),
                    chunk_decay.unbind(2), inits)
    for c, (U_c, W_c, q_c, G_c, k_c, decay_c, init_c) in enumerate(per_chunk):
        fresh = starts[:, c, None, None, None]
        E = torch.where(fresh, init_c if init_c is not None else torch.zeros_like(E), E)
        delta = U_c - W_c @ E
        outputs.append(q_c @ E + G_c @ delta)
        E = decay_c * E + k_c.mT @ delta
        states.append(E)
    o = rearrange(torch.stack(outputs, dim=2), "b h c t d -> b c t h d")
    return o, torch.stack(states, dim=1)


def run_chunked(core: ChunkCore, x: GatedDeltaInputs, output_final_state: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Everything around a chunk core: dtypes, the chunk layout, the scale, final states. Computes in float32
    (float64 for float64 inputs); returns o in q's dtype and final states in the compute dtype."""
    dtype = torch.promote_types(x.q.dtype, torch.float32)
    batch, length = x.q.shape[:2]
    spans = sequence_spans(batch, length, x.segments)
    # A chunk longer than the longest document would only add padding.
    chunk = max(1, min(x.chunk_size, max(s.stop - s.start for s in spans)))
    layout = ChunkLayout(spans, batch, length, chunk, x.q.device)
    h0 = x.initial_state.to(dtype) if x.initial_state is not None else None
    q, k, v, g, beta = (layout.to_chunks(t.to(dtype)) for t in (x.q, x.k, x.v, x.g, x.beta))
    o, states = core(q, k, v, g, beta, layout.initial_chunks(h0), layout.starts, x.resolved_scale)
    o = layout.from_chunks(o).to(x.q.dtype)
    return (o, layout.final_states(states)) if output_final_state else o


def gated_delta_chunked(x: GatedDeltaInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`gated_delta_reference`."""
    return run_chunked(chunk_core_torch, x, output_final_state)
