"""The gated delta rule's chunked form (chunked.py has the math) in Triton kernels, forward and backward.

One program per (batch row, value head) runs that head's chunks in order, its (d_k, d_v) state on chip: per
chunk it loads the chunk's q, k, v, g, β, builds Γ, M and the UT inverse P = (I + M)⁻¹, and writes the chunk's
outputs and end state (P by forward substitution on the chunk's tile: T row updates; fla's blocked inverse
would take fewer steps on a GPU). The backward program runs the chunks in reverse, recomputes each chunk's factors
from the inputs and the saved chunk states (as the C++ backend does), and writes the gradients of its tokens and
of the entering state; dq and dk come per value head and are summed over the heads that share a key head
afterwards, so no atomics are needed. Layouts are csrc/gated_delta_cpu.cpp's (the chunk layout of run_chunked).

Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it). Import this module only
where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from einops import reduce
from torch import Tensor
from torch.autograd import Function

from .chunked import run_chunked
from .inputs import GatedDeltaInputs


@triton.jit
def _chunk_factors(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, b, c, h, hk, scale, T, Lp, Hk, Hv, K, V,
                   BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, PRECISION: tl.constexpr):
    """Chunk c of (b, h): its inputs (q scaled) and the factors that do not depend on the entering state."""
    t = tl.arange(0, BLOCK_T)
    kk = tl.arange(0, BLOCK_K)
    vv = tl.arange(0, BLOCK_V)
    mt, mk, mv = t < T, kk < K, vv < V
    row = b * Lp + c * T + t
    Q = tl.load(q_ptr + (row[:, None] * Hk + hk) * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
    Q = Q * scale
    Kc = tl.load(k_ptr + (row[:, None] * Hk + hk) * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
    Vc = tl.load(v_ptr + (row[:, None] * Hv + h) * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
    gv = tl.load(g_ptr + row * Hv + h, mask=mt, other=0.0)
    beta = tl.load(beta_ptr + row * Hv + h, mask=mt, other=0.0)
    gam = tl.cumsum(gv, 0)
    last = tl.sum(tl.where(t == T - 1, gam, 0.0), 0)
    e = tl.where(mt, tl.exp(gam), 0.0)
    f = tl.where(mt, tl.exp(tl.where(mt, last - gam, 0.0)), 0.0)
    both = mt[:, None] & mt[None, :]
    lower = (t[:, None] >= t[None, :]) & both
    strict = (t[:, None] > t[None, :]) & both
    Gam = tl.where(lower, tl.exp(tl.where(lower, gam[:, None] - gam[None, :], 0.0)), 0.0)
    KK = tl.dot(Kc, tl.trans(Kc), input_precision=PRECISION)
    G = tl.dot(Q, tl.trans(Kc), input_precision=PRECISION) * Gam
    M = tl.where(strict, beta[:, None] * KK * Gam, 0.0)
    # P = (I + M)⁻¹ by forward substitution, row by row: P_i = e_i − Σ_{j<i} M_ij P_j (stable; a power series
    # in M is not: its terms grow like binomial coefficients when keys repeat).
    P = tl.where(t[:, None] == t[None, :], 1.0, 0.0).to(M.dtype)
    for i in range(1, T):
        m_i = tl.sum(tl.where(t[:, None] == i, M, 0.0), 0)  # row i of M, indexed by the column j
        P = tl.where(t[:, None] == i, P - tl.sum(m_i[:, None] * P, 0)[None, :], P)
    U = tl.dot(P, beta[:, None] * Vc, input_precision=PRECISION)
    W = tl.dot(P, (beta * e)[:, None] * Kc, input_precision=PRECISION)
    return Q, Kc, Vc, beta, e, f, last, Gam, KK, M, G, P, U, W


@triton.jit
def _forward(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, init_ptr, starts_ptr, o_ptr, S_ptr, scale, NC, T, Lp, Hk, Hv,
             K, V, HAS_INIT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
             PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // Hv
    h = pid % Hv
    hk = h // (Hv // Hk)
    t = tl.arange(0, BLOCK_T)
    kk = tl.arange(0, BLOCK_K)
    vv = tl.arange(0, BLOCK_V)
    mt, mk, mv = t < T, kk < K, vv < V
    state = kk[:, None] * V + vv[None, :]
    mstate = mk[:, None] & mv[None, :]
    E = tl.zeros((BLOCK_K, BLOCK_V), dtype=S_ptr.dtype.element_ty)
    for c in range(NC):
        base = ((b * NC + c) * Hv + h) * K * V
        start = tl.load(starts_ptr + b * NC + c) != 0
        if HAS_INIT:
            E = tl.where(start, tl.load(init_ptr + base + state, mask=mstate, other=0.0), E)
        else:
            E = tl.where(start, 0.0, E)
        Q, Kc, Vc, beta, e, f, last, Gam, KK, M, G, P, U, W = _chunk_factors(
            q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, b, c, h, hk, scale, T, Lp, Hk, Hv, K, V, BLOCK_T, BLOCK_K,
            BLOCK_V, PRECISION)
        Delta = U - tl.dot(W, E, input_precision=PRECISION)
        O = tl.dot(Q * e[:, None], E, input_precision=PRECISION) + tl.dot(G, Delta, input_precision=PRECISION)
        row = b * Lp + c * T + t
        tl.store(o_ptr + (row[:, None] * Hv + h) * V + vv[None, :], O, mask=mt[:, None] & mv[None, :])
        E = tl.exp(last) * E + tl.dot(tl.trans(Kc * f[:, None]), Delta, input_precision=PRECISION)
        tl.store(S_ptr + base + state, E, mask=mstate)


@triton.jit
def _backward(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, init_ptr, starts_ptr, S_ptr, do_ptr, dS_ptr, dq_ptr, dk_ptr,
              dv_ptr, dg_ptr, dbeta_ptr, dinit_ptr, scale, NC, T, Lp, Hk, Hv, K, V, HAS_INIT: tl.constexpr,
              BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
              PRECISION: tl.constexpr):
    """The adjoint of _forward, chunk by chunk in reverse (the terms are csrc/gated_delta_cpu.cpp's)."""
    pid = tl.program_id(0)
    b = pid // Hv
    h = pid % Hv
    hk = h // (Hv // Hk)
    t = tl.arange(0, BLOCK_T)
    kk = tl.arange(0, BLOCK_K)
    vv = tl.arange(0, BLOCK_V)
    mt, mk, mv = t < T, kk < K, vv < V
    state = kk[:, None] * V + vv[None, :]
    mstate = mk[:, None] & mv[None, :]
    both = mt[:, None] & mt[None, :]
    lower = (t[:, None] >= t[None, :]) & both
    strict = (t[:, None] > t[None, :]) & both
    carry = tl.zeros((BLOCK_K, BLOCK_V), dtype=S_ptr.dtype.element_ty)
    for ci in range(NC):
        c = NC - 1 - ci
        base = ((b * NC + c) * Hv + h) * K * V
        start = tl.load(starts_ptr + b * NC + c) != 0
        # The previous chunk's end state (nothing to read before chunk 0; a chunk that starts a document ignores it).
        has_previous = (state * 0 + c) > 0
        previous = tl.load(S_ptr + base - Hv * K * V + state, mask=mstate & has_previous, other=0.0)
        if HAS_INIT:
            E = tl.where(start, tl.load(init_ptr + base + state, mask=mstate, other=0.0), previous)
        else:
            E = tl.where(start, 0.0, previous)
        dS = tl.load(dS_ptr + base + state, mask=mstate, other=0.0) + carry
        Q, Kc, Vc, beta, e, f, last, Gam, KK, M, G, P, U, W = _chunk_factors(
            q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, b, c, h, hk, scale, T, Lp, Hk, Hv, K, V, BLOCK_T, BLOCK_K,
            BLOCK_V, PRECISION)
        Delta = U - tl.dot(W, E, input_precision=PRECISION)
        row = b * Lp + c * T + t
        dO = tl.load(do_ptr + (row[:, None] * Hv + h) * V + vv[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        eT = tl.exp(last)
        Qe = Q * e[:, None]
        Kf = Kc * f[:, None]
        # O = Qe E + G Δ, S = e_T E + Kfᵀ Δ, Δ = U − W E.
        dDelta = tl.dot(tl.trans(G), dO, input_precision=PRECISION) + tl.dot(Kf, dS, input_precision=PRECISION)
        dE = (tl.dot(tl.trans(Qe), dO, input_precision=PRECISION) + eT * dS
              - tl.dot(tl.trans(W), dDelta, input_precision=PRECISION))
        dG = tl.where(lower, tl.dot(dO, tl.trans(Delta), input_precision=PRECISION), 0.0)
        R = dG * G
        dG = dG * Gam
        DOE = tl.dot(dO, tl.trans(E), input_precision=PRECISION)
        DDS = tl.dot(Delta, tl.trans(dS), input_precision=PRECISION)
        dQ = tl.dot(dG, Kc, input_precision=PRECISION) + e[:, None] * DOE
        dK = tl.dot(tl.trans(dG), Q, input_precision=PRECISION) + f[:, None] * DDS
        to_end = f * tl.sum(Kc * DDS, 1)
        dgam = e * tl.sum(Q * DOE, 1) - to_end
        dgam += tl.where(t == T - 1, tl.sum(to_end, 0) + eT * tl.sum(tl.sum(E * dS, 1), 0), 0.0)
        # [U | W] = P [diag(β) V | diag(β e) K]: the adjoints of the right-hand sides are Pᵀ [dΔ | −dΔ Eᵀ].
        dBv = tl.dot(tl.trans(P), dDelta, input_precision=PRECISION)
        dBk = -tl.dot(tl.trans(P), tl.dot(dDelta, tl.trans(E), input_precision=PRECISION),
                      input_precision=PRECISION)
        dM = -(tl.dot(dBv, tl.trans(U), input_precision=PRECISION)
               + tl.dot(dBk, tl.trans(W), input_precision=PRECISION))
        dM = tl.where(strict, dM, 0.0)
        kdBk = tl.sum(Kc * dBk, 1)
        dbeta = tl.sum(Vc * dBv, 1) + e * kdBk + tl.sum(dM * KK * Gam, 1)
        dgam += beta * e * kdBk
        R += dM * M
        D = dM * beta[:, None] * Gam  # the adjoint of K Kᵀ (strictly lower)
        dK += ((beta * e)[:, None] * dBk + tl.dot(D, Kc, input_precision=PRECISION)
               + tl.dot(tl.trans(D), Kc, input_precision=PRECISION))
        dgam += tl.sum(R, 1) - tl.sum(R, 0)
        dg = tl.sum(dgam, 0) - tl.cumsum(dgam, 0) + dgam  # g's gradient: the reverse cumsum of dγ
        m_tk = mt[:, None] & mk[None, :]
        tl.store(dq_ptr + (row[:, None] * Hv + h) * K + kk[None, :], scale * dQ, mask=m_tk)
        tl.store(dk_ptr + (row[:, None] * Hv + h) * K + kk[None, :], dK, mask=m_tk)
        tl.store(dv_ptr + (row[:, None] * Hv + h) * V + vv[None, :], beta[:, None] * dBv, mask=mt[:, None] & mv[None, :])
        tl.store(dg_ptr + row * Hv + h, dg, mask=mt)
        tl.store(dbeta_ptr + row * Hv + h, dbeta, mask=mt)
        if HAS_INIT:
            tl.store(dinit_ptr + base + state, dE, mask=mstate & ((state * 0 + start.to(tl.int32)) != 0))
        carry = tl.where(start, 0.0, dE)


def _meta(T: int, K: int, V: int) -> dict:
    block_t = max(16, triton.next_power_of_2(T))
    return {"BLOCK_T": block_t, "BLOCK_K": max(16, triton.next_power_of_2(K)),
            "BLOCK_V": max(16, triton.next_power_of_2(V)), "PRECISION": "ieee"}


class GatedDeltaTriton(Function):
    """cpu.GatedDeltaCpp's contract on the Triton kernels."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, init: Tensor | None, starts: Tensor,
                scale: float, chunk: int) -> tuple[Tensor, Tensor]:
        B, Lp, Hk, K = q.shape
        Hv, V = v.shape[2:]
        nchunks = Lp // chunk
        o = v.new_empty(B, Lp, Hv, V)
        S = v.new_empty(B, nchunks, Hv, K, V)
        starts = starts.to(torch.int32)
        _forward[(B * Hv,)](q, k, v, g, beta, init if init is not None else S, starts, o, S, scale, nchunks, chunk,
                            Lp, Hk, Hv, K, V, HAS_INIT=init is not None, **_meta(chunk, K, V))
        ctx.save_for_backward(q, k, v, g, beta, init, starts, S)
        ctx.scale, ctx.chunk = scale, chunk
        return o, S

    @staticmethod
    def backward(ctx, do: Tensor, dS: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, g, beta, init, starts, S = ctx.saved_tensors
        B, Lp, Hk, K = q.shape
        Hv, V = v.shape[2:]
        chunk = ctx.chunk
        dq, dk = q.new_empty(B, Lp, Hv, K), q.new_empty(B, Lp, Hv, K)
        dv, dg, dbeta = v.new_empty(v.shape), g.new_empty(g.shape), beta.new_empty(beta.shape)
        dinit = init.new_zeros(init.shape) if init is not None else None
        _backward[(B * Hv,)](q, k, v, g, beta, init if init is not None else S, starts, S, do.contiguous(),
                             dS.contiguous(), dq, dk, dv, dg, dbeta, dinit if dinit is not None else S, ctx.scale,
                             Lp // chunk, chunk, Lp, Hk, Hv, K, V, HAS_INIT=init is not None, **_meta(chunk, K, V))
        dq, dk = (reduce(t, "b l (h r) d -> b l h d", "sum", h=Hk) for t in (dq, dk))
        return dq, dk, dv, dg, dbeta, dinit, None, None, None


def chunk_core_triton(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, init: Tensor | None, starts: Tensor,
                      scale: float) -> tuple[Tensor, Tensor]:
    """chunked.chunk_core_torch's contract (same shapes), on the Triton kernels."""
    batch, nchunks, T = q.shape[:3]

    def rows(t: Tensor) -> Tensor:
        return t.reshape(batch, nchunks * T, *t.shape[3:]).contiguous()

    o, S = GatedDeltaTriton.apply(rows(q), rows(k), rows(v), rows(g), rows(beta),
                                  None if init is None else init.contiguous(), starts.contiguous(), scale, T)
    return o.view(batch, nchunks, T, *o.shape[2:]), S


def gated_delta_triton(x: GatedDeltaInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`gated_delta_reference`; needs triton (CUDA, or CPU with TRITON_INTERPRET=1)."""
    return run_chunked(chunk_core_triton, x, output_final_state)
