"""HSA in plain PyTorch without (L × L): chunk-major attention over padded row blocks, recomputed in backward.

HSA routes (query, head, slot) rows to chunks the way a mixture of experts routes tokens to experts (the
authors' own analogy), and inside a chunk every row's softmax is its own. So rather than gathering the
K·S keys of every query (K·S·d floats per row), we sort the rows of a block of queries by (batch, KV
head, chunk), pad each chunk's rows to a multiple of ``ROW_BLOCK`` and run two batched matmuls per
row block against its one chunk: logits (R × S) = Q K^T, O (R × d) = softmax(logits) V. Work is
O(L · K · S · d) and memory O(rows of one query block), independent of L².

The forward saves the log-sum-exp of every (row, chunk) pair; the backward rebuilds the same layout and
recomputes P = exp(logits − lse) (FlashAttention's trick), giving dq, dk, dv and the gradient of the
combination weights dw = do · o_chunk, through which routing.py reaches the chunk scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from .routing import sparse_hsa

ROWS_PER_BLOCK = 1 << 18  # (query, head, slot) rows per block of queries
ROW_BLOCK = 16  # rows per matmul; each chunk's rows are padded to a multiple of it


@dataclass
class Layout:
    """Where the valid rows of one block of queries go. Rows are sorted by segment (batch, KV head,
    chunk); ``pos`` is each sorted row's place in the padded (blocks · ROW_BLOCK) layout."""

    query: Tensor  # (N,) row of the flattened (batch · Lq · hq, d) queries
    slot: Tensor  # (N,) entry of the flattened (batch · Lq · hq · K) selection
    pos: Tensor  # (N,)
    block_segment: Tensor  # (blocks,) segment of every row block: a row of (batch · hk · n, S, d) chunks
    blocks: int


def plan(entries: Tensor, idx: Tensor, dims: tuple[int, int, int, int, int, int]) -> Layout:
    """Layout of the selection ``entries`` (flat indices into (batch, Lq, hq, K), valid ones only);
    dims = (batch, Lq, hq, hk, K, n chunks)."""
    batches, length, hq, hk, kk, n = dims
    query = entries // kk
    head = query % hq
    batch = query // (length * hq)
    segment = (batch * hk + head // (hq // hk)) * n + idx.reshape(-1)[entries]
    segment, order = torch.sort(segment, stable=True)
    query, entries = query[order], entries[order]
    counts = torch.bincount(segment, minlength=batches * hk * n)
    blocks_per = (counts + ROW_BLOCK - 1) // ROW_BLOCK
    first_block = torch.cumsum(blocks_per, 0) - blocks_per
    first_row = torch.cumsum(counts, 0) - counts
    rank = torch.arange(segment.numel(), device=segment.device) - first_row[segment]
    pos = first_block[segment] * ROW_BLOCK + rank
    block_segment = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), blocks_per)
    return Layout(query, entries, pos, block_segment, int(block_segment.numel()))


def _padded(rows: Tensor, layout: Layout) -> Tensor:
    """(blocks, ROW_BLOCK, d) with ``rows`` (N, d) at their places and zeros in the padding."""
    out = rows.new_zeros(layout.blocks * ROW_BLOCK, rows.shape[-1])
    out[layout.pos] = rows
    return out.view(layout.blocks, ROW_BLOCK, -1)


def _query_blocks(valid: Tensor):
    """Flat indices of the valid selection entries of (batch, Lq, hq, K), one block of queries at a time."""
    batch, length, hq, kk = valid.shape
    per_query = batch * hq * kk
    step = max(1, ROWS_PER_BLOCK // per_query)
    inner = torch.arange(hq * kk, device=valid.device)
    for t0 in range(0, length, step):
        t = torch.arange(t0, min(t0 + step, length), device=valid.device)
        base = (torch.arange(batch, device=valid.device)[:, None] * length + t[None, :]) * (hq * kk)
        entries = (base[..., None] + inner).reshape(-1)
        yield entries[valid.reshape(-1)[entries]]


class ChunkAttention(torch.autograd.Function):
    """o (batch, Lq, hq, d) = Σ_slots w · softmax(q K_chunk^T · scale) V_chunk over the valid slots."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, w: Tensor, idx: Tensor, valid: Tensor, chunk_size: int,
                scale: float) -> Tensor:
        batch, length, hq, d = q.shape
        hk, kk = k.shape[2], idx.shape[-1]
        n = k.shape[1] // chunk_size  # only complete chunks are ever selected
        kc = rearrange(k[:, :n * chunk_size], "b (n s) h e -> (b h n) s e", s=chunk_size)
        vc = rearrange(v[:, :n * chunk_size], "b (n s) h e -> (b h n) s e", s=chunk_size)
        q2, w2 = q.reshape(-1, d), w.reshape(-1)
        out = torch.zeros_like(q2)
        lse = q.new_zeros(w2.shape)
        dims = (batch, length, hq, hk, kk, n)
        for entries in _query_blocks(valid):
            if entries.numel() == 0:
                continue
            lay = plan(entries, idx, dims)
            logits = torch.bmm(_padded(q2[lay.query], lay), kc[lay.block_segment].transpose(1, 2)) * scale
            row_lse = torch.logsumexp(logits, dim=-1)
            o = torch.bmm(torch.exp(logits - row_lse[..., None]), vc[lay.block_segment]).view(-1, d)[lay.pos]
            out.index_add_(0, lay.query, o * w2[lay.slot, None])
            lse[lay.slot] = row_lse.view(-1)[lay.pos]
        ctx.save_for_backward(q, k, v, w, idx, valid, lse)
        ctx.chunk_size, ctx.scale = chunk_size, scale
        return out.view_as(q)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, w, idx, valid, lse = ctx.saved_tensors
        S, scale = ctx.chunk_size, ctx.scale
        batch, length, hq, d = q.shape
        hk, kk = k.shape[2], idx.shape[-1]
        n = k.shape[1] // S
        kc = rearrange(k[:, :n * S], "b (n s) h e -> (b h n) s e", s=S)
        vc = rearrange(v[:, :n * S], "b (n s) h e -> (b h n) s e", s=S)
        q2, w2, g2 = q.reshape(-1, d), w.reshape(-1), grad.reshape(-1, d)
        dq, dw = torch.zeros_like(q2), torch.zeros_like(w2)
        dkc, dvc = torch.zeros_like(kc), torch.zeros_like(vc)
        dims = (batch, length, hq, hk, kk, n)
        for entries in _query_blocks(valid):
            if entries.numel() == 0:
                continue
            lay = plan(entries, idx, dims)
            kb, vb = kc[lay.block_segment], vc[lay.block_segment]
            qp = _padded(q2[lay.query], lay)
            # Padding rows: q = 0 and dO = 0, so they add nothing to dk, dv (and lse = 0 is harmless).
            lse_p = _padded(lse[lay.slot, None], lay)
            p = torch.exp(torch.bmm(qp, kb.transpose(1, 2)) * scale - lse_p)
            o = torch.bmm(p, vb).view(-1, d)[lay.pos]
            do_rows = g2[lay.query]
            w_rows = w2[lay.slot]
            dw_rows = (do_rows * o).sum(-1)  # ∂L/∂w = dO · o_chunk
            dw[lay.slot] = dw_rows
            go = _padded(do_rows * w_rows[:, None], lay)  # ∂L/∂o_chunk = w dO
            delta = _padded((w_rows * dw_rows)[:, None], lay)  # rowsum(∂L/∂o_chunk ∘ o_chunk)
            ds = p * (torch.bmm(go, vb.transpose(1, 2)) - delta)  # ∂L/∂logits
            dq.index_add_(0, lay.query, torch.bmm(ds, kb).view(-1, d)[lay.pos] * scale)
            dkc.index_add_(0, lay.block_segment, torch.bmm(ds.transpose(1, 2), qp) * scale)
            dvc.index_add_(0, lay.block_segment, torch.bmm(p.transpose(1, 2), go))
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        dk[:, :n * S] = rearrange(dkc, "(b h n) s e -> b (n s) h e", b=batch, h=hk)
        dv[:, :n * S] = rearrange(dvc, "(b h n) s e -> b (n s) h e", b=batch, h=hk)
        return dq.view_as(q), dk, dv, dw.view_as(w), None, None, None, None


def chunk_attention_chunked(q: Tensor, k: Tensor, v: Tensor, w: Tensor, idx: Tensor, valid: Tensor,
                            chunk_size: int, scale: float) -> Tensor:
    return ChunkAttention.apply(q, k, v, w, idx, valid, chunk_size, scale)


def hsa_chunked(
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
    """Same contract as :func:`ssmzoo.ops.hsa.reference.hsa_reference`; computes in float32 (float64 for float64)."""
    return sparse_hsa(chunk_attention_chunked, q, k, v, landmarks, chunk_size=chunk_size, top_k=top_k,
                      combine=combine, scale=scale, offset=offset, selection_q=selection_q)
