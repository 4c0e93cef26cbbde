"""The C++ CPU backend: csrc/hsa_cpu.cpp (chunk-major, one thread per chunk, no padding, no gathered
K/V), built on first use and cached; routing (selection, weights) is routing.py's, as for ``chunked``."""

from __future__ import annotations

from types import ModuleType

import torch
from einops import rearrange
from torch import Tensor

from ..extension import load_cpu_extension
from .inputs import HSAInputs
from .routing import sparse_hsa

ROWS_PER_BLOCK = 1 << 18  # (query, head, slot) entries per block of queries: bounds the per-entry buffers


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_hsa_cpu", "hsa_cpu.cpp")


def available() -> bool:
    return extension() is not None


def _chunks(k: Tensor, n: int, S: int) -> Tensor:
    return rearrange(k[:, :n * S], "b (n s) h e -> (b h n) s e", s=S).contiguous()


def _routes(idx: Tensor, valid: Tensor, hk: int, n: int):
    """Per block of queries [t0, t1): its valid entries (flat in (batch, T, hq, K)) sorted by segment
    (batch, KV head, chunk), the offsets of the non-empty segments among them, and their ids."""
    batch, length, hq, kk = idx.shape
    step = max(1, ROWS_PER_BLOCK // (batch * hq * kk))
    for t0 in range(0, length, step):
        t1 = min(t0 + step, length)
        entry = torch.nonzero(valid[:, t0:t1].reshape(-1)).squeeze(1)
        if entry.numel() == 0:
            continue
        b = entry // ((t1 - t0) * hq * kk)
        head = (entry // kk) % hq
        segment = (b * hk + head // (hq // hk)) * n + idx[:, t0:t1].reshape(-1)[entry]
        segment, order = torch.sort(segment.to(torch.int32), stable=True)
        ids, counts = torch.unique_consecutive(segment, return_counts=True)
        bounds = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        yield t0, t1, entry[order].contiguous(), bounds.long(), ids.long()


class CppChunkAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, w: Tensor, idx: Tensor, valid: Tensor, chunk_size: int,
                scale: float) -> Tensor:
        ext = extension()
        batch, length, hq, d = q.shape
        hk, kk, n = k.shape[2], idx.shape[-1], k.shape[1] // chunk_size
        kc, vc = _chunks(k, n, chunk_size), _chunks(v, n, chunk_size)
        out = torch.zeros_like(q)
        routes = list(_routes(idx, valid, hk, n))
        for t0, t1, entry, bounds, seg in routes:
            qs = (q[:, t0:t1] * scale).reshape(-1, d).contiguous()
            o = ext.forward(qs, kc, vc, entry, bounds, seg, kk).view(batch, t1 - t0, hq, kk, d)
            out[:, t0:t1] = torch.einsum("bthke,bthk->bthe", o, w[:, t0:t1])
        ctx.save_for_backward(q, k, v, w)
        ctx.routes, ctx.chunk_size, ctx.scale = routes, chunk_size, scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        ext = extension()
        q, k, v, w = ctx.saved_tensors
        S, scale = ctx.chunk_size, ctx.scale
        batch, length, hq, d = q.shape
        hk, kk, n = k.shape[2], w.shape[-1], k.shape[1] // S
        kc, vc = _chunks(k, n, S), _chunks(v, n, S)
        dkc, dvc = torch.zeros_like(kc), torch.zeros_like(vc)
        dq, dw = torch.zeros_like(q), torch.zeros_like(w)
        for t0, t1, entry, bounds, seg in ctx.routes:
            qs = (q[:, t0:t1] * scale).reshape(-1, d).contiguous()
            do = grad[:, t0:t1].reshape(-1, d).contiguous()
            wb = w[:, t0:t1].reshape(-1).contiguous()
            dq_e, dw_e = ext.backward(qs, kc, vc, wb, do, entry, bounds, seg, kk, dkc, dvc)
            dq[:, t0:t1] = dq_e.view(batch, t1 - t0, hq, kk, d).sum(3).mul_(scale)
            dw[:, t0:t1] = dw_e.view(batch, t1 - t0, hq, kk)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        dk[:, :n * S] = rearrange(dkc, "(b h n) s e -> b (n s) h e", b=batch, h=hk)
        dv[:, :n * S] = rearrange(dvc, "(b h n) s e -> b (n s) h e", b=batch, h=hk)
        return dq, dk, dv, dw, None, None, None, None


def chunk_attention_cpu(q: Tensor, k: Tensor, v: Tensor, w: Tensor, idx: Tensor, valid: Tensor, chunk_size: int,
                        scale: float) -> Tensor:
    return CppChunkAttention.apply(q, k, v, w, idx, valid, chunk_size, scale)


def hsa_cpu(x: HSAInputs) -> Tensor:
    """Same contract as :func:`ssmzoo.ops.hsa.reference.hsa_reference`; computes in float32 (float64 for float64)."""
    return sparse_hsa(chunk_attention_cpu, x)
