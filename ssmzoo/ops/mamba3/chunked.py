"""Mamba-3 in chunks, plain PyTorch; ``run_chunked`` is shared with the C++ and Triton backends, which only
replace some steps with their own kernels (``Kernels``: csrc/mamba3_cpu.cpp, triton.py).

The element-wise part runs first, with autograd: the phases φ (one float64 cumsum per document), three
per-token weights (``prepare``), and the rows the scan reads (``rows``): the rotated and biased B̄ (keys k) and
C̄ (queries q) and x lifted to the rank (values v), built once, per head, directly in the chunk layout. Then the
trapezoid is rewritten so the scan is Mamba-2's SSD with two weights: with S_t = h_t + (1 - λ_{t+1}) Δ_{t+1}
x_t B̄_tᵀ (the state plus the left-endpoint term the next step will add),

    S_t = exp(a_t) S_{t-1} + w_t Σ_r v_t^r k_t^{rᵀ},    y_t^r = (exp(a_t) S_{t-1} + g_t Σ_r v_t^r k_t^{rᵀ}) q_t^r

with a_t = Δ_t A_t, g_t = γ_t = λ_t Δ_t and w_t = γ_t + (1 - λ_{t+1}) Δ_{t+1} (0 past a document's last token,
so S there is h). A document's initial state enters as h_0 + (1 - λ_1) Δ_1 x_0 B̄_0ᵀ (its state plus the left
endpoint of its first step). Within a chunk of T tokens (rows (t, r), T·R of them), with cs the chunk-local
cumsum of a, the output is the sum of

1. intra-chunk: y_i = Σ_j Λ_ij (q_i·k_j) v_j with Λ_ij = exp(cs_{t_i} - cs_{t_j}) w_{t_j} for t_j < t_i,
   g_{t_i} for t_j = t_i (every rank of the same token), 0 after;
2. the chunk's own end state U = Σ_j exp(cs_T - cs_{t_j}) w_{t_j} v_j k_jᵀ;
3. the states between chunks (``ops/chunks.py``'s ``pass_states``: every document starts a chunk, ChunkLayout);
4. state to output: y_i += exp(cs_{t_i}) E q_i, E the state entering the chunk.
Step 3 is SSD's for every backend; the rows and steps 1, 2 and 4 are the backend's (here einsums with autograd).
D, the gate and MIMO's down-projection follow in the chunk layout, which is left once at the end.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..chunks import ChunkLayout, pass_states, sequence_spans
from .inputs import Mamba3Inputs, Mamba3State, compute_dtype
from .reference import TWO_PI
from .rotary import rotate

class Kernels(NamedTuple):
    """What a backend computes its own way (the PyTorch forms below define each contract):
    keys(t, bias, cos, sin, heads, pairs) -> the rotated rows (keys_torch);
    intra(q, k, v, cs, g, w, rank) -> (y, U), steps 1 and 2 (intra_torch);
    output(y, cs, q, E, rank) -> y + step 4 (output_torch).
    Rows are (token, rank), token-major: q, k (K, heads, T·rank, d_state), v and y (K, heads, T·rank, headdim);
    cs, g, w (K, heads, T); U and E (K, heads, headdim, d_state)."""

    keys: Callable
    intra: Callable
    output: Callable


class Prepared(NamedTuple):
    """Per token (batch, length, heads, ...) in the compute dtype: a = Δ A, g and w (see the module docstring), the
    phases phi; init the folded initial SSM state (num, heads, headdim, d_state) or None; first and last each
    sequence's first and last token as flat (row · length + t) indices; the sequences' spans."""

    a: Tensor
    g: Tensor
    w: Tensor
    phi: Tensor
    init: Tensor | None
    first: Tensor
    last: Tensor
    spans: list


def _spans(inputs: Mamba3Inputs) -> list:
    return sequence_spans(*inputs.x.shape[:2], inputs.segments)


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


def _lifted(v: Tensor, inputs: Mamba3Inputs, dtype: torch.dtype) -> Tensor:
    """A state's x (num, heads, headdim) lifted to the rank: (num, heads, rank, headdim)."""
    return v.to(dtype)[:, :, None] * inputs.mimo_x.to(dtype) if inputs.mimo else v.to(dtype)[:, :, None]


def prepare(inputs: Mamba3Inputs) -> Prepared:
    dtype = compute_dtype(inputs.x)
    batch, length = inputs.x.shape[:2]
    dt, A = inputs.dt.to(dtype), inputs.A.to(dtype)
    lam = torch.sigmoid(inputs.trap.to(dtype))
    gamma, beta = lam * dt, (1 - lam) * dt  # β without its α: α multiplies the whole S_{t-1} + left endpoint
    phi = phases(math.pi * torch.tanh(inputs.angles.to(dtype)) * dt[..., None], inputs, dtype)
    # The next token's left-endpoint weight, where the next token belongs to the same document.
    nxt = F.pad(beta[:, 1:], (0, 0, 0, 1))
    if inputs.segments is not None:
        nxt = nxt.masked_fill(F.pad(inputs.segments.starts[:, 1:], (0, 1), value=True)[:, :, None], 0.0)
    spans = _spans(inputs)
    first = torch.tensor([s.row * length + s.start for s in spans], dtype=torch.long, device=dt.device)
    last = torch.tensor([s.row * length + s.stop - 1 for s in spans], dtype=torch.long, device=dt.device)
    init = None
    if inputs.initial_state is not None:
        s = inputs.initial_state
        k0 = s.k.to(dtype) if inputs.mimo else s.k.to(dtype)[:, :, None]
        beta0 = rearrange(beta, "b l h -> (b l) h").index_select(0, first)
        init = s.ssm.to(dtype) + beta0[:, :, None, None] * torch.einsum("shrp,shrn->shpn", _lifted(s.v, inputs, dtype),
                                                                         k0)
    return Prepared(dt * A, gamma, gamma + nxt, phi, init, first, last, spans)


def entry_rotation(cos: Tensor, sin: Tensor, d_state: int, pairs: str) -> tuple[Tensor, Tensor, Tensor]:
    """rotate(t) = t · c + t[..., partner] · s for every entry: (c, s) (..., d_state) from the pairs' cos and sin
    (..., n_angles) (1 and 0 on entries that do not turn), and partner (d_state,), each entry's pair partner."""
    a = cos.shape[-1]
    ones, zeros = cos.new_ones(*cos.shape[:-1], 1), cos.new_zeros(*cos.shape[:-1], 1)
    partner = torch.arange(d_state, device=cos.device)
    if pairs == "interleaved":
        c = torch.cat([torch.stack([cos, cos], -1).flatten(-2), ones.expand(*cos.shape[:-1], d_state - 2 * a)], -1)
        s = torch.cat([torch.stack([-sin, sin], -1).flatten(-2), zeros.expand(*cos.shape[:-1], d_state - 2 * a)], -1)
        partner[:2 * a] = partner[:2 * a].view(a, 2).flip(-1).flatten()
    else:
        half = d_state // 2
        fill_c, fill_s = ones.expand(*cos.shape[:-1], half - a), zeros.expand(*cos.shape[:-1], half - a)
        c = torch.cat([cos, fill_c, cos, fill_c], -1)
        s = torch.cat([-sin, fill_s, sin, fill_s], -1)
        partner[:a], partner[half:half + a] = partner[half:half + a].clone(), partner[:a].clone()
    return c, s, partner


def keys_torch(t: Tensor, bias: Tensor | None, cos: Tensor, sin: Tensor, heads: int, pairs: str) -> Tensor:
    """The rotated, biased keys (or queries) of every head in the chunk layout, (K, heads, T·rank, d_state), from the
    groups' t (K, T, rank, groups, d_state), bias (heads, rank, d_state) or None and the phases' cos and sin
    (K, T, heads, n_angles)."""
    groups, d_state = t.shape[3], t.shape[4]
    c, s, partner = entry_rotation(rearrange(cos, "k t h a -> k h t 1 a"), rearrange(sin, "k t h a -> k h t 1 a"),
                                   d_state, pairs)
    t = rearrange(t, "k t r g n -> k g 1 t r n")
    if bias is not None:
        t = t + rearrange(bias, "(g e) r n -> g e 1 r n", g=groups)
    t = t.expand(-1, -1, heads // groups, -1, -1, -1).flatten(1, 2)
    return rearrange(t * c + t[..., partner] * s, "k h t r n -> k h (t r) n")


def rows(inputs: Mamba3Inputs, prep: Prepared, layout: ChunkLayout, keys: Callable) -> tuple[Tensor, Tensor, Tensor]:
    """q = C̄, k = B̄ (K, heads, T·rank, d_state) and v = x^r (K, heads, T·rank, headdim) in the chunk layout, one
    copy per head, each built in one pass from the groups' B and C."""
    dtype = prep.a.dtype
    heads = inputs.x.shape[2]

    def chunks(t: Tensor) -> Tensor:  # (batch, length, ...) -> (K, T, ...)
        c = layout.to_chunks(t)
        return c.reshape(c.shape[0] * c.shape[1], *c.shape[2:])

    phi = chunks(prep.phi)
    cos, sin = torch.cos(phi), torch.sin(phi)

    def rotated(t: Tensor, bias: Tensor | None) -> Tensor:
        t = chunks(t.to(dtype) if inputs.mimo else t.to(dtype)[:, :, None])
        if bias is not None:
            bias = bias.to(dtype) if inputs.mimo else bias.to(dtype)[:, None]
        return keys(t, bias, cos, sin, heads, inputs.pairs)

    q, k = rotated(inputs.C, inputs.C_bias), rotated(inputs.B, inputs.B_bias)
    xc = rearrange(chunks(inputs.x.to(dtype)), "k t h p -> k h t 1 p")
    v = xc * inputs.mimo_x.to(dtype)[:, None] if inputs.mimo else xc
    return q, k, rearrange(v, "k h t r p -> k h (t r) p")


def end_state_torch(k: Tensor, v: Tensor, cs: Tensor, w: Tensor, rank: int) -> Tensor:
    """Step 2: U = Σ_j exp(cs_T - cs_{t_j}) w_{t_j} v_j k_jᵀ per chunk and head."""
    omega = torch.exp(cs[..., -1:] - cs) * w
    vw = rearrange(rearrange(v, "k h (t r) p -> k h t r p", r=rank) * omega[..., None, None], "k h t r p -> k h (t r) p")
    return torch.einsum("khmp,khmn->khpn", vw, k)


def intra_torch(q: Tensor, k: Tensor, v: Tensor, cs: Tensor, g: Tensor, w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Steps 1 and 2 with autograd: the (T·R, T·R) matrix Λ ∘ q kᵀ per chunk and head, and U."""
    T = cs.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=cs.device).tril(-1)
    diff = (cs[..., :, None] - cs[..., None, :]).masked_fill(~strict, -math.inf)  # nothing positive exponentiated
    lam = torch.exp(diff) * w[..., None, :] + torch.diag_embed(g)
    if rank > 1:
        lam = lam.repeat_interleave(rank, dim=-1).repeat_interleave(rank, dim=-2)
    return (lam * (q @ k.transpose(-1, -2))) @ v, end_state_torch(k, v, cs, w, rank)


def output_torch(y: Tensor, cs: Tensor, q: Tensor, E: Tensor, rank: int) -> Tensor:
    """Step 4: y_i + exp(cs_{t_i}) E q_i."""
    off = rearrange(torch.einsum("khmn,khpn->khmp", q, E), "k h (t r) p -> k h t r p", r=rank)
    return y + rearrange(off * torch.exp(cs)[..., None, None], "k h t r p -> k h (t r) p")


def chunk_scan(q: Tensor, k: Tensor, v: Tensor, prep: Prepared, layout: ChunkLayout, rank: int,
               kernels: Kernels) -> tuple[Tensor, Tensor]:
    """Steps 1-4 on the rows: (h C̄ per row (K, heads, T·rank, headdim), final SSM states (num, heads, headdim,
    d_state))."""
    batch = layout.batch

    def tokens(t: Tensor) -> Tensor:  # (batch, length, heads) -> (K, heads, T)
        return rearrange(layout.to_chunks(t), "b c t h -> (b c) h t").contiguous()

    cs = torch.cumsum(tokens(prep.a), dim=-1)
    y, U = kernels.intra(q, k, v, cs, tokens(prep.g), tokens(prep.w), rank)
    S, E = pass_states(rearrange(U, "(b c) h p n -> b c h p n", b=batch),
                       rearrange(cs[..., -1], "(b c) h -> b c h", b=batch), layout.initial_chunks(prep.init),
                       layout.starts)
    y = kernels.output(y, cs, q, rearrange(E, "b c h p n -> (b c) h p n"), rank)
    return y, layout.final_states(S)


def _last_keys(inputs: Mamba3Inputs, prep: Prepared) -> Tensor:
    """Each sequence's last rotated key B̄ (num, heads, rank, d_state), the trapezoid's next left endpoint."""
    dtype = prep.a.dtype
    B = rearrange(inputs.B, "b l ... -> (b l) ...").index_select(0, prep.last).to(dtype)
    B = B if inputs.mimo else B[:, None]
    B = B.repeat_interleave(inputs.x.shape[2] // B.shape[2], dim=2).transpose(1, 2)
    if inputs.B_bias is not None:
        B = B + (inputs.B_bias.to(dtype) if inputs.mimo else inputs.B_bias.to(dtype)[:, None])
    phi = rearrange(prep.phi, "b l h a -> (b l) h a").index_select(0, prep.last)[:, :, None]
    return rotate(B, torch.cos(phi), torch.sin(phi), inputs.pairs)


def run_chunked(inputs: Mamba3Inputs, output_final_state: bool, kernels: Kernels) -> Tensor | tuple[Tensor, Mamba3State]:
    """The whole op around a backend's kernels; returns what ``mamba3_reference`` returns."""
    prep = prepare(inputs)
    batch, length, heads, headdim = inputs.x.shape
    rank = inputs.rank
    chunk = max(1, min(inputs.chunk_size, max(s.stop - s.start for s in prep.spans)))
    layout = ChunkLayout(prep.spans, batch, length, chunk, inputs.x.device)
    q, k, v = rows(inputs, prep, layout, kernels.keys)
    y, ssm = chunk_scan(q, k, v, prep, layout, rank, kernels)
    dtype = y.dtype
    y = rearrange(y, "k h (t r) p -> k t h r p", r=rank)
    v = rearrange(v, "k h (t r) p -> k t h r p", r=rank)
    if inputs.D is not None:
        y = y + inputs.D.to(dtype)[:, None, None] * v
    if inputs.z is not None:
        zc = layout.to_chunks(inputs.z.to(dtype)).flatten(0, 1)[:, :, :, None]
        y = y * F.silu(zc * inputs.mimo_z.to(dtype) if inputs.mimo else zc)
    if not inputs.mimo:
        y = y[..., 0, :]
    elif inputs.mimo_o is not None:
        y = (y * inputs.mimo_o.to(dtype)).sum(-2)
    else:
        y = rearrange(y, "k t h r p -> k t r h p")
    y = layout.from_chunks(y.reshape(batch, -1, *y.shape[1:])).to(inputs.x.dtype)
    if not output_final_state:
        return y
    angle = rearrange(prep.phi, "b l h a -> (b l) h a").index_select(0, prep.last)
    keys = _last_keys(inputs, prep)
    x_last = rearrange(inputs.x, "b l h p -> (b l) h p").index_select(0, prep.last).to(dtype)
    return y, Mamba3State(angle, ssm, keys if inputs.mimo else keys[:, :, 0], x_last)


TORCH_KERNELS = Kernels(keys_torch, intra_torch, output_torch)


def mamba3_chunked(inputs: Mamba3Inputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Mamba3State]:
    """Same contract as :func:`~.reference.mamba3_reference`; every step in plain PyTorch."""
    return run_chunked(inputs, output_final_state, TORCH_KERNELS)
