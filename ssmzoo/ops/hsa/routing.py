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

from .inputs import HSAInputs

SCORES_PER_BLOCK = 1 << 22  # (query, head, chunk) scores held at once while selecting

Attention = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int, float], Tensor]


def _block_len(per_query: int, budget: int, length: int) -> int:
    return max(1, min(length, budget // max(per_query, 1)))


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


def _visible(offset: int, chunk_size: int, n: int, t0: int, t1: int) -> tuple[int, int]:
    """For queries [t0, t1): (chunks past for the first query, chunks past for the last), at most n."""
    hi = min(n, (offset + t1 - 1) // chunk_size)
    return min(hi, (offset + t0) // chunk_size), hi


def _score_blocks(sq: Tensor, n: int) -> int:
    return _block_len(sq.shape[0] * sq.shape[2] * max(n, 1), SCORES_PER_BLOCK, sq.shape[1])


@torch.no_grad()
def select_chunks(sq: Tensor, landmarks: Tensor, chunk_size: int, top_k: int,
                  offset: int) -> tuple[Tensor, Tensor, Tensor]:
    """idx (batch, Lq, hs, K') long, valid (same shape, bool) and the selected scores (same shape, 0 when
    empty), K' = min(top_k, most past chunks of any query).

    Slot order is recency: the selected chunks by descending index, empty slots last. A block of queries
    scores only the chunks past for its last query and masks only those not past for its first."""
    batch, length, hs, d_sel = sq.shape
    n, hk = landmarks.shape[1], landmarks.shape[2]
    most = min(n, (offset + length - 1) // chunk_size)
    kk = max(1, min(top_k, most))
    idx = torch.zeros(batch, hs, length, kk, dtype=torch.long, device=sq.device)
    valid = torch.zeros(batch, hs, length, kk, dtype=torch.bool, device=sq.device)
    chosen = sq.new_zeros(batch, hs, length, kk)
    if most > 0:
        # Heads first, so a block's scores come out of one batched matmul already as (batch, hs, T, chunks).
        sqh = rearrange(sq, "b t h e -> b h t e") / math.sqrt(d_sel)
        lmk = repeat(landmarks[:, :most], "b n h e -> b (h r) e n", r=hs // hk)
        ends = (torch.arange(most, device=sq.device) + 1) * chunk_size
        block = _score_blocks(sq, most)
        for t0 in range(0, length, block):
            t1 = min(t0 + block, length)
            lo, hi = _visible(offset, chunk_size, most, t0, t1)
            if hi == 0:
                continue
            scores = torch.matmul(sqh[:, :, t0:t1], lmk[..., :hi])
            if lo < hi:
                positions = offset + torch.arange(t0, t1, device=sq.device)
                scores[..., lo:hi].masked_fill_(ends[None, lo:hi] > positions[:, None], float("-inf"))
            k_here = min(kk, hi)
            # One more than K: a tie straddles the K-th place exactly when the (K+1)-th equals the K-th.
            vals, cols = scores.topk(min(k_here + 1, hi), dim=-1)
            ties = None
            if vals.shape[-1] > k_here:
                ties = (vals[..., k_here] == vals[..., k_here - 1]) & (vals[..., k_here - 1] > float("-inf"))
                vals, cols = vals[..., :k_here], cols[..., :k_here]
            cols = torch.where(vals > float("-inf"), cols, -1)
            if ties is not None and ties.any():  # topk breaks ties its own way: redo those rows exactly
                cols[ties] = _recency_topk(scores[ties], k_here)
            cols = cols.sort(dim=-1, descending=True).values  # recency order, empty slots (−1) last
            ok = cols >= 0
            idx[:, :, t0:t1, :k_here] = cols.clamp(min=0)
            valid[:, :, t0:t1, :k_here] = ok
            chosen[:, :, t0:t1, :k_here] = torch.where(ok, scores.gather(-1, cols.clamp(min=0)), 0.0)
    return tuple(rearrange(t, "b h t k -> b t h k") for t in (idx, valid, chosen))


class SelectedScores(torch.autograd.Function):
    """The selected chunks' scores s = sq · landmark[idx] / √d_sel (batch, Lq, hs, K) as a function of sq
    and the landmarks; their values come from :func:`select_chunks`. The backward is two products with
    the sparse (queries · hs) × (batch · hk · chunks) matrix holding ds at the selected chunks."""

    @staticmethod
    def forward(ctx, sq: Tensor, landmarks: Tensor, scores: Tensor, idx: Tensor, valid: Tensor) -> Tensor:
        ctx.save_for_backward(sq, landmarks, idx, valid)
        return scores.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        sq, landmarks, idx, valid = ctx.saved_tensors
        batch, length, hs, d_sel = sq.shape
        n, hk = landmarks.shape[1], landmarks.shape[2]
        row = torch.arange(batch * length * hs, device=sq.device)[:, None].expand_as(idx.reshape(-1, idx.shape[-1]))
        b = row // (length * hs)
        col = (b * hk + (row % hs) // (hs // hk)) * n + idx.reshape(row.shape)
        keep = valid.reshape(-1)
        ds = sparse_rows(row.reshape(-1)[keep], col.reshape(-1)[keep], grad.reshape(-1)[keep] / math.sqrt(d_sel),
                         (row.shape[0], batch * hk * n))
        dsq = torch.sparse.mm(ds, rearrange(landmarks, "b n h e -> (b h n) e")).view_as(sq)
        dlmk = torch.sparse.mm(ds.t(), sq.reshape(-1, d_sel))
        return dsq, rearrange(dlmk, "(b h n) e -> b n h e", b=batch, h=hk), None, None, None


def sparse_rows(rows: Tensor, cols: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A COO matrix of ``size`` with ``values`` at (rows, cols), no duplicates."""
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, size, check_invariants=False)


def combine_weights(scores: Tensor, valid: Tensor, combine: str) -> Tensor:
    """w (..., K) from the selected chunks' scores, slots in recency order, 0 in empty slots."""
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if combine == "softmax":
        masked = torch.where(valid, scores, torch.finfo(scores.dtype).min)
        return torch.where(valid, torch.softmax(masked, dim=-1), zero)
    # Stick-breaking, first slot = most recent chunk: log w_k = s_k − Σ_{j<=k} softplus(s_j).
    softplus = torch.where(valid, F.softplus(scores), zero)
    return torch.where(valid, torch.exp(scores - softplus.cumsum(-1)), zero)


def sparse_hsa(attention: Attention, x: HSAInputs) -> Tensor:
    """HSA as routing + ``attention``; same contract as :func:`ssmzoo.ops.hsa.reference.hsa_reference`."""
    q, k, v, landmarks, chunk_size, top_k, combine, scale, offset, selection_q = x
    in_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation for half inputs
    sq = q if selection_q is None else selection_q
    q, k, v, landmarks, sq = (t.to(dtype) for t in (q, k, v, landmarks, sq))
    hq, hs = q.shape[2], sq.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    idx, valid, scores = select_chunks(sq, landmarks, chunk_size, top_k, offset)
    w = combine_weights(SelectedScores.apply(sq, landmarks, scores, idx, valid), valid, combine)
    if hs != hq:  # a selection head's chunks and weights serve its hq / hs query heads
        idx, valid, w = (repeat(t, "b t s k -> b t (s r) k", r=hq // hs) for t in (idx, valid, w))
    return attention(q, k, v, w, idx, valid, chunk_size, scale).to(in_dtype)
