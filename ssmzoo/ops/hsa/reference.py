"""Hierarchical sparse attention with dense masks: the oracle. Hu, Leng, Zhao, Tu & Wu, "Random Long-Context
Access for Mamba via Hardware-aligned Hierarchical Sparse Attention" (2025).

For a query at absolute position p with head h (KV head g = h // G, G = hq / hk):
    past chunks       C(p) = {i : (i + 1) S <= p}            (every token of chunk i lies strictly before p)
    chunk scores      s_{p,i} = q^sel_p · lmk_{i} / √d_sel,  i ∈ C(p)
    selection         T(p) = the top-K of C(p) by s_{p,i}; equal scores go to the more recent chunk
    chunk attention   o_{p,i} = Σ_{j ∈ chunk i} softmax_j(q_p · k_j · scale) v_j     (a softmax per chunk)
    combination       o_p = Σ_{i ∈ T(p)} w_{p,i} o_{p,i}
with w by stick-breaking over T(p) taken from the most recent chunk back,
    w_{p,i} = σ(s_{p,i}) Π_{j ∈ T(p), j > i} (1 − σ(s_{p,j})),
or by a softmax of the scores over T(p). A query with no past chunk outputs 0; one with fewer than K
uses those it has (the missing slots contribute nothing).

Where this follows the authors and where we chose (ant-research/long-context-modeling, ``hsa_layers.py``):
- "past" means complete and strictly before the query: the query at position S sees chunk 0, the one at
  S − 1 sees nothing (authors: "q at 64 can access the 0th chunk");
- the stick-breaking order is recency (descending chunk index), as the authors sort the selected
  indices before their cumulative softplus, not the score order;
- missing slots: the authors mask them to −inf, so they take no weight; the softmax is over the
  available chunks and is 0 when there are none (same as the authors);
- ties (exactly equal scores) go to the more recent chunk: our choice, so every backend selects alike;
- selection per query head with its own q against its KV head's landmark, unless ``selection_q`` is
  given: then one selection query per selection head (e.g. one per KV head, the authors' RAMba
  retrieval query) whose chunks and weights all query heads of that group share.

Everything is materialised: the chunk scores (L × number of chunks) and the token logits (L × L) per
head. Every fast backend is tested against this function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from .inputs import HSAInputs


def past_chunks(positions: Tensor, n_chunks: int, chunk_size: int) -> Tensor:
    """(len(positions), n_chunks) bool: chunk i is complete strictly before the query position."""
    ends = (torch.arange(n_chunks, device=positions.device) + 1) * chunk_size
    return ends[None, :] <= positions[:, None]


def chunk_weights_reference(scores: Tensor, selected: Tensor, combine: str) -> Tensor:
    """Combination weights over chunks, 0 where not selected; scores, selected (..., n_chunks)."""
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if combine == "softmax":
        masked = torch.where(selected, scores, torch.finfo(scores.dtype).min)
        return torch.where(selected, torch.softmax(masked, dim=-1), zero)
    # Stick-breaking from the most recent selected chunk back: log w_i = log σ(s_i) + Σ_{j>i} log(1 − σ(s_j))
    # with log σ(s) = s − softplus(s) and log(1 − σ(s)) = −softplus(s).
    softplus = torch.where(selected, F.softplus(scores), zero)
    later = softplus.flip(-1).cumsum(-1).flip(-1) - softplus  # Σ over selected j > i
    return torch.where(selected, torch.exp(scores - softplus - later), zero)


def hsa_reference(x: HSAInputs) -> Tensor:
    """o (batch, Lq, hq, d); shapes as in :func:`ssmzoo.ops.hsa.hsa`. Computes in float32 (float64 for
    float64 inputs) and returns q's dtype."""
    q, k, v, landmarks, chunk_size, top_k, combine, scale, offset, selection_q = x
    in_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)
    sq = q if selection_q is None else selection_q
    q, k, v, landmarks, sq = (t.to(dtype) for t in (q, k, v, landmarks, sq))
    batch, length, hq, d = q.shape
    keys, hk = k.shape[1], k.shape[2]
    hs, n = sq.shape[2], landmarks.shape[1]
    S = chunk_size
    scale = 1.0 / math.sqrt(d) if scale is None else scale

    # Chunk scores for every (query, chunk): (batch, hs, Lq, n); selection head s reads KV head s // (hs / hk).
    lmk = repeat(landmarks, "b n h e -> b n (h r) e", r=hs // hk)
    scores = torch.einsum("bthe,bnhe->bhtn", sq, lmk) / math.sqrt(sq.shape[-1])
    positions = offset + torch.arange(length, device=q.device)
    past = past_chunks(positions, n, S)  # (Lq, n)

    # Chunk i is selected when it is past and fewer than K past chunks beat it (a higher score, or an
    # equal score and more recent): exactly the top-K with ties to the more recent chunk.
    idx = torch.arange(n, device=q.device)
    beats = (scores[..., None, :] > scores[..., :, None]) | (
        (scores[..., None, :] == scores[..., :, None]) & (idx[None, :] > idx[:, None]))  # [.., i, j]: j beats i
    rank = (beats & past[:, None, :]).sum(-1)
    selected = past & (rank < top_k)
    weights = chunk_weights_reference(scores, selected, combine)  # (batch, hs, Lq, n)
    weights = repeat(weights, "b s t n -> b (s r) t n", r=hq // hs)

    # Token level: (Lq × Lk) logits per head, a softmax inside every chunk, scaled by its chunk weight.
    k_rep = repeat(k, "b l h e -> b l (h g) e", g=hq // hk)
    v_rep = repeat(v, "b l h e -> b l (h g) e", g=hq // hk)
    logits = torch.einsum("bthe,blhe->bhtl", q, k_rep) * scale
    logits = F.pad(logits, (0, n * S - keys), value=float("-inf"))  # the last chunk may be partial
    probs = torch.softmax(rearrange(logits, "b h t (n s) -> b h t n s", s=S), dim=-1)
    attn = rearrange(weights[..., None] * probs, "b h t n s -> b h t (n s)")[..., :keys]
    out = torch.einsum("bhtl,blhe->bthe", attn, v_rep)
    return out.to(in_dtype)
