"""SSD's chunked algorithm (chunked.py has the math) in Triton kernels, forward and backward.

The kernels work on the chunk layout of chunked.py's ``run_chunked`` (every sequence starts a chunk),
flattened to K = batch·nchunks chunk rows: x (K, T, H, P), delta and cs (K, T, H), B and C
(K, T, G, N), states (K, H, P, N). Forward:
- ``_chunk_outer``: per (chunk, head), U = Σ_t exp(cs_T - cs_t) Δ_t x_t B_tᵀ (step 2);
- ``_state_passing_fwd``: per (row, head, slice of the state), sequentially over chunks,
  E_c = init_c on a chunk that starts a sequence else S_{c-1}, and S_c = exp(cs_T) E_c + U_c (step 3);
- ``_chunk_scan_fwd``: per (chunk, head, block of rows i), y_i = Σ_{j≤i} exp(cs_i - cs_j) (C_i·B_j) Δ_j x_j
  + exp(cs_i) E C_i (steps 1 and 4).
Backward, the adjoints in reverse: ``_chunk_outer`` again for dE = Σ_i exp(cs_i) dy_iᵀ C_i (step 4);
``_state_passing_bwd`` (step 3, chunks in reverse); ``_chunk_scan_bwd_columns`` (per block of columns
j: dx, dΔ, dB and the terms of dcs that sum over rows) and ``_chunk_scan_bwd_rows`` (per block of rows
i: dC and the terms of dcs that sum over columns). dB and dC come per head and are summed over each
group's heads afterwards, so no atomics are needed; the cs_T terms are added by the caller.

Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it). Import this
module only where triton is installed.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl
from torch import Tensor

from .chunked import run_chunked
from .inputs import SSDInputs


@triton.jit
def _chunk_outer(a_ptr, w_ptr, cs_ptr, b_ptr, out_ptr, T, H, P, G, N, heads_per_group,
                 FROM_END: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                 PRECISION: tl.constexpr):
    """out[k, h] = Σ_t weight_t a_tᵀ b_t (P, N), with weight_t = exp(cs_T - cs_t) w_t (FROM_END: the chunk
    state U from a = x, w = Δ, b = B) or exp(cs_t) (the adjoint dE of the entering state from a = dy, b = C)."""
    k = tl.program_id(0)
    h = tl.program_id(1)
    g = h // heads_per_group
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    cs_last = tl.load(cs_ptr + (k * T + T - 1) * H + h)
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=out_ptr.dtype.element_ty)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mt = t < T
        cs = tl.load(cs_ptr + (k * T + t) * H + h, mask=mt, other=0.0)
        if FROM_END:
            weight = tl.exp(cs_last - cs) * tl.load(w_ptr + (k * T + t) * H + h, mask=mt, other=0.0)
        else:
            weight = tl.exp(cs)
        weight = tl.where(mt, weight, 0.0)
        a = tl.load(a_ptr + ((k * T + t[:, None]) * H + h) * P + p[None, :], mask=mt[:, None] & (p < P)[None, :],
                    other=0.0)
        b = tl.load(b_ptr + ((k * T + t[:, None]) * G + g) * N + n[None, :], mask=mt[:, None] & (n < N)[None, :],
                    other=0.0)
        acc = tl.dot(tl.trans(a * weight[:, None]), b, acc, input_precision=PRECISION)
    tl.store(out_ptr + ((k * H + h) * P + p[:, None]) * N + n[None, :], acc, mask=(p < P)[:, None] & (n < N)[None, :])


@triton.jit
def _state_passing_fwd(U_ptr, cs_ptr, init_ptr, starts_ptr, E_ptr, S_ptr, NC, T, H, PN,
                       HAS_INIT: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    o = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    m = o < PN
    S = tl.zeros((BLOCK,), dtype=S_ptr.dtype.element_ty)
    for c in range(NC):
        k = b * NC + c
        base = (k * H + h) * PN
        start = tl.load(starts_ptr + k) != 0
        if HAS_INIT:
            E = tl.where(start, tl.load(init_ptr + base + o, mask=m, other=0.0), S)
        else:
            E = tl.where(start, 0.0, S)
        decay = tl.exp(tl.load(cs_ptr + (k * T + T - 1) * H + h))
        S = decay * E + tl.load(U_ptr + base + o, mask=m, other=0.0)
        tl.store(E_ptr + base + o, E, mask=m)
        tl.store(S_ptr + base + o, S, mask=m)


@triton.jit
def _decay_block(cs_i, cs_j, i, j, mi, mj):
    """exp(cs_i - cs_j) for j <= i (both in range), else 0; the exponent is masked before the exp."""
    causal = (j[None, :] <= i[:, None]) & mi[:, None] & mj[None, :]
    return tl.where(causal, tl.exp(tl.where(causal, cs_i[:, None] - cs_j[None, :], 0.0)), 0.0)


@triton.jit
def _chunk_scan_fwd(x_ptr, dt_ptr, cs_ptr, B_ptr, C_ptr, E_ptr, y_ptr, T, H, P, G, N, heads_per_group,
                    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    k = tl.program_id(0)
    h = tl.program_id(1)
    g = h // heads_per_group
    i = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    mi, mp, mn = i < T, p < P, n < N
    cs_i = tl.load(cs_ptr + (k * T + i) * H + h, mask=mi, other=0.0)
    C_i = tl.load(C_ptr + ((k * T + i[:, None]) * G + g) * N + n[None, :], mask=mi[:, None] & mn[None, :], other=0.0)
    E = tl.load(E_ptr + ((k * H + h) * P + p[:, None]) * N + n[None, :], mask=mp[:, None] & mn[None, :], other=0.0)
    # Step 4: the entering state, decayed to each row.
    acc = tl.dot(C_i, tl.trans(E), input_precision=PRECISION) * tl.where(mi, tl.exp(cs_i), 0.0)[:, None]
    # Step 1: the diagonal block, columns j <= i.
    for j0 in range(0, tl.minimum((tl.program_id(2) + 1) * BLOCK_M, T), BLOCK_M):
        j = j0 + tl.arange(0, BLOCK_M)
        mj = j < T
        cs_j = tl.load(cs_ptr + (k * T + j) * H + h, mask=mj, other=0.0)
        d_j = tl.load(dt_ptr + (k * T + j) * H + h, mask=mj, other=0.0)
        B_j = tl.load(B_ptr + ((k * T + j[:, None]) * G + g) * N + n[None, :], mask=mj[:, None] & mn[None, :],
                      other=0.0)
        x_j = tl.load(x_ptr + ((k * T + j[:, None]) * H + h) * P + p[None, :], mask=mj[:, None] & mp[None, :],
                      other=0.0)
        scores = tl.dot(C_i, tl.trans(B_j), input_precision=PRECISION)
        M = scores * _decay_block(cs_i, cs_j, i, j, mi, mj) * d_j[None, :]
        acc = tl.dot(M, x_j, acc, input_precision=PRECISION)
    tl.store(y_ptr + ((k * T + i[:, None]) * H + h) * P + p[None, :], acc, mask=mi[:, None] & mp[None, :])


@triton.jit
def _state_passing_bwd(dS_ptr, dE_ptr, E_ptr, cs_ptr, starts_ptr, dU_ptr, dinit_ptr, dlog_ptr, NC, T, H, PN,
                       BLOCK: tl.constexpr):
    """Adjoint of step 3, chunks in reverse: gS_c = dS_c + (c+1 continues the sequence) gE_{c+1},
    gE_c = dE_c + exp(cs_T) gS_c; dU_c = gS_c, dinit_c = gE_c on starting chunks, and the chunk's
    log-decay gets exp(cs_T) <gS_c, E_c> (this slice's part, summed over slices by the caller)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    blk = tl.program_id(2)
    o = blk * BLOCK + tl.arange(0, BLOCK)
    m = o < PN
    carry = tl.zeros((BLOCK,), dtype=dU_ptr.dtype.element_ty)
    for cc in range(NC):
        k = b * NC + NC - 1 - cc
        base = (k * H + h) * PN
        gS = tl.load(dS_ptr + base + o, mask=m, other=0.0) + carry
        decay = tl.exp(tl.load(cs_ptr + (k * T + T - 1) * H + h))
        gE = tl.load(dE_ptr + base + o, mask=m, other=0.0) + decay * gS
        tl.store(dU_ptr + base + o, gS, mask=m)
        start = tl.load(starts_ptr + k) != 0
        tl.store(dinit_ptr + base + o, tl.where(start, gE, 0.0), mask=m)
        E = tl.load(E_ptr + base + o, mask=m, other=0.0)
        tl.store(dlog_ptr + (k * H + h) * tl.num_programs(2) + blk, decay * tl.sum(gS * E, axis=0))
        carry = tl.where(start, 0.0, gE)


@triton.jit
def _chunk_scan_bwd_columns(x_ptr, dt_ptr, cs_ptr, B_ptr, C_ptr, dy_ptr, dU_ptr,
                            dx_ptr, ddt_ptr, dB_ptr, dcs_ptr, q_ptr, T, H, P, G, N, heads_per_group,
                            BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                            PRECISION: tl.constexpr):
    """Per (chunk, head, block of columns j): the adjoints that sum over rows i >= j: dx, dΔ, this
    head's part of dB, the column part of dcs, and q_j = w_j ∂L/∂w_j of the chunk state's weights."""
    k = tl.program_id(0)
    h = tl.program_id(1)
    g = h // heads_per_group
    jb = tl.program_id(2)
    j = jb * BLOCK_M + tl.arange(0, BLOCK_M)
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    mj, mp, mn = j < T, p < P, n < N
    cs_j = tl.load(cs_ptr + (k * T + j) * H + h, mask=mj, other=0.0)
    d_j = tl.load(dt_ptr + (k * T + j) * H + h, mask=mj, other=0.0)
    x_j = tl.load(x_ptr + ((k * T + j[:, None]) * H + h) * P + p[None, :], mask=mj[:, None] & mp[None, :], other=0.0)
    B_j = tl.load(B_ptr + ((k * T + j[:, None]) * G + g) * N + n[None, :], mask=mj[:, None] & mn[None, :], other=0.0)
    dU = tl.load(dU_ptr + ((k * H + h) * P + p[:, None]) * N + n[None, :], mask=mp[:, None] & mn[None, :], other=0.0)
    xd_j = x_j * d_j[:, None]
    # Step 2's adjoint: U = Σ_j w_j xd_j B_jᵀ, w_j = exp(cs_T - cs_j).
    cs_last = tl.load(cs_ptr + (k * T + T - 1) * H + h)
    w_j = tl.where(mj, tl.exp(cs_last - cs_j), 0.0)
    BdU = tl.dot(B_j, tl.trans(dU), input_precision=PRECISION)
    dxd = BdU * w_j[:, None]
    q_j = w_j * tl.sum(xd_j * BdU, axis=1)
    dB = tl.dot(xd_j, dU, input_precision=PRECISION) * w_j[:, None]
    dcs = -q_j
    # Step 1's adjoint over the rows i >= j.
    for i0 in range(jb * BLOCK_M, T, BLOCK_M):
        i = i0 + tl.arange(0, BLOCK_M)
        mi = i < T
        cs_i = tl.load(cs_ptr + (k * T + i) * H + h, mask=mi, other=0.0)
        C_i = tl.load(C_ptr + ((k * T + i[:, None]) * G + g) * N + n[None, :], mask=mi[:, None] & mn[None, :],
                      other=0.0)
        dy_i = tl.load(dy_ptr + ((k * T + i[:, None]) * H + h) * P + p[None, :], mask=mi[:, None] & mp[None, :],
                       other=0.0)
        decay = _decay_block(cs_i, cs_j, i, j, mi, mj)
        M = tl.dot(C_i, tl.trans(B_j), input_precision=PRECISION) * decay  # (i, j), without Δ_j
        dxd = tl.dot(tl.trans(M), dy_i, dxd, input_precision=PRECISION)
        dM = tl.dot(dy_i, tl.trans(xd_j), input_precision=PRECISION)
        dB = tl.dot(tl.trans(dM * decay), C_i, dB, input_precision=PRECISION)
        dcs -= tl.sum(dM * M, axis=0)
    row = (k * T + j) * H + h
    tl.store(dx_ptr + row[:, None] * P + p[None, :], dxd * d_j[:, None], mask=mj[:, None] & mp[None, :])
    tl.store(ddt_ptr + row, tl.sum(dxd * x_j, axis=1), mask=mj)
    tl.store(dB_ptr + row[:, None] * N + n[None, :], dB, mask=mj[:, None] & mn[None, :])
    tl.store(dcs_ptr + row, dcs, mask=mj)
    tl.store(q_ptr + row, q_j, mask=mj)


@triton.jit
def _chunk_scan_bwd_rows(x_ptr, dt_ptr, cs_ptr, B_ptr, C_ptr, dy_ptr, E_ptr, dC_ptr, dcs_ptr,
                         T, H, P, G, N, heads_per_group, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Per (chunk, head, block of rows i): the adjoints that sum over columns j <= i (and the state
    term of step 4): this head's part of dC and the row part of dcs."""
    k = tl.program_id(0)
    h = tl.program_id(1)
    g = h // heads_per_group
    i = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    mi, mp, mn = i < T, p < P, n < N
    cs_i = tl.load(cs_ptr + (k * T + i) * H + h, mask=mi, other=0.0)
    C_i = tl.load(C_ptr + ((k * T + i[:, None]) * G + g) * N + n[None, :], mask=mi[:, None] & mn[None, :], other=0.0)
    dy_i = tl.load(dy_ptr + ((k * T + i[:, None]) * H + h) * P + p[None, :], mask=mi[:, None] & mp[None, :], other=0.0)
    E = tl.load(E_ptr + ((k * H + h) * P + p[:, None]) * N + n[None, :], mask=mp[:, None] & mn[None, :], other=0.0)
    # Step 4's adjoint: y_i += e_i E C_i, e_i = exp(cs_i).
    e_i = tl.where(mi, tl.exp(cs_i), 0.0)
    dC = tl.dot(dy_i, E, input_precision=PRECISION) * e_i[:, None]
    dcs = e_i * tl.sum(dy_i * tl.dot(C_i, tl.trans(E), input_precision=PRECISION), axis=1)
    for j0 in range(0, tl.minimum((tl.program_id(2) + 1) * BLOCK_M, T), BLOCK_M):
        j = j0 + tl.arange(0, BLOCK_M)
        mj = j < T
        cs_j = tl.load(cs_ptr + (k * T + j) * H + h, mask=mj, other=0.0)
        d_j = tl.load(dt_ptr + (k * T + j) * H + h, mask=mj, other=0.0)
        B_j = tl.load(B_ptr + ((k * T + j[:, None]) * G + g) * N + n[None, :], mask=mj[:, None] & mn[None, :],
                      other=0.0)
        x_j = tl.load(x_ptr + ((k * T + j[:, None]) * H + h) * P + p[None, :], mask=mj[:, None] & mp[None, :],
                      other=0.0)
        decay = _decay_block(cs_i, cs_j, i, j, mi, mj)
        dM = tl.dot(dy_i, tl.trans(x_j * d_j[:, None]), input_precision=PRECISION)
        dC = tl.dot(dM * decay, B_j, dC, input_precision=PRECISION)
        dcs += tl.sum(dM * decay * tl.dot(C_i, tl.trans(B_j), input_precision=PRECISION), axis=1)
    row = (k * T + i) * H + h
    tl.store(dC_ptr + row[:, None] * N + n[None, :], dC, mask=mi[:, None] & mn[None, :])
    tl.store(dcs_ptr + row, dcs, mask=mi)


def _meta(x: Tensor, B: Tensor) -> dict:
    _, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    return {"block_m": max(16, min(64, triton.next_power_of_2(T))), "block_p": max(16, triton.next_power_of_2(P)),
            "block_n": max(16, triton.next_power_of_2(N)), "block_state": 256,
            "precision": "ieee", "sizes": (T, H, P, G, N, H // G)}


class ChunkScan(torch.autograd.Function):
    """The chunk core of run_chunked in Triton. Inputs flattened to K chunk rows (see the module
    docstring); returns y (K, T, H, P) and the chunk end states (K, H, P, N)."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, cs: Tensor, B: Tensor, C: Tensor, init: Tensor | None,
                starts: Tensor, nchunks: int) -> tuple[Tensor, Tensor]:
        K, T, H, P = x.shape
        N = B.shape[3]
        m = _meta(x, B)
        sizes = m["sizes"]
        U = x.new_empty(K, H, P, N)
        _chunk_outer[(K, H)](x, delta, cs, B, U, *sizes, FROM_END=True, BLOCK_T=m["block_m"], BLOCK_P=m["block_p"],
                             BLOCK_N=m["block_n"], PRECISION=m["precision"])
        E, S = torch.empty_like(U), torch.empty_like(U)
        batch = K // nchunks
        _state_passing_fwd[(batch, H, triton.cdiv(P * N, m["block_state"]))](
            U, cs, init if init is not None else U, starts, E, S, nchunks, T, H, P * N,
            HAS_INIT=init is not None, BLOCK=m["block_state"])
        y = torch.empty_like(x)
        _chunk_scan_fwd[(K, H, triton.cdiv(T, m["block_m"]))](
            x, delta, cs, B, C, E, y, *sizes, BLOCK_M=m["block_m"], BLOCK_P=m["block_p"], BLOCK_N=m["block_n"],
            PRECISION=m["precision"])
        ctx.save_for_backward(x, delta, cs, B, C, E, starts)
        ctx.nchunks, ctx.has_init = nchunks, init is not None
        return y, S

    @staticmethod
    def backward(ctx, dy: Tensor, dS: Tensor) -> tuple[Tensor | None, ...]:
        x, delta, cs, B, C, E, starts = ctx.saved_tensors
        K, T, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        m = _meta(x, B)
        sizes = m["sizes"]
        dy, dS = dy.contiguous(), dS.contiguous()
        dE = torch.empty_like(E)  # adjoint of the entering states from step 4
        _chunk_outer[(K, H)](dy, delta, cs, C, dE, *sizes, FROM_END=False, BLOCK_T=m["block_m"],
                             BLOCK_P=m["block_p"], BLOCK_N=m["block_n"], PRECISION=m["precision"])
        slices = triton.cdiv(P * N, m["block_state"])
        dU, dinit = torch.empty_like(E), torch.empty_like(E)
        dlog = x.new_empty(K, H, slices)
        _state_passing_bwd[(K // ctx.nchunks, H, slices)](dS, dE, E, cs, starts, dU, dinit, dlog, ctx.nchunks, T, H,
                                                          P * N, BLOCK=m["block_state"])
        grid = (K, H, triton.cdiv(T, m["block_m"]))
        dx, ddelta = torch.empty_like(x), torch.empty_like(delta)
        dB_heads, dC_heads = x.new_empty(K, T, H, N), x.new_empty(K, T, H, N)
        dcs_cols, dcs_rows, q = torch.empty_like(cs), torch.empty_like(cs), torch.empty_like(cs)
        _chunk_scan_bwd_columns[grid](x, delta, cs, B, C, dy, dU, dx, ddelta, dB_heads, dcs_cols, q, *sizes,
                                      BLOCK_M=m["block_m"], BLOCK_P=m["block_p"], BLOCK_N=m["block_n"],
                                      PRECISION=m["precision"])
        _chunk_scan_bwd_rows[grid](x, delta, cs, B, C, dy, E, dC_heads, dcs_rows, *sizes, BLOCK_M=m["block_m"],
                                   BLOCK_P=m["block_p"], BLOCK_N=m["block_n"], PRECISION=m["precision"])
        dcs = dcs_cols + dcs_rows
        # cs_T enters every chunk weight w_j = exp(cs_T - cs_j) and the chunk decay exp(cs_T).
        dcs[:, T - 1] += q.sum(1) + dlog.sum(-1)
        dB = dB_heads.view(K, T, G, H // G, N).sum(3)
        dC = dC_heads.view(K, T, G, H // G, N).sum(3)
        return dx, ddelta, dcs, dB, dC, (dinit if ctx.has_init else None), None, None


def chunk_scan_triton(x: Tensor, delta: Tensor, cs: Tensor, B: Tensor, C: Tensor, init: Tensor | None,
                      starts: Tensor) -> tuple[Tensor, Tensor]:
    """run_chunked's chunk core (shapes as in chunked.chunk_scan_torch) on the Triton kernels."""
    batch, nchunks, T, H, P = x.shape
    K = batch * nchunks

    def rows(t: Tensor) -> Tensor:
        return t.reshape(K, *t.shape[2:]).contiguous()

    y, S = ChunkScan.apply(rows(x), rows(delta), rows(cs), rows(B), rows(C),
                           None if init is None else rows(init), starts.reshape(K).to(torch.int32), nchunks)
    return y.view(batch, nchunks, T, H, P), S.view(batch, nchunks, H, P, -1)


def ssd_triton(inputs: SSDInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`ssd_reference`; needs triton (CUDA, or CPU with TRITON_INTERPRET=1)."""
    return run_chunked(chunk_scan_triton, inputs, output_final_state)
