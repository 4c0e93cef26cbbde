"""HSA's chunk attention in Triton, chunk-major: one program per (batch, KV head, chunk) that was selected,
looping over the (query, head, slot) rows that selected it in blocks of BLOCK_R; forward and backward.

The rows of one chunk share its S keys, so logits and outputs are tile matmuls (BLOCK_R × S) = Q K^T
and (BLOCK_R × d) = P V, whatever each query chose (with a shared ``selection_q`` the heads of a group
land in the same chunk, as in the authors' kernel). The forward adds w · o_chunk into the output
(atomics: a query's K slots live in K programs) and saves every row's per-chunk log-sum-exp; the
backward recomputes P from it, writes dw = do · o_chunk, adds dq atomically and accumulates the chunk's
dk, dv in registers, stored once. The routing (selection, weights) is routing.py's, as for ``chunked``.
Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it). Import this
module only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .inputs import HSAInputs
from .routing import sparse_hsa

BLOCK_R = 16  # rows per tile; tl.dot needs every tile dim >= 16


@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, w_ptr, out_ptr, lse_ptr, rows_ptr, slots_ptr,
                    seg_ptr, lo_ptr, hi_ptr, stride_kb, stride_kl, stride_kh, hk, n, d, S, scale,
                    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    seg = tl.load(seg_ptr + pid)
    lo = tl.load(lo_ptr + pid)
    hi = tl.load(hi_ptr + pid)
    chunk = seg % n
    g = (seg // n) % hk
    b = seg // (n * hk)
    s = tl.arange(0, BLOCK_S)
    e = tl.arange(0, BLOCK_D)
    ms, me = s < S, e < d
    kv = b.to(tl.int64) * stride_kb + g * stride_kh + (chunk * S + s)[:, None].to(tl.int64) * stride_kl + e[None, :]
    kt = tl.load(k_ptr + kv, mask=ms[:, None] & me[None, :], other=0.0)
    vt = tl.load(v_ptr + kv, mask=ms[:, None] & me[None, :], other=0.0)
    for r0 in range(lo, hi, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mr = r < hi
        row = tl.load(rows_ptr + r, mask=mr, other=0).to(tl.int64)
        slot = tl.load(slots_ptr + r, mask=mr, other=0).to(tl.int64)
        m2 = mr[:, None] & me[None, :]
        qt = tl.load(q_ptr + row[:, None] * d + e[None, :], mask=m2, other=0.0)
        logits = tl.dot(qt, tl.trans(kt), input_precision="ieee") * scale
        logits = tl.where(ms[None, :], logits, float("-inf"))
        top = tl.max(logits, axis=1)
        p = tl.exp(logits - top[:, None])
        total = tl.sum(p, axis=1)
        o = tl.dot(p, vt, input_precision="ieee") / total[:, None]
        w = tl.load(w_ptr + slot, mask=mr, other=0.0)
        tl.atomic_add(out_ptr + row[:, None] * d + e[None, :], o * w[:, None], mask=m2)
        tl.store(lse_ptr + slot, top + tl.log(total), mask=mr)


@triton.jit
def _backward_kernel(q_ptr, k_ptr, v_ptr, w_ptr, lse_ptr, do_ptr, rows_ptr, slots_ptr, seg_ptr, lo_ptr, hi_ptr,
                     dq_ptr, dk_ptr, dv_ptr, dw_ptr, stride_kb, stride_kl, stride_kh, hk, n, d, S, scale,
                     BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    seg = tl.load(seg_ptr + pid)
    lo = tl.load(lo_ptr + pid)
    hi = tl.load(hi_ptr + pid)
    chunk = seg % n
    g = (seg // n) % hk
    b = seg // (n * hk)
    s = tl.arange(0, BLOCK_S)
    e = tl.arange(0, BLOCK_D)
    ms, me = s < S, e < d
    kv = b.to(tl.int64) * stride_kb + g * stride_kh + (chunk * S + s)[:, None].to(tl.int64) * stride_kl + e[None, :]
    mkv = ms[:, None] & me[None, :]
    kt = tl.load(k_ptr + kv, mask=mkv, other=0.0)
    vt = tl.load(v_ptr + kv, mask=mkv, other=0.0)
    dk = tl.zeros([BLOCK_S, BLOCK_D], dtype=kt.dtype)
    dv = tl.zeros([BLOCK_S, BLOCK_D], dtype=kt.dtype)
    for r0 in range(lo, hi, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mr = r < hi
        row = tl.load(rows_ptr + r, mask=mr, other=0).to(tl.int64)
        slot = tl.load(slots_ptr + r, mask=mr, other=0).to(tl.int64)
        m2 = mr[:, None] & me[None, :]
        qt = tl.load(q_ptr + row[:, None] * d + e[None, :], mask=m2, other=0.0)
        dot = tl.load(do_ptr + row[:, None] * d + e[None, :], mask=m2, other=0.0)
        w = tl.load(w_ptr + slot, mask=mr, other=0.0)
        lse = tl.load(lse_ptr + slot, mask=mr, other=0.0)
        logits = tl.dot(qt, tl.trans(kt), input_precision="ieee") * scale
        p = tl.where(mr[:, None] & ms[None, :], tl.exp(logits - lse[:, None]), 0.0)
        o = tl.dot(p, vt, input_precision="ieee")
        dw = tl.sum(dot * o, axis=1)  # ∂L/∂w = dO · o_chunk
        tl.store(dw_ptr + slot, dw, mask=mr)
        go = dot * w[:, None]  # ∂L/∂o_chunk
        dp = tl.dot(go, tl.trans(vt), input_precision="ieee")
        ds = p * (dp - (w * dw)[:, None])  # ∂L/∂logits; rowsum(go ∘ o) = w · dw
        dq = tl.dot(ds, kt, input_precision="ieee") * scale
        tl.atomic_add(dq_ptr + row[:, None] * d + e[None, :], dq, mask=m2)
        dk += tl.dot(tl.trans(ds), qt, input_precision="ieee") * scale
        dv += tl.dot(tl.trans(p), go, input_precision="ieee")
    tl.store(dk_ptr + kv, dk, mask=mkv)
    tl.store(dv_ptr + kv, dv, mask=mkv)


def _segments(idx: Tensor, valid: Tensor, hk: int, n: int) -> tuple[Tensor, ...]:
    """The valid (query, head, slot) rows sorted by segment (batch, KV head, chunk), and for every
    non-empty segment its id and row range: (rows, slots, segment ids, starts, ends)."""
    batch, length, hq, kk = idx.shape
    slots = torch.nonzero(valid.reshape(-1)).squeeze(1)
    rows = slots // kk
    b, h = rows // (length * hq), rows % hq
    segment = (b * hk + h // (hq // hk)) * n + idx.reshape(-1)[slots]
    segment, order = torch.sort(segment, stable=True)
    ids, counts = torch.unique_consecutive(segment, return_counts=True)
    ends = torch.cumsum(counts, 0)
    as32 = lambda t: t.to(torch.int32).contiguous()
    return as32(rows[order]), slots[order].contiguous(), ids.contiguous(), as32(ends - counts), as32(ends)


def _meta(q: Tensor, chunk_size: int) -> dict:
    return {"BLOCK_R": BLOCK_R, "BLOCK_S": max(16, triton.next_power_of_2(chunk_size)),
            "BLOCK_D": max(16, triton.next_power_of_2(q.shape[-1]))}


class TritonChunkAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, w: Tensor, idx: Tensor, valid: Tensor, chunk_size: int,
                scale: float) -> Tensor:
        q, k, v, w = (t.contiguous() for t in (q, k, v, w))
        hk, n = k.shape[2], k.shape[1] // chunk_size
        rows, slots, seg, lo, hi = _segments(idx, valid, hk, n)
        out = torch.zeros_like(q)
        lse = torch.zeros_like(w)
        if seg.numel() > 0:
            _forward_kernel[(seg.numel(),)](q, k, v, w, out, lse, rows, slots, seg, lo, hi, k.stride(0), k.stride(1),
                                            k.stride(2), hk, n, q.shape[-1], chunk_size, scale,
                                            **_meta(q, chunk_size))
        ctx.save_for_backward(q, k, v, w, lse, rows, slots, seg, lo, hi)
        ctx.chunk_size, ctx.scale, ctx.n = chunk_size, scale, n
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, w, lse, rows, slots, seg, lo, hi = ctx.saved_tensors
        grad = grad.contiguous()
        dq, dk, dv, dw = (torch.zeros_like(t) for t in (q, k, v, w))
        if seg.numel() > 0:
            _backward_kernel[(seg.numel(),)](q, k, v, w, lse, grad, rows, slots, seg, lo, hi, dq, dk, dv, dw,
                                             k.stride(0), k.stride(1), k.stride(2), k.shape[2], ctx.n, q.shape[-1],
                                             ctx.chunk_size, ctx.scale, **_meta(q, ctx.chunk_size))
        return dq, dk, dv, dw, None, None, None, None


def chunk_attention_triton(q: Tensor, k: Tensor, v: Tensor, w: Tensor, idx: Tensor, valid: Tensor,
                           chunk_size: int, scale: float) -> Tensor:
    return TritonChunkAttention.apply(q, k, v, w, idx, valid, chunk_size, scale)


def hsa_triton(x: HSAInputs) -> Tensor:
    """Same contract as :func:`ssmzoo.ops.hsa.reference.hsa_reference`; needs triton (CUDA, or CPU with
    TRITON_INTERPRET=1)."""
    return sparse_hsa(chunk_attention_triton, x)
