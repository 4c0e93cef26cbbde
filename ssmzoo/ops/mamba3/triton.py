"""Mamba-3's intra-chunk step (chunked.py's step 1, its quadratic part) in Triton kernels, forward and backward;
everything else is chunked.py's PyTorch (``run_chunked``).

Per chunk and head, rows i = (token t_i, rank r_i), M = T·R of them: y_i = Σ_j Λ_ij (q_i·k_j) v_j with
Λ_ij = exp(cs_{t_i} - cs_{t_j}) w_{t_j} for t_j < t_i, g_{t_i} for t_j = t_i, 0 after. Layouts: q, k (K, H, M, N);
v, y (K, H, M, P); cs, g, w (K, H, T). Kernels:
- ``_intra_fwd``: per (chunk, head, block of rows i), y_i over the column blocks up to the rows' last token;
- ``_intra_bwd_rows``: per (chunk, head, block of rows i): dq_i and the row sums of dcs and dg;
- ``_intra_bwd_cols``: per (chunk, head, block of columns j): dk_j, dv_j and the column sums of dcs and dw.
Per-row partial sums come back per row and are summed over each token's ranks afterwards (no atomics).

Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it). Import this module only
where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .chunked import Kernels, end_state_torch, keys_torch, output_torch, run_chunked
from .inputs import Mamba3Inputs, Mamba3State


@triton.jit
def _weights(cs_ptr, g_ptr, w_ptr, base, i, j, R, M):
    """(Λ_ij, e_ij = exp(cs_{t_i} - cs_{t_j}) below the diagonal blocks and 0 elsewhere, the diagonal blocks' mask)
    for row indices i and column indices j; 0 outside the matrix. The exponent is masked before the exp."""
    ti, tj = i // R, j // R
    inside = (i < M)[:, None] & (j < M)[None, :]
    strict = (tj[None, :] < ti[:, None]) & inside
    diag = (tj[None, :] == ti[:, None]) & inside
    cs_i = tl.load(cs_ptr + base + ti, mask=i < M, other=0.0)
    cs_j = tl.load(cs_ptr + base + tj, mask=j < M, other=0.0)
    g_i = tl.load(g_ptr + base + ti, mask=i < M, other=0.0)
    w_j = tl.load(w_ptr + base + tj, mask=j < M, other=0.0)
    e = tl.where(strict, tl.exp(tl.where(strict, cs_i[:, None] - cs_j[None, :], 0.0)), 0.0)
    lam = e * w_j[None, :] + tl.where(diag, g_i[:, None], 0.0)
    return lam, e, diag


@triton.jit
def _tile(ptr, item, rows, cols, M, W):
    """Rows ``rows`` and columns ``cols`` of chunk-head ``item``'s (M, W) matrix, 0 outside it."""
    return tl.load(ptr + (item * M + rows[:, None]) * W + cols[None, :],
                   mask=(rows < M)[:, None] & (cols < W)[None, :], other=0.0)


@triton.jit
def _store_tile(ptr, item, rows, cols, M, W, value):
    """``value`` into rows ``rows`` and columns ``cols`` of chunk-head ``item``'s (M, W) matrix, where inside it."""
    tl.store(ptr + (item * M + rows[:, None]) * W + cols[None, :], value,
             mask=(rows < M)[:, None] & (cols < W)[None, :])


@triton.jit
def _intra_fwd(q_ptr, k_ptr, v_ptr, cs_ptr, g_ptr, w_ptr, y_ptr, T, R, N, P,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr):
    item = tl.program_id(0)
    M = T * R
    i = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.arange(0, BLOCK_N)
    p = tl.arange(0, BLOCK_P)
    q_i = _tile(q_ptr, item, i, n, M, N)
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=y_ptr.dtype.element_ty)
    last = tl.minimum(((tl.program_id(1) * BLOCK_M + BLOCK_M - 1) // R + 1) * R, M)  # the rows' last token's end
    for j0 in range(0, last, BLOCK_M):
        j = j0 + tl.arange(0, BLOCK_M)
        k_j = _tile(k_ptr, item, j, n, M, N)
        v_j = _tile(v_ptr, item, j, p, M, P)
        lam, _, _ = _weights(cs_ptr, g_ptr, w_ptr, item * T, i, j, R, M)
        scores = tl.dot(q_i, tl.trans(k_j), input_precision=PRECISION)
        acc = tl.dot(scores * lam, v_j, acc, input_precision=PRECISION)
    _store_tile(y_ptr, item, i, p, M, P, acc)


@triton.jit
def _intra_bwd_rows(q_ptr, k_ptr, v_ptr, cs_ptr, g_ptr, w_ptr, dy_ptr, dq_ptr, dcs_ptr, dg_ptr, T, R, N, P,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr):
    """dq_i = Σ_j (dP ∘ Λ)_ij k_j with dP = dy vᵀ; row sums of dP ∘ S ∘ Λ (below the diagonal blocks: d cs_{t_i})
    and of dP ∘ S on them (d g_{t_i})."""
    item = tl.program_id(0)
    M = T * R
    i = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.arange(0, BLOCK_N)
    p = tl.arange(0, BLOCK_P)
    mi = i < M
    q_i = _tile(q_ptr, item, i, n, M, N)
    dy_i = _tile(dy_ptr, item, i, p, M, P)
    dq = tl.zeros((BLOCK_M, BLOCK_N), dtype=dq_ptr.dtype.element_ty)
    dcs = tl.zeros((BLOCK_M,), dtype=dcs_ptr.dtype.element_ty)
    dg = tl.zeros((BLOCK_M,), dtype=dg_ptr.dtype.element_ty)
    last = tl.minimum(((tl.program_id(1) * BLOCK_M + BLOCK_M - 1) // R + 1) * R, M)
    for j0 in range(0, last, BLOCK_M):
        j = j0 + tl.arange(0, BLOCK_M)
        k_j = _tile(k_ptr, item, j, n, M, N)
        v_j = _tile(v_ptr, item, j, p, M, P)
        lam, e, diag = _weights(cs_ptr, g_ptr, w_ptr, item * T, i, j, R, M)
        dP = tl.dot(dy_i, tl.trans(v_j), input_precision=PRECISION)
        dps = dP * tl.dot(q_i, tl.trans(k_j), input_precision=PRECISION)
        dq = tl.dot(dP * lam, k_j, dq, input_precision=PRECISION)
        dcs += tl.sum(tl.where(diag, 0.0, dps * lam), axis=1)
        dg += tl.sum(tl.where(diag, dps, 0.0), axis=1)
    _store_tile(dq_ptr, item, i, n, M, N, dq)
    tl.store(dcs_ptr + item * M + i, dcs, mask=mi)
    tl.store(dg_ptr + item * M + i, dg, mask=mi)


@triton.jit
def _intra_bwd_cols(q_ptr, k_ptr, v_ptr, cs_ptr, g_ptr, w_ptr, dy_ptr, dk_ptr, dv_ptr, dcs_ptr, dw_ptr, T, R, N, P,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr):
    """dk_j = Σ_i (dP ∘ Λ)_ij q_i, dv_j = Σ_i (Λ ∘ S)_ij dy_i, and the column sums below the diagonal blocks:
    -dP ∘ S ∘ Λ (d cs_{t_j}) and dP ∘ S ∘ e (d w_{t_j})."""
    item = tl.program_id(0)
    M = T * R
    j = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.arange(0, BLOCK_N)
    p = tl.arange(0, BLOCK_P)
    mj = j < M
    k_j = _tile(k_ptr, item, j, n, M, N)
    v_j = _tile(v_ptr, item, j, p, M, P)
    dk = tl.zeros((BLOCK_M, BLOCK_N), dtype=dk_ptr.dtype.element_ty)
    dv = tl.zeros((BLOCK_M, BLOCK_P), dtype=dv_ptr.dtype.element_ty)
    dcs = tl.zeros((BLOCK_M,), dtype=dcs_ptr.dtype.element_ty)
    dw = tl.zeros((BLOCK_M,), dtype=dw_ptr.dtype.element_ty)
    first = (tl.program_id(1) * BLOCK_M // R) * R  # the first row of the columns' first token
    for i0 in range(first, M, BLOCK_M):
        i = i0 + tl.arange(0, BLOCK_M)
        q_i = _tile(q_ptr, item, i, n, M, N)
        dy_i = _tile(dy_ptr, item, i, p, M, P)
        lam, e, diag = _weights(cs_ptr, g_ptr, w_ptr, item * T, i, j, R, M)
        scores = tl.dot(q_i, tl.trans(k_j), input_precision=PRECISION)
        dP = tl.dot(dy_i, tl.trans(v_j), input_precision=PRECISION)
        dps = dP * scores
        dk = tl.dot(tl.trans(dP * lam), q_i, dk, input_precision=PRECISION)
        dv = tl.dot(tl.trans(scores * lam), dy_i, dv, input_precision=PRECISION)
        dcs -= tl.sum(tl.where(diag, 0.0, dps * lam), axis=0)
        dw += tl.sum(dps * e, axis=0)
    _store_tile(dk_ptr, item, j, n, M, N, dk)
    _store_tile(dv_ptr, item, j, p, M, P, dv)
    tl.store(dcs_ptr + item * M + j, dcs, mask=mj)
    tl.store(dw_ptr + item * M + j, dw, mask=mj)


def _meta(q: Tensor, v: Tensor) -> dict:
    M, N, P = q.shape[2], q.shape[3], v.shape[3]
    return {"BLOCK_M": max(16, min(64, triton.next_power_of_2(M))), "BLOCK_N": max(16, triton.next_power_of_2(N)),
            "BLOCK_P": max(16, triton.next_power_of_2(P)), "PRECISION": "ieee"}


class IntraChunkTriton(torch.autograd.Function):
    """chunked.intra_torch's contract on the kernels above."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, cs: Tensor, g: Tensor, w: Tensor, rank: int) -> Tensor:
        q, k, v, cs, g, w = (t.contiguous() for t in (q, k, v, cs, g, w))
        K, H, M, N = q.shape
        T, P = cs.shape[2], v.shape[3]
        meta = _meta(q, v)
        y = torch.empty_like(v)
        _intra_fwd[(K * H, triton.cdiv(M, meta["BLOCK_M"]))](q, k, v, cs, g, w, y, T, rank, N, P, **meta)
        ctx.rank = rank
        ctx.save_for_backward(q, k, v, cs, g, w)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, cs, g, w = ctx.saved_tensors
        K, H, M, N = q.shape
        T, P, R = cs.shape[2], v.shape[3], ctx.rank
        meta = _meta(q, v)
        dy = dy.contiguous()
        grid = (K * H, triton.cdiv(M, meta["BLOCK_M"]))
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        rows_cs, rows_g, cols_cs, cols_w = (q.new_empty(K, H, M) for _ in range(4))
        _intra_bwd_rows[grid](q, k, v, cs, g, w, dy, dq, rows_cs, rows_g, T, R, N, P, **meta)
        _intra_bwd_cols[grid](q, k, v, cs, g, w, dy, dk, dv, cols_cs, cols_w, T, R, N, P, **meta)

        def per_token(t: Tensor) -> Tensor:
            return t.view(K, H, T, R).sum(-1)

        return dq, dk, dv, per_token(rows_cs + cols_cs), per_token(rows_g), per_token(cols_w), None


def intra_triton(q: Tensor, k: Tensor, v: Tensor, cs: Tensor, g: Tensor, w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Step 1 in the kernels above; step 2 (one product per chunk and head) in PyTorch."""
    return IntraChunkTriton.apply(q, k, v, cs, g, w, rank), end_state_torch(k, v, cs, w, rank)


TRITON_KERNELS = Kernels(keys_torch, intra_triton, output_torch)


def mamba3_triton(inputs: Mamba3Inputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Mamba3State]:
    """Same contract as :func:`~.reference.mamba3_reference`; needs triton (CUDA, or CPU with TRITON_INTERPRET=1)."""
    return run_chunked(inputs, output_final_state, TRITON_KERNELS)
