"""HSA in plain PyTorch without (L × L): chunk-major attention over padded row blocks, recomputed in backward.

HSA routes (query, head, slot) rows to chunks the way a mixture of experts routes tokens to experts (the
authors' own analogy), and inside a chunk every row's softmax is its own. So rather than gathering the
K·S keys of every query (K·S·d floats per row), we sort the rows of a block of queries by segment (batch,
KV head, chunk), pad each segment's rows to a multiple of R and run batched matmuls of R rows against
their one chunk: logits (R × S) = Q K^T, O (R × d) = softmax(logits) V. Work is O(L · K · S · d),
memory O(rows of one block of queries); nothing is (L × L).

Every scatter is written as a gather: a row block's outputs come back to the (query, slot) layout
through ``dense_to_padded`` and are summed over the K slots there. The backward reuses the forward's
layouts and recomputes the softmax from the logits (cheaper here than saving a log-sum-exp), giving dq,
dk, dv and the gradient of the combination weights dw = do · o_chunk, through which routing.py reaches
the chunk scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from .inputs import HSAInputs
from .routing import sparse_hsa

ROWS_PER_BLOCK = 1 << 18  # (query, head, slot) entries per block of queries
ROW_BLOCK = (16, 128)  # bounds of R, the rows per matmul: larger R gathers less K/V per row, pads more


@dataclass
class Layout:
    """One block of queries [t0, t1): its (batch, T, hq, K) entries, ``dense`` of them, laid out in
    ``blocks`` row blocks of ``rows`` rows, each against one segment (batch, KV head, chunk). Padding
    and empty slots point at sentinels: the extra zero row past the ``dense`` entries (padded → dense)
    and past the ``blocks · rows`` padded rows (dense → padded)."""

    t0: int
    t1: int
    entry: Tensor  # (blocks · rows,) dense entry of every padded row, or the sentinel ``dense``
    dense_to_padded: Tensor  # (dense,) padded row of every entry, or the sentinel ``blocks · rows``
    block_segment: Tensor  # (blocks,) row of the (batch · hk · n, S, d) chunks
    blocks: int
    rows: int


def plan(idx: Tensor, valid: Tensor, t0: int, t1: int, hk: int, n: int) -> Layout:
    """Layout of the entries of queries [t0, t1) of idx, valid (batch, Lq, hq, K)."""
    batch, _, hq, kk = idx.shape
    dense = batch * (t1 - t0) * hq * kk
    entry = torch.nonzero(valid[:, t0:t1].reshape(-1)).squeeze(1)
    b = entry // ((t1 - t0) * hq * kk)
    head = (entry // kk) % hq
    segment = (b * hk + head // (hq // hk)) * n + idx[:, t0:t1].reshape(-1)[entry]
    segment, order = torch.sort(segment.to(torch.int32), stable=True)  # int32 sorts several times faster
    segment, entry = segment.long(), entry[order]
    counts = torch.bincount(segment, minlength=batch * hk * n)
    # Pad each segment to a multiple of R; R near half the mean rows per used segment wastes little.
    mean = entry.numel() / max(int((counts > 0).sum()), 1)
    R = ROW_BLOCK[0]
    while R * 2 <= min(ROW_BLOCK[1], mean / 2):
        R *= 2
    blocks_per = (counts + R - 1) // R
    first_block = torch.cumsum(blocks_per, 0) - blocks_per
    first_row = torch.cumsum(counts, 0) - counts
    pos = first_block[segment] * R + torch.arange(entry.numel(), device=entry.device) - first_row[segment]
    block_segment = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), blocks_per)
    blocks = int(block_segment.numel())
    padded_entry = torch.full((blocks * R,), dense, dtype=torch.long, device=entry.device)
    padded_entry[pos] = entry
    dense_to_padded = torch.full((dense,), blocks * R, dtype=torch.long, device=entry.device)
    dense_to_padded[entry] = pos
    return Layout(t0, t1, padded_entry, dense_to_padded, block_segment, blocks, R)


def _rows(t: Tensor, width: int, factor: float = 1.0) -> Tensor:
    """``t`` · factor flattened to rows of ``width`` plus one zero row, the sentinel that padding reads."""
    out = t.new_empty(t.numel() // width + 1, width)
    torch.mul(t.reshape(-1, width), factor, out=out[:-1])
    out[-1] = 0
    return out


def _bmm_rows(a: Tensor, b: Tensor) -> Tensor:
    """bmm(a, b) as (blocks · rows + 1, width) rows, the last one zero: the sentinel of empty slots."""
    out = a.new_empty(a.shape[0] * a.shape[1] + 1, b.shape[-1])
    torch.bmm(a, b, out=out[:-1].view(a.shape[0], a.shape[1], b.shape[-1]))
    out[-1] = 0
    return out


def _chunks(k: Tensor, n: int, S: int) -> Tensor:
    return rearrange(k[:, :n * S], "b (n s) h e -> (b h n) s e", s=S)


def _layouts(idx: Tensor, valid: Tensor, hk: int, n: int) -> list[Layout]:
    batch, length, hq, kk = idx.shape
    step = max(1, ROWS_PER_BLOCK // (batch * hq * kk))
    layouts = [plan(idx, valid, t0, min(t0 + step, length), hk, n) for t0 in range(0, length, step)]
    return [lay for lay in layouts if lay.blocks > 0]


class ChunkAttention(torch.autograd.Function):
    """o (batch, Lq, hq, d) = Σ_slots w · softmax(q K_chunk^T · scale) V_chunk over the valid slots."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, w: Tensor, idx: Tensor, valid: Tensor, chunk_size: int,
                scale: float) -> Tensor:
        batch, length, hq, d = q.shape
        hk, kk = k.shape[2], idx.shape[-1]
        n = k.shape[1] // chunk_size  # only complete chunks are ever selected
        kc, vc = _chunks(k, n, chunk_size), _chunks(v, n, chunk_size)
        layouts = _layouts(idx, valid, hk, n)
        out = torch.zeros_like(q)
        for lay in layouts:
            qs = _rows(q[:, lay.t0:lay.t1], d, scale)
            qp = qs.index_select(0, torch.div(lay.entry, kk, rounding_mode="floor")).view(lay.blocks, lay.rows, d)
            p = torch.bmm(qp, kc.index_select(0, lay.block_segment).mT).softmax(-1)
            o = _bmm_rows(p, vc.index_select(0, lay.block_segment)).index_select(0, lay.dense_to_padded)
            out[:, lay.t0:lay.t1] = torch.einsum("bthke,bthk->bthe", o.view(batch, -1, hq, kk, d),
                                                 w[:, lay.t0:lay.t1])
        ctx.save_for_backward(q, k, v, w)
        ctx.layouts, ctx.chunk_size, ctx.scale = layouts, chunk_size, scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, w = ctx.saved_tensors
        S, scale = ctx.chunk_size, ctx.scale
        batch, length, hq, d = q.shape
        hk, kk = k.shape[2], w.shape[-1]
        n = k.shape[1] // S
        kc, vc = _chunks(k, n, S), _chunks(v, n, S)
        dq, dw = torch.zeros_like(q), torch.zeros_like(w)
        dkc, dvc = torch.zeros_like(kc), torch.zeros_like(vc)
        for lay in ctx.layouts:
            t0, t1 = lay.t0, lay.t1
            shape = (lay.blocks, lay.rows, -1)
            query = torch.div(lay.entry, kk, rounding_mode="floor")
            kb, vb = kc.index_select(0, lay.block_segment), vc.index_select(0, lay.block_segment)
            qp = _rows(q[:, t0:t1], d, scale).index_select(0, query).view(shape)
            w_rows = _rows(w[:, t0:t1], 1).index_select(0, lay.entry).view(shape)
            do = _rows(grad[:, t0:t1], d).index_select(0, query).view(shape)  # padding rows: 0, add nothing
            p = torch.bmm(qp, kb.mT).softmax(-1)
            dw_rows = (do * torch.bmm(p, vb)).sum(-1, keepdim=True)  # ∂L/∂w = dO · o_chunk
            dw[:, t0:t1] = _rows(dw_rows, 1).index_select(0, lay.dense_to_padded).view(dw[:, t0:t1].shape)
            go = do.mul_(w_rows)  # ∂L/∂o_chunk = w dO
            ds = torch.bmm(go, vb.mT).sub_(w_rows * dw_rows).mul_(p)  # ∂L/∂logits; rowsum(go ∘ o) = w dw
            dq_rows = _bmm_rows(ds, kb).index_select(0, lay.dense_to_padded)
            dq[:, t0:t1] = dq_rows.view(batch, -1, hq, kk, d).sum(3).mul_(scale)
            # Row blocks of one segment are adjacent; index_add on flat rows is the fast path.
            flat = (lay.blocks, -1)
            dkc.view(dkc.shape[0], -1).index_add_(0, lay.block_segment, torch.bmm(ds.mT, qp).view(flat))
            dvc.view(dvc.shape[0], -1).index_add_(0, lay.block_segment, torch.bmm(p.mT, go).view(flat))
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        dk[:, :n * S] = rearrange(dkc, "(b h n) s e -> b (n s) h e", b=batch, h=hk)
        dv[:, :n * S] = rearrange(dvc, "(b h n) s e -> b (n s) h e", b=batch, h=hk)
        return dq, dk, dv, dw, None, None, None, None


def chunk_attention_chunked(q: Tensor, k: Tensor, v: Tensor, w: Tensor, idx: Tensor, valid: Tensor,
                            chunk_size: int, scale: float) -> Tensor:
    return ChunkAttention.apply(q, k, v, w, idx, valid, chunk_size, scale)


def hsa_chunked(x: HSAInputs) -> Tensor:
    """Same contract as :func:`ssmzoo.ops.hsa.reference.hsa_reference`; computes in float32 (float64 for float64)."""
    return sparse_hsa(chunk_attention_chunked, x)
