"""The chunk selection and combination weights of HSA in blocks of queries, shared by the fast backends.

A fast backend is this routing plus a chunk attention (``attention(q, k, v, w, idx, valid, chunk_size,
scale) -> o``): the routing never materialises (L × L) and holds the (queries × chunks) scores of one
block of queries at a time. It computes the same selection as reference.py (top-K of the past chunks,
ties to the more recent chunk, slots in recency order) and hands the attention, per query head and slot,
the chunk index ``idx``, whether the slot holds a chunk (``valid``: fewer than K past chunks leave the
last slots empty) and the combination weight ``w``. Gradients reach the chunk scores, hence q (or
``selection_q``) and the landmarks, through ``w``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

SCORES_PER_BLOCK = 1 << 22  # (query, head, chunk) scores held at once while selecting

Attention = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int, float], Tensor]


def _block_len(per_query: int, budget: int, length: int) -> int:
    return max(1, min(length, budget // max(per_query, 1)))


def _landmark_rows(landmarks: Tensor, idx: Tensor, hs: int) -> Tensor:
    """Rows of ``landmarks`` flattened to (batch · hk · n, d) for the chunks ``idx`` (batch, T, hs, K)."""
    batch, n, hk, _ = landmarks.shape
    b = torch.arange(batch, device=idx.device)[:, None, None, None]
    g = (torch.arange(hs, device=idx.device) // (hs // hk))[None, None, :, None]
    return (b * hk + g) * n + idx


def _recency_topk(scores: Tensor, kk: int) -> Tensor:
    """The top-``kk`` columns of every row of ``scores`` (non-past chunks at −inf), ties to the more
    recent column, as column indices by descending index with −1 for empty slots. Exact but several
    passes: used for the rows where a tie straddles the K-th place."""
    n = scores.shape[-1]
    tau = scores.topk(kk, dim=-1).values[..., -1:]
    above, equal = scores > tau, scores == tau
    need = kk - above.sum(-1, keepdim=True)
    equal_from_here = equal.flip(-1).cumsum(-1).flip(-1)  # equal scores at this column or later
    selected = (above | (equal & (equal_from_here <= need))) & (scores > float("-inf"))
    column1 = torch.arange(1, n + 1, device=scores.device)  # column + 1, so 0 can mean "not selected"
    return torch.where(selected, column1, 0).topk(kk, dim=-1).values - 1


@torch.no_grad()
def select_chunks(sq: Tensor, landmarks: Tensor, chunk_size: int, top_k: int, offset: int) -> tuple[Tensor, Tensor]:
    """idx (batch, Lq, hs, K') long and valid (same shape, bool), K' = min(top_k, most past chunks of any query).

    Slot order is recency: the selected chunks by descending index, empty slots last. A block of queries
    scores only the chunks past for its last query and masks only those not past for its first."""
    batch, length, hs, d_sel = sq.shape
    n, hk = landmarks.shape[1], landmarks.shape[2]
    S = chunk_size
    most = min(n, (offset + length - 1) // S)
    kk = max(1, min(top_k, most))
    idx = torch.zeros(batch, length, hs, kk, dtype=torch.long, device=sq.device)
    valid = torch.zeros(batch, length, hs, kk, dtype=torch.bool, device=sq.device)
    if most == 0:
        return idx, valid
    lmk = repeat(landmarks[:, :most], "b n h e -> b n (h r) e", r=hs // hk)
    ends = (torch.arange(most, device=sq.device) + 1) * S
    block = _block_len(batch * hs * most, SCORES_PER_BLOCK, length)
    for t0 in range(0, length, block):
        t1 = min(t0 + block, length)
        hi = min(most, (offset + t1 - 1) // S)  # chunks past for the block's last query
        if hi == 0:
            continue
        lo = min(hi, (offset + t0) // S)  # ... and for its first: past for every query of the block
        scores = torch.einsum("bthe,bnhe->bthn", sq[:, t0:t1] / math.sqrt(d_sel), lmk[:, :hi])
        if lo < hi:
            positions = offset + torch.arange(t0, t1, device=sq.device)
            hidden = ends[None, lo:hi] > positions[:, None]
            scores[..., lo:hi].masked_fill_(hidden[None, :, None, :], float("-inf"))
        k_here = min(kk, hi)
        vals, cols = scores.topk(k_here, dim=-1)
        cols = torch.where(vals > float("-inf"), cols, -1)
        # topk breaks ties its own way: redo exactly the rows where a left-out score equals the K-th.
        tau = vals[..., -1:]
        ties = ((scores == tau).sum(-1) > (vals == tau).sum(-1)) & (tau[..., 0] > float("-inf"))
        if ties.any():
            cols[ties] = _recency_topk(scores[ties], k_here)
        cols = cols.sort(dim=-1, descending=True).values  # recency order, empty slots (−1) last
        idx[:, t0:t1, :, :k_here] = cols.clamp(min=0)
        valid[:, t0:t1, :, :k_here] = cols >= 0
    return idx, valid


class SelectedScores(torch.autograd.Function):
    """s (batch, Lq, hs, K) = sq · landmark[idx] / √d_sel for the selected chunks, in blocks of queries
    (never the (batch, Lq, hs, K, d_sel) gathered landmarks); 0 in empty slots."""

    @staticmethod
    def forward(ctx, sq: Tensor, landmarks: Tensor, idx: Tensor, valid: Tensor) -> Tensor:
        batch, length, hs, d_sel = sq.shape
        kk = idx.shape[-1]
        flat = rearrange(landmarks, "b n h e -> (b h n) e")
        scale = 1.0 / math.sqrt(d_sel)
        out = sq.new_zeros(batch, length, hs, kk)
        ctx.save_for_backward(sq, landmarks, idx, valid)
        if landmarks.shape[1] == 0:  # no chunk at all: every slot is empty
            return out
        block = _block_len(batch * hs * kk * d_sel, SCORES_PER_BLOCK, length)
        for t0 in range(0, length, block):
            t1 = min(t0 + block, length)
            rows = flat[_landmark_rows(landmarks, idx[:, t0:t1], hs)]  # (batch, T, hs, K, d_sel)
            out[:, t0:t1] = torch.einsum("bthe,bthke->bthk", sq[:, t0:t1], rows) * scale
        return out * valid

    @staticmethod
    def backward(ctx, grad: Tensor):
        sq, landmarks, idx, valid = ctx.saved_tensors
        batch, length, hs, d_sel = sq.shape
        kk = idx.shape[-1]
        flat = rearrange(landmarks, "b n h e -> (b h n) e")
        scale = 1.0 / math.sqrt(d_sel)
        grad = grad * valid * scale
        dsq = torch.zeros_like(sq)
        dflat = torch.zeros_like(flat)
        if landmarks.shape[1] == 0:
            return dsq, torch.zeros_like(landmarks), None, None
        block = _block_len(batch * hs * kk * d_sel, SCORES_PER_BLOCK, length)
        for t0 in range(0, length, block):
            t1 = min(t0 + block, length)
            which = _landmark_rows(landmarks, idx[:, t0:t1], hs)
            g = grad[:, t0:t1]
            dsq[:, t0:t1] = torch.einsum("bthk,bthke->bthe", g, flat[which])
            dflat.index_add_(0, which.reshape(-1), (g[..., None] * sq[:, t0:t1, :, None, :]).reshape(-1, d_sel))
        dlandmarks = rearrange(dflat, "(b h n) e -> b n h e", b=batch, h=landmarks.shape[2])
        return dsq, dlandmarks, None, None


def combine_weights(scores: Tensor, valid: Tensor, combine: str) -> Tensor:
    """w (..., K) from the selected chunks' scores, slots in recency order, 0 in empty slots."""
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if combine == "softmax":
        masked = torch.where(valid, scores, torch.finfo(scores.dtype).min)
        return torch.where(valid, torch.softmax(masked, dim=-1), zero)
    # Stick-breaking, first slot = most recent chunk: log w_k = s_k − Σ_{j<=k} softplus(s_j).
    softplus = torch.where(valid, F.softplus(scores), zero)
    return torch.where(valid, torch.exp(scores - softplus.cumsum(-1)), zero)


def sparse_hsa(
    attention: Attention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    landmarks: Tensor,
    *,
    chunk_size: int,
    top_k: int,
    combine: str = "stick_breaking",
    scale: float | None = None,
    offset: int = 0,
    selection_q: Tensor | None = None,
) -> Tensor:
    """HSA as routing + ``attention``; same contract as :func:`ssmzoo.ops.hsa.reference.hsa_reference`."""
    in_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation for half inputs
    sq = q if selection_q is None else selection_q
    q, k, v, landmarks, sq = (t.to(dtype) for t in (q, k, v, landmarks, sq))
    hq, hs = q.shape[2], sq.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    idx, valid = select_chunks(sq, landmarks, chunk_size, top_k, offset)
    w = combine_weights(SelectedScores.apply(sq, landmarks, idx, valid), valid, combine)
    if hs != hq:  # a selection head's chunks and weights serve its hq / hs query heads
        idx, valid, w = (repeat(t, "b t s k -> b t (s r) k", r=hq // hs) for t in (idx, valid, w))
    return attention(q, k, v, w, idx, valid, chunk_size, scale).to(in_dtype)
