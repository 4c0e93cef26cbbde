"""The gated delta rule, one token at a time: the oracle every backend is tested against.

Yang, Kautz, Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule" (ICLR 2025,
arXiv 2412.06464), section 3: per value head, with a state S of d_v × d_k,

    S_t = S_{t-1} (α_t (I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ,      o_t = S_t q_t.

Conventions here (those of fla and of transformers' Qwen3-Next, so their states load unchanged):
- the state is stored key-first, as (d_k, d_v): ours is the paper's S transposed, so the update reads
  S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ and the output o_t = S_tᵀ q_t;
- α_t multiplies the whole previous state, the erasing term included (α_t is applied first, then the
  delta rule reads the decayed state): equivalently S ← α_t S, then S ← S + β_t k_t (v_t − Sᵀ k_t)ᵀ;
- the gate comes as g_t = log α_t (≤ 0 for a decay; Qwen3-Next: g = −exp(A_log) · softplus(a + dt_bias));
- q is multiplied by ``scale`` (default d_k ** -0.5, as fla and transformers) before the read-out;
- q and k are used as given: L2-normalising them (the paper's block does) is the layer's job.
Packed documents (``segments``): the state restarts at every document start (from that document's initial
state, or zero), and the final states are per document, numbered row by row.
"""

from __future__ import annotations

import torch
from einops import einsum, repeat
from torch import Tensor

from .inputs import GatedDeltaInputs


def starts_and_docs(x: GatedDeltaInputs) -> tuple[Tensor, Tensor]:
    """(batch, length) bool document starts and int64 document numbers; without segments, one document per row."""
    batch, length = x.q.shape[:2]
    if x.segments is not None:
        return x.segments.starts, x.segments.doc
    starts = torch.zeros(batch, length, dtype=torch.bool, device=x.q.device)
    starts[:, 0] = True
    return starts, torch.arange(batch, device=x.q.device)[:, None].expand(batch, length)


def gated_delta_reference(x: GatedDeltaInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """o (batch, length, heads_v, d_v) in q's dtype, and with ``output_final_state`` the final states
    (num_seqs, heads_v, d_k, d_v) in float32 (float64 for float64 inputs). Computes in that dtype."""
    dtype = torch.promote_types(x.q.dtype, torch.float32)
    batch, length, heads_k, d_k = x.q.shape
    heads_v, d_v = x.v.shape[2:]
    group = heads_v // heads_k
    # Value head h reads query/key head h // group.
    q, k = (repeat(t.to(dtype), "b l h d -> b l (h r) d", r=group) for t in (x.q, x.k))
    q = q * x.resolved_scale
    v, alpha, beta = x.v.to(dtype), torch.exp(x.g.to(dtype)), x.beta.to(dtype)
    h0 = x.initial_state.to(dtype) if x.initial_state is not None else None
    starts, doc = starts_and_docs(x)
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]  # a document ends where the next one starts, or at the row's end

    S = q.new_zeros(batch, heads_v, d_k, d_v)
    final = q.new_zeros(x.num_seqs, heads_v, d_k, d_v)
    outputs = []
    for t in range(length):
        fresh = starts[:, t, None, None, None]
        entering = h0[doc[:, t]] if h0 is not None else torch.zeros_like(S)
        S = torch.where(fresh, entering, S)
        S = S * alpha[:, t, :, None, None]
        error = v[:, t] - einsum(S, k[:, t], "b h k v, b h k -> b h v")  # what the state misses of v_t
        S = S + einsum(k[:, t], beta[:, t, :, None] * error, "b h k, b h v -> b h k v")
        outputs.append(einsum(S, q[:, t], "b h k v, b h k -> b h v"))
        # The rows' documents at t are distinct: each row's state lands in its own document's slot.
        final = final.index_copy(0, doc[:, t], torch.where(ends[:, t, None, None, None], S, final[doc[:, t]]))
    o = torch.stack(outputs, dim=1).to(x.q.dtype)
    return (o, final) if output_final_state else o
